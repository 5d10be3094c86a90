//! SINT routes in both modes against the recording fake kernel.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};
use synic::{RaiseSint, Sint, SintIndex, VpIndex};
use synic_routing::fake::{FakeConfig, FakeIrqchip, FakeKvm};
use synic_routing::{
    DefaultRoutes, Error, KernelSintRoutes, MsiRoute, Route, RoutingTable, UserSintRoutes,
};

fn sint(n: u32) -> SintIndex {
    SintIndex::new(n).unwrap()
}

fn table(config: FakeConfig) -> (Arc<FakeKvm>, Arc<RoutingTable<FakeKvm>>) {
    let fake = Arc::new(FakeKvm::new(config));
    let table = Arc::new(RoutingTable::new(Arc::clone(&fake), DefaultRoutes::Discard));
    (fake, table)
}

type Acks = Receiver<(VpIndex, SintIndex)>;

fn kernel(vps: u32) -> (Arc<FakeKvm>, KernelSintRoutes<FakeKvm>, Acks) {
    let (fake, table) = table(FakeConfig::default());
    for vp in 0..vps {
        table.mark_synic_active(VpIndex(vp));
    }
    let (tx, rx) = unbounded();
    let routes = KernelSintRoutes::new(table, tx).unwrap();
    (fake, routes, rx)
}

const WAIT: Duration = Duration::from_secs(5);

// ---- kernel mode ----

#[test]
fn kernel_mode_refuses_a_kernel_without_hyperv_by_name() {
    let (_, table) = table(FakeConfig {
        hyperv_synic2: false,
        ..FakeConfig::default()
    });
    let err = KernelSintRoutes::new(table, |_: VpIndex, _: SintIndex| {}).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingCapability {
                capability: "KVM_CAP_HYPERV_SYNIC2",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("in-kernel Hyper-V SynIC"), "{err}");
}

#[test]
fn kernel_mode_refuses_a_split_irqchip_by_name() {
    let (_, table) = table(FakeConfig {
        irqchip: FakeIrqchip::Split,
        ..FakeConfig::default()
    });
    let err = KernelSintRoutes::new(table, |_: VpIndex, _: SintIndex| {}).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("KVM_CAP_IRQFD_RESAMPLE"), "{text}");
    assert!(text.contains("split irqchip"), "{text}");
}

#[test]
fn kernel_routes_wait_for_active_synic() {
    let (fake, routes, _) = kernel(1);
    let err = routes
        .add(&[(VpIndex(0), sint(0)), (VpIndex(1), sint(0))])
        .unwrap_err();
    assert!(
        matches!(err, Error::SynicNotActive { vp: VpIndex(1) }),
        "{err}"
    );
    assert_eq!(fake.set_routing_calls(), 0);
    assert!(fake.irqfds().is_empty());
    assert!(routes.gsi(VpIndex(0), sint(0)).is_none());
}

#[test]
fn kernel_routes_commit_once_and_register_resample_irqfds() {
    let (fake, routes, _) = kernel(4);
    let vps: Vec<_> = (0..4).map(VpIndex).collect();
    routes.add_vps(&vps, &[sint(0), sint(2)]).unwrap();
    assert_eq!(fake.set_routing_calls(), 1);
    let committed = fake.committed();
    assert_eq!(committed.len(), 8);
    for vp in &vps {
        for s in [sint(0), sint(2)] {
            let g = routes.gsi(*vp, s).unwrap();
            assert!(committed.contains(&(g, Route::HvSint { vp: *vp, sint: s })));
        }
    }
    assert_eq!(fake.irqfds().len(), 8);
    assert!(fake.irqfds().iter().all(|(_, resample)| *resample));
    let err = routes.add(&[(VpIndex(1), sint(2))]).unwrap_err();
    assert!(matches!(err, Error::SintRouteExists { .. }), "{err}");
    let err = routes
        .add(&[(VpIndex(1), sint(3)), (VpIndex(1), sint(3))])
        .unwrap_err();
    assert!(matches!(err, Error::SintRouteExists { .. }), "{err}");
    assert_eq!(fake.set_routing_calls(), 1);
}

#[test]
fn kernel_raise_writes_the_pairs_irqfd() {
    let (fake, routes, _) = kernel(2);
    routes.add(&[(VpIndex(1), sint(5))]).unwrap();
    routes.raise(VpIndex(1), sint(5), 0x50, false);
    routes.raise(VpIndex(0), sint(5), 0x50, false);
    let inj = fake.deliver();
    assert_eq!(inj.len(), 1);
    assert_eq!(
        inj[0].routes,
        vec![Route::HvSint {
            vp: VpIndex(1),
            sint: sint(5)
        }]
    );
    let c = routes.counters();
    assert_eq!((c.raised, c.unrouted), (1, 1));
}

#[test]
fn resamplefd_signals_reach_the_sink_as_acks() {
    let (fake, routes, acks) = kernel(2);
    routes
        .add_vps(&[VpIndex(0), VpIndex(1)], &[sint(1), sint(3)])
        .unwrap();
    assert_eq!(fake.ack_sint(VpIndex(1), sint(3)), 1);
    assert_eq!(acks.recv_timeout(WAIT).unwrap(), (VpIndex(1), sint(3)));
    assert_eq!(fake.ack_sint(VpIndex(0), sint(1)), 1);
    assert_eq!(acks.recv_timeout(WAIT).unwrap(), (VpIndex(0), sint(1)));
    // Two signals before the thread reads coalesce into at least one ack, never zero.
    fake.ack_sint(VpIndex(0), sint(3));
    fake.ack_sint(VpIndex(0), sint(3));
    assert_eq!(acks.recv_timeout(WAIT).unwrap(), (VpIndex(0), sint(3)));
    assert!(routes.counters().acks >= 3);
}

#[test]
fn ack_sink_may_raise_again_without_deadlock() {
    let (fake, table) = table(FakeConfig::default());
    table.mark_synic_active(VpIndex(0));
    let cell: Arc<OnceLock<Arc<KernelSintRoutes<FakeKvm>>>> = Arc::new(OnceLock::new());
    let (done_tx, done_rx) = unbounded();
    let sink = {
        let cell = Arc::clone(&cell);
        move |vp: VpIndex, s: SintIndex| {
            // What the model does on an ack: redeliver, which raises the SINT again.
            if let Some(routes) = cell.get() {
                routes.raise(vp, s, 0x40, false);
            }
            let _ = done_tx.send(());
        }
    };
    let routes = Arc::new(KernelSintRoutes::new(table, sink).unwrap());
    let _ = cell.set(Arc::clone(&routes));
    routes.add(&[(VpIndex(0), sint(0))]).unwrap();
    fake.ack_sint(VpIndex(0), sint(0));
    done_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(fake.deliver().len(), 1);
    // Break the cycle so the routes drop.
    drop(cell);
}

#[test]
fn removed_kernel_routes_unregister_and_release() {
    let (fake, routes, acks) = kernel(1);
    routes
        .add(&[(VpIndex(0), sint(0)), (VpIndex(0), sint(1))])
        .unwrap();
    let gone = routes.gsi(VpIndex(0), sint(0)).unwrap();
    let kept = routes.gsi(VpIndex(0), sint(1)).unwrap();
    routes.remove(&[(VpIndex(0), sint(0))]).unwrap();
    assert_eq!(fake.irqfds(), vec![(kept, true)]);
    assert_eq!(
        fake.committed(),
        vec![(
            kept,
            Route::HvSint {
                vp: VpIndex(0),
                sint: sint(1)
            }
        )]
    );
    assert_eq!(fake.ack_gsi(gone), 0);
    routes.raise(VpIndex(0), sint(0), 0x40, false);
    assert!(fake.deliver().is_empty());
    assert!(acks.try_recv().is_err());
}

#[test]
fn dropping_kernel_routes_stops_the_thread_and_cleans_the_table() {
    let (fake, routes, acks) = kernel(2);
    routes
        .add_vps(&[VpIndex(0), VpIndex(1)], &SintIndex::ALL)
        .unwrap();
    assert_eq!(fake.irqfds().len(), 32);
    drop(routes);
    assert!(fake.irqfds().is_empty());
    assert!(fake.committed().is_empty());
    // The sink (the channel's sender) was dropped with the joined thread.
    assert!(matches!(
        acks.recv_timeout(WAIT),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected)
    ));
}

// ---- userspace mode ----

fn user(apics: &[(u32, u32)]) -> (Arc<FakeKvm>, UserSintRoutes<FakeKvm>) {
    let (fake, table) = table(FakeConfig {
        hyperv_synic2: false,
        irqchip: FakeIrqchip::Split,
        ..FakeConfig::default()
    });
    let map = apics.iter().map(|&(vp, apic)| (VpIndex(vp), apic));
    (fake, UserSintRoutes::new(table, map).unwrap())
}

fn msi(apic: u32, vector: u8) -> Vec<Route> {
    vec![Route::Msi(MsiRoute::fixed(apic, vector))]
}

#[test]
fn userspace_mode_needs_irqfds() {
    let (_, table) = table(FakeConfig {
        irqchip: FakeIrqchip::None,
        ..FakeConfig::default()
    });
    let err = UserSintRoutes::new(table, []).unwrap_err();
    assert!(err.to_string().contains("KVM_CAP_IRQFD"), "{err}");
}

#[test]
fn userspace_routes_need_the_vps_apic_id() {
    let (fake, routes) = user(&[(0, 0)]);
    let err = routes
        .add(&[(VpIndex(0), sint(0)), (VpIndex(9), sint(0))])
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownApicId { vp: VpIndex(9) }),
        "{err}"
    );
    assert_eq!(fake.set_routing_calls(), 0);
}

#[test]
fn masked_sint_fires_nothing_until_unmasked() {
    let (fake, routes) = user(&[(0, 0), (1, 4)]);
    routes
        .add_vps(&[VpIndex(0), VpIndex(1)], &[sint(2)])
        .unwrap();
    assert_eq!(fake.set_routing_calls(), 1);
    routes.raise(VpIndex(1), sint(2), 0x50, false);
    assert!(fake.deliver().is_empty());
    routes.sint_changed(VpIndex(1), sint(2), Sint::new(0x50, false, false));
    routes.raise(VpIndex(1), sint(2), 0x50, false);
    let inj = fake.deliver();
    assert_eq!(inj.len(), 1);
    assert_eq!(inj[0].routes, msi(4, 0x50));
    let c = routes.counters();
    assert_eq!((c.raised, c.suppressed), (1, 1));
}

#[test]
fn masked_polling_and_illegal_vectors_are_suppressed() {
    let (fake, routes) = user(&[(0, 0)]);
    routes.add(&[(VpIndex(0), sint(0))]).unwrap();
    let pair = (VpIndex(0), sint(0));
    for value in [
        Sint::new(0x50, false, false).with_masked(true),
        Sint::new(0x50, false, true),
        Sint::new(0x0F, false, false),
    ] {
        routes.sint_changed(pair.0, pair.1, value);
        routes.raise(pair.0, pair.1, value.vector(), false);
        assert!(fake.deliver().is_empty(), "{value:?} fired");
    }
    assert_eq!(routes.counters().suppressed, 3);
}

#[test]
fn raise_vector_sends_one_msi_to_the_vps_apic_without_a_route() {
    let (fake, routes) = user(&[(0, 0), (1, 300)]);
    let calls = fake.set_routing_calls();
    routes.raise_vector(VpIndex(1), 0x99);
    routes.raise_vector(VpIndex(0), 0x42);
    assert_eq!(
        fake.signalled_msis(),
        vec![MsiRoute::fixed(300, 0x99), MsiRoute::fixed(0, 0x42)]
    );
    // Illegal vector, unknown VP: nothing sent.
    routes.raise_vector(VpIndex(0), 0x0F);
    routes.raise_vector(VpIndex(5), 0x50);
    assert_eq!(fake.signalled_msis().len(), 2);
    let c = routes.counters();
    assert_eq!((c.raised, c.suppressed, c.unrouted), (2, 1, 1));
    assert_eq!(fake.set_routing_calls(), calls, "no route is touched");
}

#[test]
fn vector_rewrite_commits_the_route_before_firing() {
    let (fake, routes) = user(&[(0, 7)]);
    routes.add(&[(VpIndex(0), sint(1))]).unwrap();
    let g = routes.gsi(VpIndex(0), sint(1)).unwrap();
    routes.sint_changed(VpIndex(0), sint(1), Sint::new(0x50, false, false));
    assert_eq!(routes.table().routes(g), msi(7, 0x50));
    let calls = fake.set_routing_calls();
    // AutoEOI toggled, vector unchanged: nothing to commit.
    routes.sint_changed(VpIndex(0), sint(1), Sint::new(0x50, true, false));
    assert_eq!(fake.set_routing_calls(), calls);
    routes.sint_changed(VpIndex(0), sint(1), Sint::new(0x61, false, false));
    assert_eq!(fake.set_routing_calls(), calls + 1);
    routes.raise(VpIndex(0), sint(1), 0x61, false);
    assert_eq!(fake.deliver()[0].routes, msi(7, 0x61));
}

#[test]
fn routes_added_late_start_from_the_last_sint_value() {
    let (fake, routes) = user(&[(3, 3)]);
    routes.sint_changed(VpIndex(3), sint(4), Sint::new(0x70, false, false));
    routes.add(&[(VpIndex(3), sint(4))]).unwrap();
    routes.raise(VpIndex(3), sint(4), 0x70, false);
    assert_eq!(fake.deliver()[0].routes, msi(3, 0x70));
}

#[test]
fn refused_route_update_disarms_and_reports() {
    let (fake, routes) = user(&[(0, 0)]);
    routes.add(&[(VpIndex(0), sint(0))]).unwrap();
    routes.sint_changed(VpIndex(0), sint(0), Sint::new(0x50, false, false));
    fake.fail_next_commit(libc::ENOMEM);
    routes.sint_changed(VpIndex(0), sint(0), Sint::new(0x60, false, false));
    routes.raise(VpIndex(0), sint(0), 0x60, false);
    assert!(fake.deliver().is_empty(), "a stale vector must not fire");
    assert_eq!(routes.counters().route_errors, 1);
    assert!(matches!(routes.take_error(), Some(Error::Commit { .. })));
    // The next rewrite recovers.
    routes.sint_changed(VpIndex(0), sint(0), Sint::new(0x60, false, false));
    routes.raise(VpIndex(0), sint(0), 0x60, false);
    assert_eq!(fake.deliver()[0].routes, msi(0, 0x60));
}

#[test]
fn apic_id_change_retargets_existing_routes() {
    let (fake, routes) = user(&[(0, 0)]);
    routes
        .add(&[(VpIndex(0), sint(0)), (VpIndex(0), sint(1))])
        .unwrap();
    routes.sint_changed(VpIndex(0), sint(0), Sint::new(0x50, false, false));
    let calls = fake.set_routing_calls();
    routes.set_apic_id(VpIndex(0), 0x21).unwrap();
    assert_eq!(fake.set_routing_calls(), calls + 1);
    routes.raise(VpIndex(0), sint(0), 0x50, false);
    assert_eq!(fake.deliver()[0].routes, msi(0x21, 0x50));
}

#[test]
fn removed_and_dropped_user_routes_leave_nothing_behind() {
    let (fake, routes) = user(&[(0, 0), (1, 1)]);
    routes
        .add_vps(&[VpIndex(0), VpIndex(1)], &SintIndex::ALL)
        .unwrap();
    assert_eq!(fake.irqfds().len(), 32);
    routes
        .remove(&[(VpIndex(0), sint(0)), (VpIndex(0), sint(15))])
        .unwrap();
    assert_eq!(fake.irqfds().len(), 30);
    assert_eq!(fake.committed().len(), 30);
    routes.sint_changed(VpIndex(0), sint(0), Sint::new(0x50, false, false));
    routes.raise(VpIndex(0), sint(0), 0x50, false);
    assert!(fake.deliver().is_empty());
    drop(routes);
    assert!(fake.irqfds().is_empty());
    assert!(fake.committed().is_empty());
}

#[test]
fn sint_unmasked_while_its_route_is_added_is_never_lost() {
    // The guest unmasks SINT0 on its vCPU thread while the VMM adds the route (whose commit
    // takes 2 ms, like a real one): whichever order the two take, the route must end up armed
    // with the guest's vector.
    for round in 0..40 {
        let (fake, routes) = user(&[(0, 0)]);
        fake.set_commit_delay(Duration::from_millis(2));
        let routes = Arc::new(routes);
        let start = Arc::new(std::sync::Barrier::new(2));
        let writer = {
            let (routes, start) = (Arc::clone(&routes), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                // Land somewhere inside (or around) the add's commit.
                std::thread::sleep(Duration::from_micros(500 * (round % 6)));
                routes.sint_changed(VpIndex(0), sint(0), Sint::new(0x50, false, false));
            })
        };
        start.wait();
        routes.add(&[(VpIndex(0), sint(0))]).unwrap();
        writer.join().unwrap();
        routes.raise(VpIndex(0), sint(0), 0x50, false);
        let got = fake.deliver();
        assert_eq!(got.len(), 1, "round {round}: unmask lost");
        assert_eq!(got[0].routes, msi(0, 0x50), "round {round}");
    }
}
