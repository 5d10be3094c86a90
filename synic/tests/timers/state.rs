//! Save and restore of timers and of the reference time.

use synic::{Error, Mode, PartitionConfig, STATE_VERSION};
use synic_msr::{index, Origin, Profile};
use vm_memory::{Bytes, GuestAddress};

use crate::common::*;
use crate::{config_msr, message_config};

fn copy_memory(from: &Space) -> Space {
    let to = new_memory();
    let mut buf = vec![0u8; RAM_SIZE];
    from.read_slice(&mut buf, GuestAddress(0)).unwrap();
    to.write_slice(&buf, GuestAddress(0)).unwrap();
    to
}

fn config() -> PartitionConfig {
    PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 2).with_queue_capacity(4)
}

/// Saves `src` at its clock's time and restores it into a fresh partition (clock at
/// `dst_clock`) with `downtime`.
fn migrate(src: &Harness, dst_clock: u64, downtime: u64) -> Harness {
    let vp_state = src.vps[0].save();
    let part_state = src.partition.save();
    let mut dst = Harness::with_memory(config(), copy_memory(&src.mem));
    dst.clock.set(dst_clock);
    dst.partition
        .restore_with_downtime(&part_state, downtime)
        .unwrap();
    dst.vps[0].restore(&vp_state).unwrap();
    dst
}

#[test]
fn reference_time_continues_from_the_saved_value_plus_the_declared_downtime() {
    let src = Harness::enabled();
    src.clock.set(5_000_000);
    // The destination's own clock is behind, or far ahead: neither shows through.
    for dst_clock in [0, 9_000_000_000] {
        let dst = migrate(&src, dst_clock, 20_000_000);
        let read = || {
            dst.vps[0]
                .rdmsr(index::TIME_REF_COUNT, Origin::Guest)
                .unwrap()
        };
        assert_eq!(read(), 25_000_000);
        dst.clock.advance(3);
        assert_eq!(read(), 25_000_003);
        let dst = migrate(&src, dst_clock, 0);
        assert_eq!(dst.partition.reference_time(), 5_000_000);
    }
}

/// A periodic timer started at 500 with period 1 000: expiries at 1 500 and 2 500 delivered
/// (2 500 still in the slot), the one at 3 500 waiting for the slot; saved at 3 600.
fn source_with_waiting_expiry(lazy: bool) -> Harness {
    let mut src = Harness::enabled();
    src.clock.set(500);
    src.start_timer(0, 1, message_config(true, lazy, 2), 1_000);
    assert_eq!(src.poll_at(1_500).signalled, 1);
    src.take(0, 2);
    assert_eq!(src.poll_at(2_500).signalled, 1);
    assert_eq!(src.poll_at(3_500).signalled, 0);
    src.clock.set(3_600);
    src
}

#[test]
fn restore_keeps_the_periodic_phase_and_the_waiting_expiry() {
    let src = source_with_waiting_expiry(false);
    let saved = src.vps[0].save();
    assert_eq!(saved.version, STATE_VERSION);
    assert_eq!(saved.timers.len(), 4);
    assert_eq!((saved.timers[1].start, saved.timers[1].reported), (500, 2));
    let mut dst = migrate(&src, 0, 0);
    assert_eq!(dst.vps[0].save(), saved);
    assert_eq!(dst.partition.next_timer_deadline(), Some(4_500));
    // The guest finishes with 2 500 and EOMs: 3 500 arrives, delivered at the restored time.
    assert_eq!(dst.take(0, 2).unwrap().0.unwrap().expiration_time, 2_500);
    let p = dst.timer_in_slot(0, 2).unwrap();
    assert_eq!((p.expiration_time, p.delivery_time), (3_500, 3_600));
    dst.take(0, 2);
    assert_eq!(dst.poll_at(4_500).signalled, 1);
    assert_eq!(dst.timer_in_slot(0, 2).unwrap().expiration_time, 4_500);
}

#[test]
fn downtime_is_caught_up_by_a_non_lazy_timer_and_skipped_by_a_lazy_one() {
    for lazy in [false, true] {
        let src = source_with_waiting_expiry(lazy);
        let mut dst = migrate(&src, 0, 5_000); // restored at 8 600
        dst.take(0, 2); // 2 500
        let mut got = Vec::new();
        while let Some((Some(p), _)) = dst.take(0, 2) {
            got.push(p.expiration_time);
        }
        if lazy {
            assert_eq!(got, vec![8_500]);
        } else {
            assert_eq!(got, vec![3_500, 4_500, 5_500, 6_500, 7_500, 8_500]);
        }
        assert_eq!(dst.partition.next_timer_deadline(), Some(9_500));
    }
}

#[test]
fn an_expired_one_shot_is_saved_disabled_and_never_fires_again() {
    let mut src = Harness::enabled();
    src.start_timer(0, 0, message_config(false, false, 2), 100);
    assert_eq!(src.poll_at(100).signalled, 1);
    let saved = src.vps[0].save();
    let cfg = saved
        .registers
        .iter()
        .find(|(msr, _)| *msr == config_msr(0))
        .unwrap()
        .1;
    assert_eq!(cfg & 1, 0, "Enable is saved cleared");
    let mut dst = migrate(&src, 0, 0);
    assert!(!dst.timer_config(0, 0).enabled());
    dst.take(0, 2);
    assert_eq!(dst.poll_at(1_000_000).signalled, 0);
}

#[test]
fn a_one_shot_waiting_for_its_slot_is_delivered_once_after_restore() {
    let mut src = Harness::enabled();
    src.post(0, 2, 1);
    src.start_timer(0, 0, message_config(false, false, 2), 100);
    assert_eq!(src.poll_at(200).signalled, 0);
    let mut dst = migrate(&src, 0, 0);
    assert!(dst.timer_config(0, 0).enabled());
    assert_eq!(dst.take(0, 2), Some((None, true)));
    assert_eq!(dst.timer_in_slot(0, 2).unwrap().expiration_time, 100);
    dst.take(0, 2);
    assert_eq!(dst.poll_at(10_000).signalled, 0);
    assert!(dst.timer_in_slot(0, 2).is_none());
    assert!(!dst.timer_config(0, 0).enabled());
}

#[test]
fn version_1_state_restarts_enabled_timers_at_the_restore() {
    let src = source_with_waiting_expiry(false);
    let mut state = src.vps[0].save();
    state.version = 1;
    state.timers.clear();
    let mut dst = Harness::with_memory(config(), copy_memory(&src.mem));
    dst.clock.set(7_000);
    dst.vps[0].restore(&state).unwrap();
    assert_eq!(dst.partition.next_timer_deadline(), Some(8_000));
}

#[test]
fn restore_refuses_inconsistent_timer_state() {
    let src = source_with_waiting_expiry(false);
    let good = src.vps[0].save();
    let mut dst = Harness::with_config(config());
    let mut s = good.clone();
    s.timers.pop();
    assert!(matches!(
        dst.vps[0].restore(&s),
        Err(Error::StateMismatch { .. })
    ));
    let mut s = good.clone();
    s.timers[0].armed = true; // timer 0 is disabled
    assert!(matches!(
        dst.vps[0].restore(&s),
        Err(Error::StateMismatch { .. })
    ));
    // Nothing changed on refusal.
    assert_eq!(dst.partition.next_timer_deadline(), None);
    dst.vps[0].restore(&good).unwrap();
}
