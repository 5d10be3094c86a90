//! Rows for SIMP and SIEFP: PAGE.

use super::*;

// ---------------------------------------------------------------------------------------------
// PAGE

fn page_read_returns_stored(mut vp: VpRegisters, origin: Origin) {
    for index in PAGES {
        assert_eq!(rd(&vp, index, origin), 0);
        wr(&mut vp, index, 0x1234_5001, Host);
        assert_eq!(rd(&vp, index, origin), 0x1234_5001);
    }
    assert_eq!(vp.simp(), PageRegister(0x1234_5001));
    assert_eq!(vp.siefp(), PageRegister(0x1234_5001));
}

fn page_tlfs_write_rules(origin: Origin) {
    for index in PAGES {
        let mut vp = tlfs();
        let mut old = 0;
        for (value, stored) in [
            (0x5001, 0x5001),
            (0x5FFF, 0x5001),
            (0x000F_FFFF_FFFF_FFFF, 0x000F_FFFF_FFFF_F001),
            (0x6000 | 0xFFE, 0x6000),
            (0x6000, 0x6000),
        ] {
            let out = wr(&mut vp, index, value, origin);
            assert_outcome(
                out,
                index,
                old,
                stored,
                page_change(index, old, stored, false),
            );
            old = stored;
        }
    }
}

fn page_tlfs_width_rules(origin: Origin) {
    for index in PAGES {
        let mut vp = tlfs();
        for value in [1 << 52 | 1, 1 << 52, u64::MAX, 1 << 63] {
            assert_eq!(
                wr_gp(&mut vp, index, value, origin),
                GpReason::GpaTooWide {
                    gpa: value & !0xFFF,
                    bits: 52
                }
            );
        }
        let mut vp = tlfs().with_phys_addr_bits(39);
        assert_eq!(
            wr_gp(&mut vp, index, 1 << 39, origin),
            GpReason::GpaTooWide {
                gpa: 1 << 39,
                bits: 39
            }
        );
        wr(&mut vp, index, (1 << 39) - 0x1000 + 1, origin);
        // Widths are clamped to 12..=52.
        let mut vp = tlfs().with_phys_addr_bits(200);
        assert!(vp.wrmsr(index, 1 << 52, origin).is_err());
        let mut vp = tlfs().with_phys_addr_bits(0);
        assert_eq!(
            wr_gp(&mut vp, index, 0x1001, origin),
            GpReason::GpaTooWide {
                gpa: 0x1000,
                bits: 12
            }
        );
        wr(&mut vp, index, 0xFFF, origin);
    }
}

#[test]
fn page_g_tlfs_1_read_returns_stored_value() {
    page_read_returns_stored(tlfs(), Guest);
}

#[test]
fn page_g_tlfs_2_write_drops_rsvdp_bits_and_reports_update_without_zeroing() {
    page_tlfs_write_rules(Guest);
}

#[test]
fn page_g_tlfs_3_address_beyond_width_is_gp_even_disabled() {
    page_tlfs_width_rules(Guest);
}

#[test]
fn page_h_tlfs_1_host_read_write_as_guest() {
    page_read_returns_stored(tlfs(), Host);
    page_tlfs_write_rules(Host);
    page_tlfs_width_rules(Host);
}

#[test]
fn page_g_kvm_1_read_returns_stored_value() {
    for vp in kvm_on() {
        page_read_returns_stored(vp, Guest);
    }
}

/// KVM stores every bit; `zero_page` follows `zero_if_enabled` and the written Enable bit.
fn page_kvm_write_rules(vp: VpRegisters, origin: Origin, zero_if_enabled: bool) {
    for index in PAGES {
        let mut vp = vp.clone();
        let mut old = 0;
        for value in [0x5001, 0x5001, 0x5FFF, u64::MAX, 1 << 60, 0] {
            let out = wr(&mut vp, index, value, origin);
            let zero = zero_if_enabled && value & 1 == 1;
            assert_outcome(out, index, old, value, page_change(index, old, value, zero));
            old = value;
        }
    }
}

#[test]
fn page_g_kvm_2_synic2_write_stores_all_bits_never_zeroes() {
    page_kvm_write_rules(kvm(KvmSynic::V2), Guest, false);
}

#[test]
fn page_g_kvm_3_synic1_zeroes_page_on_every_enable_write() {
    page_kvm_write_rules(kvm(KvmSynic::V1), Guest, true);
}

#[test]
fn page_h_kvm_1_host_write_stores_all_bits_never_zeroes() {
    for vp in kvm_on() {
        page_read_returns_stored(vp.clone(), Host);
        page_kvm_write_rules(vp, Host, false);
    }
}

#[test]
fn page_g_kvmoff_1_guest_access_is_gp_synic_inactive() {
    for index in PAGES {
        inactive_guest_refused(index, true);
    }
}

#[test]
fn page_h_kvmoff_1_host_reads_and_writes_zero_only() {
    for index in PAGES {
        let mut vp = kvm_off();
        assert_eq!(rd(&vp, index, Host), 0);
        let out = wr(&mut vp, index, 0, Host);
        assert_outcome(out, index, 0, 0, page_change(index, 0, 0, false));
        inactive_host_nonzero_refused(&mut vp, index);
    }
}
