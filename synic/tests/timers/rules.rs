//! One test per timer rule (docs/timers.md), on the fake clock.

use synic::{MessageFlags, MessageType, Mode, PartitionConfig, VmmAction, VpIndex};
use synic_msr::{index, Origin, Profile, StimerConfig, StimerIndex};

use crate::common::*;
use crate::{config_msr, count_msr, message_config};

#[test]
fn time_ref_count_starts_at_zero_and_follows_the_reference_clock() {
    let h = Harness::enabled();
    let read = || {
        h.vps[0]
            .rdmsr(index::TIME_REF_COUNT, Origin::Guest)
            .unwrap()
    };
    assert_eq!(read(), 0);
    h.clock.advance(12_345);
    assert_eq!(read(), 12_345);
    assert_eq!(h.partition.reference_time(), 12_345);
    let mut h = h;
    assert!(h.vps[0]
        .wrmsr(index::TIME_REF_COUNT, 5, Origin::Guest)
        .is_err());
}

#[test]
fn periodic_expiry_message_carries_index_expiration_and_delivery_time() {
    let mut h = Harness::enabled();
    h.clock.set(1_000);
    h.start_timer(0, 1, message_config(true, false, 2), 10_000);
    assert_eq!(h.partition.next_timer_deadline(), Some(11_000));
    let poll = h.poll_at(10_999);
    assert_eq!((poll.signalled, poll.next_deadline), (0, Some(11_000)));
    assert!(h.timer_in_slot(0, 2).is_none());

    let poll = h.poll_at(11_007);
    assert_eq!((poll.signalled, poll.next_deadline), (1, Some(21_000)));
    let m = h.slot(0, 2);
    assert_eq!(m.header.message_type, MessageType::TIMER_EXPIRED);
    assert_eq!(m.header.payload_size, 24);
    assert_eq!(m.header.sender, 0);
    assert!(!m.header.message_flags.pending());
    let p = h.timer_in_slot(0, 2).unwrap();
    assert_eq!(
        (
            p.timer_index,
            p.reserved,
            p.expiration_time,
            p.delivery_time
        ),
        (1, 0, 11_000, 11_007)
    );
    assert_eq!(h.raised(), vec![(VpIndex(0), sint(2), vector(2), false)]);
    assert!(
        h.timer_config(0, 1).enabled(),
        "periodic timers stay enabled"
    );
}

#[test]
fn one_shot_fires_at_its_absolute_count_and_disables_itself() {
    let mut h = Harness::enabled();
    h.clock.set(100);
    h.start_timer(0, 0, message_config(false, false, 3), 50_000);
    assert_eq!(h.poll_at(49_999).next_deadline, Some(50_000));
    assert!(h.timer_in_slot(0, 3).is_none());
    let poll = h.poll_at(50_000);
    assert_eq!((poll.signalled, poll.next_deadline), (1, None));
    let p = h.timer_in_slot(0, 3).unwrap();
    assert_eq!((p.timer_index, p.expiration_time), (0, 50_000));
    assert!(
        !h.timer_config(0, 0).enabled(),
        "a one-shot disables itself"
    );
    assert_eq!(h.vps[0].rdmsr(count_msr(0), Origin::Guest).unwrap(), 50_000);
    // Nothing more, ever.
    h.take(0, 3);
    assert_eq!(h.poll_at(1_000_000).signalled, 0);
}

#[test]
fn one_shot_in_the_past_expires_before_the_write_returns() {
    let mut h = Harness::enabled();
    h.clock.set(100_000);
    h.wrmsr(0, count_msr(2), 5);
    let w = h.vps[0]
        .wrmsr(
            config_msr(2),
            message_config(false, false, 1),
            Origin::Guest,
        )
        .unwrap();
    assert_eq!(
        w.action,
        Some(VmmAction::StimerChanged(StimerIndex::new(2).unwrap()))
    );
    let p = h.timer_in_slot(0, 1).expect("delivered without a poll");
    assert_eq!((p.expiration_time, p.delivery_time), (5, 100_000));
    assert_eq!(h.raised().len(), 1);
    assert_eq!(h.partition.next_timer_deadline(), None);
}

#[test]
fn auto_enable_starts_the_timer_on_a_non_zero_count_write() {
    for profile in [Profile::Tlfs, Profile::Kvm] {
        let mut h = Harness::new(profile);
        h.enable(0);
        h.clock.set(7);
        let auto = StimerConfig::new(false, true, false, true, 2).0;
        h.wrmsr(0, config_msr(0), auto);
        assert_eq!(h.partition.next_timer_deadline(), None);
        h.wrmsr(0, count_msr(0), 1_000);
        assert!(h.timer_config(0, 0).enabled(), "{profile:?}");
        assert_eq!(h.partition.next_timer_deadline(), Some(1_007));
        assert_eq!(h.poll_at(1_007).signalled, 1);
    }
}

#[test]
fn count_zero_stops_the_timer_and_cancels_a_waiting_expiry() {
    let mut h = Harness::enabled();
    h.start_timer(0, 0, message_config(true, false, 2), 1_000);
    h.post(0, 2, 1); // the slot is busy
    assert_eq!(h.poll_at(1_000).signalled, 0);
    assert_eq!(h.timer_counters(0, 0).deferred, 1);
    h.wrmsr(0, count_msr(0), 0);
    assert!(!h.timer_config(0, 0).enabled());
    assert_eq!(h.partition.next_timer_deadline(), None);
    // The guest frees the slot and EOMs (MessagePending was set): no expiry comes.
    assert_eq!(h.take(0, 2), Some((None, true)));
    assert!(h.timer_in_slot(0, 2).is_none());
    assert_eq!(h.poll_at(10_000).signalled, 0);
}

#[test]
fn sintx_zero_disables_an_enabled_message_mode_timer() {
    // TLFS: an enable with SINTx = 0 is stored disabled.
    let mut h = Harness::enabled();
    h.start_timer(0, 0, message_config(true, false, 0), 1_000);
    assert!(!h.timer_config(0, 0).enabled());
    assert_eq!(h.partition.next_timer_deadline(), None);
    // KVM: rewriting an enabled timer with SINTx = 0 disables it.
    let mut h = Harness::new(Profile::Kvm);
    h.enable(0);
    h.start_timer(0, 0, message_config(true, false, 2), 1_000);
    assert_eq!(h.partition.next_timer_deadline(), Some(1_000));
    h.wrmsr(0, config_msr(0), message_config(true, false, 0));
    assert!(!h.timer_config(0, 0).enabled());
    assert_eq!(h.partition.next_timer_deadline(), None);
}

#[test]
fn direct_mode_raises_the_apic_vector_and_writes_no_message() {
    let mut h = Harness::enabled();
    h.start_timer(0, 3, StimerConfig::new_direct(true, true, 0x99).0, 1_000);
    for n in 1..=3u64 {
        assert_eq!(h.poll_at(n * 1_000 + 5).signalled, 1);
    }
    assert_eq!(h.raise.vectors(), vec![(VpIndex(0), 0x99); 3]);
    assert!(h.raised().is_empty(), "no SINT is raised");
    assert!((0..16).all(|s| h.slot(0, s).header.message_type.is_none()));
    // A direct one-shot disables itself too.
    h.start_timer(0, 2, StimerConfig::new_direct(true, false, 0x98).0, 4_000);
    assert_eq!(h.poll_at(4_000).signalled, 2);
    assert!(!h.timer_config(0, 2).enabled());
    assert!(h.raise.vectors().contains(&(VpIndex(0), 0x98)));
}

#[test]
fn busy_slot_keeps_the_expiry_and_eom_delivers_it() {
    let mut h = Harness::enabled();
    h.post(0, 2, 7);
    h.raise.take();
    h.start_timer(0, 0, message_config(false, false, 2), 500);
    assert_eq!(h.poll_at(600).signalled, 0);
    assert!(
        h.slot(0, 2).header.message_flags.pending(),
        "MessagePending asks for an EOM"
    );
    assert!(h.timer_config(0, 0).enabled(), "not delivered yet");
    // The guest handles the device message at 900 and EOMs: the expiry goes in at once.
    h.clock.set(900);
    assert_eq!(h.take(0, 2), Some((None, true)));
    let p = h.timer_in_slot(0, 2).unwrap();
    assert_eq!((p.expiration_time, p.delivery_time), (500, 900));
    assert!(!h.timer_config(0, 0).enabled());
    assert_eq!(h.raised(), vec![(VpIndex(0), sint(2), vector(2), false)]);
    assert_eq!(h.timer_counters(0, 0).max_lateness, 400);
}

/// A periodic timer whose slot stays busy for 3.5 periods.
fn stalled_periodic(lazy: bool) -> Harness {
    let mut h = Harness::enabled();
    h.post(0, 2, 7);
    h.start_timer(0, 0, message_config(true, lazy, 2), 1_000);
    for t in [1_000, 2_000, 3_000] {
        assert_eq!(h.poll_at(t).signalled, 0);
    }
    h.clock.set(3_500);
    assert_eq!(h.take(0, 2), Some((None, true)));
    h
}

#[test]
fn busy_periodic_ticks_are_not_lost_non_lazy_reports_each_missed_period() {
    let mut h = stalled_periodic(false);
    let mut got = Vec::new();
    while let Some((Some(p), eom)) = h.take(0, 2) {
        got.push((p.expiration_time, p.delivery_time, eom));
    }
    // Oldest first, each with MessagePending until the backlog is empty.
    assert_eq!(
        got,
        vec![
            (1_000, 3_500, true),
            (2_000, 3_500, true),
            (3_000, 3_500, false)
        ]
    );
    assert_eq!(h.timer_counters(0, 0).skipped, 0);
    assert_eq!(h.poll_at(3_999).signalled, 0);
    assert_eq!(h.poll_at(4_000).signalled, 1);
    assert_eq!(h.timer_in_slot(0, 2).unwrap().expiration_time, 4_000);
}

#[test]
fn busy_periodic_ticks_of_a_lazy_timer_collapse_into_the_latest() {
    let mut h = stalled_periodic(true);
    let p = h.timer_in_slot(0, 2).unwrap();
    assert_eq!((p.expiration_time, p.delivery_time), (3_000, 3_500));
    assert_eq!(h.take(0, 2).map(|(_, eom)| eom), Some(false));
    assert_eq!(h.timer_counters(0, 0).skipped, 2);
    assert_eq!(h.timer_counters(0, 0).signalled, 1);
    assert_eq!(h.poll_at(4_000).signalled, 1);
}

#[test]
fn masked_sint_gets_the_expiry_message_but_no_interrupt() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SINT0 + 2, 0x1_0000 | u64::from(vector(2)));
    h.raise.take();
    h.start_timer(0, 0, message_config(false, false, 2), 100);
    assert_eq!(h.poll_at(100).signalled, 1);
    assert_eq!(h.timer_in_slot(0, 2).unwrap().expiration_time, 100);
    assert!(h.raised().is_empty());
    assert!(!h.timer_config(0, 0).enabled());
}

#[test]
fn disabled_message_page_holds_the_expiry_until_it_is_enabled() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SIMP, simp_gpa(0));
    h.start_timer(0, 0, message_config(false, false, 2), 100);
    assert_eq!(h.poll_at(100).signalled, 0);
    h.clock.set(250);
    h.wrmsr(0, index::SIMP, simp_gpa(0) | 1);
    let p = h.timer_in_slot(0, 2).unwrap();
    assert_eq!((p.expiration_time, p.delivery_time), (100, 250));
}

#[test]
fn disabled_synic_holds_the_expiry_until_it_is_enabled() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SCONTROL, 0);
    h.start_timer(0, 0, message_config(false, false, 2), 100);
    assert_eq!(h.poll_at(100).signalled, 0);
    assert!(h.timer_in_slot(0, 2).is_none());
    h.clock.set(300);
    h.wrmsr(0, index::SCONTROL, 1);
    assert_eq!(h.timer_in_slot(0, 2).unwrap().delivery_time, 300);
}

#[test]
fn a_message_that_takes_the_slot_while_a_timer_waits_carries_message_pending() {
    let mut h = Harness::enabled();
    h.post(0, 2, 1);
    h.start_timer(0, 0, message_config(false, false, 2), 100);
    assert_eq!(h.poll_at(100).signalled, 0);
    // The guest frees the slot; before it writes EOM a device message takes the slot.
    assert!(h.guest_free_slot(0, 2));
    h.post(0, 2, 2);
    assert!(h.slot(0, 2).header.message_flags.pending());
    h.eom(0); // slot busy again: the expiry keeps waiting
    assert_eq!(id_of(&h.slot(0, 2)), 2);
    // The guest takes message 2, sees MessagePending, EOMs: now the expiry.
    assert_eq!(h.take(0, 2), Some((None, true)));
    assert_eq!(h.timer_in_slot(0, 2).unwrap().expiration_time, 100);
}

#[test]
fn a_waiting_expiry_goes_before_queued_messages_on_eom() {
    let mut h = Harness::enabled();
    for id in 1..=3 {
        h.post(0, 2, id);
    }
    h.start_timer(0, 0, message_config(false, false, 2), 100);
    assert_eq!(h.poll_at(100).signalled, 0);
    let mut order = Vec::new();
    while let Some((p, _)) = h.take(0, 2) {
        order.push(match p {
            Some(p) => format!("timer@{}", p.expiration_time),
            None => "device".to_string(),
        });
    }
    assert_eq!(order, ["device", "timer@100", "device", "device"]);
    assert_eq!(h.counters(0, 2).queued, 0);
}

#[test]
fn every_timer_has_its_own_expiry_on_a_shared_sint() {
    let mut h = Harness::enabled();
    for t in 0..4 {
        h.start_timer(0, t, message_config(false, false, 5), 100 + u64::from(t));
    }
    assert_eq!(h.poll_at(1_000).signalled, 1);
    let mut got = Vec::new();
    while let Some((Some(p), _)) = h.take(0, 5) {
        got.push(p.timer_index);
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3]);
}

#[test]
fn reset_stops_every_timer() {
    let mut h = Harness::enabled();
    h.start_timer(0, 0, message_config(true, false, 2), 1_000);
    h.start_timer(0, 1, StimerConfig::new_direct(true, true, 0x40).0, 1_000);
    h.vps[0].reset();
    assert_eq!(h.partition.next_timer_deadline(), None);
    assert_eq!(h.poll_at(10_000).signalled, 0);
    assert_eq!(h.timer_config(0, 0).0, 0);
    assert!(h.raise.vectors().is_empty());
}

#[test]
fn timers_of_different_vps_are_independent() {
    let mut h = Harness::enabled();
    h.enable(1);
    h.start_timer(0, 0, message_config(true, false, 2), 1_000);
    h.start_timer(1, 0, message_config(true, false, 2), 300);
    assert_eq!(h.partition.next_timer_deadline(), Some(300));
    assert_eq!(h.poll_at(1_000).signalled, 2);
    assert_eq!(h.timer_in_slot(0, 2).unwrap().expiration_time, 1_000);
    // VP 1 missed two periods while its slot was full: reports 300 now, then 600, 900.
    assert_eq!(h.timer_in_slot(1, 2).unwrap().expiration_time, 300);
    assert!(h.slot(1, 2).header.message_flags.pending());
    assert_eq!(h.timer_counters(1, 0).signalled, 1);
}

#[test]
fn kernel_mode_runs_the_timers_in_the_model_and_nothing_else() {
    let mut h = Harness::with_config(PartitionConfig::new(Mode::Kernel, Profile::Kvm, 1));
    // KVM's SynIC owns the rest: SINTs and the pages arrive through KVM_EXIT_HYPERV_SYNIC.
    assert!(h.vps[0]
        .wrmsr(index::SINT0 + 2, 0x40, Origin::Guest)
        .is_err());
    let simp = crate::common::simp_gpa(0);
    h.vps[0]
        .apply_synic_exit(synic::SynicExit {
            msr: index::SIMP,
            control: 1,
            evt_page: 0,
            msg_page: simp | 1,
        })
        .unwrap();
    // The timer MSRs are the model's: a one-shot at 500 on SINT 2.
    h.start_timer(0, 0, message_config(false, false, 2), 500);
    assert_eq!(h.partition.next_timer_deadline(), Some(500));
    assert_eq!(h.poll_at(499).signalled, 0);
    assert_eq!(h.poll_at(500).signalled, 1);
    let expiry = h
        .timer_in_slot(0, 2)
        .expect("the expiry message in SINT 2's slot");
    assert_eq!((expiry.timer_index, expiry.expiration_time), (0, 500));
    // Kernel mode raises the SINT for KVM to inject (it knows the vector).
    assert_eq!(h.raise.raised().len(), 1);
    assert!(
        !h.timer_config(0, 0).enabled(),
        "a one-shot disables itself"
    );
}

#[test]
fn expiry_flags_byte_is_the_hosts() {
    let mut h = Harness::enabled();
    h.start_timer(0, 0, message_config(true, false, 2), 100);
    h.poll_at(100);
    let m = h.slot(0, 2);
    assert_eq!(m.header.message_flags, MessageFlags(0));
    assert_eq!(m.header.reserved, [0, 0]);
}
