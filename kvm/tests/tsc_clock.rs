//! The reference clock on the guest's TSC against real KVM: the probe finds KVM's offset, the
//! clock computes the guest's TSC as KVM does (checked against host-initiated IA32_TSC reads,
//! which KVM computes from the host TSC at that moment), and it follows a host write of
//! IA32_TSC (what a restore does).

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};
use synic::ReferenceClock;
use synic_kvm::{GuestTsc, TscReferenceClock, TscUnusable};

const IA32_TSC: u32 = 0x10;

fn read_tsc(vcpu: &VcpuFd) -> u64 {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: IA32_TSC,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
    msrs.as_slice()[0].data
}

fn write_tsc(vcpu: &VcpuFd, value: u64) {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: IA32_TSC,
        data: value,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(vcpu.set_msrs(&msrs).unwrap(), 1);
}

/// IA32_TSC read between two of the clock's guest-TSC computations lies between them.
fn assert_brackets(clock: &TscReferenceClock, vcpu: &VcpuFd) {
    for _ in 0..100 {
        let before = clock.guest_tsc();
        let kvm = read_tsc(vcpu);
        let after = clock.guest_tsc();
        assert!(
            before <= kvm && kvm <= after,
            "KVM's IA32_TSC {kvm:#x} outside {before:#x}..={after:#x}"
        );
    }
}

#[test]
fn the_clock_computes_the_guest_tsc_as_kvm_does_and_follows_a_tsc_write() {
    if !synic::testing::kvm_available("tsc_clock") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let vcpus: Vec<VcpuFd> = (0..2).map(|n| vm.create_vcpu(n).unwrap()).collect();
    let fds: Vec<&VcpuFd> = vcpus.iter().collect();
    let tsc = match GuestTsc::probe(&fds) {
        Ok(tsc) => tsc,
        // A host whose clock source is not the TSC cannot offer the page: say so loudly and
        // check that the refusal names it.
        Err(e @ TscUnusable::HostClocksource(_)) => {
            eprintln!("SKIPPED tsc_clock: {e}");
            assert!(std::env::var_os("SYNIC_REQUIRE_TSC_PAGE").is_none(), "{e}");
            return;
        }
        Err(e) => panic!("the guest TSC cannot back the page: {e}"),
    };
    let khz = vcpus[0].get_tsc_khz().unwrap();
    assert_eq!(tsc.tsc_hz(), u64::from(khz) * 1000);
    let clock = TscReferenceClock::new(tsc);
    assert!(clock.is_valid());
    assert!(clock.tsc_parameters().is_some());
    assert_brackets(&clock, &vcpus[0]);
    assert_brackets(&clock, &vcpus[1]);

    // A restore writes the guest TSC back: KVM's offset moves (on KVMs that honour a host
    // write of IA32_TSC; this project's development host's does not, and keeps guest TSC =
    // host TSC); the clock follows whatever KVM did.
    let before = clock.now();
    for vcpu in &vcpus {
        write_tsc(vcpu, 1 << 40);
    }
    let honoured = read_tsc(&vcpus[0]).wrapping_sub(1 << 40) < u64::from(khz) * 1000 * 10;
    let moved = GuestTsc::probe(&fds).unwrap();
    eprintln!(
        "tsc_clock: {khz} kHz, offset {:#x}; after a host write of IA32_TSC = 2^40: offset {:#x} \
         (write {})",
        tsc.offset(),
        moved.offset(),
        if honoured {
            "honoured"
        } else {
            "ignored by this KVM"
        }
    );
    assert_eq!(moved.offset() != tsc.offset(), honoured);
    clock.follow(&fds).unwrap();
    assert_eq!(clock.guest_tsc_offset(), moved.offset());
    assert!(clock.is_valid());
    assert_brackets(&clock, &vcpus[0]);
    assert_brackets(&clock, &vcpus[1]);
    if honoured {
        assert!(clock.now() != before);
        // vCPUs whose TSCs differ cannot back one page: the clock says so, keeps counting.
        write_tsc(&vcpus[1], 1 << 50);
        assert!(matches!(
            clock.follow(&fds),
            Err(TscUnusable::VcpusDiffer { vcpu: 1, .. })
        ));
        assert!(!clock.is_valid() && clock.tsc_parameters().is_none());
        let a = clock.now();
        assert!(clock.now() >= a);
        assert_eq!(
            clock.guest_tsc_offset(),
            moved.offset(),
            "the old offset kept"
        );
    }
}
