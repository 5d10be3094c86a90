//! Real guest code on real KVM: irqfds on routes from this table really interrupt a running
//! vCPU, released routes really stop, masked things really stay quiet.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{kvm_available, Vm};
use crossbeam_channel::unbounded;
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VmFd;
use synic::{RaiseSint, Sint, SintIndex, VpIndex};
use synic_routing::{
    enable_synic2, DefaultRoutes, KernelSintRoutes, MsiRoute, MsixVectors, Route, RoutingTable,
    UserSintRoutes,
};

/// Long enough for an interrupt that should arrive. An interrupt that must not arrive is
/// checked by the guest's progress instead of a wait: it takes a lower-priority marker first
/// ([`common::Guest::vectors_before_marker`]), and `stop` does the same at the end.
const ARRIVES: Duration = Duration::from_secs(10);

fn table(vm: &Vm) -> Arc<RoutingTable<VmFd>> {
    Arc::new(RoutingTable::new(Arc::clone(&vm.vm), DefaultRoutes::Keep))
}

fn msi(vector: u8) -> Route {
    Route::Msi(MsiRoute::fixed(0, vector))
}

#[test]
fn irqfd_on_msi_route_interrupts_a_running_vcpu() {
    if !kvm_available("irqfd_on_msi_route_interrupts_a_running_vcpu") {
        return;
    }
    let vm = Vm::new();
    let table = table(&vm);
    let gsi = table.add(msi(0x40)).unwrap();
    let irqfd = table.irqfd(gsi, false).unwrap();
    let guest = vm.start();
    for _ in 0..3 {
        irqfd.trigger().unwrap();
        assert_eq!(guest.next_vector(ARRIVES), Some(0x40));
    }
    assert_eq!(guest.stop(), Vec::<u8>::new());
}

#[test]
fn released_route_is_gone_from_kvm_and_its_gsi_reused() {
    if !kvm_available("released_route_is_gone_from_kvm_and_its_gsi_reused") {
        return;
    }
    let vm = Vm::new();
    let table = table(&vm);
    let a = table.add(msi(0x40)).unwrap();
    let b = table.add(msi(0x41)).unwrap();
    let on_a = table.irqfd(a, false).unwrap();
    let on_b = table.irqfd(b, false).unwrap();
    let guest = vm.start();
    on_a.trigger().unwrap();
    assert_eq!(guest.next_vector(ARRIVES), Some(0x40));
    // Release re-commits: KVM must forget GSI a (QEMU left such entries in place). A route
    // KVM still had would inject before the write returns, ahead of the marker.
    table.release(a).unwrap();
    on_a.trigger().unwrap();
    assert_eq!(
        guest.vectors_before_marker(),
        [],
        "stale route still in KVM"
    );
    // KVM does not drop a write to an irqfd whose GSI has no route: it defers the injection
    // to a work item, which raises whatever route the GSI has when it runs, possibly the
    // GSI's next one. Unregistering the irqfd waits for that work (with no route: nothing),
    // so the GSI can be reused below without a late interrupt on its new route.
    drop(on_a);
    on_b.trigger().unwrap();
    assert_eq!(guest.next_vector(ARRIVES), Some(0x41));
    // The lowest free GSIs are reused; an irqfd still registered on a released GSI (never
    // written meanwhile) follows the GSI's new route.
    table.release(b).unwrap();
    assert_eq!(table.add(msi(0x42)).unwrap(), a);
    assert_eq!(table.add(msi(0x43)).unwrap(), b);
    on_b.trigger().unwrap();
    assert_eq!(guest.next_vector(ARRIVES), Some(0x43));
    let on_a = table.irqfd(a, false).unwrap();
    on_a.trigger().unwrap();
    assert_eq!(guest.next_vector(ARRIVES), Some(0x42));
    assert_eq!(guest.stop(), Vec::<u8>::new());
}

#[test]
fn userspace_sint_route_follows_the_sint_register() {
    if !kvm_available("userspace_sint_route_follows_the_sint_register") {
        return;
    }
    let vm = Vm::new();
    let routes = UserSintRoutes::new(table(&vm), [(VpIndex(0), 0)]).unwrap();
    let (vp, s) = (VpIndex(0), SintIndex::new(2).unwrap());
    routes.add(&[(vp, s)]).unwrap();
    let guest = vm.start();
    routes.raise(vp, s, 0x50, false);
    assert_eq!(
        guest.vectors_before_marker(),
        [],
        "a reset (masked) SINT fired"
    );
    routes.sint_changed(vp, s, Sint::new(0x50, false, false));
    routes.raise(vp, s, 0x50, false);
    assert_eq!(guest.next_vector(ARRIVES), Some(0x50));
    routes.sint_changed(vp, s, Sint::new(0x60, false, false));
    routes.raise(vp, s, 0x60, false);
    assert_eq!(guest.next_vector(ARRIVES), Some(0x60));
    routes.sint_changed(vp, s, Sint::new(0x60, false, false).with_masked(true));
    routes.raise(vp, s, 0x60, false);
    routes.sint_changed(vp, s, Sint::new(0x60, false, true));
    routes.raise(vp, s, 0x60, false);
    assert_eq!(
        guest.stop(),
        Vec::<u8>::new(),
        "masked or polling SINT fired"
    );
    assert_eq!(routes.counters().raised, 2);
}

#[test]
fn msix_mask_pending_and_function_mask_with_real_irqfds() {
    if !kvm_available("msix_mask_pending_and_function_mask_with_real_irqfds") {
        return;
    }
    let vm = Vm::new();
    let mut msix = MsixVectors::new(table(&vm), 4, None).unwrap();
    for (v, vector) in [(0u16, 0x40u8), (1, 0x41)] {
        let m = MsiRoute::fixed(0, vector);
        msix.set_message(v, m.address, m.data).unwrap();
    }
    let guest = vm.start();
    msix.set_masked(0, false).unwrap();
    msix.trigger(0).unwrap();
    assert_eq!(guest.next_vector(ARRIVES), Some(0x40));

    // Masked: the device fires three times, the guest sees nothing, the pending bit is set.
    msix.set_masked(0, true).unwrap();
    for _ in 0..3 {
        msix.trigger(0).unwrap();
    }
    assert_eq!(
        guest.vectors_before_marker(),
        [],
        "masked vector interrupted"
    );
    assert!(msix.is_pending(0).unwrap());
    // Unmask: exactly one interrupt.
    msix.set_masked(0, false).unwrap();
    assert!(!msix.is_pending(0).unwrap());
    assert_eq!(guest.next_vector(ARRIVES), Some(0x40));
    assert_eq!(guest.vectors_before_marker(), [], "duplicated on unmask");

    // Function mask holds both vectors; clearing it delivers each once.
    msix.set_masked(1, false).unwrap();
    msix.set_function_mask(true).unwrap();
    msix.trigger(0).unwrap();
    msix.trigger(1).unwrap();
    msix.eventfd(1).unwrap().write(1).unwrap();
    assert_eq!(guest.vectors_before_marker(), [], "function mask leaked");
    msix.set_function_mask(false).unwrap();
    let mut got = vec![
        guest.next_vector(ARRIVES).unwrap(),
        guest.next_vector(ARRIVES).unwrap(),
    ];
    got.sort_unstable();
    assert_eq!(got, vec![0x40, 0x41]);
    assert_eq!(guest.stop(), Vec::<u8>::new(), "extra interrupts");
}

#[test]
fn kernel_mode_hv_sint_interrupts_and_eoi_acks() {
    if !kvm_available("kernel_mode_hv_sint_interrupts_and_eoi_acks") {
        return;
    }
    let vm = Vm::new();
    let table = table(&vm);
    if !table.capabilities().hyperv_synic2 {
        synic::testing::kernel_mode_skipped("kernel_mode_hv_sint_interrupts_and_eoi_acks");
        return;
    }
    enable_synic2(&vm.vcpu).unwrap();
    table.mark_synic_active(VpIndex(0));
    // SINT2 -> vector 0x40 (unmasked, EOI'd by the guest); SINT3 stays masked.
    let sint2 = kvm_msr_entry {
        index: synic_msr::index::SINT0 + 2,
        data: 0x40,
        ..Default::default()
    };
    let msrs = Msrs::from_entries(&[sint2]).unwrap();
    assert_eq!(vm.vcpu.set_msrs(&msrs).unwrap(), 1);
    let (tx, acks) = unbounded();
    let routes = KernelSintRoutes::new(Arc::clone(&table), tx).unwrap();
    let (vp, s2, s3) = (
        VpIndex(0),
        SintIndex::new(2).unwrap(),
        SintIndex::new(3).unwrap(),
    );
    routes.add(&[(vp, s2), (vp, s3)]).unwrap();
    let guest = vm.start();
    routes.raise(vp, s2, 0x40, false);
    assert_eq!(guest.next_vector(ARRIVES), Some(0x40));
    // The guest's EOI of 0x40 acks SINT2 through its resamplefd.
    assert_eq!(acks.recv_timeout(ARRIVES).unwrap(), (vp, s2));
    routes.raise(vp, s3, 0x40, false);
    assert_eq!(guest.stop(), Vec::<u8>::new(), "masked SINT3 fired");
}
