//! Kernel mode's reference time: KVM's own.
//!
//! In kernel mode the guest reads TIME_REF_COUNT from KVM, which derives it from the VM's
//! kvmclock (`get_kvmclock_ns / 100`). The synthetic timers run in the model (so the library
//! is the only writer of message slots) and their COUNTs are absolute times on that timeline,
//! so the model's [`ReferenceClock`] must be the same clock: [`KvmClock`] reads it with
//! `KVM_GET_CLOCK`, a VM ioctl that needs no vCPU and takes a few microseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_ioctls::VmFd;
use synic::ReferenceClock;

/// The VM's kvmclock in 100 ns units, never going backwards.
#[derive(Debug)]
pub struct KvmClock {
    vm: Arc<VmFd>,
    /// The latest value handed out: a failed read (which KVM has no reason to give) returns
    /// it rather than a jump to zero.
    last: AtomicU64,
}

impl KvmClock {
    /// The kvmclock of `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            last: AtomicU64::new(0),
        }
    }
}

impl ReferenceClock for KvmClock {
    fn now(&self) -> u64 {
        match self.vm.get_clock() {
            Ok(c) => {
                let now = c.clock / 100;
                let before = self.last.fetch_max(now, Ordering::AcqRel);
                now.max(before)
            }
            Err(_) => self.last.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_kvmclock_in_100ns_units() {
        if !synic::testing::kvm_available("kvmclock follows KVM_GET_CLOCK") {
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        let clock = KvmClock::new(Arc::clone(&vm));
        let a = clock.now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = clock.now();
        let kvm_ns = vm.get_clock().unwrap().clock;
        assert!(b >= a + 40_000, "5 ms is 50 000 x 100 ns: {a} -> {b}");
        assert!(
            kvm_ns / 100 >= b,
            "the same timeline as KVM's: {b} vs {}",
            kvm_ns / 100
        );
    }
}
