//! Kernel mode's share of the SynIC state: the Hyper-V registers KVM's in-kernel SynIC keeps
//! as vCPU state, and the kvmclock its reference time and timers count from.
//!
//! In kernel mode the guest's SCONTROL, SIEFP, SIMP, SINTs, synthetic timers, GUEST_OS_ID and
//! HYPERCALL live in KVM, not in the model. They are read with `KVM_GET_MSRS` on each vCPU's
//! own thread when it leaves `KVM_RUN` for good ([`crate::SynicExitHandler::vcpu_stopped`]),
//! and written back with `KVM_SET_MSRS` (host-initiated accesses, which KVM lets set what a
//! guest may not, e.g. VP_INDEX) before the restored VM starts. The kvmclock is read with
//! `KVM_GET_CLOCK` after the vCPUs stopped and set with `KVM_SET_CLOCK`, so TIME_REF_COUNT and
//! absolute one-shot timer expiries continue where they were.

use kvm_bindings::{kvm_clock_data, kvm_msr_entry, Msrs};
use kvm_ioctls::{VcpuFd, VmFd};
use synic_msr::index;

use crate::error::{Error, Result};

/// HV_X64_MSR_REFERENCE_TSC (the reference TSC page).
pub const REFERENCE_TSC: u32 = 0x4000_0021;
/// HV_X64_MSR_VP_ASSIST_PAGE.
pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;

/// The registers saved per vCPU, in the order they are restored: GUEST_OS_ID before HYPERCALL
/// (KVM ignores a HYPERCALL write while the guest OS id is 0), each timer's CONFIG before its
/// COUNT (one `KVM_SET_MSRS`: the timer starts when the vCPU next runs, with both in place).
/// SVERSION and TIME_REF_COUNT are read-only, EOM is write-only: none of them is state.
pub const KERNEL_MSRS: [u32; 32] = {
    let mut list = [0u32; 32];
    let head = [
        index::GUEST_OS_ID,
        index::HYPERCALL,
        index::VP_INDEX,
        REFERENCE_TSC,
        VP_ASSIST_PAGE,
        index::SCONTROL,
        index::SIEFP,
        index::SIMP,
    ];
    let mut i = 0;
    while i < head.len() {
        list[i] = head[i];
        i += 1;
    }
    let mut n = 0;
    while n < 16 {
        list[head.len() + n] = index::SINT0 + n as u32;
        n += 1;
    }
    let mut t = 0;
    while t < 4 {
        list[head.len() + 16 + 2 * t] = index::STIMER0_CONFIG + 2 * t as u32;
        list[head.len() + 16 + 2 * t + 1] = index::STIMER0_COUNT + 2 * t as u32;
        t += 1;
    }
    list
};

// Every saved register is a Hyper-V MSR, listed once.
const _: () = {
    let mut i = 0;
    while i < KERNEL_MSRS.len() {
        assert!(KERNEL_MSRS[i] >= index::HV_MSR_FIRST && KERNEL_MSRS[i] <= index::HV_MSR_LAST);
        let mut j = i + 1;
        while j < KERNEL_MSRS.len() {
            assert!(KERNEL_MSRS[i] != KERNEL_MSRS[j]);
            j += 1;
        }
        i += 1;
    }
};

/// KVM's part of a kernel-mode VM's SynIC state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSynicState {
    /// The kvmclock (ns) when the vCPUs had stopped: TIME_REF_COUNT is this / 100.
    pub clock_ns: u64,
    /// Per vCPU, `(msr, value)` for every register of [`KERNEL_MSRS`], in that order.
    pub vcpus: Vec<Vec<(u32, u64)>>,
}

fn entries(regs: impl IntoIterator<Item = (u32, u64)>) -> Result<Msrs> {
    let entries: Vec<kvm_msr_entry> = regs
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|e| Error::Config(format!("MSR list: {e:?}")))
}

/// Reads [`KERNEL_MSRS`] from a vCPU (host-initiated `KVM_GET_MSRS`).
pub(crate) fn read_vcpu(fd: &VcpuFd) -> Result<Vec<(u32, u64)>> {
    let mut msrs = entries(KERNEL_MSRS.iter().map(|&i| (i, 0)))?;
    let read = fd.get_msrs(&mut msrs).map_err(|source| Error::Kvm {
        op: "KVM_GET_MSRS (Hyper-V registers)",
        source,
    })?;
    if read < KERNEL_MSRS.len() {
        return Err(Error::Config(format!(
            "KVM_GET_MSRS read {read} of {} Hyper-V registers: KVM refused MSR {:#x}",
            KERNEL_MSRS.len(),
            KERNEL_MSRS[read]
        )));
    }
    Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect())
}

/// Writes saved registers into a vCPU (host-initiated `KVM_SET_MSRS`), in the saved order.
/// Only registers of [`KERNEL_MSRS`] are accepted.
pub(crate) fn write_vcpu(fd: &VcpuFd, vcpu: u32, regs: &[(u32, u64)]) -> Result<()> {
    if let Some((msr, _)) = regs.iter().find(|(m, _)| !KERNEL_MSRS.contains(m)) {
        return Err(Error::Config(format!(
            "saved kernel-mode state of vCPU {vcpu} holds MSR {msr:#x}, which is not a saved \
             Hyper-V register"
        )));
    }
    let msrs = entries(regs.iter().copied())?;
    let written = fd.set_msrs(&msrs).map_err(|source| Error::Kvm {
        op: "KVM_SET_MSRS (Hyper-V registers)",
        source,
    })?;
    if written < regs.len() {
        let (msr, value) = regs[written];
        return Err(Error::Config(format!(
            "KVM refused the saved value {value:#x} of MSR {msr:#x} on vCPU {vcpu}"
        )));
    }
    Ok(())
}

/// The kvmclock now (`KVM_GET_CLOCK`).
pub(crate) fn read_clock(vm: &VmFd) -> Result<u64> {
    vm.get_clock()
        .map(|c| c.clock)
        .map_err(|source| Error::Kvm {
            op: "KVM_GET_CLOCK",
            source,
        })
}

/// Sets the kvmclock (`KVM_SET_CLOCK`).
pub(crate) fn write_clock(vm: &VmFd, clock_ns: u64) -> Result<()> {
    let data = kvm_clock_data {
        clock: clock_ns,
        ..Default::default()
    };
    vm.set_clock(&data).map_err(|source| Error::Kvm {
        op: "KVM_SET_CLOCK",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_registers_cover_the_synic_and_timers_in_restore_order() {
        let pos = |m: u32| KERNEL_MSRS.iter().position(|&x| x == m).unwrap();
        assert!(pos(index::GUEST_OS_ID) < pos(index::HYPERCALL));
        for n in 0..16 {
            pos(index::SINT0 + n);
        }
        for t in 0..4 {
            assert_eq!(
                pos(index::STIMER0_CONFIG + 2 * t) + 1,
                pos(index::STIMER0_COUNT + 2 * t)
            );
        }
        for m in [index::SVERSION, index::EOM, index::TIME_REF_COUNT] {
            assert!(!KERNEL_MSRS.contains(&m), "{m:#x} is not state");
        }
    }
}
