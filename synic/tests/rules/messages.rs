//! Message posting, slots, MessagePending, EOM and queues.

use synic::{Error, HvMessage, MessageType, Posted, VpIndex};
use synic_msr::{index, Profile};
use vm_memory::Bytes;
use zerocopy::IntoBytes;

use crate::common::*;

#[test]
fn post_to_free_slot_delivers_and_raises_the_sint_vector() {
    let h = Harness::enabled();
    assert_eq!(h.post(0, 3, 42), Posted::Delivered);
    let slot = h.slot(0, 3);
    assert_eq!(slot.header.message_type, MessageType(1));
    assert_eq!(id_of(&slot), 42);
    assert_eq!(slot.header.payload_size, 8);
    assert_eq!(slot.header.sender, 0x77);
    assert!(!slot.header.message_flags.pending());
    assert_eq!(h.raised(), vec![(VpIndex(0), sint(3), vector(3), false)]);
    let c = h.counters(0, 3);
    assert_eq!((c.posted, c.delivered, c.queued), (1, 1, 0));
}

#[test]
fn slot_gets_exactly_the_posted_bytes_with_host_owned_flags_cleared() {
    let h = Harness::enabled();
    let mut m = HvMessage::new(MessageType(0x55), 9, &[0xAB; 240]).unwrap();
    // Flags and reserved bytes are the host's to set: a caller's values are not published.
    m.header.message_flags.0 = 0xFF;
    m.header.reserved = [1, 2];
    h.partition.post_message(VpIndex(0), 0u32, m).unwrap();
    let slot = h.slot(0, 0);
    let mut expected = m;
    expected.header.message_flags.0 = 0;
    expected.header.reserved = [0, 0];
    assert_eq!(slot.as_bytes(), expected.as_bytes());
}

#[test]
fn post_refuses_an_unknown_vp_index_and_returns_the_message() {
    let h = Harness::enabled();
    let err = h
        .partition
        .post_message(VpIndex(2), 0u32, msg(7))
        .unwrap_err();
    assert_eq!(err.error, Error::InvalidVpIndex { vp: VpIndex(2) });
    assert_eq!(id_of(&err.message), 7);
    assert!(h.raised().is_empty());
}

#[test]
fn post_refuses_sint_16() {
    let h = Harness::enabled();
    let err = h
        .partition
        .post_message(VpIndex(0), 16u32, msg(1))
        .unwrap_err();
    assert_eq!(err.error, Error::InvalidSint { sint: 16 });
    let err = h
        .partition
        .post_message(VpIndex(0), u32::MAX, msg(1))
        .unwrap_err();
    assert_eq!(err.error, Error::InvalidSint { sint: u32::MAX });
}

#[test]
fn post_refuses_payload_size_above_240() {
    let h = Harness::enabled();
    let mut m = msg(1);
    m.header.payload_size = 241;
    let err = h.partition.post_message(VpIndex(0), 0u32, m).unwrap_err();
    assert_eq!(err.error, Error::PayloadTooLarge { size: 241 });
    assert_eq!(err.message, m);
    m.header.payload_size = 240;
    assert!(h.partition.post_message(VpIndex(0), 0u32, m).is_ok());
}

#[test]
fn guest_path_refuses_type_none_and_hypervisor_types_host_path_accepts_bit_31() {
    let h = Harness::enabled();
    let none = HvMessage::new(MessageType::NONE, 0, &[]).unwrap();
    let e = h.partition.post_message(VpIndex(0), 0u32, none);
    assert_eq!(e.unwrap_err().error, Error::MessageTypeNone);
    let e = h.partition.post_hypervisor_message(VpIndex(0), 0u32, none);
    assert_eq!(e.unwrap_err().error, Error::MessageTypeNone);

    let timer = HvMessage::new(MessageType::TIMER_EXPIRED, 0, &[0; 24]).unwrap();
    let e = h.partition.post_message(VpIndex(0), 0u32, timer);
    assert_eq!(
        e.unwrap_err().error,
        Error::HypervisorMessageType {
            message_type: 0x8000_0010
        }
    );
    let ok = h.partition.post_hypervisor_message(VpIndex(0), 0u32, timer);
    assert_eq!(ok, Ok(Posted::Delivered));
    assert_eq!(h.slot(0, 0).header.message_type, MessageType::TIMER_EXPIRED);
}

#[test]
fn busy_slot_sets_message_pending_and_queues() {
    let h = Harness::enabled();
    h.post(0, 1, 1);
    assert_eq!(h.post(0, 1, 2), Posted::Queued);
    let slot = h.slot(0, 1);
    assert_eq!(id_of(&slot), 1, "the busy slot is not overwritten");
    assert!(slot.header.message_flags.pending());
    assert_eq!(h.raised().len(), 1, "no interrupt for a queued message");
    let c = h.counters(0, 1);
    assert_eq!(
        (c.posted, c.delivered, c.queued, c.pending_sets),
        (2, 1, 1, 1)
    );
}

#[test]
fn eom_redelivers_pending_message() {
    let mut h = Harness::enabled();
    h.post(0, 1, 1);
    h.post(0, 1, 2);
    assert!(h.guest_free_slot(0, 1), "the guest sees MessagePending");
    h.eom(0);
    assert_eq!(id_of(&h.slot(0, 1)), 2);
    assert_eq!(h.raised().len(), 2);
    assert_eq!(h.partition.counters(VpIndex(0)).unwrap().eoms, 1);
}

#[test]
fn delivered_message_carries_pending_when_more_are_queued() {
    let mut h = Harness::enabled();
    for id in 1..=3 {
        h.post(0, 4, id);
    }
    assert_eq!(h.isr(0, 4), Some(1));
    // Message 2 is in the slot and message 3 waits behind it: 2 says so itself.
    let slot = h.slot(0, 4);
    assert_eq!(id_of(&slot), 2);
    assert!(slot.header.message_flags.pending());
    assert_eq!(h.isr(0, 4), Some(2));
    let slot = h.slot(0, 4);
    assert_eq!(id_of(&slot), 3);
    assert!(!slot.header.message_flags.pending());
}

#[test]
fn messages_of_one_sint_arrive_in_post_order() {
    let mut h = Harness::enabled();
    let mut got = Vec::new();
    let mut next = 0;
    for round in 0..20 {
        for _ in 0..(round % 4) {
            if h.partition
                .post_message(VpIndex(0), 6u32, msg(next))
                .is_ok()
            {
                next += 1;
            }
        }
        got.extend(h.isr(0, 6));
    }
    while let Some(id) = h.isr(0, 6) {
        got.push(id);
    }
    assert_eq!(got, (0..next).collect::<Vec<_>>());
}

#[test]
fn full_queue_refuses_and_returns_the_message() {
    let h = Harness::enabled();
    h.post(0, 2, 0); // in the slot
    for id in 1..=4 {
        assert_eq!(h.post(0, 2, id), Posted::Queued);
    }
    let err = h
        .partition
        .post_message(VpIndex(0), 2u32, msg(5))
        .unwrap_err();
    assert_eq!(
        err.error,
        Error::QueueFull {
            vp: VpIndex(0),
            sint: sint(2),
            capacity: 4
        }
    );
    assert_eq!(id_of(&err.message), 5);
    let c = h.counters(0, 2);
    assert_eq!((c.posted, c.queued, c.rejected_full), (5, 4, 1));
}

#[test]
fn full_queue_first_tries_the_slot_the_guest_freed_without_eom() {
    let h = Harness::enabled();
    for id in 0..=4 {
        h.post(0, 2, id);
    }
    // The guest frees the slot but (misbehaving) never writes EOM.
    h.guest_free_slot(0, 2);
    assert_eq!(h.post(0, 2, 5), Posted::Queued);
    assert_eq!(id_of(&h.slot(0, 2)), 1);
    assert_eq!(h.counters(0, 2).queued, 4);
}

#[test]
fn a_new_post_redelivers_when_the_slot_was_freed_without_eom() {
    let h = Harness::enabled();
    h.post(0, 0, 1);
    h.post(0, 0, 2);
    h.guest_free_slot(0, 0); // no EOM
    h.post(0, 0, 3);
    assert_eq!(id_of(&h.slot(0, 0)), 2);
    assert_eq!(h.counters(0, 0).queued, 1);
}

#[test]
fn spurious_eom_changes_nothing() {
    let mut h = Harness::enabled();
    h.post(0, 0, 1);
    h.eom(0);
    h.eom(0);
    assert_eq!(id_of(&h.slot(0, 0)), 1);
    assert_eq!(h.raised().len(), 1);
    assert_eq!(h.counters(0, 0).delivered, 1);
}

#[test]
fn guest_scribbled_slot_counts_as_busy() {
    let mut h = Harness::enabled();
    let garbage = HvMessage::new(MessageType(0xDEAD), 0, &[0xEE; 16]).unwrap();
    h.mem
        .write_slice(
            garbage.as_bytes(),
            vm_memory::GuestAddress(simp_gpa(0) + 256 * 5),
        )
        .unwrap();
    assert_eq!(h.post(0, 5, 1), Posted::Queued);
    assert_eq!(h.slot(0, 5).header.message_type, MessageType(0xDEAD));
    assert!(h.slot(0, 5).header.message_flags.pending());
    assert!(h.guest_free_slot(0, 5));
    h.eom(0);
    assert_eq!(id_of(&h.slot(0, 5)), 1);
}

#[test]
fn disabled_message_page_keeps_messages_queued_until_enabled() {
    let mut h = Harness::new(Profile::Tlfs);
    h.wrmsr(0, index::SCONTROL, 1);
    h.wrmsr(0, index::SINT0 + 7, 0x50);
    assert_eq!(h.post(0, 7, 1), Posted::Queued);
    assert_eq!(h.post(0, 7, 2), Posted::Queued);
    assert!(h.raised().is_empty());
    clear_dirty(&h.mem);
    h.wrmsr(0, index::SIMP, simp_gpa(0) | 1);
    assert_eq!(id_of(&h.slot(0, 7)), 1);
    assert_eq!(h.raised(), vec![(VpIndex(0), sint(7), 0x50, false)]);
    assert_eq!(dirty_pages(&h.mem), vec![simp_gpa(0)]);
}

#[test]
fn tlfs_disabled_synic_refuses_posts_but_keeps_what_was_queued() {
    let mut h = Harness::enabled();
    h.post(0, 0, 1);
    h.post(0, 0, 2);
    h.wrmsr(0, index::SCONTROL, 0);
    let err = h
        .partition
        .post_message(VpIndex(0), 0u32, msg(3))
        .unwrap_err();
    assert_eq!(err.error, Error::SynicDisabled { vp: VpIndex(0) });
    // The guest frees the slot and writes EOM while disabled: nothing moves.
    assert!(h.guest_free_slot(0, 0));
    h.eom(0);
    assert!(h.slot(0, 0).header.message_type.is_none());
    // Enabling again delivers the queued message.
    h.wrmsr(0, index::SCONTROL, 1);
    assert_eq!(id_of(&h.slot(0, 0)), 2);
}

#[test]
fn kvm_profile_scontrol_gates_nothing() {
    let mut h = Harness::new(Profile::Kvm);
    h.enable(0);
    h.wrmsr(0, index::SCONTROL, 0);
    assert_eq!(h.post(0, 0, 1), Posted::Delivered);
}

#[test]
fn masked_sint_gets_the_message_but_no_interrupt() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SINT0 + 9, 0x1_0040);
    assert_eq!(h.post(0, 9, 1), Posted::Delivered);
    assert_eq!(id_of(&h.slot(0, 9)), 1);
    assert!(h.raised().is_empty());
}

#[test]
fn polling_sint_gets_the_message_but_no_interrupt() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SINT0 + 9, 0x4_0040);
    assert_eq!(h.post(0, 9, 1), Posted::Delivered);
    assert!(h.raised().is_empty());
}

#[test]
fn auto_eoi_sint_raises_with_auto_eoi() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SINT0 + 9, 0x2_0041);
    h.post(0, 9, 1);
    assert_eq!(h.raised(), vec![(VpIndex(0), sint(9), 0x41, true)]);
}

#[test]
fn message_page_outside_ram_refuses_the_post_without_queueing() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SIMP, (RAM_SIZE as u64 + 0x5000) | 1);
    let err = h
        .partition
        .post_message(VpIndex(0), 0u32, msg(1))
        .unwrap_err();
    assert_eq!(
        err.error,
        Error::PageNotInRam {
            gpa: RAM_SIZE as u64 + 0x5000
        }
    );
    assert_eq!(id_of(&err.message), 1);
    let c = h.counters(0, 0);
    assert_eq!((c.posted, c.queued, c.page_errors), (0, 0, 1));
    // An EOM against the bad page is counted, not a failure of the EOM.
    h.eom(0);
}

#[test]
fn page_move_carries_the_slot_along_and_delivers_to_the_new_page_only() {
    let mut h = Harness::enabled();
    h.post(0, 3, 1);
    h.post(0, 3, 2);
    let new_page = 0x8_0000;
    clear_dirty(&h.mem);
    h.wrmsr(0, index::SIMP, new_page | 1);
    // The message page is an overlay: the slot content moved with it, the old address shows
    // the RAM it hid (zero here) again, and the queued message waits behind the busy slot.
    let moved = h.slot_at(new_page, 3);
    assert_eq!(id_of(&moved), 1);
    assert!(moved.header.message_flags.pending());
    assert!(h.slot(0, 3).header.message_type.is_none());
    assert_eq!(dirty_pages(&h.mem), vec![simp_gpa(0), new_page]);
    clear_dirty(&h.mem);
    assert!(h.guest_free_slot_at(new_page, 3));
    h.eom(0);
    assert_eq!(id_of(&h.slot_at(new_page, 3)), 2);
    assert_eq!(dirty_pages(&h.mem), vec![new_page]);
}

#[test]
fn host_writes_mark_only_the_two_pages_dirty() {
    let h = Harness::enabled();
    clear_dirty(&h.mem);
    h.post(0, 0, 1);
    h.post(0, 0, 2);
    h.partition.signal_event(VpIndex(0), 1u32, 5).unwrap();
    assert_eq!(dirty_pages(&h.mem), vec![simp_gpa(0), siefp_gpa(0)]);
}

#[test]
fn sint_write_updates_the_route() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SINT0 + 2, 0x77);
    assert_eq!(
        h.raise.take(),
        vec![synic::testing::RaiseEvent::SintChanged {
            vp: VpIndex(0),
            sint: sint(2),
            value: synic::Sint(0x77)
        }]
    );
    h.post(0, 2, 1);
    assert_eq!(h.raised(), vec![(VpIndex(0), sint(2), 0x77, false)]);
}

#[test]
fn sints_and_vps_have_separate_queues() {
    let mut h = Harness::new(Profile::Tlfs);
    h.enable(0);
    h.enable(1);
    h.post(0, 0, 1);
    h.post(0, 1, 2);
    h.post(1, 0, 3);
    assert_eq!(id_of(&h.slot(0, 0)), 1);
    assert_eq!(id_of(&h.slot(0, 1)), 2);
    assert_eq!(id_of(&h.slot(1, 0)), 3);
}
