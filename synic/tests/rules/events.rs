//! Event flags.

use synic::{Error, FlagOutcome, VpIndex};
use synic_msr::{index, Profile};
use vm_memory::{Bytes, GuestAddress};

use crate::common::*;

fn signal(h: &Harness, sint: u8, flag: u32) -> Result<FlagOutcome, Error> {
    h.partition.signal_event(VpIndex(0), u32::from(sint), flag)
}

#[test]
fn signal_sets_the_bit_and_raises_only_on_0_to_1() {
    let h = Harness::enabled();
    assert_eq!(signal(&h, 4, 77), Ok(FlagOutcome::Set));
    assert!(h.flag_is_set(0, 4, 77));
    assert_eq!(signal(&h, 4, 77), Ok(FlagOutcome::AlreadySet));
    assert_eq!(h.raised(), vec![(VpIndex(0), sint(4), vector(4), false)]);
    let c = h.counters(0, 4);
    assert_eq!((c.flags_set, c.flags_coalesced), (1, 1));
}

#[test]
fn a_flag_the_guest_cleared_raises_again() {
    let h = Harness::enabled();
    signal(&h, 0, 3).unwrap();
    h.mem.write_obj(0u8, GuestAddress(siefp_gpa(0))).unwrap();
    assert_eq!(signal(&h, 0, 3), Ok(FlagOutcome::Set));
    assert_eq!(h.raised().len(), 2);
}

#[test]
fn flags_of_one_sint_share_one_interrupt_per_transition() {
    let h = Harness::enabled();
    signal(&h, 0, 1).unwrap();
    signal(&h, 0, 2).unwrap();
    // Different flags each go 0 -> 1, so each raises (the guest scans them all).
    assert_eq!(h.raised().len(), 2);
    assert!(h.flag_is_set(0, 0, 1) && h.flag_is_set(0, 0, 2));
    assert!(!h.flag_is_set(0, 0, 0) && !h.flag_is_set(0, 1, 1));
}

#[test]
fn flag_numbers_stop_at_2047() {
    let h = Harness::enabled();
    assert_eq!(signal(&h, 15, 2047), Ok(FlagOutcome::Set));
    assert!(h.flag_is_set(0, 15, 2047));
    assert_eq!(signal(&h, 15, 2048), Err(Error::InvalidFlag { flag: 2048 }));
    assert_eq!(
        signal(&h, 15, u32::MAX),
        Err(Error::InvalidFlag { flag: u32::MAX })
    );
    assert_eq!(
        h.partition.signal_event(VpIndex(0), 16u32, 0),
        Err(Error::InvalidSint { sint: 16 })
    );
    assert_eq!(
        h.partition.signal_event(VpIndex(9), 0u32, 0),
        Err(Error::InvalidVpIndex { vp: VpIndex(9) })
    );
}

#[test]
fn tlfs_disabled_synic_refuses_flags() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SCONTROL, 0);
    assert_eq!(
        signal(&h, 0, 0),
        Err(Error::SynicDisabled { vp: VpIndex(0) })
    );
    assert!(!h.flag_is_set(0, 0, 0));
}

#[test]
fn kvm_profile_sets_flags_with_scontrol_disabled() {
    let mut h = Harness::new(Profile::Kvm);
    h.enable(0);
    h.wrmsr(0, index::SCONTROL, 0);
    assert_eq!(signal(&h, 0, 0), Ok(FlagOutcome::Set));
}

#[test]
fn disabled_event_flags_page_refuses_flags() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SIEFP, siefp_gpa(0));
    assert_eq!(
        signal(&h, 0, 0),
        Err(Error::EventFlagsPageDisabled { vp: VpIndex(0) })
    );
}

#[test]
fn masked_sint_refuses_flags() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SINT0 + 3, 0x1_0040);
    assert_eq!(
        signal(&h, 3, 0),
        Err(Error::SintMasked {
            vp: VpIndex(0),
            sint: sint(3)
        })
    );
    assert!(!h.flag_is_set(0, 3, 0));
    assert_eq!(
        signal(&h, 3, 0).unwrap_err().hv_status(),
        synic::HvStatus::InvalidSynicState
    );
}

#[test]
fn polling_sint_sets_the_flag_without_interrupt() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SINT0 + 3, 0x4_0040);
    assert_eq!(signal(&h, 3, 9), Ok(FlagOutcome::Set));
    assert!(h.raised().is_empty());
}

#[test]
fn event_flags_page_outside_ram_is_an_error() {
    let mut h = Harness::enabled();
    h.wrmsr(0, index::SIEFP, 0xFFFF_F000 | 1);
    assert_eq!(
        signal(&h, 0, 0),
        Err(Error::PageNotInRam { gpa: 0xFFFF_F000 })
    );
    assert_eq!(h.counters(0, 0).page_errors, 1);
}
