//! Rows for SCONTROL, SVERSION and EOM: SCTL, SVER, EOM.

use super::*;

// ---------------------------------------------------------------------------------------------
// SCTL

/// Writes `value` and checks what is stored and which change is reported.
fn sctl_write(vp: &mut VpRegisters, value: u64, stored: u64, origin: Origin) {
    let old = rd(vp, SCONTROL, Host);
    let out = wr(vp, SCONTROL, value, origin);
    let change = if (old & 1) != (stored & 1) {
        Change::SynicEnable {
            enabled: stored & 1 == 1,
        }
    } else {
        Change::None
    };
    assert_outcome(out, SCONTROL, old, stored, change);
    assert_eq!(rd(vp, SCONTROL, origin), stored);
}

fn sctl_tlfs_write_rules(origin: Origin) {
    let mut vp = tlfs();
    sctl_write(&mut vp, 1, 1, origin);
    sctl_write(&mut vp, u64::MAX, 1, origin);
    sctl_write(&mut vp, 0xFFFE, 0, origin);
    sctl_write(&mut vp, 0, 0, origin);
    assert!(!vp.scontrol().enabled());
}

fn sctl_kvm_write_rules(origin: Origin) {
    for mut vp in kvm_on() {
        sctl_write(&mut vp, 1, 1, origin);
        sctl_write(&mut vp, u64::MAX, u64::MAX, origin);
        sctl_write(&mut vp, 0xFFFE, 0xFFFE, origin);
        sctl_write(
            &mut vp,
            0x8000_0000_0000_0001,
            0x8000_0000_0000_0001,
            origin,
        );
        sctl_write(&mut vp, 0, 0, origin);
    }
}

#[test]
fn sctl_g_tlfs_1_read_returns_stored_reset_zero() {
    let mut vp = tlfs();
    assert_eq!(rd(&vp, SCONTROL, Guest), 0);
    wr(&mut vp, SCONTROL, 1, Host);
    assert_eq!(rd(&vp, SCONTROL, Guest), 1);
}

#[test]
fn sctl_g_tlfs_2_write_keeps_enable_bit_only_and_reports_enable_change() {
    sctl_tlfs_write_rules(Guest);
}

#[test]
fn sctl_h_tlfs_1_host_read_write_as_guest() {
    assert_eq!(rd(&tlfs(), SCONTROL, Host), 0);
    sctl_tlfs_write_rules(Host);
}

#[test]
fn sctl_g_kvm_1_read_returns_one_after_activation() {
    for vp in kvm_on() {
        assert_eq!(rd(&vp, SCONTROL, Guest), 1);
    }
}

#[test]
fn sctl_g_kvm_2_write_stores_all_bits_and_reports_enable_change() {
    sctl_kvm_write_rules(Guest);
}

#[test]
fn sctl_h_kvm_1_host_read_write_as_guest() {
    for vp in kvm_on() {
        assert_eq!(rd(&vp, SCONTROL, Host), 1);
    }
    sctl_kvm_write_rules(Host);
}

// ---------------------------------------------------------------------------------------------
// SVER

#[test]
fn sver_g_tlfs_1_read_returns_one() {
    assert_eq!(rd(&tlfs(), SVERSION, Guest), 1);
}

#[test]
fn sver_g_tlfs_2_guest_write_is_gp_read_only() {
    let mut vp = tlfs();
    for value in [0, 1, 2, u64::MAX] {
        assert_eq!(wr_gp(&mut vp, SVERSION, value, Guest), GpReason::ReadOnly);
    }
}

#[test]
fn sver_h_tlfs_1_host_write_of_one_is_accepted() {
    let mut vp = tlfs();
    assert_eq!(rd(&vp, SVERSION, Host), 1);
    let out = wr(&mut vp, SVERSION, 1, Host);
    assert_outcome(out, SVERSION, 1, 1, Change::None);
}

#[test]
fn sver_h_tlfs_2_host_write_of_other_version_is_gp() {
    let mut vp = tlfs();
    for value in [0, 2, 0x1_0000_0001, u64::MAX] {
        assert_eq!(
            wr_gp(&mut vp, SVERSION, value, Host),
            GpReason::UnsupportedVersion { value }
        );
    }
}

#[test]
fn sver_g_kvm_1_read_returns_stored_version() {
    for mut vp in kvm_on() {
        assert_eq!(rd(&vp, SVERSION, Guest), 1);
        wr(&mut vp, SVERSION, 7, Host);
        assert_eq!(rd(&vp, SVERSION, Guest), 7);
    }
}

#[test]
fn sver_g_kvm_2_guest_write_is_gp_read_only() {
    for mut vp in kvm_on() {
        for value in [0, 1, u64::MAX] {
            assert_eq!(wr_gp(&mut vp, SVERSION, value, Guest), GpReason::ReadOnly);
        }
    }
}

#[test]
fn sver_h_kvm_1_host_write_stores_any_value() {
    for mut vp in kvm_on() {
        let mut old = 1;
        for value in [0, u64::MAX, 2, 1] {
            let out = wr(&mut vp, SVERSION, value, Host);
            assert_outcome(out, SVERSION, old, value, Change::None);
            old = value;
        }
    }
}

#[test]
fn sver_g_kvmoff_1_guest_access_is_gp_synic_inactive() {
    inactive_guest_refused(SVERSION, true);
}

#[test]
fn sver_h_kvmoff_1_host_zero_write_stores_zero_nonzero_refused_even_one() {
    let mut vp = kvm_off();
    assert_eq!(rd(&vp, SVERSION, Host), 1);
    inactive_host_nonzero_refused(&mut vp, SVERSION);
    let out = wr(&mut vp, SVERSION, 0, Host);
    assert_outcome(out, SVERSION, 1, 0, Change::None);
    assert_eq!(rd(&vp, SVERSION, Host), 0);
}

// ---------------------------------------------------------------------------------------------
// EOM

#[test]
fn eom_g_tlfs_1_read_returns_zero() {
    let mut vp = tlfs();
    assert_eq!(rd(&vp, EOM, Guest), 0);
    wr(&mut vp, EOM, 0, Guest);
    assert_eq!(rd(&vp, EOM, Guest), 0);
}

fn eom_tlfs_rules(origin: Origin) {
    let mut vp = tlfs();
    let out = wr(&mut vp, EOM, 0, origin);
    assert_outcome(out, EOM, 0, 0, Change::Eom);
    for value in [1, 0x100, u64::MAX] {
        assert_eq!(
            wr_gp(&mut vp, EOM, value, origin),
            GpReason::ReservedBits { bits: value }
        );
    }
}

#[test]
fn eom_g_tlfs_2_write_zero_reports_eom() {
    let mut vp = tlfs();
    let out = wr(&mut vp, EOM, 0, Guest);
    assert_outcome(out, EOM, 0, 0, Change::Eom);
}

#[test]
fn eom_g_tlfs_3_write_nonzero_is_gp_reserved_bits() {
    eom_tlfs_rules(Guest);
}

#[test]
fn eom_h_tlfs_1_host_read_write_as_guest() {
    assert_eq!(rd(&tlfs(), EOM, Host), 0);
    eom_tlfs_rules(Host);
}

#[test]
fn eom_g_kvm_1_read_returns_zero() {
    for vp in kvm_on() {
        assert_eq!(rd(&vp, EOM, Guest), 0);
    }
}

fn eom_kvm_any_value(origin: Origin) {
    for mut vp in kvm_on() {
        for value in [0, 1, u64::MAX] {
            let out = wr(&mut vp, EOM, value, origin);
            assert_outcome(out, EOM, 0, 0, Change::Eom);
        }
    }
}

#[test]
fn eom_g_kvm_2_write_any_value_reports_eom() {
    eom_kvm_any_value(Guest);
}

#[test]
fn eom_h_kvm_1_host_write_reports_eom_too() {
    for vp in kvm_on() {
        assert_eq!(rd(&vp, EOM, Host), 0);
    }
    eom_kvm_any_value(Host);
}

#[test]
fn eom_g_kvmoff_1_guest_access_is_gp_synic_inactive() {
    inactive_guest_refused(EOM, true);
}

#[test]
fn eom_h_kvmoff_1_host_zero_write_acks_nothing() {
    let mut vp = kvm_off();
    assert_eq!(rd(&vp, EOM, Host), 0);
    let out = wr(&mut vp, EOM, 0, Host);
    assert_outcome(out, EOM, 0, 0, Change::None);
    inactive_host_nonzero_refused(&mut vp, EOM);
}
