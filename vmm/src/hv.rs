//! The partition-wide Hyper-V registers in userspace mode: GUEST_OS_ID, HYPERCALL (and the
//! page it enables) and TIME_REF_COUNT, on the semantics of `synic_msr::PartitionRegisters`.
//!
//! A VM without a SynIC model answers them here ([`HvPartition`]). Once a model is attached
//! (`synic_vm`), the model's partition is their one owner: the vCPU loop hands every Hyper-V
//! MSR to the vCPU's handler and only asks [`HypercallPageState`] whether the trap port is live
//! ([`PartitionMsrs`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use synic_msr::{Change, Gp, Msr, Origin, PartitionRegisters, Profile, Scope};
use vm_memory::{Bytes, GuestAddress};

use crate::hypercall::hypercall_page;
use crate::memory::GuestMemory;

/// Why a partition-register access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HvMsrFault {
    /// The register semantics refused it.
    #[error(transparent)]
    Gp(#[from] Gp),
    /// The guest enabled the hypercall page at an address that is not RAM (KVM answers #GP too).
    #[error("#GP on HYPERCALL: page {gpa:#x} is not guest RAM")]
    HypercallPageNotRam {
        /// The page address.
        gpa: u64,
    },
}

/// Says whether the guest has the hypercall page enabled (userspace mode), so the vCPU loop
/// knows whether an OUT to the trap port is a hypercall. Read on every trap: keep it lock-free.
pub trait HypercallPageState: Send + Sync + fmt::Debug {
    /// The GPA of the hypercall page while the guest has it enabled.
    fn hypercall_page(&self) -> Option<u64>;
}

/// Who answers GUEST_OS_ID, HYPERCALL and TIME_REF_COUNT in userspace mode.
#[derive(Clone, Debug)]
pub enum PartitionMsrs {
    /// The VMM's own registers: a VM without a SynIC model.
    Vmm(Arc<HvPartition>),
    /// The vCPUs' [`crate::MsrHandler`]s (an attached SynIC model owns the registers);
    /// the state says when the trap port is a hypercall.
    Handlers(Arc<dyn HypercallPageState>),
}

impl PartitionMsrs {
    /// The GPA of the enabled hypercall page, from whoever owns HYPERCALL.
    pub fn hypercall_page(&self) -> Option<u64> {
        match self {
            PartitionMsrs::Vmm(hv) => hv.hypercall_page(),
            PartitionMsrs::Handlers(state) => state.hypercall_page(),
        }
    }

    /// The VMM's own registers, if they answer (no model attached).
    pub fn vmm(&self) -> Option<&Arc<HvPartition>> {
        match self {
            PartitionMsrs::Vmm(hv) => Some(hv),
            PartitionMsrs::Handlers(_) => None,
        }
    }
}

/// The partition-wide registers of one VM, shared by its vCPU threads.
#[derive(Debug)]
pub struct HvPartition {
    regs: Mutex<PartitionRegisters>,
    /// HYPERCALL's value when enabled, 0 when not: read on every trap without the lock.
    hypercall: AtomicU64,
    clock: Instant,
    memory: GuestMemory,
}

impl HvPartition {
    /// Power-on registers; the reference counter starts at 0 now.
    pub fn new(profile: Profile, memory: GuestMemory) -> Self {
        Self {
            regs: Mutex::new(PartitionRegisters::new(profile)),
            hypercall: AtomicU64::new(0),
            clock: Instant::now(),
            memory,
        }
    }

    /// Whether `index` is one of the registers this type answers.
    pub fn owns(index: u32) -> bool {
        Msr::from_index(index).is_some_and(|m| m.scope() == Scope::Partition)
    }

    /// The partition reference counter: 100 ns units since the VM was created.
    pub fn reference_time(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos() / 100).unwrap_or(u64::MAX)
    }

    /// The GPA of the hypercall page while the guest has it enabled.
    pub fn hypercall_page(&self) -> Option<u64> {
        let v = synic_msr::Hypercall(self.hypercall.load(Ordering::Acquire));
        v.enabled().then(|| v.gpa())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartitionRegisters> {
        // A panic while holding the lock cannot leave the registers half-written (every
        // write is a single assignment), so a poisoned lock is still usable.
        self.regs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guest RDMSR of a partition-wide register.
    pub fn rdmsr(&self, index: u32) -> Result<u64, HvMsrFault> {
        let msr = Msr::from_index(index).ok_or(Gp::new(index, synic_msr::GpReason::UnknownMsr))?;
        Ok(self
            .lock()
            .read(msr, Origin::Guest, self.reference_time())?)
    }

    /// Guest WRMSR of a partition-wide register. Enabling the hypercall page fills it.
    pub fn wrmsr(&self, index: u32, value: u64) -> Result<(), HvMsrFault> {
        let msr = Msr::from_index(index).ok_or(Gp::new(index, synic_msr::GpReason::UnknownMsr))?;
        let mut regs = self.lock();
        let outcome = regs.write(msr, value, Origin::Guest)?;
        if let Change::HypercallPage { old, new } = outcome.change {
            if new.enabled() {
                let gpa = new.gpa();
                if self
                    .memory
                    .write_slice(&hypercall_page(), GuestAddress(gpa))
                    .is_err()
                {
                    // Undo with a host write, which bypasses the Locked bit.
                    let _ = regs.write(Msr::Hypercall, old.0, Origin::Host);
                    self.hypercall
                        .store(enabled_or_zero(regs.hypercall()), Ordering::Release);
                    return Err(HvMsrFault::HypercallPageNotRam { gpa });
                }
            }
        }
        self.hypercall
            .store(enabled_or_zero(regs.hypercall()), Ordering::Release);
        Ok(())
    }
}

impl HypercallPageState for HvPartition {
    fn hypercall_page(&self) -> Option<u64> {
        HvPartition::hypercall_page(self)
    }
}

fn enabled_or_zero(h: synic_msr::Hypercall) -> u64 {
    if h.enabled() {
        h.0
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypercall::HYPERCALL_PAGE_CODE;
    use synic_msr::index::{GUEST_OS_ID, HYPERCALL, TIME_REF_COUNT, VP_INDEX};

    fn partition() -> HvPartition {
        HvPartition::new(Profile::Tlfs, crate::memory::allocate(4 << 20).unwrap())
    }

    #[test]
    fn hypercall_page_is_filled_once_guest_os_id_is_set() {
        let hv = partition();
        hv.wrmsr(HYPERCALL, 0x5000 | 1).unwrap();
        assert_eq!(
            hv.hypercall_page(),
            None,
            "no guest OS id yet: write discarded"
        );
        hv.wrmsr(GUEST_OS_ID, 0x8100_0000_0000_0000).unwrap();
        hv.wrmsr(HYPERCALL, 0x5000 | 1).unwrap();
        assert_eq!(hv.hypercall_page(), Some(0x5000));
        assert_eq!(hv.rdmsr(HYPERCALL).unwrap(), 0x5001);
        let mut code = [0u8; 3];
        hv.memory
            .read_slice(&mut code, GuestAddress(0x5000))
            .unwrap();
        assert_eq!(code, HYPERCALL_PAGE_CODE);
        hv.wrmsr(GUEST_OS_ID, 0).unwrap();
        assert_eq!(
            hv.hypercall_page(),
            None,
            "clearing the OS id disables the page"
        );
    }

    #[test]
    fn hypercall_page_outside_ram_is_gp_and_keeps_the_old_value() {
        let hv = partition();
        hv.wrmsr(GUEST_OS_ID, 1).unwrap();
        hv.wrmsr(HYPERCALL, 0x6001).unwrap();
        let err = hv.wrmsr(HYPERCALL, 0x4000_0000 | 1).unwrap_err();
        assert_eq!(err, HvMsrFault::HypercallPageNotRam { gpa: 0x4000_0000 });
        assert_eq!(hv.hypercall_page(), Some(0x6000));
    }

    #[test]
    fn time_ref_count_advances_and_is_read_only() {
        let hv = partition();
        let a = hv.rdmsr(TIME_REF_COUNT).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = hv.rdmsr(TIME_REF_COUNT).unwrap();
        assert!(b >= a + 20_000, "2 ms is 20000 x 100 ns: {a} -> {b}");
        assert!(matches!(
            hv.wrmsr(TIME_REF_COUNT, 0),
            Err(HvMsrFault::Gp(_))
        ));
        assert!(HvPartition::owns(GUEST_OS_ID) && !HvPartition::owns(VP_INDEX));
    }
}
