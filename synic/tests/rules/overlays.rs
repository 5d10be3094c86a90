//! Overlay pages (TLFS "GPA Overlay Pages"): SIMP, SIEFP and the hypercall page lie over guest
//! RAM while enabled, give it back untouched when disabled, carry their content to wherever
//! they are enabled next, and are zeroed only at reset.

use synic::{Error, Mode, MsrError, PartitionConfig, Posted, SynicExit, VmmAction, VpIndex};
use synic_msr::{index, KvmSynic, Origin, Profile};
use vm_memory::{Bytes, GuestAddress};

use crate::common::*;

const PAGE: usize = 4096;
const X: u64 = 0x8_0000;
const Y: u64 = 0x9_0000;
const Z: u64 = 0xA_0000;

fn fill(h: &Harness, gpa: u64, byte: u8) {
    h.mem.write_slice(&[byte; PAGE], GuestAddress(gpa)).unwrap();
}

fn page(h: &Harness, gpa: u64) -> Vec<u8> {
    let mut out = vec![0u8; PAGE];
    h.mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
    out
}

/// A page of `byte`s with `text` at the start.
fn pattern(byte: u8, text: &[u8]) -> Vec<u8> {
    let mut p = vec![byte; PAGE];
    p[..text.len()].copy_from_slice(text);
    p
}

/// A guest store into its own page (the guest sees the overlay while it is enabled).
fn guest_writes(h: &Harness, gpa: u64, text: &[u8]) {
    let mut padded = text.to_vec();
    padded.resize(text.len().div_ceil(8) * 8, 0);
    guest_write(&h.mem, gpa, &padded);
}

/// Userspace partition, `profile`, SynIC enabled on VP 0 (no pages yet), SINTs 0..16 unmasked.
fn user(profile: Profile) -> Harness {
    let mut h = Harness::new(profile);
    h.wrmsr(0, index::SCONTROL, 1);
    for n in 0..16u8 {
        h.wrmsr(0, index::SINT0 + u32::from(n), u64::from(vector(n)));
    }
    h.raise.take();
    h
}

const PROFILES: [Profile; 2] = [Profile::Tlfs, Profile::Kvm];
const PAGE_MSRS: [u32; 2] = [index::SIMP, index::SIEFP];

#[test]
fn enabling_a_page_shows_its_zeroed_overlay_not_the_ram_under_it() {
    for profile in PROFILES {
        for msr in PAGE_MSRS {
            let mut h = user(profile);
            fill(&h, X, 0xA5);
            h.wrmsr(0, msr, X | 1);
            assert_eq!(page(&h, X), vec![0; PAGE], "{profile:?} {msr:#x}");
        }
    }
}

#[test]
fn disabling_a_page_gives_back_the_exact_ram_under_it() {
    for profile in PROFILES {
        for msr in PAGE_MSRS {
            let mut h = user(profile);
            let ram = pattern(0x5A, b"the guest's own page");
            h.mem.write_slice(&ram, GuestAddress(X)).unwrap();
            h.wrmsr(0, msr, X | 1);
            guest_writes(&h, X + 0x100, b"overlay bytes");
            h.wrmsr(0, msr, X);
            assert_eq!(page(&h, X), ram, "{profile:?} {msr:#x}");
        }
    }
}

#[test]
fn reenabling_elsewhere_carries_the_overlay_content() {
    for profile in PROFILES {
        for msr in PAGE_MSRS {
            let mut h = user(profile);
            fill(&h, X, 0x11);
            fill(&h, Y, 0x22);
            fill(&h, Z, 0x33);
            h.wrmsr(0, msr, X | 1);
            guest_writes(&h, X + 0x200, b"carried");
            let overlay = page(&h, X);
            // Disabled, then enabled elsewhere.
            h.wrmsr(0, msr, X);
            h.wrmsr(0, msr, Y | 1);
            assert_eq!(page(&h, Y), overlay, "{profile:?} {msr:#x}");
            assert_eq!(page(&h, X), vec![0x11; PAGE]);
            // Moved while enabled.
            h.wrmsr(0, msr, Z | 1);
            assert_eq!(page(&h, Z), overlay);
            assert_eq!(page(&h, Y), vec![0x22; PAGE]);
        }
    }
}

#[test]
fn a_message_posted_right_after_enabling_simp_on_a_page_of_garbage_is_delivered() {
    for profile in PROFILES {
        let mut h = user(profile);
        // Stale data: every slot looks busy, with MessagePending set.
        fill(&h, X, 0xFF);
        h.wrmsr(0, index::SIMP, X | 1);
        assert_eq!(h.post(0, 3, 7), Posted::Delivered, "{profile:?}");
        let slot = h.slot_at(X, 3);
        assert_eq!(id_of(&slot), 7);
        assert!(!slot.header.message_flags.pending());
        assert_eq!(h.raised(), vec![(VpIndex(0), sint(3), vector(3), false)]);
        h.wrmsr(0, index::SIMP, X);
        assert_eq!(page(&h, X), vec![0xFF; PAGE]);
    }
}

#[test]
fn a_message_left_in_the_slot_comes_back_with_the_page() {
    let mut h = user(Profile::Tlfs);
    h.wrmsr(0, index::SIMP, X | 1);
    h.post(0, 2, 1);
    h.wrmsr(0, index::SIMP, X);
    // Disabled message page: posts wait in the queue.
    assert_eq!(h.post(0, 2, 2), Posted::Queued);
    assert!(h.slot_at(X, 2).header.message_type.is_none());
    h.wrmsr(0, index::SIMP, Y | 1);
    let slot = h.slot_at(Y, 2);
    assert_eq!(id_of(&slot), 1);
    // The queued message found the slot busy: MessagePending tells the guest to EOM.
    assert!(slot.header.message_flags.pending());
    assert!(h.guest_free_slot_at(Y, 2));
    h.eom(0);
    assert_eq!(id_of(&h.slot_at(Y, 2)), 2);
    assert_eq!(h.counters(0, 2).queued, 0);
}

#[test]
fn vp_reset_gives_back_the_ram_and_zeroes_both_overlays() {
    let mut h = user(Profile::Tlfs);
    fill(&h, X, 0x44);
    fill(&h, Y, 0x55);
    h.wrmsr(0, index::SIMP, X | 1);
    h.wrmsr(0, index::SIEFP, Y | 1);
    h.post(0, 0, 1);
    h.post(0, 0, 2);
    h.partition.signal_event(VpIndex(0), 1u32, 9).unwrap();
    let returned = h.vps[0].reset();
    // The queued message comes back to the caller; the one in the slot went with the page.
    assert_eq!(returned.len(), 1);
    assert_eq!(id_of(&returned[0].1), 2);
    assert_eq!(page(&h, X), vec![0x44; PAGE]);
    assert_eq!(page(&h, Y), vec![0x55; PAGE]);
    h.wrmsr(0, index::SCONTROL, 1);
    h.wrmsr(0, index::SIMP, X | 1);
    h.wrmsr(0, index::SIEFP, Y | 1);
    assert_eq!(page(&h, X), vec![0; PAGE]);
    assert_eq!(page(&h, Y), vec![0; PAGE]);
}

#[test]
fn an_event_flags_page_enabled_on_the_message_page_waits_under_it() {
    let mut h = user(Profile::Tlfs);
    fill(&h, X, 0x66);
    h.wrmsr(0, index::SIMP, X | 1);
    h.post(0, 1, 1);
    h.wrmsr(0, index::SIEFP, X | 1);
    // The message page stays on top: the guest sees its slot, and no flag can be set.
    assert_eq!(id_of(&h.slot_at(X, 1)), 1);
    assert_eq!(
        h.partition.signal_event(VpIndex(0), 1u32, 3),
        Err(Error::PageShadowed { gpa: X })
    );
    assert_eq!(
        Error::PageShadowed { gpa: X }.hv_status(),
        synic::HvStatus::InvalidSynicState
    );
    // The message page leaves: the event-flags page is uncovered in its turn, zero.
    let w = h.vps[0].wrmsr(index::SIMP, Y | 1, Origin::Guest).unwrap();
    assert_eq!(w.action, None);
    assert_eq!(page(&h, X), vec![0; PAGE]);
    assert_eq!(id_of(&h.slot_at(Y, 1)), 1);
    assert_eq!(
        h.partition.signal_event(VpIndex(0), 1u32, 3),
        Ok(synic::FlagOutcome::Set)
    );
    h.wrmsr(0, index::SIEFP, 0);
    assert_eq!(page(&h, X), vec![0x66; PAGE], "the RAM under both pages");
}

#[test]
fn a_message_page_under_another_overlay_holds_messages_until_uncovered() {
    for profile in PROFILES {
        let mut h = user(profile);
        h.wrmsr(0, index::SIEFP, X | 1);
        h.wrmsr(0, index::SIMP, X | 1);
        assert_eq!(h.post(0, 4, 1), Posted::Queued, "{profile:?}");
        assert_eq!(page(&h, X), vec![0; PAGE], "nothing written over the flags");
        assert!(h.raised().is_empty());
        h.wrmsr(0, index::SIEFP, Y | 1);
        assert_eq!(id_of(&h.slot_at(X, 4)), 1);
        assert_eq!(h.raised(), vec![(VpIndex(0), sint(4), vector(4), false)]);
    }
}

#[test]
fn a_page_outside_ram_keeps_its_content_in_the_host() {
    let mut h = user(Profile::Tlfs);
    let outside = RAM_SIZE as u64 + 0x10_0000;
    h.wrmsr(0, index::SIMP, X | 1);
    h.post(0, 0, 1);
    h.wrmsr(0, index::SIMP, outside | 1);
    assert!(h.slot_at(X, 0).header.message_type.is_none());
    let refused = h
        .partition
        .post_message(VpIndex(0), 0u32, msg(2))
        .unwrap_err();
    assert_eq!(refused.error, Error::PageNotInRam { gpa: outside });
    h.wrmsr(0, index::SIMP, Y | 1);
    assert_eq!(id_of(&h.slot_at(Y, 0)), 1);
}

#[test]
fn kvm_synic_v1_zeroes_the_overlay_and_keeps_the_ram_under_it() {
    let mut config = PartitionConfig::new(Mode::Userspace, Profile::Kvm, 1);
    config.kvm_synic = Some(KvmSynic::V1);
    let mut h = Harness::with_config(config);
    fill(&h, X, 0x77);
    h.wrmsr(0, index::SIMP, X | 1);
    assert_eq!(page(&h, X), vec![0; PAGE]);
    guest_writes(&h, X, b"wiped by the next enable-write");
    h.wrmsr(0, index::SIMP, X | 1);
    assert_eq!(page(&h, X), vec![0; PAGE]);
    h.wrmsr(0, index::SIMP, X);
    assert_eq!(page(&h, X), vec![0x77; PAGE]);
    // A page that cannot be zeroed: #GP, register and pages unchanged.
    let outside = RAM_SIZE as u64 + 0x10_0000;
    let err = h.vps[0]
        .wrmsr(index::SIMP, outside | 1, Origin::Guest)
        .unwrap_err();
    assert!(matches!(
        err,
        MsrError::Refused {
            error: Error::PageNotInRam { .. },
            ..
        }
    ));
    assert_eq!(h.vps[0].rdmsr(index::SIMP, Origin::Guest), Ok(X));
}

#[test]
fn swapping_writes_only_pages_whose_bytes_change() {
    let mut h = user(Profile::Tlfs);
    clear_dirty(&h.mem);
    // Zero overlay over zero RAM: nothing to copy.
    h.wrmsr(0, index::SIMP, X | 1);
    h.wrmsr(0, index::SIMP, X);
    assert_eq!(dirty_pages(&h.mem), Vec::<u64>::new());
    fill(&h, Y, 1);
    clear_dirty(&h.mem);
    h.wrmsr(0, index::SIMP, Y | 1);
    assert_eq!(dirty_pages(&h.mem), vec![Y]);
}

/// GUEST_OS_ID set, so that HYPERCALL can be enabled.
fn with_guest_os(profile: Profile) -> Harness {
    let mut h = user(profile);
    h.wrmsr(0, index::GUEST_OS_ID, 0x8100_0000_0000_0001);
    h
}

#[test]
fn the_hypercall_page_gives_back_the_ram_under_it_and_carries_its_code() {
    for profile in PROFILES {
        let mut h = with_guest_os(profile);
        fill(&h, X, 0x99);
        let w = h.vps[0]
            .wrmsr(index::HYPERCALL, X | 1, Origin::Guest)
            .unwrap();
        assert_eq!(w.action, Some(VmmAction::FillHypercallPage { gpa: X }));
        assert_eq!(page(&h, X), vec![0; PAGE], "{profile:?}");
        // The VMM fills it (its hypercall sequence).
        h.mem
            .write_slice(&[0xE6, 0x42, 0xC3], GuestAddress(X))
            .unwrap();
        let code = page(&h, X);
        h.wrmsr(0, index::HYPERCALL, X);
        assert_eq!(page(&h, X), vec![0x99; PAGE]);
        let w = h.vps[1]
            .wrmsr(index::HYPERCALL, Y | 1, Origin::Guest)
            .unwrap();
        assert_eq!(w.action, Some(VmmAction::FillHypercallPage { gpa: Y }));
        assert_eq!(page(&h, Y), code);
        // Clearing GUEST_OS_ID disables it too.
        h.wrmsr(0, index::GUEST_OS_ID, 0);
        assert_eq!(page(&h, Y), vec![0; PAGE]);
    }
}

#[test]
fn a_hypercall_page_outside_ram_is_refused_with_the_register_unchanged() {
    let mut h = with_guest_os(Profile::Tlfs);
    h.wrmsr(0, index::HYPERCALL, X | 1);
    let outside = RAM_SIZE as u64 + 0x10_0000;
    let err = h.vps[0]
        .wrmsr(index::HYPERCALL, outside | 1, Origin::Guest)
        .unwrap_err();
    assert_eq!(
        err,
        MsrError::Refused {
            index: index::HYPERCALL,
            error: Error::PageNotInRam { gpa: outside }
        }
    );
    assert_eq!(h.vps[0].rdmsr(index::HYPERCALL, Origin::Guest), Ok(X | 1));
}

#[test]
fn a_hypercall_page_under_a_message_page_is_filled_when_uncovered() {
    let mut h = with_guest_os(Profile::Tlfs);
    h.wrmsr(0, index::SIMP, X | 1);
    let w = h.vps[0]
        .wrmsr(index::HYPERCALL, X | 1, Origin::Guest)
        .unwrap();
    assert_eq!(
        w.action, None,
        "the message page is on top: nothing to fill"
    );
    let w = h.vps[0].wrmsr(index::SIMP, Y | 1, Origin::Guest).unwrap();
    assert_eq!(w.action, Some(VmmAction::FillHypercallPage { gpa: X }));
}

#[test]
fn partition_reset_gives_back_the_ram_under_the_hypercall_page() {
    let mut h = with_guest_os(Profile::Tlfs);
    fill(&h, X, 0x31);
    h.wrmsr(0, index::HYPERCALL, X | 1);
    h.mem.write_slice(&[0xC3], GuestAddress(X)).unwrap();
    h.partition.reset();
    assert_eq!(page(&h, X), vec![0x31; PAGE]);
    h.wrmsr(0, index::GUEST_OS_ID, 1);
    h.wrmsr(0, index::HYPERCALL, X | 1);
    assert_eq!(page(&h, X), vec![0; PAGE], "zeroed at reset");
}

fn kernel(kvm_synic: KvmSynic) -> Harness {
    let mut config = PartitionConfig::new(Mode::Kernel, Profile::Kvm, 1).with_queue_capacity(4);
    config.kvm_synic = Some(kvm_synic);
    Harness::with_config(config)
}

fn exit(h: &mut Harness, msr: u32, simp: u64, siefp: u64) {
    h.vps[0]
        .apply_synic_exit(SynicExit {
            msr,
            control: 1,
            evt_page: siefp,
            msg_page: simp,
        })
        .unwrap();
}

#[test]
fn kernel_mode_moves_the_overlay_at_the_synic_exit() {
    let mut h = kernel(KvmSynic::V2);
    fill(&h, X, 0x12);
    fill(&h, Y, 0x34);
    exit(&mut h, index::SIMP, X | 1, 0);
    assert_eq!(page(&h, X), vec![0; PAGE]);
    h.post(0, 5, 1);
    exit(&mut h, index::SIMP, Y | 1, 0);
    assert_eq!(page(&h, X), vec![0x12; PAGE]);
    assert_eq!(id_of(&h.slot_at(Y, 5)), 1);
    exit(&mut h, index::SIMP, Y, 0);
    assert_eq!(page(&h, Y), vec![0x34; PAGE]);
    // One exit that swaps the two pages' addresses: each content lands at the other's place.
    exit(&mut h, index::SIEFP, X | 1, Y | 1);
    guest_writes(&h, X, b"message");
    guest_writes(&h, Y, b"flags");
    exit(&mut h, index::SIEFP, Y | 1, X | 1);
    assert_eq!(&page(&h, Y)[..7], b"message");
    assert_eq!(&page(&h, X)[..5], b"flags");
}

#[test]
fn kernel_mode_synic_v1_zeroes_the_overlay_at_each_enable_exit() {
    let mut h = kernel(KvmSynic::V1);
    exit(&mut h, index::SIMP, X | 1, 0);
    h.post(0, 0, 1);
    exit(&mut h, index::SIMP, X | 1, 0);
    assert_eq!(page(&h, X), vec![0; PAGE]);
    // An exit for the other register leaves this page alone.
    h.post(0, 0, 2);
    exit(&mut h, index::SCONTROL, X | 1, 0);
    assert_eq!(id_of(&h.slot_at(X, 0)), 2);
}
