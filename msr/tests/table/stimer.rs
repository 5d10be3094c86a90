//! Rows for the synthetic timers: STCFG, STCNT.

use super::*;

// ---------------------------------------------------------------------------------------------
// STCFG

fn cfg_write(vp: &mut VpRegisters, n: u32, value: u64, stored: u64, origin: Origin) {
    let old = rd(vp, cfg(n), Host);
    let out = wr(vp, cfg(n), value, origin);
    assert_outcome(out, cfg(n), old, stored, Change::Stimer(timer(n as u8)));
    assert_eq!(rd(vp, cfg(n), Host), stored);
}

fn stimer_read_returns_stored(mut vp: VpRegisters, origin: Origin) {
    for n in 0..4 {
        assert_eq!(rd(&vp, cfg(n), origin), 0);
        assert_eq!(rd(&vp, cnt(n), origin), 0);
        wr(&mut vp, cnt(n), 0x1000 + u64::from(n), Host);
        wr(&mut vp, cfg(n), 0x3_0002 + (u64::from(n) << 16), Host);
        assert_eq!(rd(&vp, cnt(n), origin), 0x1000 + u64::from(n));
        assert_eq!(rd(&vp, cfg(n), origin), 0x3_0002 + (u64::from(n) << 16));
    }
}

fn stcfg_tlfs_reserved(origin: Origin) {
    let mut vp = tlfs();
    for n in 0..4 {
        for bits in [1 << 13, 1 << 14, 1 << 15, 1 << 20, 1 << 63, !0xF_1FFF] {
            assert_eq!(
                wr_gp(&mut vp, cfg(n), 0x2_0001 | bits, origin),
                GpReason::ReservedBits { bits }
            );
        }
    }
}

fn stcfg_tlfs_stored(origin: Origin) {
    let mut vp = tlfs();
    for n in 0..4 {
        cfg_write(&mut vp, n, 0xF_1FFF, 0xF_1FFF, origin);
        cfg_write(&mut vp, n, 0x2_000F, 0x2_000F, origin);
        cfg_write(&mut vp, n, 0x1FF1, 0x1FF1, origin); // direct mode, SINTx 0: stays enabled
        cfg_write(&mut vp, n, 0x2_0000, 0x2_0000, origin);
    }
}

fn stcfg_tlfs_sintx_zero(origin: Origin) {
    for was_enabled in [false, true] {
        let mut vp = tlfs();
        for n in 0..4 {
            if was_enabled {
                cfg_write(&mut vp, n, 0x5_0001, 0x5_0001, origin);
            }
            cfg_write(&mut vp, n, 0x000F, 0x000E, origin);
            cfg_write(&mut vp, n, 0x0FF1, 0x0FF0, origin);
        }
    }
}

#[test]
fn stcfg_g_tlfs_1_read_returns_stored_value() {
    stimer_read_returns_stored(tlfs(), Guest);
}

#[test]
fn stcfg_g_tlfs_2_rsvdz_bits_are_gp() {
    stcfg_tlfs_reserved(Guest);
}

#[test]
fn stcfg_g_tlfs_3_valid_write_stored_and_reports_stimer() {
    stcfg_tlfs_stored(Guest);
}

#[test]
fn stcfg_g_tlfs_4_enable_with_sintx_zero_is_stored_disabled() {
    stcfg_tlfs_sintx_zero(Guest);
}

#[test]
fn stcfg_h_tlfs_1_host_read_write_as_guest() {
    stimer_read_returns_stored(tlfs(), Host);
    stcfg_tlfs_reserved(Host);
    stcfg_tlfs_stored(Host);
    stcfg_tlfs_sintx_zero(Host);
}

#[test]
fn stcfg_g_kvm_1_read_returns_stored_value() {
    for vp in kvm_on() {
        stimer_read_returns_stored(vp, Guest);
    }
}

fn stcfg_kvm_stores_all(origin: Origin) {
    for mut vp in kvm_on() {
        for n in 0..4 {
            cfg_write(&mut vp, n, 0xFFFF_FFFF_FFFF_FFFF, u64::MAX, origin);
            cfg_write(&mut vp, n, 0xE000, 0xE000, origin);
            cfg_write(&mut vp, n, 0x2_0001 | 1 << 40, 0x2_0001 | 1 << 40, origin);
        }
    }
}

fn stcfg_kvm_sintx_zero(origin: Origin) {
    for mut vp in kvm_on() {
        for n in 0..4 {
            // Disabled before: the written Enable is kept even with SINTx 0.
            cfg_write(&mut vp, n, 0x0001, 0x0001, origin);
            // Enabled before: SINTx 0 clears it.
            cfg_write(&mut vp, n, 0x0003, 0x0002, origin);
            // Enabled before, direct mode: kept.
            cfg_write(&mut vp, n, 0x1001, 0x1001, origin);
            cfg_write(&mut vp, n, 0x1001, 0x1001, origin);
        }
    }
}

#[test]
fn stcfg_g_kvm_2_write_stores_all_bits_no_reserved_check() {
    stcfg_kvm_stores_all(Guest);
}

#[test]
fn stcfg_g_kvm_3_sintx_zero_disables_only_a_previously_enabled_timer() {
    stcfg_kvm_sintx_zero(Guest);
}

#[test]
fn stcfg_h_kvm_1_host_read_write_as_guest() {
    for vp in kvm_on() {
        stimer_read_returns_stored(vp, Host);
    }
    stcfg_kvm_stores_all(Host);
    stcfg_kvm_sintx_zero(Host);
}

#[test]
fn stcfg_g_kvmoff_1_guest_read_passes_write_is_gp_synic_inactive() {
    for n in 0..4 {
        inactive_guest_refused(cfg(n), false);
    }
}

#[test]
fn stcfg_h_kvmoff_1_host_reads_and_writes_zero_only() {
    let mut vp = kvm_off();
    for n in 0..4 {
        assert_eq!(rd(&vp, cfg(n), Host), 0);
        cfg_write(&mut vp, n, 0, 0, Host);
        inactive_host_nonzero_refused(&mut vp, cfg(n));
    }
}

// ---------------------------------------------------------------------------------------------
// STCNT

fn cnt_write(vp: &mut VpRegisters, n: u32, value: u64, origin: Origin, config_after: u64) {
    let old = rd(vp, cnt(n), Host);
    let out = wr(vp, cnt(n), value, origin);
    assert_outcome(out, cnt(n), old, value, Change::Stimer(timer(n as u8)));
    assert_eq!(rd(vp, cnt(n), Host), value);
    assert_eq!(
        rd(vp, cfg(n), Host),
        config_after,
        "config after count write"
    );
}

#[test]
fn stcnt_g_tlfs_1_read_returns_stored_value() {
    let mut vp = tlfs();
    for n in 0..4 {
        assert_eq!(rd(&vp, cnt(n), Guest), 0);
        wr(&mut vp, cnt(n), u64::MAX - u64::from(n), Host);
        assert_eq!(rd(&vp, cnt(n), Guest), u64::MAX - u64::from(n));
    }
}

#[test]
fn stcnt_g_tlfs_2_autoenable_enables_only_a_deliverable_timer() {
    let mut vp = tlfs();
    for n in 0..4 {
        // No AutoEnable: stored, config untouched.
        wr(&mut vp, cfg(n), 0x3_0000, Host);
        cnt_write(&mut vp, n, 100, Guest, 0x3_0000);
        // AutoEnable with SINTx 3: enabled.
        wr(&mut vp, cfg(n), 0x3_0008, Host);
        cnt_write(&mut vp, n, u64::MAX, Guest, 0x3_0009);
        // AutoEnable, SINTx 0, direct mode: enabled.
        wr(&mut vp, cfg(n), 0x1008, Host);
        cnt_write(&mut vp, n, 5, Guest, 0x1009);
        // AutoEnable, SINTx 0, message mode: stays disabled (TLFS SINTx rule).
        wr(&mut vp, cfg(n), 0x0008, Host);
        cnt_write(&mut vp, n, 5, Guest, 0x0008);
    }
}

#[test]
fn stcnt_g_tlfs_3_zero_disables_regardless_of_autoenable() {
    let mut vp = tlfs();
    for n in 0..4 {
        wr(&mut vp, cfg(n), 0x3_0009, Host);
        cnt_write(&mut vp, n, 0, Guest, 0x3_0008);
        wr(&mut vp, cfg(n), 0x3_0001, Host);
        cnt_write(&mut vp, n, 0, Guest, 0x3_0000);
    }
}

fn stcnt_host_no_side_effects(mut vp: VpRegisters) {
    for n in 0..4 {
        wr(&mut vp, cfg(n), 0x3_0009, Host);
        cnt_write(&mut vp, n, 0, Host, 0x3_0009);
        wr(&mut vp, cfg(n), 0x3_0008, Host);
        cnt_write(&mut vp, n, 77, Host, 0x3_0008);
        assert_eq!(rd(&vp, cnt(n), Host), 77);
    }
}

#[test]
fn stcnt_h_tlfs_1_host_write_has_no_side_effects() {
    stcnt_host_no_side_effects(tlfs());
}

#[test]
fn stcnt_g_kvm_1_read_returns_stored_value() {
    for mut vp in kvm_on() {
        assert_eq!(rd(&vp, cnt(2), Guest), 0);
        wr(&mut vp, cnt(2), 1 << 50, Host);
        assert_eq!(rd(&vp, cnt(2), Guest), 1 << 50);
    }
}

#[test]
fn stcnt_g_kvm_2_autoenable_enables_even_with_sintx_zero() {
    for mut vp in kvm_on() {
        for n in 0..4 {
            wr(&mut vp, cfg(n), 0x3_0000, Host);
            cnt_write(&mut vp, n, 100, Guest, 0x3_0000);
            wr(&mut vp, cfg(n), 0x0008, Host);
            cnt_write(&mut vp, n, 5, Guest, 0x0009);
            wr(&mut vp, cfg(n), 0x3_0008, Host);
            cnt_write(&mut vp, n, u64::MAX, Guest, 0x3_0009);
        }
    }
}

#[test]
fn stcnt_g_kvm_3_zero_disables() {
    for mut vp in kvm_on() {
        for n in 0..4 {
            wr(&mut vp, cfg(n), 0x3_0009, Host);
            cnt_write(&mut vp, n, 0, Guest, 0x3_0008);
        }
    }
}

#[test]
fn stcnt_h_kvm_1_host_write_has_no_side_effects() {
    for vp in kvm_on() {
        stcnt_host_no_side_effects(vp);
    }
}

#[test]
fn stcnt_g_kvmoff_1_guest_read_passes_write_is_gp_synic_inactive() {
    for n in 0..4 {
        inactive_guest_refused(cnt(n), false);
    }
}

#[test]
fn stcnt_h_kvmoff_1_host_reads_and_writes_zero_only() {
    let mut vp = kvm_off();
    for n in 0..4 {
        assert_eq!(rd(&vp, cnt(n), Host), 0);
        cnt_write(&mut vp, n, 0, Host, 0);
        inactive_host_nonzero_refused(&mut vp, cnt(n));
    }
}
