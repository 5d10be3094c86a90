//! Kernel mode's share of the SynIC state: the Hyper-V registers KVM's in-kernel SynIC keeps
//! as vCPU state, and the kvmclock its reference time and timers count from.
//!
//! In kernel mode the guest's SCONTROL, SIEFP, SIMP, SINTs, synthetic timers, GUEST_OS_ID and
//! HYPERCALL live in KVM, not in the model. They are read with `KVM_GET_MSRS` while the vCPU is
//! out of `KVM_RUN` ([`crate::VcpuSynic::capture`], on a paused vCPU), and written back with
//! `KVM_SET_MSRS` (host-initiated accesses, which KVM lets set what a guest may not, e.g.
//! VP_INDEX) before the restored VM runs. The kvmclock is read with `KVM_GET_CLOCK` at the save
//! and set with `KVM_SET_CLOCK`, so TIME_REF_COUNT and absolute one-shot timer expiries continue
//! where they were.

use kvm_bindings::{kvm_clock_data, kvm_msr_entry, Msrs, KVM_MAX_MSR_ENTRIES};
use kvm_ioctls::{VcpuFd, VmFd};
use synic_msr::index::{self, REFERENCE_TSC, VP_ASSIST_PAGE};

use crate::error::{kvm_err, Error, Result};

/// The registers saved per vCPU, in the order they are restored: GUEST_OS_ID before HYPERCALL
/// (KVM ignores a HYPERCALL write while the guest OS id is 0). SVERSION and TIME_REF_COUNT are
/// read-only, EOM is write-only: none of them is state. The synthetic timers are not here:
/// they are the library's in kernel mode too, saved with the model.
pub const KERNEL_MSRS: [u32; 24] = {
    let mut list = [0u32; 24];
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
    /// The kvmclock (ns) at the save, vCPUs paused: TIME_REF_COUNT is this / 100.
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
    Msrs::from_entries(&entries).map_err(|_| Error::TooManyEntries {
        what: "MSR list",
        limit: KVM_MAX_MSR_ENTRIES,
    })
}

/// Reads [`KERNEL_MSRS`] from vCPU `vcpu` (host-initiated `KVM_GET_MSRS`; the vCPU must be
/// out of `KVM_RUN`).
pub(crate) fn read_vcpu(fd: &VcpuFd, vcpu: u32) -> Result<Vec<(u32, u64)>> {
    let mut msrs = entries(KERNEL_MSRS.iter().map(|&i| (i, 0)))?;
    let read = fd
        .get_msrs(&mut msrs)
        .map_err(kvm_err("KVM_GET_MSRS (Hyper-V registers)"))?;
    if let Some(&msr) = KERNEL_MSRS.get(read) {
        return Err(Error::MsrRefused {
            op: "KVM_GET_MSRS",
            vcpu,
            msr,
            value: 0,
        });
    }
    Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect())
}

/// Writes saved registers into a vCPU (host-initiated `KVM_SET_MSRS`), in the saved order.
/// Only registers of [`KERNEL_MSRS`] are accepted.
pub(crate) fn write_vcpu(fd: &VcpuFd, vcpu: u32, regs: &[(u32, u64)]) -> Result<()> {
    if let Some(&(msr, _)) = regs.iter().find(|(m, _)| !KERNEL_MSRS.contains(m)) {
        return Err(Error::NotAKernelMsr { vcpu, msr });
    }
    let msrs = entries(regs.iter().copied())?;
    let written = fd
        .set_msrs(&msrs)
        .map_err(kvm_err("KVM_SET_MSRS (Hyper-V registers)"))?;
    if let Some(&(msr, value)) = regs.get(written) {
        return Err(Error::MsrRefused {
            op: "KVM_SET_MSRS",
            vcpu,
            msr,
            value,
        });
    }
    Ok(())
}

/// The kvmclock now (`KVM_GET_CLOCK`).
pub(crate) fn read_clock(vm: &VmFd) -> Result<u64> {
    vm.get_clock()
        .map(|c| c.clock)
        .map_err(kvm_err("KVM_GET_CLOCK"))
}

/// Sets the kvmclock (`KVM_SET_CLOCK`).
pub(crate) fn write_clock(vm: &VmFd, clock_ns: u64) -> Result<()> {
    let data = kvm_clock_data {
        clock: clock_ns,
        ..Default::default()
    };
    vm.set_clock(&data).map_err(kvm_err("KVM_SET_CLOCK"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_registers_cover_the_synic_in_restore_order_and_leave_the_timers_to_the_model() {
        let pos = |m: u32| KERNEL_MSRS.iter().position(|&x| x == m).unwrap();
        assert!(pos(index::GUEST_OS_ID) < pos(index::HYPERCALL));
        for n in 0..16 {
            pos(index::SINT0 + n);
        }
        for m in [index::SVERSION, index::EOM, index::TIME_REF_COUNT] {
            assert!(!KERNEL_MSRS.contains(&m), "{m:#x} is not state");
        }
        for t in 0..8 {
            let m = index::STIMER0_CONFIG + t;
            assert!(!KERNEL_MSRS.contains(&m), "{m:#x} is the model's");
        }
    }
}
