//! Rows for the partition-wide registers and dispatch: UNK, SCOPE, GOSID, HC, TRC, RTSC.

use super::*;

// ---------------------------------------------------------------------------------------------
// UNK

fn unknown_is_gp(vp: &mut VpRegisters, p: &mut PartitionRegisters, origin: Origin) {
    for index in unknown_indices() {
        assert_eq!(rd_gp(vp, index, origin), GpReason::UnknownMsr);
        let e = p.rdmsr(index, origin, 7).unwrap_err();
        assert_eq!((e.index, e.reason), (index, GpReason::UnknownMsr));
        for value in VALUES {
            assert_eq!(wr_gp(vp, index, value, origin), GpReason::UnknownMsr);
            assert_eq!(pwr_gp(p, index, value, origin), GpReason::UnknownMsr);
        }
    }
}

#[test]
fn unk_g_tlfs_1_unmodelled_index_is_gp_unknown() {
    unknown_is_gp(&mut tlfs(), &mut part(Profile::Tlfs), Guest);
}

#[test]
fn unk_h_tlfs_1_unmodelled_index_is_gp_unknown_for_host() {
    unknown_is_gp(&mut tlfs(), &mut part(Profile::Tlfs), Host);
}

#[test]
fn unk_g_kvm_1_unmodelled_index_is_gp_unknown_in_any_activation() {
    for mut vp in kvm_all() {
        unknown_is_gp(&mut vp, &mut part(Profile::Kvm), Guest);
    }
}

#[test]
fn unk_h_kvm_1_unmodelled_index_is_gp_unknown_for_host_in_any_activation() {
    for mut vp in kvm_all() {
        unknown_is_gp(&mut vp, &mut part(Profile::Kvm), Host);
    }
}

// ---------------------------------------------------------------------------------------------
// SCOPE

fn wrong_scope_is_gp(vp: &mut VpRegisters, p: &mut PartitionRegisters, origin: Origin) {
    for index in PARTITION {
        let msr = Msr::from_index(index).unwrap();
        assert_eq!(rd_gp(vp, index, origin), GpReason::WrongScope);
        assert_eq!(wr_gp(vp, index, 1, origin), GpReason::WrongScope);
        assert_eq!(
            vp.read(msr, origin).unwrap_err().reason,
            GpReason::WrongScope
        );
        let before = vp.clone();
        assert_eq!(
            vp.write(msr, 0, origin).unwrap_err().reason,
            GpReason::WrongScope
        );
        assert_eq!(*vp, before);
    }
    for index in KNOWN.into_iter().filter(|i| !PARTITION.contains(i)) {
        let msr = Msr::from_index(index).unwrap();
        let e = p.rdmsr(index, origin, 0).unwrap_err();
        assert_eq!((e.index, e.reason), (index, GpReason::WrongScope));
        assert_eq!(pwr_gp(p, index, 0x1_0010, origin), GpReason::WrongScope);
        let e = p.read(msr, origin, 0).unwrap_err();
        assert_eq!((e.index, e.reason), (index, GpReason::WrongScope));
        let before = p.clone();
        assert_eq!(
            p.write(msr, 0, origin).unwrap_err().reason,
            GpReason::WrongScope
        );
        assert_eq!(*p, before);
    }
}

#[test]
fn scope_g_tlfs_1_register_in_wrong_file_is_gp_wrong_scope() {
    wrong_scope_is_gp(&mut tlfs(), &mut part(Profile::Tlfs), Guest);
}

#[test]
fn scope_h_tlfs_1_register_in_wrong_file_is_gp_wrong_scope_for_host() {
    wrong_scope_is_gp(&mut tlfs(), &mut part(Profile::Tlfs), Host);
}

#[test]
fn scope_g_kvm_1_wrong_scope_is_checked_before_activation() {
    for mut vp in kvm_all() {
        wrong_scope_is_gp(&mut vp, &mut part(Profile::Kvm), Guest);
    }
}

#[test]
fn scope_h_kvm_1_wrong_scope_for_host_in_any_activation() {
    for mut vp in kvm_all() {
        wrong_scope_is_gp(&mut vp, &mut part(Profile::Kvm), Host);
    }
}

// ---------------------------------------------------------------------------------------------
// GOSID

fn gosid_read_returns_stored(profile: Profile, origin: Origin) {
    let mut p = part(profile);
    assert_eq!(prd(&p, GUEST_OS_ID, origin), 0);
    pwr(&mut p, GUEST_OS_ID, 0x8100_0A00_1234_5678, Host);
    assert_eq!(prd(&p, GUEST_OS_ID, origin), 0x8100_0A00_1234_5678);
    assert_eq!(p.guest_os_id(), 0x8100_0A00_1234_5678);
}

fn gosid_write_stores_all_bits(profile: Profile, origin: Origin) {
    let mut p = part(profile);
    let mut old = 0;
    for value in [u64::MAX, 1, 1 << 63, 0x0001_0406_0000_0000, 0] {
        let out = pwr(&mut p, GUEST_OS_ID, value, origin);
        assert_outcome(out, GUEST_OS_ID, old, value, Change::None);
        assert_eq!(prd(&p, GUEST_OS_ID, origin), value);
        old = value;
    }
    // Zero with HYPERCALL already disabled: nothing else to do.
    pwr(&mut p, GUEST_OS_ID, 5, origin);
    pwr(&mut p, HYPERCALL, 0x7000, origin);
    let out = pwr(&mut p, GUEST_OS_ID, 0, origin);
    assert_eq!(out.change, Change::None);
    assert_eq!(prd(&p, HYPERCALL, origin), 0x7000);
}

fn gosid_zero_disables_hypercall(profile: Profile, origin: Origin) {
    let mut p = part(profile);
    pwr(&mut p, GUEST_OS_ID, 0x1234, origin);
    // Locked (TLFS) does not stop it.
    let hc = 0x7000 | Hypercall::LOCKED | Hypercall::ENABLE;
    pwr(&mut p, HYPERCALL, hc, origin);
    let out = pwr(&mut p, GUEST_OS_ID, 0, origin);
    assert_outcome(
        out,
        GUEST_OS_ID,
        0x1234,
        0,
        Change::HypercallPage {
            old: Hypercall(hc),
            new: Hypercall(0x7002),
        },
    );
    assert_eq!(prd(&p, HYPERCALL, origin), 0x7002);
}

#[test]
fn gosid_g_tlfs_1_read_returns_stored_value() {
    gosid_read_returns_stored(Profile::Tlfs, Guest);
}

#[test]
fn gosid_g_tlfs_2_write_stores_all_64_bits() {
    gosid_write_stores_all_bits(Profile::Tlfs, Guest);
}

#[test]
fn gosid_g_tlfs_3_zero_clears_hypercall_enable_even_when_locked() {
    gosid_zero_disables_hypercall(Profile::Tlfs, Guest);
}

#[test]
fn gosid_h_tlfs_1_host_read_write_as_guest() {
    gosid_read_returns_stored(Profile::Tlfs, Host);
    gosid_write_stores_all_bits(Profile::Tlfs, Host);
    gosid_zero_disables_hypercall(Profile::Tlfs, Host);
}

#[test]
fn gosid_g_kvm_1_read_returns_stored_value() {
    gosid_read_returns_stored(Profile::Kvm, Guest);
}

#[test]
fn gosid_g_kvm_2_write_stores_all_64_bits() {
    gosid_write_stores_all_bits(Profile::Kvm, Guest);
}

#[test]
fn gosid_g_kvm_3_zero_clears_hypercall_enable() {
    gosid_zero_disables_hypercall(Profile::Kvm, Guest);
}

#[test]
fn gosid_h_kvm_1_host_read_write_as_guest() {
    gosid_read_returns_stored(Profile::Kvm, Host);
    gosid_write_stores_all_bits(Profile::Kvm, Host);
    gosid_zero_disables_hypercall(Profile::Kvm, Host);
}

// ---------------------------------------------------------------------------------------------
// HC

fn identified(profile: Profile) -> PartitionRegisters {
    let mut p = part(profile);
    pwr(&mut p, GUEST_OS_ID, 0x8100_0000_0000_0001, Guest);
    p
}

fn hc_read_returns_stored(profile: Profile, origin: Origin) {
    let mut p = identified(profile);
    assert_eq!(prd(&p, HYPERCALL, origin), 0);
    pwr(&mut p, HYPERCALL, 0x1234_5001, Host);
    assert_eq!(prd(&p, HYPERCALL, origin), 0x1234_5001);
    assert_eq!(p.hypercall(), Hypercall(0x1234_5001));
}

fn hc_guest_write_discarded_without_os_id(profile: Profile) {
    let mut p = part(profile);
    for value in [0x5001, u64::MAX, 1 << 62 | 1, 0x5003] {
        let out = pwr(&mut p, HYPERCALL, value, Guest);
        assert_outcome(out, HYPERCALL, 0, 0, Change::None);
    }
    // Also with a (locked) value left behind by clearing GUEST_OS_ID.
    pwr(&mut p, GUEST_OS_ID, 9, Guest);
    pwr(&mut p, HYPERCALL, 0x5003, Guest);
    pwr(&mut p, GUEST_OS_ID, 0, Guest);
    let out = pwr(&mut p, HYPERCALL, 0x6001, Guest);
    assert_outcome(out, HYPERCALL, 0x5002, 0x5002, Change::None);
}

#[test]
fn hc_g_tlfs_1_read_returns_stored_value() {
    hc_read_returns_stored(Profile::Tlfs, Guest);
}

#[test]
fn hc_g_tlfs_2_write_discarded_while_guest_os_id_is_zero() {
    hc_guest_write_discarded_without_os_id(Profile::Tlfs);
}

#[test]
fn hc_g_tlfs_3_write_stores_defined_bits_and_reports_page() {
    let mut p = identified(Profile::Tlfs);
    let out = pwr(&mut p, HYPERCALL, 0x0000_0012_3456_7FFD, Guest);
    assert_outcome(
        out,
        HYPERCALL,
        0,
        0x0000_0012_3456_7001,
        Change::HypercallPage {
            old: Hypercall(0),
            new: Hypercall(0x0000_0012_3456_7001),
        },
    );
    // Unchanged value: still reported, the VMM refills an enabled page.
    let out = pwr(&mut p, HYPERCALL, 0x0000_0012_3456_7001, Guest);
    assert!(matches!(out.change, Change::HypercallPage { old, new } if old == new));
    // Disable: Enable bit cleared, address kept.
    let out = pwr(&mut p, HYPERCALL, 0x0000_0012_3456_7000, Guest);
    assert_eq!(out.new, 0x0000_0012_3456_7000);
    assert!(!Hypercall(out.new).enabled());
}

#[test]
fn hc_g_tlfs_4_write_when_locked_is_gp() {
    let mut p = identified(Profile::Tlfs);
    pwr(&mut p, HYPERCALL, 0x5003, Guest);
    for value in [0x5003, 0x6001, 0, 1 << 60] {
        assert_eq!(
            pwr_gp(&mut p, HYPERCALL, value, Guest),
            GpReason::HypercallLocked
        );
    }
    assert_eq!(prd(&p, HYPERCALL, Guest), 0x5003);
}

#[test]
fn hc_g_tlfs_5_page_address_beyond_width_is_gp() {
    let mut p = identified(Profile::Tlfs);
    for value in [1 << 52 | 1, 1 << 52, 1 << 63] {
        let gpa = value & !0xFFF;
        assert_eq!(
            pwr_gp(&mut p, HYPERCALL, value, Guest),
            GpReason::GpaTooWide { gpa, bits: 52 }
        );
    }
    pwr(&mut p, HYPERCALL, (1 << 52) - 0x1000 + 1, Guest);
    let mut p = identified(Profile::Tlfs).with_phys_addr_bits(36);
    assert_eq!(
        pwr_gp(&mut p, HYPERCALL, 1 << 36, Guest),
        GpReason::GpaTooWide {
            gpa: 1 << 36,
            bits: 36
        }
    );
    pwr(&mut p, HYPERCALL, (1 << 36) - 0x1000 + 1, Guest);
}

#[test]
fn hc_h_tlfs_1_host_write_ignores_locked_but_not_width() {
    hc_read_returns_stored(Profile::Tlfs, Host);
    let mut p = identified(Profile::Tlfs);
    pwr(&mut p, HYPERCALL, 0x5003, Guest);
    let out = pwr(&mut p, HYPERCALL, 0x6FFD, Host);
    assert_eq!((out.old, out.new), (0x5003, 0x6001));
    assert_eq!(
        pwr_gp(&mut p, HYPERCALL, 1 << 52, Host),
        GpReason::GpaTooWide {
            gpa: 1 << 52,
            bits: 52
        }
    );
}

#[test]
fn hc_h_tlfs_2_host_write_without_os_id_is_stored_disabled() {
    let mut p = part(Profile::Tlfs);
    let out = pwr(&mut p, HYPERCALL, 0x5FFF, Host);
    assert_outcome(
        out,
        HYPERCALL,
        0,
        0x5002,
        Change::HypercallPage {
            old: Hypercall(0),
            new: Hypercall(0x5002),
        },
    );
    assert_eq!(
        pwr_gp(&mut p, HYPERCALL, 1 << 55, Host),
        GpReason::GpaTooWide {
            gpa: 1 << 55,
            bits: 52
        }
    );
}

#[test]
fn hc_g_kvm_1_read_returns_stored_value() {
    hc_read_returns_stored(Profile::Kvm, Guest);
}

#[test]
fn hc_g_kvm_2_write_discarded_while_guest_os_id_is_zero() {
    hc_guest_write_discarded_without_os_id(Profile::Kvm);
}

fn hc_kvm_stores_everything(origin: Origin) {
    let mut p = identified(Profile::Kvm);
    // Reserved bits, Locked and an address beyond 52 bits are all stored.
    let out = pwr(&mut p, HYPERCALL, u64::MAX, origin);
    assert_outcome(
        out,
        HYPERCALL,
        0,
        u64::MAX,
        Change::HypercallPage {
            old: Hypercall(0),
            new: Hypercall(u64::MAX),
        },
    );
    // Locked means nothing to KVM.
    let out = pwr(&mut p, HYPERCALL, 0x5001, origin);
    assert_eq!(out.new, 0x5001);
}

#[test]
fn hc_g_kvm_3_write_stores_all_bits_without_locked_or_width_checks() {
    hc_kvm_stores_everything(Guest);
}

#[test]
fn hc_h_kvm_1_host_read_write_as_guest() {
    hc_read_returns_stored(Profile::Kvm, Host);
    hc_kvm_stores_everything(Host);
}

#[test]
fn hc_h_kvm_2_host_write_without_os_id_is_stored_disabled() {
    let mut p = part(Profile::Kvm);
    let out = pwr(&mut p, HYPERCALL, u64::MAX, Host);
    assert_outcome(
        out,
        HYPERCALL,
        0,
        u64::MAX - 1,
        Change::HypercallPage {
            old: Hypercall(0),
            new: Hypercall(u64::MAX - 1),
        },
    );
}

// ---------------------------------------------------------------------------------------------
// TRC

fn trc_read_returns_clock(profile: Profile, origin: Origin) {
    let p = part(profile);
    for t in [0, 1, 0x1234_5678_9ABC, u64::MAX] {
        assert_eq!(p.rdmsr(TIME_REF_COUNT, origin, t), Ok(t));
        assert_eq!(p.read(Msr::TimeRefCount, origin, t), Ok(t));
    }
}

fn trc_guest_write_is_read_only(profile: Profile) {
    let mut p = part(profile);
    for value in [0, 1, u64::MAX] {
        assert_eq!(
            pwr_gp(&mut p, TIME_REF_COUNT, value, Guest),
            GpReason::ReadOnly
        );
    }
}

fn trc_host_write_ignored(profile: Profile) {
    let mut p = part(profile);
    let before = p.clone();
    for value in [0, 1, u64::MAX] {
        let out = pwr(&mut p, TIME_REF_COUNT, value, Host);
        assert_outcome(out, TIME_REF_COUNT, 0, 0, Change::None);
    }
    assert_eq!(p, before);
    assert_eq!(p.rdmsr(TIME_REF_COUNT, Host, 42), Ok(42));
}

#[test]
fn trc_g_tlfs_1_read_returns_callers_reference_time() {
    trc_read_returns_clock(Profile::Tlfs, Guest);
}

#[test]
fn trc_g_tlfs_2_guest_write_is_gp_read_only() {
    trc_guest_write_is_read_only(Profile::Tlfs);
}

#[test]
fn trc_h_tlfs_1_host_write_is_accepted_and_ignored() {
    trc_read_returns_clock(Profile::Tlfs, Host);
    trc_host_write_ignored(Profile::Tlfs);
}

#[test]
fn trc_g_kvm_1_read_returns_callers_reference_time() {
    trc_read_returns_clock(Profile::Kvm, Guest);
}

#[test]
fn trc_g_kvm_2_guest_write_is_gp_read_only() {
    trc_guest_write_is_read_only(Profile::Kvm);
}

#[test]
fn trc_h_kvm_1_host_write_is_accepted_and_ignored() {
    trc_read_returns_clock(Profile::Kvm, Host);
    trc_host_write_ignored(Profile::Kvm);
}

// ---------------------------------------------------------------------------------------------
// RTSC

const RTSC_VALUES: [u64; 6] = [0, 1, 0x8001, 0x8FFF, 0x1234_5678_9001, 0xFFFF_F000];

fn rtsc_write_stores(profile: Profile, origin: Origin) {
    let mut p = part(profile);
    let mut old = 0;
    for value in RTSC_VALUES {
        let stored = match profile {
            Profile::Tlfs => value & 0xFFFF_FFFF_FFFF_F001,
            Profile::Kvm => value,
        };
        let out = pwr(&mut p, REFERENCE_TSC, value, origin);
        assert_outcome(
            out,
            REFERENCE_TSC,
            old,
            stored,
            Change::ReferenceTscPage {
                old: PageRegister(old),
                new: PageRegister(stored),
            },
        );
        assert_eq!(prd(&p, REFERENCE_TSC, Guest), stored);
        assert_eq!(p.reference_tsc(), PageRegister(stored));
        old = stored;
    }
    // Rewriting the same value is still reported: the layer above refreshes the page.
    let out = pwr(&mut p, REFERENCE_TSC, old, origin);
    assert_eq!(
        out.change,
        Change::ReferenceTscPage {
            old: PageRegister(old),
            new: PageRegister(old)
        }
    );
    // No guest OS id is needed, and clearing it leaves the page alone.
    assert_eq!(prd(&p, GUEST_OS_ID, Host), 0);
    pwr(&mut p, REFERENCE_TSC, 0x9001, origin);
    pwr(&mut p, GUEST_OS_ID, 5, Host);
    let out = pwr(&mut p, GUEST_OS_ID, 0, Guest);
    assert_eq!(out.change, Change::None);
    assert_eq!(prd(&p, REFERENCE_TSC, Guest), 0x9001);
}

#[test]
fn rtsc_g_tlfs_1_read_returns_stored_value() {
    let mut p = part(Profile::Tlfs);
    assert_eq!(prd(&p, REFERENCE_TSC, Guest), 0);
    pwr(&mut p, REFERENCE_TSC, 0x5001, Guest);
    assert_eq!(prd(&p, REFERENCE_TSC, Guest), 0x5001);
    assert_eq!(p.read(Msr::ReferenceTsc, Guest, 9), Ok(0x5001));
}

#[test]
fn rtsc_g_tlfs_2_write_drops_rsvdp_and_reports_the_page_change() {
    rtsc_write_stores(Profile::Tlfs, Guest);
}

#[test]
fn rtsc_g_tlfs_3_address_beyond_width_is_gp() {
    for origin in [Guest, Host] {
        let mut p = part(Profile::Tlfs).with_phys_addr_bits(36);
        for value in [1u64 << 36 | 1, 1 << 36, 1 << 63] {
            assert_eq!(
                pwr_gp(&mut p, REFERENCE_TSC, value, origin),
                GpReason::GpaTooWide {
                    gpa: value & !0xFFF,
                    bits: 36
                }
            );
        }
        pwr(&mut p, REFERENCE_TSC, (1 << 36) - 0x1000 + 1, origin);
    }
}

#[test]
fn rtsc_h_tlfs_1_host_access_follows_the_guest_rules() {
    rtsc_write_stores(Profile::Tlfs, Host);
    let mut p = part(Profile::Tlfs);
    pwr(&mut p, REFERENCE_TSC, 0x7003, Host);
    assert_eq!(prd(&p, REFERENCE_TSC, Host), 0x7001);
}

#[test]
fn rtsc_g_kvm_1_all_bits_stored_without_checks() {
    rtsc_write_stores(Profile::Kvm, Guest);
    let mut p = part(Profile::Kvm).with_phys_addr_bits(36);
    pwr(&mut p, REFERENCE_TSC, u64::MAX, Guest);
    assert_eq!(prd(&p, REFERENCE_TSC, Guest), u64::MAX);
}

#[test]
fn rtsc_h_kvm_1_host_access_stores_all_bits() {
    rtsc_write_stores(Profile::Kvm, Host);
    let mut p = part(Profile::Kvm);
    pwr(&mut p, REFERENCE_TSC, 0xFFE, Host);
    assert_eq!(prd(&p, REFERENCE_TSC, Host), 0xFFE);
}
