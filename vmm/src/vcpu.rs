//! One vCPU's thread: `KVM_RUN`, then each exit to the device bus or to the vCPU's SynIC
//! (synic-kvm's [`VcpuSynic`], called exactly as any embedder calls it), until the VM stops;
//! parking while the VM is paused.

use std::sync::Arc;

use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use synic_kvm::{HypervExit, Trap, VcpuSynic};

use crate::control::{StopReason, SynicFailure, VmControl};
use crate::io::IoBus;
use crate::kick;
use crate::msr::{MsrHandler, VpIndexOnly};
use crate::snapshot::VcpuSnapshot;
use crate::synic_vm::SynicMemory;

/// Sees what the SynIC did with a vCPU's hypercalls and `KVM_EXIT_HYPERV` exits, after it did
/// it (tests, logging). Called on the vCPU's thread.
pub trait ExitObserver: Send {
    /// A hypercall trap was handled (userspace mode).
    fn trap(&mut self, trap: &Trap) {
        let _ = trap;
    }
    /// A `KVM_EXIT_HYPERV` was handled (kernel mode).
    fn hyperv(&mut self, exit: &HypervExit) {
        let _ = exit;
    }
}

/// What one vCPU's exits go to. Each vCPU gets its own, used only on its thread.
pub struct VcpuHandlers {
    /// The vCPU's SynIC (`None`: a VM without one, a plain PC): Hyper-V MSR exits, the
    /// hypercall trap, `KVM_EXIT_HYPERV`, and the capture of KVM's registers at a pause.
    pub synic: Option<VcpuSynic<SynicMemory>>,
    /// MSR exits of a vCPU without a SynIC (and MSRs KVM does not know, either way: they reach
    /// the SynIC first, which refuses what is not Hyper-V).
    pub msr: Box<dyn MsrHandler>,
    /// Sees the SynIC's hypercall and Hyper-V exits.
    pub observer: Option<Box<dyn ExitObserver>>,
}

impl std::fmt::Debug for VcpuHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuHandlers")
            .field("synic", &self.synic)
            .finish_non_exhaustive()
    }
}

impl VcpuHandlers {
    /// No SynIC: VP_INDEX reads the vCPU index, every other MSR exit is #GP, no hypercalls.
    pub fn without_synic(vp_index: u32) -> Self {
        Self {
            synic: None,
            msr: Box::new(VpIndexOnly { vp_index }),
            observer: None,
        }
    }

    /// vCPU `synic.index()`'s SynIC.
    pub fn with_synic(synic: VcpuSynic<SynicMemory>) -> Self {
        Self {
            msr: Box::new(VpIndexOnly {
                vp_index: synic.index(),
            }),
            synic: Some(synic),
            observer: None,
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
    /// Hypercalls handled (trap port and `KVM_EXIT_HYPERV_HCALL`).
    pub hypercalls: u64,
    /// `KVM_EXIT_HYPERV` exits.
    pub hyperv: u64,
    /// `KVM_RUN` returns caused by a signal (kicks).
    pub interrupted: u64,
    /// `EAGAIN` from an AP leaving wait-for-SIPI.
    pub sipi_retries: u64,
    /// Times the vCPU parked for a pause.
    pub pauses: u64,
}

pub(crate) struct VcpuRunner {
    pub index: u32,
    pub fd: VcpuFd,
    pub handlers: VcpuHandlers,
    pub bus: Arc<IoBus>,
    pub control: Arc<VmControl>,
    /// Registers arrive in `kvm_run` at every exit (`KVM_CAP_SYNC_REGS`).
    pub sync_regs: bool,
}

enum Next {
    Continue,
    Interrupted,
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
                Next::Interrupted => {
                    self.fd.set_kvm_immediate_exit(0);
                    self.park_if_paused(&mut stats)
                }
                Next::HypercallTrap => self.hypercall_trap(&mut stats),
                Next::HypervExit => self.hyperv_exit(&mut stats),
                Next::InternalError => {
                    let suberror = self.fd.get_kvm_run();
                    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the union.
                    let suberror = unsafe { suberror.__bindgen_anon_1.internal.suberror };
                    Err(StopReason::Error {
                        vcpu: self.index,
                        message: format!("KVM_EXIT_INTERNAL_ERROR, suberror {suberror}"),
                    })
                }
                Next::Stop(reason) => Err(reason),
            };
            if let Err(reason) = outcome {
                self.control.request_stop(reason);
                break;
            }
        }
        kick::unregister();
        // Out of KVM_RUN for good: capture KVM's SynIC registers so the stopped VM can be
        // saved (the VMM pauses the SynIC when every vCPU stopped).
        self.capture();
        stats
    }

    fn capture(&mut self) {
        if let Some(synic) = &self.handlers.synic {
            if let Err(e) = synic.capture(&self.fd) {
                // The save reports the vCPU as not captured; say why here.
                eprintln!("synic-vmm: vCPU {}: {e}", self.index);
            }
        }
    }

    /// A pause was requested: capture, tell the pauser, wait for the resume.
    fn park_if_paused(&mut self, stats: &mut VcpuStats) -> Result<(), StopReason> {
        if !self.control.pause_requested() {
            return Ok(());
        }
        stats.pauses += 1;
        self.capture();
        let snapshot = VcpuSnapshot::capture(&self.fd).map_err(std::sync::Arc::new);
        self.control.park(self.index, snapshot);
        Ok(())
    }

    fn step(&mut self, stats: &mut VcpuStats) -> Next {
        let vcpu = self.index;
        let exit = self.fd.run();
        if exit.is_ok() {
            self.control.count_exit(vcpu);
        }
        match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                if self
                    .handlers
                    .synic
                    .as_ref()
                    .is_some_and(|s| s.is_hypercall_trap(port))
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
                let value = match &self.handlers.synic {
                    Some(s) => s.rdmsr(exit.index).ok(),
                    None => self.handlers.msr.rdmsr(exit.index).ok(),
                };
                match value {
                    Some(v) => *exit.data = v,
                    None => {
                        stats.msr_gp += 1;
                        *exit.error = 1;
                    }
                }
                Next::Continue
            }
            Ok(VcpuExit::X86Wrmsr(exit)) => {
                stats.msr += 1;
                let ok = match &self.handlers.synic {
                    Some(s) => s.wrmsr(exit.index, exit.data).is_ok(),
                    None => self.handlers.msr.wrmsr(exit.index, exit.data).is_ok(),
                };
                if !ok {
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
                Next::Interrupted
            }
            // An AP left wait-for-SIPI: run it again.
            Err(e) if e.errno() == libc::EAGAIN => {
                stats.sipi_retries += 1;
                Next::Continue
            }
            Err(source) => Next::Stop(StopReason::Kvm {
                vcpu,
                op: "KVM_RUN",
                source,
            }),
        }
    }

    fn synic_failed(&self) -> impl FnOnce(synic_kvm::Error) -> StopReason {
        let vcpu = self.index;
        move |e| StopReason::Synic {
            vcpu,
            error: SynicFailure(std::sync::Arc::new(e)),
        }
    }

    fn hypercall_trap(&mut self, stats: &mut VcpuStats) -> Result<(), StopReason> {
        let failed = self.synic_failed();
        let Some(synic) = &self.handlers.synic else {
            return Ok(());
        };
        let trap = synic.hypercall_trap(&mut self.fd).map_err(failed)?;
        match trap {
            Trap::Handled { .. } => stats.hypercalls += 1,
            // Only ring 0 may call the hypervisor: anything else is a plain write to a port
            // nobody claims.
            Trap::Unprivileged => stats.io += 1,
        }
        if let Some(o) = &mut self.handlers.observer {
            o.trap(&trap);
        }
        Ok(())
    }

    fn hyperv_exit(&mut self, stats: &mut VcpuStats) -> Result<(), StopReason> {
        let failed = self.synic_failed();
        let Some(synic) = &self.handlers.synic else {
            return Err(StopReason::Error {
                vcpu: self.index,
                message: "KVM_EXIT_HYPERV on a vCPU without a SynIC".into(),
            });
        };
        let exit = synic.hyperv_exit(&mut self.fd).map_err(failed)?;
        if matches!(exit, HypervExit::Hypercall { .. }) {
            stats.hypercalls += 1;
        }
        if let Some(o) = &mut self.handlers.observer {
            o.hyperv(&exit);
        }
        Ok(())
    }
}
