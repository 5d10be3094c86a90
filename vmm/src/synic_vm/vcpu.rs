//! One vCPU's exits into the model: MSRs (userspace mode), hypercalls, SynIC exits (kernel
//! mode).

use std::sync::Arc;

use synic::hypercall::HypercallRegs;
use synic::{MsrError, VmmAction};
use synic_msr::index::{GUEST_OS_ID, HYPERCALL};
use synic_msr::Origin;
use vm_memory::{Bytes, GuestAddress};

use kvm_ioctls::VcpuFd;

use super::host::{AttachedSynic, Stats};
use super::kernel_state;
use crate::hypercall::{hypercall_page, Hypercall, HypercallHandler};
use crate::msr::MsrHandler;
use crate::probe::SynicMode;
use crate::vcpu::{SynicExit, SynicExitHandler};

/// The exit handlers of one vCPU with the model attached: [`MsrHandler`] (every Hyper-V MSR
/// to the vCPU's [`super::SynicVp`], partition-wide registers included),
/// [`HypercallHandler`] (HvPostMessage/HvSignalEvent through
/// [`synic::hypercall::handle`] and the VM's connections) and [`SynicExitHandler`]
/// (`KVM_EXIT_HYPERV_SYNIC` to [`synic::Vp::apply_synic_exit`]).
#[derive(Clone, Debug)]
pub struct SynicVcpu {
    synic: Arc<AttachedSynic>,
    vcpu: u32,
}

impl SynicVcpu {
    /// The handlers of vCPU `vcpu`.
    pub fn new(synic: Arc<AttachedSynic>, vcpu: u32) -> Self {
        Self { synic, vcpu }
    }

    fn missing(&self, index: u32) -> MsrError {
        MsrError::Refused {
            index,
            error: synic::Error::InvalidVpIndex {
                vp: synic::VpIndex(self.vcpu),
            },
        }
    }

    /// Writes the hypercall page the model asked for; `false` if `gpa` is not RAM.
    fn fill_hypercall_page(&self, gpa: u64) -> bool {
        self.synic
            .memory()
            .write_slice(&hypercall_page(), GuestAddress(gpa))
            .is_ok()
    }
}

impl MsrHandler for SynicVcpu {
    fn rdmsr(&mut self, msr: u32) -> Result<u64, MsrError> {
        let vp = self.synic.lock_vp(self.vcpu).ok_or(self.missing(msr))?;
        let r = vp.rdmsr(msr, Origin::Guest);
        if r.is_err() {
            Stats::bump(&self.synic.stats.msr_refused);
        }
        r
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), MsrError> {
        let synic = &*self.synic;
        let mut vp = synic.lock_vp(self.vcpu).ok_or(self.missing(msr))?;
        // The model accepts an enable before the VMM knows whether the page is RAM; on a bad
        // page the write is undone (host write, which bypasses Locked) and the guest gets #GP,
        // as KVM does.
        let before = if msr == HYPERCALL {
            vp.rdmsr(HYPERCALL, Origin::Host).ok()
        } else {
            None
        };
        let result = match vp.wrmsr(msr, value, Origin::Guest) {
            Err(e) => Err(e),
            Ok(w) => match w.action {
                None => Ok(()),
                Some(VmmAction::FillHypercallPage { gpa }) => {
                    if self.fill_hypercall_page(gpa) {
                        Stats::bump(&synic.stats.hypercall_pages_filled);
                        Ok(())
                    } else {
                        if let Some(old) = before {
                            let _ = vp.wrmsr(HYPERCALL, old, Origin::Host);
                        }
                        Err(MsrError::Refused {
                            index: HYPERCALL,
                            error: synic::Error::PageNotInRam { gpa },
                        })
                    }
                }
                Some(VmmAction::StimerChanged(timer)) => {
                    Stats::bump(&synic.stats.stimer_changes);
                    synic.stimer_hook().stimer_changed(&mut vp, timer);
                    Ok(())
                }
            },
        };
        drop(vp);
        if matches!(msr, GUEST_OS_ID | HYPERCALL) {
            synic.refresh_hypercall_page();
        }
        if result.is_err() {
            Stats::bump(&synic.stats.msr_refused);
        }
        result
    }
}

impl HypercallHandler for SynicVcpu {
    fn hypercall(&mut self, call: &Hypercall) -> u64 {
        Stats::bump(&self.synic.stats.hypercalls);
        // The VP lock is not held while the connection runs: a host connection may take it.
        let Some(caller) = self.synic.vp_index(self.vcpu) else {
            return synic::HvStatus::InvalidVpIndex.rax();
        };
        let regs = HypercallRegs {
            control: call.input.0,
            input: call.param0,
            output: call.param1,
        };
        synic::hypercall::handle(
            &**self.synic.memory(),
            &regs,
            caller,
            self.synic.connections(),
        )
    }
}

impl SynicExitHandler for SynicVcpu {
    fn synic_exit(&mut self, exit: &SynicExit) {
        let applied = self
            .synic
            .with_vp(self.vcpu, |vp| vp.apply_synic_exit(*exit).is_ok());
        if applied != Some(true) {
            Stats::bump(&self.synic.stats.synic_exit_errors);
        }
    }

    fn vcpu_stopped(&mut self, vcpu: &VcpuFd) {
        if self.synic.mode() == SynicMode::Kernel {
            self.synic
                .kernel_registers_read(self.vcpu, kernel_state::read_vcpu(vcpu));
        }
    }
}
