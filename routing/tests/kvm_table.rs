//! The routing table against the real kernel: capabilities, the real table limit, HV_SINT
//! entries on this kernel, split-irqchip refusals.

mod common;

use std::sync::Arc;

use common::{kvm_available, Vm};
use kvm_ioctls::{Cap, VmFd};
use synic::{SintIndex, VpIndex};
use synic_routing::{
    enable_synic2, DefaultRoutes, Error, Gsi, Mode, MsiRoute, Route, RoutingBackend, RoutingTable,
};

fn msi(vector: u8) -> Route {
    Route::Msi(MsiRoute::fixed(0, vector))
}

fn table(vm: &Vm, defaults: DefaultRoutes) -> RoutingTable<VmFd> {
    RoutingTable::new(Arc::clone(&vm.vm), defaults)
}

#[test]
fn probe_reports_what_this_kernel_and_irqchip_do() {
    if !kvm_available("probe_reports_what_this_kernel_and_irqchip_do") {
        return;
    }
    let vm = Vm::new();
    let caps = table(&vm, DefaultRoutes::Keep).capabilities();
    let reported = vm.vm.check_extension_int(Cap::IrqRouting);
    assert!(reported > 0);
    assert_eq!(caps.routing_table_size as i32, reported);
    assert!(caps.irqfd, "irqfds work with the full irqchip");
    assert!(
        caps.irqfd_resample,
        "resample irqfds work with the full irqchip"
    );
    assert_eq!(caps.hyperv_synic2, vm.vm.check_extension(Cap::HypervSynic2));
    assert!(caps.check(Mode::Userspace).is_ok());
    match caps.check(Mode::Kernel) {
        Ok(()) => assert!(caps.hyperv_synic2),
        Err(e) => {
            assert!(!caps.hyperv_synic2);
            let text = e.to_string();
            assert!(text.contains("KVM_CAP_HYPERV_SYNIC2"), "{text}");
            assert!(text.contains("in-kernel Hyper-V SynIC"), "{text}");
        }
    }
}

#[test]
fn split_irqchip_refuses_resample_irqfds() {
    if !kvm_available("split_irqchip_refuses_resample_irqfds") {
        return;
    }
    let vm = Vm::with_irqchip(true);
    let table = table(&vm, DefaultRoutes::Discard);
    let caps = table.capabilities();
    assert!(caps.irqfd, "plain irqfds work with a split irqchip");
    assert!(!caps.irqfd_resample);
    let text = caps.check(Mode::Kernel).unwrap_err().to_string();
    if caps.hyperv_synic2 {
        assert!(text.contains("split irqchip"), "{text}");
    } else {
        assert!(text.contains("KVM_CAP_HYPERV_SYNIC2"), "{text}");
    }
    let gsi = table.add(msi(0x40)).unwrap();
    let err = table.irqfd(gsi, true).unwrap_err();
    assert!(
        matches!(err, Error::RegisterIrqfd { resample: true, .. }),
        "{err}"
    );
    assert!(table.irqfd(gsi, false).is_ok());
}

#[test]
fn exhaustion_at_the_kernels_real_limit() {
    if !kvm_available("exhaustion_at_the_kernels_real_limit") {
        return;
    }
    let vm = Vm::new();
    let table = table(&vm, DefaultRoutes::Discard);
    let limit = table.capabilities().routing_table_size;
    // Every GSI the kernel reports, in one commit that KVM accepts.
    table
        .update(|tx| (0..limit).try_for_each(|n| tx.add(msi(0x20 + (n % 0xD0) as u8)).map(drop)))
        .unwrap();
    assert_eq!(table.stats().gsis_in_use, limit);
    let err = table.add(msi(0x40)).unwrap_err();
    assert!(
        matches!(err, Error::GsiExhausted { limit: l } if l == limit),
        "{err}"
    );
    assert!(err.to_string().contains(&limit.to_string()), "{err}");
    // The limit is the kernel's: KVM refuses an entry one GSI past it.
    let past = [msi(0x40).encode(Gsi(limit))];
    let refused = RoutingBackend::set_gsi_routing(&*vm.vm, &past).unwrap_err();
    assert_eq!(refused.errno(), libc::EINVAL);
    let last = [msi(0x40).encode(Gsi(limit - 1))];
    RoutingBackend::set_gsi_routing(&*vm.vm, &last).unwrap();
    // That raw commit replaced the table behind the shadow's back; put the shadow back.
    table.commit().unwrap();
    // Release and re-commit round trip at the limit: the freed GSI comes back.
    table.release(Gsi(1234)).unwrap();
    assert_eq!(table.add(msi(0x41)).unwrap(), Gsi(1234));
    assert!(!table.stats().dirty);
}

#[test]
fn commit_release_recommit_round_trips() {
    if !kvm_available("commit_release_recommit_round_trips") {
        return;
    }
    let vm = Vm::new();
    let table = table(&vm, DefaultRoutes::Keep);
    let gsis = table
        .update(|tx| {
            (0..64)
                .map(|n| tx.add(msi(0x30 + n)))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    assert_eq!(gsis.first(), Some(&Gsi(24)));
    for g in gsis.iter().step_by(2) {
        table.release(*g).unwrap();
    }
    table
        .update(|tx| {
            gsis.iter()
                .skip(1)
                .step_by(2)
                .try_for_each(|&g| tx.release(g))
        })
        .unwrap();
    assert_eq!(
        table.snapshot().len(),
        40,
        "only KVM's default irqchip routes remain"
    );
    assert_eq!(table.add(msi(0x40)).unwrap(), Gsi(24));
    table.commit().unwrap();
    // 1 batch + 32 single releases + 1 batch release + 1 add + 1 forced commit.
    assert_eq!(table.stats().commits, 36);
}

#[test]
fn hv_sint_entries_on_this_kernel() {
    if !kvm_available("hv_sint_entries_on_this_kernel") {
        return;
    }
    let vm = Vm::new();
    let table = table(&vm, DefaultRoutes::Keep);
    let route = Route::HvSint {
        vp: VpIndex(0),
        sint: SintIndex::new(3).unwrap(),
    };
    assert!(matches!(
        table.add(route),
        Err(Error::SynicNotActive { vp: VpIndex(0) })
    ));
    let before = table.snapshot();
    if table.capabilities().hyperv_synic2 {
        enable_synic2(&vm.vcpu).unwrap();
        table.mark_synic_active(VpIndex(0));
        let g = table.add(route).unwrap();
        assert_eq!(table.routes(g), vec![route]);
    } else {
        let err = enable_synic2(&vm.vcpu).unwrap_err();
        assert!(err.to_string().contains("KVM_CAP_HYPERV_SYNIC2"), "{err}");
        // Pretend the VMM enabled it anyway: KVM itself must refuse the entry.
        table.mark_synic_active(VpIndex(0));
        let err = table.add(route).unwrap_err();
        assert!(matches!(err, Error::HypervSynicMissing { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("in-kernel Hyper-V SynIC is missing"),
            "{text}"
        );
        assert!(
            text.contains("Invalid argument") || text.contains("22"),
            "{text}"
        );
        assert_eq!(table.snapshot(), before, "rolled back");
        // The table still commits without it.
        table.add(msi(0x40)).unwrap();
    }
}
