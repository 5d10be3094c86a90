//! MSI-X mask and pending behaviour against the recording fake kernel.

use std::sync::Arc;

use synic_routing::fake::{FakeConfig, FakeKvm};
use synic_routing::{
    DefaultRoutes, Error, MsiRoute, MsixVectors, Route, RoutingTable, MSIX_ENTRY_SIZE,
};

fn setup(count: u16) -> (Arc<FakeKvm>, MsixVectors<FakeKvm>) {
    let fake = Arc::new(FakeKvm::new(FakeConfig::default()));
    let table = Arc::new(RoutingTable::new(Arc::clone(&fake), DefaultRoutes::Discard));
    let msix = MsixVectors::new(table, count, None).unwrap();
    (fake, msix)
}

fn msi(vector: u8) -> (u64, u32) {
    let m = MsiRoute::fixed(0, vector);
    (m.address, m.data)
}

fn program(msix: &mut MsixVectors<FakeKvm>, v: u16, vector: u8) {
    let (a, d) = msi(vector);
    msix.set_message(v, a, d).unwrap();
}

fn delivered(fake: &FakeKvm) -> Vec<Vec<Route>> {
    fake.deliver().into_iter().map(|i| i.routes).collect()
}

fn route(vector: u8) -> Vec<Route> {
    vec![Route::Msi(MsiRoute::fixed(0, vector))]
}

#[test]
fn vectors_start_masked_with_gsis_in_one_commit() {
    let (fake, msix) = setup(8);
    assert_eq!(fake.set_routing_calls(), 1);
    assert_eq!(fake.committed().len(), 8);
    assert!(fake.irqfds().is_empty(), "masked vectors are detached");
    assert!((0..8).all(|v| msix.is_masked(v).unwrap()));
}

#[test]
fn table_size_is_bounded() {
    let fake = Arc::new(FakeKvm::new(FakeConfig::default()));
    let table = Arc::new(RoutingTable::new(fake, DefaultRoutes::Discard));
    for bad in [0, 2049] {
        let err = MsixVectors::new(Arc::clone(&table), bad, None).unwrap_err();
        assert!(matches!(err, Error::MsixVector { .. }), "{err}");
    }
}

#[test]
fn messages_programmed_while_masked_commit_at_unmask() {
    let (fake, mut msix) = setup(2);
    program(&mut msix, 0, 0x40);
    assert_eq!(fake.set_routing_calls(), 1, "no commit while masked");
    msix.set_masked(0, false).unwrap();
    assert_eq!(fake.set_routing_calls(), 2);
    assert_eq!(fake.irqfds().len(), 1);
    msix.trigger(0).unwrap();
    assert_eq!(delivered(&fake), vec![route(0x40)]);
    // Rewritten while unmasked: committed right away.
    program(&mut msix, 0, 0x41);
    assert_eq!(fake.set_routing_calls(), 3);
    msix.trigger(0).unwrap();
    assert_eq!(delivered(&fake), vec![route(0x41)]);
}

#[test]
fn fire_while_masked_is_pending_and_delivered_exactly_once_on_unmask() {
    let (fake, mut msix) = setup(1);
    program(&mut msix, 0, 0x40);
    msix.trigger(0).unwrap();
    msix.trigger(0).unwrap();
    assert!(delivered(&fake).is_empty(), "masked vector fired");
    assert!(msix.is_pending(0).unwrap());
    assert!(
        msix.is_pending(0).unwrap(),
        "reading the PBA must not clear it"
    );
    msix.set_masked(0, false).unwrap();
    assert!(!msix.is_pending(0).unwrap());
    assert_eq!(delivered(&fake), vec![route(0x40)]);
    assert!(delivered(&fake).is_empty(), "duplicated");
    // Mask again with nothing pending: unmask fires nothing.
    msix.set_masked(0, true).unwrap();
    msix.set_masked(0, false).unwrap();
    assert!(delivered(&fake).is_empty());
}

#[test]
fn device_writes_to_the_eventfd_count_as_fires() {
    let (fake, mut msix) = setup(1);
    program(&mut msix, 0, 0x40);
    msix.eventfd(0).unwrap().write(3).unwrap();
    msix.set_masked(0, false).unwrap();
    assert_eq!(delivered(&fake), vec![route(0x40)]);
    msix.eventfd(0).unwrap().write(1).unwrap();
    assert_eq!(delivered(&fake), vec![route(0x40)]);
}

#[test]
fn function_mask_holds_every_vector_and_releases_in_one_commit() {
    let (fake, mut msix) = setup(4);
    for v in 0..4 {
        program(&mut msix, v, 0x40 + v as u8);
        msix.set_masked(v, false).unwrap();
    }
    msix.set_masked(3, true).unwrap();
    msix.set_function_mask(true).unwrap();
    assert!(fake.irqfds().is_empty());
    for v in 0..4 {
        msix.trigger(v).unwrap();
        program(&mut msix, v, 0x50 + v as u8);
    }
    assert!(delivered(&fake).is_empty());
    assert!((0..4).all(|v| msix.is_pending(v).unwrap()));
    let calls = fake.set_routing_calls();
    msix.set_function_mask(false).unwrap();
    assert_eq!(fake.set_routing_calls(), calls + 1, "one commit for all");
    let mut got = delivered(&fake);
    got.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(got, vec![route(0x50), route(0x51), route(0x52)]);
    // Vector 3 is still masked by its own bit and still pending.
    assert!(msix.is_pending(3).unwrap());
    msix.set_masked(3, false).unwrap();
    assert_eq!(delivered(&fake), vec![route(0x53)]);
}

#[test]
fn mask_bit_changes_under_function_mask_take_effect_at_release() {
    let (fake, mut msix) = setup(1);
    program(&mut msix, 0, 0x40);
    msix.set_function_mask(true).unwrap();
    msix.set_masked(0, false).unwrap();
    assert!(fake.irqfds().is_empty());
    msix.trigger(0).unwrap();
    msix.set_function_mask(false).unwrap();
    assert_eq!(delivered(&fake), vec![route(0x40)]);
}

#[test]
fn mmio_table_and_pba_follow_the_pci_layout() {
    let (fake, mut msix) = setup(70);
    let (addr, data) = msi(0x44);
    let base = 69 * MSIX_ENTRY_SIZE;
    msix.table_write(base, &(addr as u32).to_le_bytes())
        .unwrap();
    msix.table_write(base + 4, &0u32.to_le_bytes()).unwrap();
    msix.table_write(base + 8, &data.to_le_bytes()).unwrap();
    assert_eq!(msix.message(69).unwrap(), MsiRoute::fixed(0, 0x44));
    let mut buf = [0u8; 8];
    msix.table_read(base + 8, &mut buf);
    assert_eq!(
        buf,
        [0x44, 0, 0, 0, 1, 0, 0, 0],
        "data, then masked control"
    );
    msix.trigger(69).unwrap();
    let mut pba = [0u8; 8];
    msix.pba_read(8, &mut pba);
    assert_eq!(
        pba,
        [0x20, 0, 0, 0, 0, 0, 0, 0],
        "vector 69 is bit 5 of qword 1"
    );
    // Unmask through Vector Control: the pending interrupt goes out once.
    msix.table_write(base + 12, &0u32.to_le_bytes()).unwrap();
    assert_eq!(delivered(&fake), vec![route(0x44)]);
    msix.pba_read(8, &mut pba);
    assert_eq!(pba, [0; 8]);
}

#[test]
fn malformed_mmio_is_ignored() {
    let (fake, mut msix) = setup(2);
    let calls = fake.set_routing_calls();
    for (offset, len) in [
        (1, 4),
        (4, 8),
        (0, 2),
        (0, 16),
        (2 * 16, 4),
        (u64::MAX - 3, 4),
    ] {
        msix.table_write(offset, &vec![0xFF; len]).unwrap();
        let mut buf = vec![0xAA; len];
        msix.table_read(offset, &mut buf);
        assert!(buf.iter().all(|&b| b == 0), "read at {offset:#x}/{len}");
        msix.pba_read(offset, &mut buf);
        assert!(buf.iter().all(|&b| b == 0), "pba at {offset:#x}/{len}");
    }
    assert_eq!(fake.set_routing_calls(), calls);
    assert!((0..2).all(|v| msix.is_masked(v).unwrap()));
    assert!(matches!(
        msix.trigger(2),
        Err(Error::MsixVector {
            vector: 2,
            count: 2
        })
    ));
}

#[test]
fn dropping_releases_gsis_and_irqfds() {
    let (fake, mut msix) = setup(3);
    msix.set_masked(1, false).unwrap();
    assert_eq!(fake.irqfds().len(), 1);
    drop(msix);
    assert!(fake.irqfds().is_empty());
    assert!(fake.committed().is_empty());
}
