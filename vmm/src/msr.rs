//! MSR exits: KVM setup (`KVM_CAP_X86_USER_SPACE_MSR`, the MSR filter) and the per-vCPU
//! [`MsrHandler`] the SynIC model implements.
//!
//! In userspace mode every guest RDMSR/WRMSR of `0x4000_0000..=0x4000_00FF` exits (the filter
//! denies them in the kernel, reason FILTER), and so does any MSR KVM does not know (UNKNOWN)
//! or refuses (INVAL). The vCPU loop answers partition-wide Hyper-V registers itself
//! (GUEST_OS_ID, HYPERCALL, TIME_REF_COUNT: see [`crate::hv`]) and hands every other index to
//! the vCPU's `MsrHandler` — or, once a SynIC model is attached
//! ([`crate::Vm::hand_partition_registers_to_handlers`]), every index. `Err` becomes `#GP(0)`
//! through the exit's error field.

use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_INVAL, KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
pub use synic::MsrError;
pub use synic_msr::{Gp, GpReason};

use crate::error::{kvm_err, Result};
use crate::probe::SynicMode;

/// First MSR the filter sends to userspace.
pub const HV_FILTER_FIRST: u32 = 0x4000_0000;
/// Number of MSRs the filter covers (`0x4000_0000..=0x4000_00FF`).
pub const HV_FILTER_COUNT: u32 = 0x100;

/// Answers the MSR accesses that reach userspace, for one vCPU, on that vCPU's thread.
///
/// The SynIC model implements this; any `Err` injects `#GP(0)` (the error says why, for the
/// host: a register rule ([`MsrError::Gp`]) or a refused consequence such as a page outside
/// RAM ([`MsrError::Refused`])).
pub trait MsrHandler: Send {
    /// Guest RDMSR of `msr`.
    fn rdmsr(&mut self, msr: u32) -> std::result::Result<u64, MsrError>;
    /// Guest WRMSR of `msr` with `value`.
    fn wrmsr(&mut self, msr: u32, value: u64) -> std::result::Result<(), MsrError>;
}

/// The handler of a VM without a SynIC model: `VP_INDEX` reads the vCPU index, everything
/// else is `#GP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpIndexOnly {
    /// This vCPU's VP index.
    pub vp_index: u32,
}

impl MsrHandler for VpIndexOnly {
    fn rdmsr(&mut self, msr: u32) -> std::result::Result<u64, MsrError> {
        match msr {
            synic_msr::index::VP_INDEX => Ok(u64::from(self.vp_index)),
            _ => Err(Gp::new(msr, GpReason::UnknownMsr).into()),
        }
    }

    fn wrmsr(&mut self, msr: u32, _value: u64) -> std::result::Result<(), MsrError> {
        match msr {
            synic_msr::index::VP_INDEX => Err(Gp::new(msr, GpReason::ReadOnly).into()),
            _ => Err(Gp::new(msr, GpReason::UnknownMsr).into()),
        }
    }
}

/// Enables MSR exits to userspace and, in userspace mode, the filter over the Hyper-V range.
///
/// Kernel mode only forwards MSRs KVM does not know (UNKNOWN): forwarding INVAL there would let
/// userspace accept a SynIC write the in-kernel SynIC refused.
pub fn enable_msr_exits(vm: &VmFd, mode: SynicMode) -> Result<()> {
    let reasons = match mode {
        SynicMode::Userspace => {
            KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_FILTER
        }
        SynicMode::Kernel => KVM_MSR_EXIT_REASON_UNKNOWN,
    };
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(reasons);
    vm.enable_cap(&cap)
        .map_err(kvm_err("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
    if mode == SynicMode::Userspace {
        // A clear bit denies the access in the kernel, which with the FILTER reason enabled
        // means: exit to userspace.
        let deny_all = [0u8; (HV_FILTER_COUNT / 8) as usize];
        let range = MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: HV_FILTER_FIRST,
            msr_count: HV_FILTER_COUNT,
            bitmap: &deny_all,
        };
        vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
            .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp_index_only_reads_vp_index_and_refuses_the_rest() {
        let mut h = VpIndexOnly { vp_index: 3 };
        assert_eq!(h.rdmsr(synic_msr::index::VP_INDEX), Ok(3));
        assert_eq!(
            h.wrmsr(synic_msr::index::VP_INDEX, 0).unwrap_err(),
            MsrError::Gp(Gp::new(synic_msr::index::VP_INDEX, GpReason::ReadOnly))
        );
        assert_eq!(
            h.rdmsr(synic_msr::index::SCONTROL).unwrap_err(),
            MsrError::Gp(Gp::new(synic_msr::index::SCONTROL, GpReason::UnknownMsr))
        );
    }
}
