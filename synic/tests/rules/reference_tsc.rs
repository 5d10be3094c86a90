//! The reference TSC page (HV_X64_MSR_REFERENCE_TSC) in userspace mode: an overlay page like
//! the hypercall page, whose head (TscSequence, TscScale, TscOffset) gives exactly
//! TIME_REF_COUNT from the guest's TSC when the partition clock follows the TSC, and sequence 0
//! ("read the MSR") when it does not; rewritten for the restored reference time at a restore.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use synic::testing::RecordingRaise;
use synic::{
    FakeReferenceClock, FakeTscClock, Mode, Partition, PartitionConfig, ReferenceTscPage, Vp,
    STATE_VERSION,
};
use synic_msr::{index, Origin, Profile};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::FromBytes;

use crate::common::*;

const PAGE: usize = 4096;
const X: u64 = 0x8_0000;
const Y: u64 = 0x9_0000;
/// 2.6 GHz, the kvm-lab machine's TSC.
const HZ: u64 = 2_600_000_000;

struct Tsc {
    partition: Arc<Partition<Space>>,
    vps: Vec<Vp<Space>>,
    mem: Space,
    clock: Arc<FakeTscClock>,
}

/// A userspace partition of one VP (`profile`) over `mem`, on a fake TSC of 2.6 GHz reading
/// `tsc`, the clock's own TscOffset `offset`.
fn tsc_partition(profile: Profile, mem: Space, tsc: u64, offset: i64) -> Tsc {
    let clock = Arc::new(FakeTscClock::new(HZ, tsc, offset).unwrap());
    let config = PartitionConfig::new(Mode::Userspace, profile, 1);
    let raise = Arc::new(RecordingRaise::default());
    let (partition, vps) = Partition::new(config, mem.clone(), raise, clock.clone()).unwrap();
    Tsc {
        partition,
        vps,
        mem,
        clock,
    }
}

impl Tsc {
    fn new(profile: Profile) -> Self {
        tsc_partition(profile, new_memory(), 0, 0)
    }

    fn wrmsr(&mut self, msr: u32, value: u64) {
        self.vps[0]
            .wrmsr(msr, value, Origin::Guest)
            .unwrap_or_else(|e| panic!("wrmsr {msr:#x} = {value:#x}: {e}"));
    }

    fn time_ref_count(&self) -> u64 {
        self.vps[0]
            .rdmsr(index::TIME_REF_COUNT, Origin::Guest)
            .unwrap()
    }
}

fn head(mem: &Space, gpa: u64) -> ReferenceTscPage {
    let mut bytes = [0u8; 24];
    mem.read_slice(&mut bytes, GuestAddress(gpa)).unwrap();
    ReferenceTscPage::read_from_bytes(&bytes).unwrap()
}

fn page(mem: &Space, gpa: u64) -> Vec<u8> {
    let mut out = vec![0u8; PAGE];
    mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
    out
}

fn fill(mem: &Space, gpa: u64, byte: u8) {
    mem.write_slice(&[byte; PAGE], GuestAddress(gpa)).unwrap();
}

/// What a guest computes from the page at `gpa` for TSC `tsc` (TLFS), or `None` for sequence
/// 0 (it reads TIME_REF_COUNT then).
fn page_time(mem: &Space, gpa: u64, tsc: u64) -> Option<u64> {
    let h = head(mem, gpa);
    if h.tsc_sequence == 0 {
        return None;
    }
    let product = (u128::from(tsc) * u128::from(h.tsc_scale)) >> 64;
    Some((product as u64).wrapping_add(h.tsc_offset as u64))
}

#[test]
fn the_page_gives_exactly_time_ref_count_at_every_tsc() {
    for profile in [Profile::Tlfs, Profile::Kvm] {
        let mut t = Tsc::new(profile);
        t.clock.set_tsc(123_456_789);
        t.wrmsr(index::REFERENCE_TSC, X | 1);
        assert_eq!(
            t.vps[0].rdmsr(index::REFERENCE_TSC, Origin::Guest),
            Ok(X | 1)
        );
        let h = head(&t.mem, X);
        assert_ne!(h.tsc_sequence, 0, "{profile:?}: valid");
        assert_eq!(
            h.tsc_scale,
            ((1u128 << 64) * 10_000_000 / u128::from(HZ)) as u64
        );
        // TSC steps of every size, including ones that carry into the high half of the product.
        let mut last = 0;
        for step in [0, 1, 259, 260, 261, 2_600, HZ, HZ * 3600, 1 << 40, 7] {
            t.clock.advance_tsc(step);
            let msr = t.time_ref_count();
            assert_eq!(
                page_time(&t.mem, X, t.clock.tsc()),
                Some(msr),
                "{profile:?}"
            );
            assert!(msr >= last, "never backwards");
            last = msr;
        }
    }
}

#[test]
fn the_page_lies_over_ram_and_gives_it_back_like_every_overlay() {
    let mut t = Tsc::new(Profile::Tlfs);
    fill(&t.mem, X, 0x5A);
    fill(&t.mem, Y, 0xA5);
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    let first = head(&t.mem, X);
    assert_ne!(first.tsc_sequence, 0);
    assert_eq!(
        &page(&t.mem, X)[24..],
        &[0u8; PAGE - 24][..],
        "a fresh overlay"
    );
    // The guest writes into the reserved part of the page; disabling gives the RAM back.
    t.mem.write_obj(0xFEEDu64, GuestAddress(X + 0x800)).unwrap();
    t.wrmsr(index::REFERENCE_TSC, X);
    assert_eq!(page(&t.mem, X), vec![0x5A; PAGE]);
    // Enabled elsewhere: the content came along, the head is fresh (a new sequence).
    t.clock.advance_tsc(HZ);
    t.wrmsr(index::REFERENCE_TSC, Y | 1);
    let again = head(&t.mem, Y);
    assert_ne!(again.tsc_sequence, 0);
    assert_ne!(again.tsc_sequence, first.tsc_sequence);
    assert_eq!(
        t.mem.read_obj::<u64>(GuestAddress(Y + 0x800)).unwrap(),
        0xFEED
    );
    assert_eq!(
        page_time(&t.mem, Y, t.clock.tsc()),
        Some(t.time_ref_count())
    );
    // Rewriting the same value refreshes the page (new sequence), nothing else.
    t.wrmsr(index::REFERENCE_TSC, Y | 1);
    assert_ne!(head(&t.mem, Y).tsc_sequence, again.tsc_sequence);
    // Moved while enabled: Y is RAM again.
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    assert_eq!(page(&t.mem, Y), vec![0xA5; PAGE]);
    assert_eq!(
        t.mem.read_obj::<u64>(GuestAddress(X + 0x800)).unwrap(),
        0xFEED
    );
}

#[test]
fn sequence_zero_when_the_clock_does_not_follow_the_tsc() {
    // The default clock (host monotonic time, here its fake): never a valid page.
    let mut h = Harness::new(Profile::Tlfs);
    fill(&h.mem, X, 0x77);
    h.wrmsr(0, index::REFERENCE_TSC, X | 1);
    assert_eq!(head(&h.mem, X), ReferenceTscPage::default());
    assert_eq!(h.partition.reference_tsc_parameters(), None);
    let _: &FakeReferenceClock = &h.clock;

    // A TSC clock that becomes unusable: the refresh says "read the MSR", and a later refresh
    // with a usable TSC again gives a new, non-zero sequence.
    let mut t = Tsc::new(Profile::Tlfs);
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    let valid = head(&t.mem, X).tsc_sequence;
    t.clock.set_valid(false);
    t.partition.refresh_reference_tsc_page();
    assert_eq!(head(&t.mem, X), ReferenceTscPage::default());
    assert_eq!(page_time(&t.mem, X, t.clock.tsc()), None);
    t.clock.set_valid(true);
    t.partition.refresh_reference_tsc_page();
    let back = head(&t.mem, X).tsc_sequence;
    assert!(back != 0 && back != valid, "{valid} -> {back}");
}

#[test]
fn every_rewrite_gets_a_new_sequence_never_0_all_ones_or_the_one_found() {
    let mut t = Tsc::new(Profile::Tlfs);
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    let mut last = head(&t.mem, X).tsc_sequence;
    assert_eq!(last, 1);
    // The guest scribbles the sequence it will find next (a page in RAM is the guest's to
    // write); the host's next one is still new to any reader.
    for found in [2, 0, u32::MAX, 7, 5] {
        t.mem.write_obj(found, GuestAddress(X)).unwrap();
        t.partition.refresh_reference_tsc_page();
        let next = head(&t.mem, X).tsc_sequence;
        assert!(
            next != 0 && next != u32::MAX && next != found && next != last,
            "found {found:#x}, last {last}, next {next}"
        );
        last = next;
    }
    // Invalid, then valid again: not the sequence a reader saw before the invalidation.
    t.clock.set_valid(false);
    t.partition.refresh_reference_tsc_page();
    t.clock.set_valid(true);
    t.partition.refresh_reference_tsc_page();
    let next = head(&t.mem, X).tsc_sequence;
    assert!(next != 0 && next != last);
}

#[test]
fn a_page_outside_ram_is_accepted_and_shown_once_moved_onto_ram() {
    let mut t = Tsc::new(Profile::Kvm);
    let outside = RAM_SIZE as u64 + 0x10_0000;
    t.wrmsr(index::REFERENCE_TSC, outside | 1);
    assert_eq!(
        t.vps[0].rdmsr(index::REFERENCE_TSC, Origin::Guest),
        Ok(outside | 1)
    );
    fill(&t.mem, X, 0x11);
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    assert_ne!(head(&t.mem, X).tsc_sequence, 0);
    t.wrmsr(index::REFERENCE_TSC, 0);
    assert_eq!(page(&t.mem, X), vec![0x11; PAGE]);
}

#[test]
fn under_a_message_page_it_waits_and_is_refreshed_when_uncovered() {
    let mut t = Tsc::new(Profile::Tlfs);
    t.wrmsr(index::SCONTROL, 1);
    t.wrmsr(index::SIMP, X | 1);
    t.mem.write_obj(0xABCDu64, GuestAddress(X + 8)).unwrap();
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    assert_eq!(
        t.mem.read_obj::<u64>(GuestAddress(X + 8)).unwrap(),
        0xABCD,
        "the message page stays on top"
    );
    t.clock.advance_tsc(5 * HZ);
    t.wrmsr(index::SIMP, Y | 1);
    assert_ne!(head(&t.mem, X).tsc_sequence, 0);
    assert_eq!(
        page_time(&t.mem, X, t.clock.tsc()),
        Some(t.time_ref_count())
    );
}

#[test]
fn save_and_restore_with_downtime_rewrite_the_page_for_the_restored_time() {
    let mut src = tsc_partition(Profile::Tlfs, new_memory(), 5 * HZ, 0);
    fill(&src.mem, X, 0x3C);
    src.wrmsr(index::REFERENCE_TSC, X | 1);
    src.mem
        .write_obj(0x1234u64, GuestAddress(X + 0x100))
        .unwrap();
    let source_seq = head(&src.mem, X).tsc_sequence;
    let saved_time = src.time_ref_count();
    let part = src.partition.save();
    let vp = src.vps[0].save();
    assert_eq!(part.version, STATE_VERSION);
    assert_eq!(part.reference_tsc, X | 1);
    assert!(part.reference_tsc_page.placed);

    // The destination: guest memory copied, a TSC that started elsewhere (a new host, the
    // guest TSC restored or not) and another clock offset; 2.5 s of declared downtime.
    for dst_tsc in [0, 5 * HZ, 1 << 50] {
        let mem = new_memory();
        let mut bytes = vec![0u8; RAM_SIZE];
        src.mem.read_slice(&mut bytes, GuestAddress(0)).unwrap();
        mem.write_slice(&bytes, GuestAddress(0)).unwrap();
        let mut dst = tsc_partition(Profile::Tlfs, mem, dst_tsc, -77_777);
        let downtime = 25_000_000;
        dst.partition
            .restore_with_downtime(&part, downtime)
            .unwrap();
        dst.vps[0].restore(&vp).unwrap();
        let h = head(&dst.mem, X);
        assert!(h.tsc_sequence != 0 && h.tsc_sequence != source_seq);
        let now = dst.time_ref_count();
        assert_eq!(now, saved_time + downtime, "TSC {dst_tsc:#x}");
        assert_eq!(page_time(&dst.mem, X, dst.clock.tsc()), Some(now));
        dst.clock.advance_tsc(HZ / 1000);
        assert_eq!(
            page_time(&dst.mem, X, dst.clock.tsc()),
            Some(dst.time_ref_count())
        );
        // The overlay came along: disabling gives back the RAM under it.
        assert_eq!(
            dst.mem.read_obj::<u64>(GuestAddress(X + 0x100)).unwrap(),
            0x1234
        );
        dst.wrmsr(index::REFERENCE_TSC, 0);
        assert_eq!(page(&dst.mem, X), vec![0x3C; PAGE]);
        assert_eq!(dst.partition.save().reference_tsc, 0);
    }
}

#[test]
fn a_version_3_state_restores_the_page_disabled() {
    let mut src = Tsc::new(Profile::Tlfs);
    src.wrmsr(index::REFERENCE_TSC, X | 1);
    let mut part = src.partition.save();
    part.version = 3;
    let dst = Tsc::new(Profile::Tlfs);
    dst.partition.restore(&part).unwrap();
    assert_eq!(dst.vps[0].rdmsr(index::REFERENCE_TSC, Origin::Guest), Ok(0));
    let again = dst.partition.save();
    assert_eq!(again.reference_tsc, 0);
    assert!(!again.reference_tsc_page.placed && again.reference_tsc_page.page.is_empty());
}

#[test]
fn a_state_with_the_tsc_and_hypercall_pages_placed_at_one_address_is_refused() {
    let mut src = Tsc::new(Profile::Tlfs);
    src.wrmsr(index::GUEST_OS_ID, 1);
    src.wrmsr(index::HYPERCALL, X | 1);
    src.wrmsr(index::REFERENCE_TSC, Y | 1);
    let mut part = src.partition.save();
    part.reference_tsc = X | 1;
    let dst = Tsc::new(Profile::Tlfs);
    assert!(matches!(
        dst.partition.restore(&part),
        Err(synic::Error::StateMismatch { .. })
    ));
    // Both enabled at one address with the TSC page shadowed: fine.
    let mut src = Tsc::new(Profile::Tlfs);
    src.wrmsr(index::GUEST_OS_ID, 1);
    src.wrmsr(index::HYPERCALL, X | 1);
    src.wrmsr(index::REFERENCE_TSC, X | 1);
    let part = src.partition.save();
    assert!(part.hypercall_page.placed && !part.reference_tsc_page.placed);
    let dst = Tsc::new(Profile::Tlfs);
    dst.partition.restore(&part).unwrap();
}

#[test]
fn partition_reset_gives_back_the_ram_and_zeroes_the_page() {
    let mut t = Tsc::new(Profile::Tlfs);
    fill(&t.mem, X, 0x42);
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    t.mem.write_obj(7u64, GuestAddress(X + 0x800)).unwrap();
    t.partition.reset();
    assert_eq!(page(&t.mem, X), vec![0x42; PAGE]);
    assert_eq!(t.vps[0].rdmsr(index::REFERENCE_TSC, Origin::Guest), Ok(0));
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    assert_eq!(
        &page(&t.mem, X)[24..],
        &[0u8; PAGE - 24][..],
        "zeroed at reset"
    );
}

#[test]
fn a_vp_reset_leaves_the_partition_page_alone() {
    let mut t = Tsc::new(Profile::Tlfs);
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    let before = head(&t.mem, X);
    t.vps[0].reset();
    assert_eq!(head(&t.mem, X), before);
    assert_eq!(
        t.vps[0].rdmsr(index::REFERENCE_TSC, Origin::Guest),
        Ok(X | 1)
    );
}

#[test]
fn kernel_mode_leaves_the_register_to_kvm() {
    let config = PartitionConfig::new(Mode::Kernel, Profile::Kvm, 1);
    let h = Harness::with_config(config);
    assert!(h.vps[0].rdmsr(index::REFERENCE_TSC, Origin::Guest).is_err());
    assert_eq!(h.partition.save().reference_tsc, 0);
}

/// A reader following the TLFS protocol while the host rewrites the page with alternating
/// parameters never accepts a torn head: every (scale, offset) it accepts is one the host
/// wrote whole.
#[test]
fn a_concurrent_reader_never_sees_a_torn_head() {
    let mut t = Tsc::new(Profile::Tlfs);
    t.wrmsr(index::REFERENCE_TSC, X | 1);
    let scale = head(&t.mem, X).tsc_scale;
    let offsets = [0x1111_1111_1111_1111i64, -0x2222_2222_2222_2222];
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (mem, stop) = (t.mem.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut accepted, mut retried) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let seq = |order| with_guest_word::<AtomicU32, _>(&mem, X, |w| w.load(order));
                let word = |gpa| with_guest_word::<AtomicU64, _>(&mem, gpa, |w| w.load(Relaxed));
                let first = seq(Ordering::Acquire);
                let (scale_read, offset_read) = (word(X + 8), word(X + 16));
                fence(Ordering::Acquire);
                let (seq, seq_again) = (first, seq(Relaxed));
                if seq == 0 || seq != seq_again {
                    retried += 1;
                    continue;
                }
                assert_eq!(scale_read, scale);
                assert!(
                    offsets.contains(&(offset_read as i64)) || offset_read == 0,
                    "torn offset {offset_read:#x}"
                );
                accepted += 1;
            }
            (accepted, retried)
        })
    };
    for n in 0..20_000 {
        t.clock.set_offset(offsets[n % 2]);
        t.partition.refresh_reference_tsc_page();
    }
    stop.store(true, Ordering::Relaxed);
    let (accepted, _) = reader.join().unwrap();
    assert!(accepted > 0);
}
