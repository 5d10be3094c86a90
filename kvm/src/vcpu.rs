//! One vCPU's exits into the SynIC, at value level: the embedder's `KVM_RUN` loop calls these
//! from a few match arms and gets plain answers.
//!
//! ```no_run
//! # use kvm_ioctls::{VcpuExit, VcpuFd};
//! # fn run(vcpu: &mut VcpuFd, synic: &synic_kvm::VcpuSynic<std::sync::Arc<vm_memory::GuestMemoryMmap>>) -> synic_kvm::Result<()> {
//! loop {
//!     match vcpu.run() {
//!         Ok(VcpuExit::X86Rdmsr(exit)) => synic.handle_rdmsr(exit),
//!         Ok(VcpuExit::X86Wrmsr(exit)) => synic.handle_wrmsr(exit),
//!         Ok(VcpuExit::IoOut(port, _)) if synic.is_hypercall_trap(port) => {
//!             synic.hypercall_trap(vcpu)?;
//!         }
//!         Ok(VcpuExit::Hyperv) => {
//!             synic.hyperv_exit(vcpu)?;
//!         }
//!         // ... the VMM's own exits
//! #       _ => break,
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use kvm_bindings::{
    kvm_regs, kvm_sregs, KVM_EXIT_HYPERV, KVM_EXIT_HYPERV_HCALL, KVM_EXIT_HYPERV_SYNIC,
    KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS,
};
use kvm_ioctls::{ReadMsrExit, SyncReg, VcpuFd, WriteMsrExit};
use synic::hypercall::HypercallRegs;
use synic::{HvStatus, MsrError, SynicExit, VmmAction, VpIndex};
use synic_msr::index::{
    APIC_FREQUENCY, GUEST_OS_ID, HYPERCALL, TIME_REF_COUNT, TSC_FREQUENCY, VP_ASSIST_PAGE,
};
use synic_msr::{Gp, GpReason, Origin};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use crate::error::{kvm_err, Error, Result};
use crate::hypercall::{self, call_from_kvm_exit, call_from_regs, hypercall_page, write_result};
use crate::kernel_state;
use crate::probe::SynicMode;
use crate::vm::{Stats, VmSynic};

/// What [`VcpuSynic::hypercall_trap`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// The call was handled and its result written (RAX, or EDX:EAX in 32-bit code).
    Handled {
        /// The call, as read from the registers.
        call: HypercallRegs,
        /// The result value.
        result: u64,
    },
    /// The `out` came from CPL > 0: not a hypercall (only ring 0 may call the hypervisor).
    /// Treat it as a plain port write the VMM may ignore.
    Unprivileged,
}

/// What [`VcpuSynic::hyperv_exit`] handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypervExit {
    /// `KVM_EXIT_HYPERV_SYNIC`: the guest wrote SCONTROL, SIEFP or SIMP (already applied by
    /// KVM); the model followed.
    Synic(SynicExit),
    /// `KVM_EXIT_HYPERV_HCALL`: a hypercall KVM left to userspace; `result` is written back
    /// for KVM to complete it at the next `KVM_RUN`.
    Hypercall {
        /// The call.
        call: HypercallRegs,
        /// The result written.
        result: u64,
    },
}

/// The SynIC handlers of one vCPU: Hyper-V MSRs (userspace mode), hypercalls (the trap port in
/// userspace mode, `KVM_EXIT_HYPERV_HCALL` in kernel mode), `KVM_EXIT_HYPERV_SYNIC` (kernel
/// mode), and the capture of KVM's registers for a save. Use it on that vCPU's thread (it is
/// `Send`; clones share the same VP).
pub struct VcpuSynic<M: GuestAddressSpace> {
    synic: Arc<VmSynic<M>>,
    vcpu: u32,
}

impl<M: GuestAddressSpace> Clone for VcpuSynic<M> {
    fn clone(&self) -> Self {
        Self {
            synic: Arc::clone(&self.synic),
            vcpu: self.vcpu,
        }
    }
}

impl<M: GuestAddressSpace> std::fmt::Debug for VcpuSynic<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuSynic")
            .field("vcpu", &self.vcpu)
            .finish_non_exhaustive()
    }
}

fn refused(index: u32, error: synic::Error) -> MsrError {
    MsrError::Refused { index, error }
}

impl<M> VcpuSynic<M>
where
    M: GuestAddressSpace + Send + Sync + 'static,
{
    pub(crate) fn new(synic: Arc<VmSynic<M>>, vcpu: u32) -> Self {
        Self { synic, vcpu }
    }

    /// The vCPU this handles.
    pub fn index(&self) -> u32 {
        self.vcpu
    }

    /// The VM's SynIC.
    pub fn synic(&self) -> &Arc<VmSynic<M>> {
        &self.synic
    }

    fn gone(&self, index: u32) -> MsrError {
        refused(
            index,
            synic::Error::InvalidVpIndex {
                vp: VpIndex(self.vcpu),
            },
        )
    }

    /// A guest RDMSR that exited (userspace mode: every Hyper-V MSR). `Err` means: inject
    /// #GP(0); the error says why, for the host.
    pub fn rdmsr(&self, msr: u32) -> std::result::Result<u64, MsrError> {
        let synic = &*self.synic;
        if msr == TIME_REF_COUNT {
            Stats::bump(&synic.stats.time_ref_count_reads);
        }
        let state = synic.lock_vcpu(self.vcpu).ok_or(self.gone(msr))?;
        let r = match (msr, synic.frequencies()) {
            (TSC_FREQUENCY, Some((tsc, _))) => Ok(tsc),
            (APIC_FREQUENCY, Some((_, apic))) => Ok(apic),
            (VP_ASSIST_PAGE, _) if synic.mode() == SynicMode::Userspace => Ok(state.vp_assist),
            _ => state.vp.rdmsr(msr, Origin::Guest),
        };
        if r.is_err() {
            Stats::bump(&synic.stats.msr_refused);
        }
        r
    }

    /// A guest WRMSR that exited. `Err` means: inject #GP(0).
    ///
    /// Enabling the hypercall page writes the trap code into it; a page that is not RAM undoes
    /// the write (host write, which bypasses Locked) and answers #GP, as KVM does.
    pub fn wrmsr(&self, msr: u32, value: u64) -> std::result::Result<(), MsrError> {
        let synic = &*self.synic;
        let mut state = synic.lock_vcpu(self.vcpu).ok_or(self.gone(msr))?;
        let result = match msr {
            TSC_FREQUENCY | APIC_FREQUENCY if synic.frequencies().is_some() => {
                Err(Gp::new(msr, GpReason::ReadOnly).into())
            }
            // Bits 11:1 are reserved (KVM: #GP when set). The page is only stored: nothing
            // that reads it (enlightened VMCS, PV EOI) is offered.
            VP_ASSIST_PAGE if synic.mode() == SynicMode::Userspace => {
                if value & 0xFFE != 0 {
                    Err(Gp::new(
                        msr,
                        GpReason::ReservedBits {
                            bits: value & 0xFFE,
                        },
                    )
                    .into())
                } else {
                    state.vp_assist = value;
                    Ok(())
                }
            }
            _ => self.model_wrmsr(&mut state.vp, msr, value),
        };
        drop(state);
        if matches!(msr, GUEST_OS_ID | HYPERCALL) {
            synic.refresh_hypercall_page();
        }
        if result.is_err() {
            Stats::bump(&synic.stats.msr_refused);
        }
        result
    }

    fn model_wrmsr(
        &self,
        vp: &mut synic::Vp<M>,
        msr: u32,
        value: u64,
    ) -> std::result::Result<(), MsrError> {
        let synic = &*self.synic;
        let before = if msr == HYPERCALL {
            vp.rdmsr(HYPERCALL, Origin::Host).ok()
        } else {
            None
        };
        let write = vp.wrmsr(msr, value, Origin::Guest)?;
        match write.action {
            None => Ok(()),
            Some(VmmAction::FillHypercallPage { gpa }) => {
                let page = hypercall_page(synic.trap_port());
                if synic
                    .memory()
                    .memory()
                    .write_slice(&page, GuestAddress(gpa))
                    .is_ok()
                {
                    Stats::bump(&synic.stats.hypercall_pages_filled);
                    Ok(())
                } else {
                    if let Some(old) = before {
                        let _ = vp.wrmsr(HYPERCALL, old, Origin::Host);
                    }
                    Err(refused(HYPERCALL, synic::Error::PageNotInRam { gpa }))
                }
            }
            Some(VmmAction::StimerChanged(timer)) => {
                Stats::bump(&synic.stats.stimer_changes);
                synic.stimer_hook().stimer_changed(vp.index(), timer);
                Ok(())
            }
        }
    }

    /// [`rdmsr`](Self::rdmsr) on kvm-ioctls' exit: fills `data`, or sets `error` (#GP).
    pub fn handle_rdmsr(&self, exit: ReadMsrExit<'_>) {
        match self.rdmsr(exit.index) {
            Ok(v) => *exit.data = v,
            Err(_) => *exit.error = 1,
        }
    }

    /// [`wrmsr`](Self::wrmsr) on kvm-ioctls' exit: sets `error` (#GP) on a refusal.
    pub fn handle_wrmsr(&self, exit: WriteMsrExit<'_>) {
        if self.wrmsr(exit.index, exit.data).is_err() {
            *exit.error = 1;
        }
    }

    /// Whether an `out` to `port` is a hypercall: userspace mode, the trap port, and the guest
    /// has the hypercall page enabled. Lock-free; call it on every port-write exit.
    pub fn is_hypercall_trap(&self, port: u16) -> bool {
        self.synic.mode() == SynicMode::Userspace
            && port == u16::from(self.synic.trap_port())
            && self.synic.hypercall_page().is_some()
    }

    /// One hypercall, at value level: HvPostMessage / HvSignalEvent through the VM's
    /// connections (the input copied out of guest memory once, then validated). Returns the
    /// result value for RAX.
    pub fn hypercall(&self, call: &HypercallRegs) -> u64 {
        let synic = &*self.synic;
        Stats::bump(&synic.stats.hypercalls);
        // The VP lock is not held while the connection runs: a host connection may take it.
        let Some(caller) = synic.vp_index(self.vcpu) else {
            return HvStatus::InvalidVpIndex.rax();
        };
        synic::hypercall::handle(&*synic.memory().memory(), call, caller, synic.connections())
    }

    /// The hypercall trap at register level: `regs`/`sregs` as the `out` left them. Only CPL 0
    /// may call ([`Trap::Unprivileged`] otherwise, `regs` untouched); the 64- or 32-bit ABI
    /// follows the mode the vCPU runs in; the result goes into `regs`. RIP needs no change:
    /// KVM skips the `out` when the vCPU resumes.
    pub fn trap_registers(&self, regs: &mut kvm_regs, sregs: &kvm_sregs) -> Trap {
        if hypercall::cpl(sregs) != 0 {
            Stats::bump(&self.synic.stats.unprivileged_traps);
            return Trap::Unprivileged;
        }
        let long_mode = hypercall::long_mode(sregs);
        let call = call_from_regs(regs, long_mode);
        let result = self.hypercall(&call);
        write_result(regs, long_mode, result);
        Trap::Handled { call, result }
    }

    /// The hypercall trap on a vCPU that exited for an `out` to the trap port
    /// ([`is_hypercall_trap`](Self::is_hypercall_trap)): reads the registers (from `kvm_run`
    /// when the VMM enabled `KVM_CAP_SYNC_REGS` for general and system registers, else with
    /// `KVM_GET_REGS`/`KVM_GET_SREGS`), then [`trap_registers`](Self::trap_registers), then
    /// writes them back.
    pub fn hypercall_trap(&self, vcpu: &mut VcpuFd) -> Result<Trap> {
        let want = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
        let synced = vcpu.get_kvm_run().kvm_valid_regs & u64::from(want) == u64::from(want);
        let (mut regs, sregs) = if synced {
            let s = vcpu.sync_regs();
            (s.regs, s.sregs)
        } else {
            (
                vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
                vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            )
        };
        let trap = self.trap_registers(&mut regs, &sregs);
        if matches!(trap, Trap::Handled { .. }) {
            if synced {
                vcpu.sync_regs_mut().regs = regs;
                vcpu.set_sync_dirty_reg(SyncReg::Register);
            } else {
                vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
            }
        }
        Ok(trap)
    }

    /// `KVM_EXIT_HYPERV_SYNIC` at value level (kernel mode): the model follows SCONTROL,
    /// SIEFP and SIMP as KVM applied them, and retries queued messages.
    pub fn synic_exit(&self, exit: SynicExit) {
        let applied = self
            .synic
            .with_vp(self.vcpu, |vp| vp.apply_synic_exit(exit).is_ok());
        if applied != Some(true) {
            Stats::bump(&self.synic.stats.synic_exit_errors);
        }
    }

    /// `KVM_EXIT_HYPERV_HCALL` at value level (kernel mode): `input` and `params` as KVM gave
    /// them. Returns the result for `hcall.result`.
    pub fn hcall_exit(&self, input: u64, params: [u64; 2]) -> u64 {
        self.hypercall(&call_from_kvm_exit(input, params))
    }

    /// A `KVM_EXIT_HYPERV` exit (kvm-ioctls' `VcpuExit::Hyperv`): reads it from `kvm_run`,
    /// hands it to [`synic_exit`](Self::synic_exit) or [`hcall_exit`](Self::hcall_exit) and,
    /// for a hypercall, writes the result where KVM reads it when the vCPU runs again.
    pub fn hyperv_exit(&self, vcpu: &mut VcpuFd) -> Result<HypervExit> {
        let run = vcpu.get_kvm_run();
        if run.exit_reason != KVM_EXIT_HYPERV {
            return Err(Error::WrongExit {
                expected: "KVM_EXIT_HYPERV",
                reason: run.exit_reason,
            });
        }
        // SAFETY: the exit reason is KVM_EXIT_HYPERV, so `hyperv` is the union's active member.
        let hv = unsafe { &mut run.__bindgen_anon_1.hyperv };
        match hv.type_ {
            KVM_EXIT_HYPERV_SYNIC => {
                // SAFETY: type SYNIC selects the `synic` member.
                let s = unsafe { hv.u.synic };
                let exit = SynicExit {
                    msr: s.msr,
                    control: s.control,
                    evt_page: s.evt_page,
                    msg_page: s.msg_page,
                };
                self.synic_exit(exit);
                Ok(HypervExit::Synic(exit))
            }
            KVM_EXIT_HYPERV_HCALL => {
                // SAFETY: type HCALL selects the `hcall` member.
                let h = unsafe { &mut hv.u.hcall };
                let call = call_from_kvm_exit(h.input, h.params);
                let result = self.hypercall(&call);
                h.result = result;
                Ok(HypervExit::Hypercall { call, result })
            }
            other => Err(Error::UnsupportedHypervExit(other)),
        }
    }

    /// Kernel mode: reads KVM's Hyper-V registers of this vCPU ([`crate::KERNEL_MSRS`], with
    /// host-initiated `KVM_GET_MSRS`) for the next [`VmSynic::save`]. Call it on a paused
    /// vCPU — out of `KVM_RUN`, after [`VmSynic::pause`] — typically on the vCPU's own thread
    /// where it parks. Userspace mode: nothing to read (the model owns every register).
    pub fn capture(&self, vcpu: &VcpuFd) -> Result<()> {
        if self.synic.mode() == SynicMode::Userspace {
            return Ok(());
        }
        let regs = kernel_state::read_vcpu(vcpu, self.vcpu)?;
        if let Some(mut s) = self.synic.lock_vcpu(self.vcpu) {
            s.captured = Some(regs);
        }
        Ok(())
    }
}
