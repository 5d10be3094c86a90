//! Save/restore and reset.

use synic::{Error, Mode, PartitionConfig, SynicExit, VpIndex, STATE_VERSION};
use synic_msr::{index, Origin, Profile};
use vm_memory::{Bytes, GuestAddress};

use crate::common::*;

/// A copy of the guest RAM, as a migration would carry it.
fn copy_memory(from: &Space) -> Space {
    let to = new_memory();
    let mut buf = vec![0u8; RAM_SIZE];
    from.read_slice(&mut buf, GuestAddress(0)).unwrap();
    to.write_slice(&buf, GuestAddress(0)).unwrap();
    to
}

fn config(mode: Mode) -> PartitionConfig {
    PartitionConfig::new(mode, Profile::Tlfs, 2).with_queue_capacity(4)
}

#[test]
fn restore_into_a_fresh_model_continues_delivery_with_nothing_lost() {
    let mut src = Harness::with_config(config(Mode::Userspace));
    src.enable(0);
    src.wrmsr(0, index::GUEST_OS_ID, 0x1234);
    src.wrmsr(0, index::HYPERCALL, 0x3001);
    src.clock.set(1_000_000);
    for id in 0..4 {
        src.post(0, 1, id);
    }
    // Message 0 is in the slot with MessagePending; 1..=3 are queued.
    let vp_state = src.vps[0].save();
    let part_state = src.partition.save();
    assert_eq!(vp_state.version, STATE_VERSION);
    assert_eq!(vp_state.queues[1].len(), 3);

    let mut dst = Harness::with_memory(config(Mode::Userspace), copy_memory(&src.mem));
    dst.partition.restore(&part_state).unwrap();
    dst.vps[0].restore(&vp_state).unwrap();
    assert_eq!(dst.vps[0].save(), vp_state);
    assert_eq!(dst.partition.reference_time(), 1_000_000);
    assert_eq!(
        dst.vps[1].rdmsr(index::HYPERCALL, Origin::Guest).unwrap(),
        0x3001
    );
    // The guest keeps running its ISR on the destination.
    let mut got = Vec::new();
    while let Some(id) = dst.isr(0, 1) {
        got.push(id);
    }
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert_eq!(dst.raised().len(), 3);
}

#[test]
fn restore_delivers_to_a_slot_freed_after_the_save() {
    let mut src = Harness::with_config(config(Mode::Userspace));
    src.enable(0);
    src.post(0, 0, 1);
    src.post(0, 0, 2);
    let state = src.vps[0].save();
    let mem = copy_memory(&src.mem);
    let mut dst = Harness::with_memory(config(Mode::Userspace), mem);
    // The guest consumed message 1 between save and restore (without EOM).
    dst.guest_free_slot(0, 0);
    dst.vps[0].restore(&state).unwrap();
    assert_eq!(id_of(&dst.slot(0, 0)), 2);
}

#[test]
fn kernel_mode_state_carries_the_exit_registers_and_queues() {
    let kconfig = PartitionConfig::new(Mode::Kernel, Profile::Kvm, 1);
    let mut src = Harness::with_config(kconfig);
    src.vps[0]
        .apply_synic_exit(SynicExit {
            msr: index::SIMP,
            control: 1,
            evt_page: siefp_gpa(0) | 1,
            msg_page: simp_gpa(0) | 1,
        })
        .unwrap();
    src.post(0, 0, 1);
    src.post(0, 0, 2);
    let state = src.vps[0].save();
    let mut dst = Harness::with_memory(kconfig, copy_memory(&src.mem));
    dst.vps[0].restore(&state).unwrap();
    assert_eq!(
        dst.partition.synic_view(VpIndex(0)).unwrap().simp.0,
        simp_gpa(0) | 1
    );
    dst.guest_free_slot(0, 0);
    dst.partition.ack(VpIndex(0), 0u32).unwrap();
    assert_eq!(id_of(&dst.slot(0, 0)), 2);
}

#[test]
fn restore_refuses_state_that_does_not_fit() {
    let mut src = Harness::with_config(config(Mode::Userspace));
    src.enable(0);
    let good = src.vps[0].save();
    let mut dst = Harness::with_config(config(Mode::Userspace));

    let mut s = good.clone();
    s.version = STATE_VERSION + 1;
    assert_eq!(
        dst.vps[0].restore(&s),
        Err(Error::UnsupportedStateVersion {
            version: STATE_VERSION + 1,
            expected: STATE_VERSION
        })
    );
    let mut s = good.clone();
    s.mode = Mode::Kernel;
    assert!(matches!(
        dst.vps[0].restore(&s),
        Err(Error::StateMismatch { .. })
    ));
    let mut s = good.clone();
    s.queues[3] = vec![msg(0); 5];
    assert!(matches!(
        dst.vps[0].restore(&s),
        Err(Error::StateMismatch { .. })
    ));
    let mut s = good.clone();
    s.queues[3] = vec![synic::HvMessage::default()];
    assert!(matches!(
        dst.vps[0].restore(&s),
        Err(Error::StateMismatch { .. })
    ));
    let mut s = good.clone();
    s.queues.pop();
    assert!(matches!(
        dst.vps[0].restore(&s),
        Err(Error::StateMismatch { .. })
    ));
    let mut s = good.clone();
    s.registers.push((index::SINT0, 0x05)); // vector below 16... from the host: accepted by TLFS
    s.registers.push((index::SVERSION, 2)); // but SVERSION 2 is not
    assert!(matches!(
        dst.vps[0].restore(&s),
        Err(Error::RegisterRefused(_))
    ));
    let mut s = good.clone();
    s.registers.push((index::GUEST_OS_ID, 1));
    assert!(matches!(
        dst.vps[0].restore(&s),
        Err(Error::StateMismatch { .. })
    ));
    let mut s = good.clone();
    s.vp_index = 1;
    assert_eq!(
        dst.vps[0].restore(&s),
        Err(Error::VpIndexInUse { index: 1 })
    );
    // Nothing of the refused attempts stuck.
    assert_eq!(dst.vps[0].rdmsr(index::SIMP, Origin::Guest).unwrap(), 0);
    dst.vps[0].restore(&good).unwrap();
    assert_eq!(
        dst.vps[0].rdmsr(index::SIMP, Origin::Guest).unwrap(),
        simp_gpa(0) | 1
    );
}

#[test]
fn reset_returns_queued_messages_and_powers_on() {
    let mut h = Harness::enabled();
    for id in 0..3 {
        h.post(0, 5, id);
    }
    h.raise.take();
    let dropped = h.vps[0].reset();
    assert_eq!(
        dropped
            .iter()
            .map(|(s, m)| (*s, id_of(m)))
            .collect::<Vec<_>>(),
        vec![(sint(5), 1), (sint(5), 2)]
    );
    for msr in [index::SCONTROL, index::SIMP, index::SIEFP] {
        assert_eq!(h.vps[0].rdmsr(msr, Origin::Guest).unwrap(), 0);
    }
    assert_eq!(
        h.vps[0].rdmsr(index::SINT0 + 5, Origin::Guest).unwrap(),
        0x1_0000
    );
    // Routes learn that every SINT is masked again.
    assert_eq!(h.raise.take().len(), 16);
    assert_eq!(h.counters(0, 5).queued, 0);
    assert_eq!(h.counters(0, 5).posted, 3, "counters survive a reset");
}

#[test]
fn partition_reset_clears_guest_os_id_and_hypercall() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::GUEST_OS_ID, 5);
    h.wrmsr(0, index::HYPERCALL, 0x3001);
    h.partition.reset();
    assert_eq!(
        h.vps[0].rdmsr(index::GUEST_OS_ID, Origin::Guest).unwrap(),
        0
    );
    assert_eq!(h.vps[0].rdmsr(index::HYPERCALL, Origin::Guest).unwrap(), 0);
}

#[test]
fn restore_keeps_messages_posted_before_it_behind_the_saved_ones() {
    let mut src = Harness::with_config(config(Mode::Userspace));
    src.enable(0);
    for id in 0..3 {
        src.post(0, 0, id);
    }
    let state = src.vps[0].save();
    let mut dst = Harness::with_memory(config(Mode::Userspace), copy_memory(&src.mem));
    // The fresh model's SIMP is still disabled: this one waits in the queue.
    dst.wrmsr(0, index::SCONTROL, 1);
    dst.post(0, 0, 100);
    dst.vps[0].restore(&state).unwrap();
    let mut got = Vec::new();
    while let Some(id) = dst.isr(0, 0) {
        got.push(id);
    }
    assert_eq!(got, vec![0, 1, 2, 100]);
    // Too many to fit: refused, nothing changed.
    let mut full = Harness::with_config(config(Mode::Userspace));
    full.wrmsr(0, index::SCONTROL, 1);
    for id in 0..3 {
        full.post(0, 0, id);
    }
    assert!(matches!(
        full.vps[0].restore(&state),
        Err(Error::StateMismatch { .. })
    ));
    assert_eq!(full.counters(0, 0).queued, 3);
}

#[test]
fn a_never_activated_kvm_synic_round_trips() {
    let kconfig = PartitionConfig {
        kvm_synic: None,
        ..PartitionConfig::new(Mode::Userspace, Profile::Kvm, 1)
    };
    let src = Harness::with_config(kconfig);
    let state = src.vps[0].save();
    assert_eq!(state.kvm_synic, None);
    let mut dst = Harness::with_config(kconfig);
    dst.vps[0].restore(&state).unwrap();
    assert_eq!(dst.vps[0].save(), state);
}

/// A page of `byte`s.
fn fill(mem: &Space, gpa: u64, byte: u8) {
    mem.write_slice(&[byte; 4096], GuestAddress(gpa)).unwrap();
}

fn page(mem: &Space, gpa: u64) -> Vec<u8> {
    let mut out = vec![0u8; 4096];
    mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
    out
}

#[test]
fn saved_state_carries_what_the_host_keeps_for_each_overlay_page() {
    const X: u64 = 0x8_0000;
    const Y: u64 = 0x9_0000;
    const H: u64 = 0xA_0000;
    let mut src = Harness::with_config(config(Mode::Userspace));
    fill(&src.mem, Y, 0x5C);
    fill(&src.mem, H, 0x3D);
    src.wrmsr(0, index::SCONTROL, 1);
    // SIMP: a message left in its slot, then disabled (the content is in the host).
    src.wrmsr(0, index::SIMP, X | 1);
    src.post(0, 6, 42);
    src.wrmsr(0, index::SIMP, X);
    // SIEFP: enabled over a pattern (the RAM it hides is in the host).
    src.wrmsr(0, index::SIEFP, Y | 1);
    // The hypercall page: enabled over another pattern.
    src.wrmsr(0, index::GUEST_OS_ID, 1);
    src.wrmsr(0, index::HYPERCALL, H | 1);
    let vp_state = src.vps[0].save();
    let part_state = src.partition.save();
    assert!(!vp_state.message_page.placed && vp_state.message_page.page.len() == 4096);
    assert!(vp_state.event_flags_page.placed);
    assert_eq!(vp_state.event_flags_page.page, vec![0x5C; 4096]);
    assert!(part_state.hypercall_page.placed);
    assert_eq!(part_state.hypercall_page.page, vec![0x3D; 4096]);
    // A VP with nothing but zeros keeps nothing.
    let idle = src.vps[1].save();
    assert!(idle.message_page.page.is_empty() && idle.event_flags_page.page.is_empty());

    let mut dst = Harness::with_memory(config(Mode::Userspace), copy_memory(&src.mem));
    dst.partition.restore(&part_state).unwrap();
    dst.vps[0].restore(&vp_state).unwrap();
    assert_eq!(dst.vps[0].save(), vp_state);
    assert_eq!(
        dst.partition.save().hypercall_page,
        part_state.hypercall_page
    );
    dst.wrmsr(0, index::SIMP, X | 1);
    assert_eq!(id_of(&dst.slot_at(X, 6)), 42);
    dst.wrmsr(0, index::SIEFP, 0);
    assert_eq!(page(&dst.mem, Y), vec![0x5C; 4096]);
    dst.wrmsr(0, index::HYPERCALL, H);
    assert_eq!(page(&dst.mem, H), vec![0x3D; 4096]);
}

#[test]
fn a_version_2_state_restores_enabled_pages_as_lying_over_zeroed_ram() {
    const X: u64 = 0x8_0000;
    let mut src = Harness::with_config(config(Mode::Userspace));
    fill(&src.mem, X, 0x77);
    src.wrmsr(0, index::SCONTROL, 1);
    src.wrmsr(0, index::SIMP, X | 1);
    src.post(0, 0, 1);
    let mut state = src.vps[0].save();
    // What a version-2 build wrote: no overlay data (the fields are ignored, whatever they say).
    state.version = 2;
    state.message_page.page = vec![1; 7];
    let mut dst = Harness::with_memory(config(Mode::Userspace), copy_memory(&src.mem));
    dst.vps[0].restore(&state).unwrap();
    assert_eq!(
        id_of(&dst.slot_at(X, 0)),
        1,
        "the page in guest memory is the overlay"
    );
    let migrated = dst.vps[0].save();
    assert!(migrated.message_page.placed && migrated.message_page.page.is_empty());
    dst.wrmsr(0, index::SIMP, X);
    assert_eq!(
        page(&dst.mem, X),
        vec![0; 4096],
        "the RAM under it is taken as zero"
    );
    // A version-2 partition state: the hypercall page likewise.
    const H: u64 = 0xA_0000;
    fill(&src.mem, H, 0x66);
    src.wrmsr(0, index::GUEST_OS_ID, 1);
    src.wrmsr(0, index::HYPERCALL, H | 1);
    let mut part = src.partition.save();
    part.version = 2;
    part.hypercall_page.page.clear();
    let mut dst = Harness::with_memory(config(Mode::Userspace), copy_memory(&src.mem));
    dst.partition.restore(&part).unwrap();
    assert!(dst.partition.save().hypercall_page.placed);
    dst.wrmsr(0, index::HYPERCALL, H);
    assert_eq!(page(&dst.mem, H), vec![0; 4096]);
}

#[test]
fn restore_refuses_overlay_state_that_does_not_fit() {
    const X: u64 = 0x8_0000;
    let mut src = Harness::with_config(config(Mode::Userspace));
    src.wrmsr(0, index::SIMP, X | 1);
    let good = src.vps[0].save();
    let mut dst = Harness::with_memory(config(Mode::Userspace), copy_memory(&src.mem));
    let refused = |dst: &mut Harness, s: &synic::VpState| {
        matches!(dst.vps[0].restore(s), Err(Error::StateMismatch { .. }))
    };
    let mut s = good.clone();
    s.message_page.page = vec![0; 100];
    assert!(refused(&mut dst, &s), "a page of 100 bytes");
    let mut s = good.clone();
    s.event_flags_page.placed = true;
    assert!(refused(&mut dst, &s), "placed while SIEFP is disabled");
    let mut s = good.clone();
    s.registers.retain(|&(msr, _)| msr != index::SIEFP);
    s.registers.push((index::SIEFP, X | 1));
    s.event_flags_page.placed = true;
    assert!(refused(&mut dst, &s), "two pages placed at one address");
    // VP 1 restoring a page placed where VP 0's page is placed already.
    dst.vps[0].restore(&good).unwrap();
    let mut s = good.clone();
    s.vp_index = 1;
    assert!(matches!(
        dst.vps[1].restore(&s),
        Err(Error::StateMismatch { .. })
    ));
    // Nothing changed by the refusals: VP 0's page is still in place.
    assert_eq!(dst.vps[0].save(), good);
}
