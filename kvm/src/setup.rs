//! VM and vCPU setup for a [`SynicMode`].
//!
//! * [`setup_vm`]: MSR exits to userspace. In userspace mode every guest RDMSR/WRMSR of
//!   `0x4000_0000..=0x4000_01FF` exits (an MSR filter denies them in the kernel, reason
//!   FILTER): the SynIC block and, above it, the Hyper-V MSRs a KVM with Hyper-V support would
//!   otherwise answer itself (crash `0x4000_0100..=0x4000_0105`, reenlightenment and TSC
//!   emulation `0x4000_0106..=0x4000_0108`, TSC invariant control `0x4000_0118`), so that
//!   every Hyper-V MSR is the library's, answered or #GP. So does any MSR KVM does not know (UNKNOWN) or refuses (INVAL). Kernel mode
//!   forwards the MSRs KVM does not know and, through the filter, the synthetic-timer MSRs
//!   (`STIMER0_CONFIG..=STIMER3_COUNT`): the timers run in the library in both modes, so that
//!   KVM never writes a timer message into a slot the library writes host messages to (one
//!   writer per slot). It also takes guest *writes* of `HV_X64_MSR_EOM` (reads stay KVM's):
//!   the EOM is the ack that retries a queued message, handled on the vCPU's own thread as in
//!   userspace mode, instead of a resamplefd signal that wakes a separate ack thread (which
//!   made kernel mode's message round trip slower: docs/kernel-mode-lab.md). INVAL is not
//!   forwarded in kernel mode: that would let userspace accept a SynIC write the in-kernel
//!   SynIC refused.
//! * [`setup_vcpu`]: kernel mode activates KVM's SynIC on the vCPU (`KVM_CAP_HYPERV_SYNIC2`,
//!   which never zeroes the message and event pages, unlike version 1). Do it on every vCPU
//!   before the SynIC's routes are built ([`crate::VmSynicBuilder::build`]): KVM maps SINTs to
//!   GSIs for acks only for active SynICs, at a routing commit.

use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_HYPERV_ENFORCE_CPUID, KVM_CAP_HYPERV_SYNIC2,
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_INVAL,
    KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd};
use synic_msr::index::{EOM, HV_MSR_FIRST, HV_MSR_LAST, STIMER0_CONFIG, STIMER3_COUNT};

use crate::error::{kvm_err, Result};
use crate::probe::SynicMode;

/// Last MSR the userspace-mode filter sends to userspace: the SynIC block
/// (`HV_MSR_FIRST..=HV_MSR_LAST`) and the Hyper-V MSRs KVM implements above it (crash,
/// reenlightenment, TSC emulation, TSC invariant control: all below `0x4000_0200`).
pub const HV_FILTER_LAST: u32 = 0x4000_01FF;
/// Number of MSRs the userspace-mode filter sends to userspace (`0x4000_0000..=0x4000_01FF`).
pub const HV_FILTER_COUNT: u32 = HV_FILTER_LAST - HV_MSR_FIRST + 1;
/// Number of synthetic-timer MSRs the kernel-mode filter sends to userspace
/// (`STIMER0_CONFIG..=STIMER3_COUNT`).
pub const STIMER_FILTER_COUNT: u32 = STIMER3_COUNT - STIMER0_CONFIG + 1;

/// Enables MSR exits to userspace for `mode` on the VM (and in userspace mode the filter over
/// the Hyper-V range). Call once, before the vCPUs run.
pub fn setup_vm(vm: &VmFd, mode: SynicMode) -> Result<()> {
    let reasons = match mode {
        SynicMode::Userspace => {
            KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_FILTER
        }
        SynicMode::Kernel => KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER,
    };
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(reasons);
    vm.enable_cap(&cap)
        .map_err(kvm_err("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
    // A clear bit denies the access in the kernel, which with the FILTER reason enabled means:
    // exit to userspace.
    let deny_all = [0u8; (HV_FILTER_COUNT / 8) as usize];
    let deny = |flags, base, msr_count: u32| MsrFilterRange {
        flags,
        base,
        msr_count,
        bitmap: &deny_all[..msr_count.div_ceil(8) as usize],
    };
    let read_write = MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE;
    let ranges = match mode {
        SynicMode::Userspace => vec![deny(read_write, HV_MSR_FIRST, HV_FILTER_COUNT)],
        SynicMode::Kernel => vec![
            deny(read_write, STIMER0_CONFIG, STIMER_FILTER_COUNT),
            // Writes only: a read of EOM is KVM's (0).
            deny(MsrFilterRangeFlags::WRITE, EOM, 1),
        ],
    };
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))?;
    Ok(())
}

/// Prepares one vCPU for `mode`. Kernel mode activates KVM's SynIC on it
/// (`KVM_CAP_HYPERV_SYNIC2`) and makes KVM honour the Hyper-V CPUID leaves
/// (`KVM_CAP_HYPERV_ENFORCE_CPUID`): a Hyper-V MSR or hypercall the leaves do not advertise
/// gets #GP / HV_STATUS_ACCESS_DENIED, as on Hyper-V, instead of working because KVM happens to
/// implement it. Userspace mode needs nothing (the library answers only what it advertises).
/// Call after `KVM_SET_CPUID2` (KVM reads the Hyper-V leaves then) and before
/// [`crate::VmSynicBuilder::build`].
pub fn setup_vcpu(vcpu: &VcpuFd, mode: SynicMode) -> Result<()> {
    if mode == SynicMode::Kernel {
        let cap = kvm_enable_cap {
            cap: KVM_CAP_HYPERV_SYNIC2,
            ..Default::default()
        };
        vcpu.enable_cap(&cap)
            .map_err(kvm_err("KVM_ENABLE_CAP(HYPERV_SYNIC2)"))?;
        let mut enforce = kvm_enable_cap {
            cap: KVM_CAP_HYPERV_ENFORCE_CPUID,
            ..Default::default()
        };
        enforce.args[0] = 1;
        vcpu.enable_cap(&enforce)
            .map_err(kvm_err("KVM_ENABLE_CAP(HYPERV_ENFORCE_CPUID)"))?;
    }
    Ok(())
}

// The filter bitmaps are whole bytes, and the userspace-mode filter covers the SynIC block.
const _: () = assert!(HV_FILTER_COUNT.is_multiple_of(8) && HV_FILTER_LAST > HV_MSR_LAST);
const _: () = assert!(
    STIMER_FILTER_COUNT == 8,
    "four timers, CONFIG and COUNT each"
);
