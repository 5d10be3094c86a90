//! The shadow table against the recording fake kernel.

use std::sync::Arc;

use synic::{SintIndex, VpIndex};
use synic_routing::fake::{Call, FakeConfig, FakeIrqchip, FakeKvm};
use synic_routing::{
    default_irqchip_routes, DefaultRoutes, Error, Gsi, IrqChip, MsiRoute, Route, RoutingTable,
};

fn fake(config: FakeConfig) -> (Arc<FakeKvm>, RoutingTable<FakeKvm>) {
    let fake = Arc::new(FakeKvm::new(config));
    let table = RoutingTable::new(Arc::clone(&fake), DefaultRoutes::Discard);
    (fake, table)
}

fn msi(n: u8) -> Route {
    Route::Msi(MsiRoute::fixed(0, n))
}

fn sint(n: u32) -> SintIndex {
    SintIndex::new(n).unwrap()
}

#[test]
fn batched_changes_commit_once_with_every_route() {
    let (fake, table) = fake(FakeConfig::default());
    let gsis = table
        .update(|tx| {
            (0..100)
                .map(|n| tx.add(msi(n + 32)))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    assert_eq!(gsis, (0..100).map(Gsi).collect::<Vec<_>>());
    assert_eq!(fake.set_routing_calls(), 1);
    assert_eq!(fake.committed(), table.snapshot());
    assert_eq!(fake.committed().len(), 100);
}

#[test]
fn release_recommits_so_kvm_forgets_the_route() {
    let (fake, table) = fake(FakeConfig::default());
    let a = table.add(msi(0x40)).unwrap();
    let b = table.add(msi(0x41)).unwrap();
    table.release(a).unwrap();
    assert_eq!(fake.committed(), vec![(b, msi(0x41))]);
    assert_eq!(fake.set_routing_calls(), 3);
    // The released GSI is the lowest free one and is handed out again.
    assert_eq!(table.add(msi(0x42)).unwrap(), a);
    assert_eq!(fake.committed(), vec![(a, msi(0x42)), (b, msi(0x41))]);
}

#[test]
fn failed_commit_rolls_the_whole_transaction_back() {
    let (fake, table) = fake(FakeConfig::default());
    let keep = table.add(msi(0x40)).unwrap();
    let before = table.snapshot();
    fake.fail_next_commit(libc::ENOMEM);
    let err = table
        .update(|tx| {
            tx.add(msi(0x50))?;
            tx.set(keep, msi(0x51))?;
            tx.release(keep)
        })
        .unwrap_err();
    assert!(matches!(err, Error::Commit { .. }), "{err}");
    assert!(err.to_string().contains("KVM_SET_GSI_ROUTING"), "{err}");
    assert_eq!(table.snapshot(), before);
    assert_eq!(fake.committed(), before);
    // The allocator was rolled back too: the next GSI is the same one the failed add took.
    assert_eq!(table.add(msi(0x60)).unwrap(), Gsi(1));
}

#[test]
fn closure_error_commits_nothing() {
    let (fake, table) = fake(FakeConfig::default());
    let err = table
        .update(|tx| {
            tx.add(msi(0x40))?;
            tx.release(Gsi(77))
        })
        .unwrap_err();
    assert!(matches!(err, Error::GsiNotAllocated { gsi: Gsi(77) }));
    assert_eq!(fake.set_routing_calls(), 0);
    assert!(table.snapshot().is_empty());
}

#[test]
fn setting_the_same_route_commits_nothing() {
    let (fake, table) = fake(FakeConfig::default());
    let g = table.add(msi(0x40)).unwrap();
    table.set(g, msi(0x40)).unwrap();
    assert_eq!(fake.set_routing_calls(), 1);
    table.set(g, msi(0x41)).unwrap();
    assert_eq!(fake.set_routing_calls(), 2);
    assert_eq!(fake.committed(), vec![(g, msi(0x41))]);
}

#[test]
fn exhaustion_names_the_kernel_limit_and_leaves_the_table_intact() {
    let (fake, table) = fake(FakeConfig {
        routing_table_size: 64,
        ..FakeConfig::default()
    });
    table
        .update(|tx| (0..64).try_for_each(|n| tx.add(msi(n)).map(|_| ())))
        .unwrap();
    let err = table.add(msi(0)).unwrap_err();
    assert!(matches!(err, Error::GsiExhausted { limit: 64 }));
    assert!(err.to_string().contains("64"), "{err}");
    assert_eq!(fake.committed().len(), 64);
    table.release(Gsi(10)).unwrap();
    assert_eq!(table.add(msi(1)).unwrap(), Gsi(10));
}

#[test]
fn default_irqchip_routes_are_kept_in_every_commit() {
    let fake = Arc::new(FakeKvm::new(FakeConfig::default()));
    let table = RoutingTable::new(Arc::clone(&fake), DefaultRoutes::Keep);
    let g = table.add(msi(0x40)).unwrap();
    assert_eq!(g, Gsi(24), "GSIs 0..=23 belong to the PIC/IOAPIC");
    let committed = fake.committed();
    assert_eq!(committed.len(), 41);
    for d in default_irqchip_routes() {
        assert!(committed.contains(&d), "{d:?} missing");
    }
}

#[test]
fn discarding_defaults_commits_at_first_change_even_if_empty() {
    let (fake, table) = fake(FakeConfig::default());
    assert!(table.stats().dirty);
    table.update(|_| Ok(())).unwrap();
    assert_eq!(fake.set_routing_calls(), 1);
    assert!(fake.committed().is_empty());
    assert!(!table.stats().dirty);
}

#[test]
fn gsi_sharing_follows_kvm_rules() {
    let (_, table) = fake(FakeConfig::default());
    let pic = Route::Irqchip {
        chip: IrqChip::PicMaster,
        pin: 4,
    };
    let ioapic = Route::Irqchip {
        chip: IrqChip::Ioapic,
        pin: 4,
    };
    table.add_at(Gsi(4), ioapic).unwrap();
    table.add_at(Gsi(4), pic).unwrap();
    // A second pin of the same chip, or any MSI, cannot join.
    let err = table
        .add_at(
            Gsi(4),
            Route::Irqchip {
                chip: IrqChip::Ioapic,
                pin: 5,
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::GsiConflict { .. }), "{err}");
    assert!(matches!(
        table.add_at(Gsi(4), msi(1)),
        Err(Error::GsiConflict { .. })
    ));
    let g = table.add(msi(1)).unwrap();
    assert!(matches!(
        table.add_at(g, ioapic),
        Err(Error::GsiConflict { .. })
    ));
    assert_eq!(table.routes(Gsi(4)), vec![ioapic, pic]);
    assert!(matches!(
        table.add_at(Gsi(9999), msi(1)),
        Err(Error::GsiOutOfRange { limit: 4096, .. })
    ));
}

#[test]
fn hv_sint_routes_need_an_active_synic_first() {
    let (fake, table) = fake(FakeConfig::default());
    let route = Route::HvSint {
        vp: VpIndex(3),
        sint: sint(2),
    };
    let err = table.add(route).unwrap_err();
    assert!(matches!(err, Error::SynicNotActive { vp: VpIndex(3) }));
    assert!(err.to_string().contains("KVM_CAP_HYPERV_SYNIC2"), "{err}");
    assert_eq!(fake.set_routing_calls(), 0);
    table.mark_synic_active(VpIndex(3));
    let g = table.add(route).unwrap();
    assert_eq!(fake.committed(), vec![(g, route)]);
}

#[test]
fn kernel_without_hyperv_is_named_in_the_commit_error() {
    let (fake, table) = fake(FakeConfig {
        hyperv_synic2: false,
        ..FakeConfig::default()
    });
    table.mark_synic_active(VpIndex(0));
    let kept = table.add(msi(0x40)).unwrap();
    let err = table
        .add(Route::HvSint {
            vp: VpIndex(0),
            sint: sint(0),
        })
        .unwrap_err();
    assert!(matches!(err, Error::HypervSynicMissing { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("in-kernel Hyper-V SynIC is missing"),
        "{text}"
    );
    assert!(text.contains("KVM_CAP_HYPERV_SYNIC2"), "{text}");
    assert_eq!(fake.committed(), vec![(kept, msi(0x40))]);
}

#[test]
fn best_effort_release_owes_a_commit_when_kvm_refuses() {
    let (fake, table) = fake(FakeConfig::default());
    let a = table.add(msi(1)).unwrap();
    let b = table.add(msi(2)).unwrap();
    fake.fail_next_commit(libc::ENOMEM);
    assert!(!table.release_best_effort([a]));
    assert!(table.stats().dirty);
    assert_eq!(table.snapshot(), vec![(b, msi(2))]);
    // KVM still has the stale route until the next commit, which any change triggers.
    assert_eq!(fake.committed().len(), 2);
    table.update(|_| Ok(())).unwrap();
    assert_eq!(fake.committed(), vec![(b, msi(2))]);
    assert!(!table.stats().dirty);
}

#[test]
fn irqfd_registers_unregisters_on_drop_and_needs_an_allocated_gsi() {
    let (fake, table) = fake(FakeConfig::default());
    let g = table.add(msi(0x40)).unwrap();
    assert!(matches!(
        table.irqfd(Gsi(g.0 + 1), false),
        Err(Error::GsiNotAllocated { .. })
    ));
    {
        let irqfd = table.irqfd(g, true).unwrap();
        assert!(irqfd.resample().is_some());
        assert_eq!(fake.irqfds(), vec![(g, true)]);
        irqfd.trigger().unwrap();
        let inj = fake.deliver();
        assert_eq!(inj.len(), 1);
        assert_eq!(inj[0].routes, vec![msi(0x40)]);
        assert_eq!(fake.ack_gsi(g), 1);
        assert_eq!(irqfd.resample().unwrap().read().unwrap(), 1);
    }
    assert!(fake.irqfds().is_empty());
    assert!(fake.calls().contains(&Call::UnregisterIrqfd {
        gsi: g,
        found: true
    }));
}

#[test]
fn resample_irqfd_is_refused_under_a_split_irqchip() {
    let (_, table) = fake(FakeConfig {
        irqchip: FakeIrqchip::Split,
        ..FakeConfig::default()
    });
    let g = table.add(msi(0x40)).unwrap();
    let err = table.irqfd(g, true).unwrap_err();
    assert!(
        matches!(err, Error::RegisterIrqfd { resample: true, .. }),
        "{err}"
    );
    assert!(table.irqfd(g, false).is_ok());
}

#[test]
fn detached_irqfd_counts_writes_until_attached() {
    let (fake, table) = fake(FakeConfig::default());
    let g = table.add(msi(0x40)).unwrap();
    let mut irqfd = table.irqfd(g, false).unwrap();
    irqfd.detach().unwrap();
    assert!(fake.irqfds().is_empty());
    irqfd.trigger().unwrap();
    irqfd.trigger().unwrap();
    assert!(fake.deliver().is_empty());
    assert_eq!(irqfd.take_count(), 2);
    assert_eq!(irqfd.take_count(), 0);
    irqfd.attach().unwrap();
    irqfd.attach().unwrap();
    assert_eq!(fake.irqfds().len(), 1);
}
