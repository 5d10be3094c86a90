//! One vCPU's thread: `KVM_RUN`, then each exit to the device bus, the MSR handler, the
//! hypercall hook or the SynIC-exit hook, until the VM stops.

use std::sync::Arc;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_bindings::{KVM_EXIT_HYPERV_HCALL, KVM_EXIT_HYPERV_SYNIC};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};

use crate::control::{StopReason, VmControl};
use crate::hv::{HvPartition, PartitionMsrs};
use crate::hypercall::{self, Hypercall, HypercallHandler, NoHypercalls};
use crate::io::IoBus;
use crate::kick;
use crate::layout::ports::HYPERCALL_TRAP;
use crate::msr::{MsrHandler, VpIndexOnly};
use crate::probe::SynicMode;

/// A `KVM_EXIT_HYPERV_SYNIC` notification (kernel mode): the guest wrote SCONTROL, SIEFP or
/// SIMP and the kernel already applied it. The model's own type, so the exit goes to
/// [`synic::Vp::apply_synic_exit`] as it is.
pub use synic::SynicExit;

/// Follows the in-kernel SynIC's notifications for one vCPU (kernel mode only).
pub trait SynicExitHandler: Send {
    /// The guest changed SCONTROL, SIEFP or SIMP.
    fn synic_exit(&mut self, exit: &SynicExit);

    /// The vCPU left `KVM_RUN` for good (the VM is stopping), on its own thread: the moment to
    /// read vCPU state KVM keeps, such as the in-kernel SynIC's registers. Default: nothing.
    fn vcpu_stopped(&mut self, _vcpu: &VcpuFd) {}
}

/// Ignores SynIC notifications.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IgnoreSynicExits;

impl SynicExitHandler for IgnoreSynicExits {
    fn synic_exit(&mut self, _exit: &SynicExit) {}
}

/// What one vCPU's exits go to. Each vCPU gets its own, used only on its thread.
pub struct VcpuHandlers {
    /// MSR exits not answered by the VMM itself.
    pub msr: Box<dyn MsrHandler>,
    /// Hypercalls (trap port in userspace mode, `KVM_EXIT_HYPERV_HCALL` in kernel mode).
    pub hypercall: Box<dyn HypercallHandler>,
    /// `KVM_EXIT_HYPERV_SYNIC` (kernel mode).
    pub synic_exit: Box<dyn SynicExitHandler>,
}

impl std::fmt::Debug for VcpuHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VcpuHandlers")
    }
}

impl VcpuHandlers {
    /// No SynIC: VP_INDEX only, hypercalls refused, notifications ignored.
    pub fn without_synic(vp_index: u32) -> Self {
        Self {
            msr: Box::new(VpIndexOnly { vp_index }),
            hypercall: Box::new(NoHypercalls),
            synic_exit: Box::new(IgnoreSynicExits),
        }
    }
}

/// What one vCPU's thread saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuStats {
    /// Port-I/O exits (hypercall traps excluded).
    pub io: u64,
    /// MMIO exits (no MMIO devices: reads return all ones).
    pub mmio: u64,
    /// RDMSR/WRMSR exits.
    pub msr: u64,
    /// Of those, how many were answered with #GP.
    pub msr_gp: u64,
    /// Hypercalls handled.
    pub hypercalls: u64,
    /// `KVM_EXIT_HYPERV` exits.
    pub hyperv: u64,
    /// `KVM_RUN` returns caused by a signal (kicks).
    pub interrupted: u64,
    /// `EAGAIN` from an AP leaving wait-for-SIPI.
    pub sipi_retries: u64,
}

pub(crate) struct VcpuRunner {
    pub index: u32,
    pub fd: VcpuFd,
    pub handlers: VcpuHandlers,
    pub bus: Arc<IoBus>,
    pub partition_msrs: PartitionMsrs,
    pub control: Arc<VmControl>,
    pub mode: SynicMode,
    /// Registers arrive in `kvm_run` at every exit (`KVM_CAP_SYNC_REGS`).
    pub sync_regs: bool,
}

enum Next {
    Continue,
    ClearImmediateExit,
    HypercallTrap,
    HypervExit,
    InternalError,
    Stop(StopReason),
}

impl VcpuRunner {
    pub fn run(mut self) -> VcpuStats {
        let mut stats = VcpuStats::default();
        kick::register(self.fd.get_kvm_run());
        if self.sync_regs {
            self.fd.set_sync_valid_reg(SyncReg::Register);
            self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        while !self.control.stopping() {
            let next = self.step(&mut stats);
            let outcome = match next {
                Next::Continue => Ok(()),
                Next::ClearImmediateExit => {
                    self.fd.set_kvm_immediate_exit(0);
                    Ok(())
                }
                Next::HypercallTrap => self.hypercall_trap(&mut stats),
                Next::HypervExit => self.hyperv_exit(),
                Next::InternalError => {
                    let suberror = self.fd.get_kvm_run();
                    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the union.
                    let suberror = unsafe { suberror.__bindgen_anon_1.internal.suberror };
                    Err(format!("KVM_EXIT_INTERNAL_ERROR, suberror {suberror}"))
                }
                Next::Stop(reason) => {
                    self.control.request_stop(reason);
                    break;
                }
            };
            if let Err(message) = outcome {
                self.control.request_stop(StopReason::Error {
                    vcpu: self.index,
                    message,
                });
                break;
            }
        }
        kick::unregister();
        self.handlers.synic_exit.vcpu_stopped(&self.fd);
        stats
    }

    fn step(&mut self, stats: &mut VcpuStats) -> Next {
        let vcpu = self.index;
        let exit = self.fd.run();
        if exit.is_ok() {
            self.control.count_exit(vcpu);
        }
        match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                if port == HYPERCALL_TRAP
                    && self.mode == SynicMode::Userspace
                    && self.partition_msrs.hypercall_page().is_some()
                {
                    return Next::HypercallTrap;
                }
                stats.io += 1;
                self.bus.write(vcpu, port, data);
                Next::Continue
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                stats.io += 1;
                self.bus.read(vcpu, port, data);
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(_, data)) => {
                stats.mmio += 1;
                data.fill(0xFF);
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(..)) => {
                stats.mmio += 1;
                Next::Continue
            }
            Ok(VcpuExit::X86Rdmsr(exit)) => {
                stats.msr += 1;
                match rdmsr(
                    &self.partition_msrs,
                    self.handlers.msr.as_mut(),
                    self.mode,
                    exit.index,
                ) {
                    Some(value) => *exit.data = value,
                    None => {
                        stats.msr_gp += 1;
                        *exit.error = 1;
                    }
                }
                Next::Continue
            }
            Ok(VcpuExit::X86Wrmsr(exit)) => {
                stats.msr += 1;
                if !wrmsr(
                    &self.partition_msrs,
                    self.handlers.msr.as_mut(),
                    self.mode,
                    exit.index,
                    exit.data,
                ) {
                    stats.msr_gp += 1;
                    *exit.error = 1;
                }
                Next::Continue
            }
            Ok(VcpuExit::Hyperv) => {
                stats.hyperv += 1;
                Next::HypervExit
            }
            // With the in-kernel LAPIC, HLT only exits if the kernel decides to; just resume.
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => Next::Continue,
            Ok(VcpuExit::Shutdown) => {
                let regs = self.fd.get_regs().unwrap_or_default();
                Next::Stop(StopReason::Shutdown {
                    vcpu,
                    rip: regs.rip,
                    rsp: regs.rsp,
                })
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                Next::Stop(StopReason::SystemEvent { vcpu, kind })
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Next::Stop(StopReason::Error {
                vcpu,
                message: format!(
                    "KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on host CPU {cpu}"
                ),
            }),
            Ok(VcpuExit::InternalError) => Next::InternalError,
            Ok(other) => Next::Stop(StopReason::Error {
                vcpu,
                message: format!("unexpected exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR => {
                stats.interrupted += 1;
                Next::ClearImmediateExit
            }
            // An AP left wait-for-SIPI: run it again.
            Err(e) if e.errno() == libc::EAGAIN => {
                stats.sipi_retries += 1;
                Next::Continue
            }
            Err(e) => Next::Stop(StopReason::Error {
                vcpu,
                message: format!("KVM_RUN failed: {e}"),
            }),
        }
    }

    fn hypercall_trap(&mut self, stats: &mut VcpuStats) -> Result<(), String> {
        let (mut regs, sregs) = self.registers()?;
        // Only ring 0 may call the hypervisor; anything else is a plain write to a port
        // nobody claims.
        if sregs.cs.selector & 3 != 0 {
            stats.io += 1;
            return Ok(());
        }
        stats.hypercalls += 1;
        let long_mode = sregs.efer & (1 << 10) != 0 && sregs.cs.l == 1;
        let call = Hypercall::from_regs(&regs, long_mode);
        let result = self.handlers.hypercall.hypercall(&call);
        hypercall::write_result(&mut regs, long_mode, result);
        // RIP still points at the OUT; KVM skips it when the vCPU resumes.
        self.set_registers(&regs)
    }

    fn registers(&mut self) -> Result<(kvm_regs, kvm_sregs), String> {
        if self.sync_regs {
            let s = self.fd.sync_regs();
            return Ok((s.regs, s.sregs));
        }
        let regs = self
            .fd
            .get_regs()
            .map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        Ok((regs, sregs))
    }

    fn set_registers(&mut self, regs: &kvm_regs) -> Result<(), String> {
        if self.sync_regs {
            self.fd.sync_regs_mut().regs = *regs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            return Ok(());
        }
        self.fd
            .set_regs(regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))
    }

    fn hyperv_exit(&mut self) -> Result<(), String> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason was KVM_EXIT_HYPERV, so `hyperv` is the active member.
        let hv = unsafe { &mut run.__bindgen_anon_1.hyperv };
        match hv.type_ {
            KVM_EXIT_HYPERV_SYNIC => {
                // SAFETY: type SYNIC selects the `synic` member.
                let s = unsafe { hv.u.synic };
                self.handlers.synic_exit.synic_exit(&SynicExit {
                    msr: s.msr,
                    control: s.control,
                    evt_page: s.evt_page,
                    msg_page: s.msg_page,
                });
                Ok(())
            }
            KVM_EXIT_HYPERV_HCALL => {
                // SAFETY: type HCALL selects the `hcall` member.
                let h = unsafe { &mut hv.u.hcall };
                h.result = self
                    .handlers
                    .hypercall
                    .hypercall(&Hypercall::from_kvm_exit(h.input, h.params));
                Ok(())
            }
            other => Err(format!("unsupported KVM_EXIT_HYPERV type {other}")),
        }
    }
}

/// The VMM's own partition registers, when they answer `index` (userspace mode, no model
/// attached).
fn vmm_owned(msrs: &PartitionMsrs, mode: SynicMode, index: u32) -> Option<&HvPartition> {
    let hv = msrs.vmm()?;
    (mode == SynicMode::Userspace && HvPartition::owns(index)).then_some(&**hv)
}

/// RDMSR: the VMM's partition registers when they own `index`, the vCPU's handler otherwise.
/// `None` = #GP.
fn rdmsr(
    msrs: &PartitionMsrs,
    handler: &mut dyn MsrHandler,
    mode: SynicMode,
    index: u32,
) -> Option<u64> {
    match vmm_owned(msrs, mode, index) {
        Some(hv) => hv.rdmsr(index).ok(),
        None => handler.rdmsr(index).ok(),
    }
}

/// WRMSR, dispatched like [`rdmsr`]. `false` = #GP.
fn wrmsr(
    msrs: &PartitionMsrs,
    handler: &mut dyn MsrHandler,
    mode: SynicMode,
    index: u32,
    value: u64,
) -> bool {
    match vmm_owned(msrs, mode, index) {
        Some(hv) => hv.wrmsr(index, value).is_ok(),
        None => handler.wrmsr(index, value).is_ok(),
    }
}
