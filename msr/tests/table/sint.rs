//! Rows for SINT0..SINT15: SINT.

use super::*;

// ---------------------------------------------------------------------------------------------
// SINT

fn sint_write(vp: &mut VpRegisters, index: u32, value: u64, stored: u64, origin: Origin) {
    let old = rd(vp, index, Host);
    let out = wr(vp, index, value, origin);
    let n = (index - SINT0) as u8;
    assert_outcome(
        out,
        index,
        old,
        stored,
        Change::Sint {
            sint: sint(n),
            old: Sint(old),
            new: Sint(stored),
        },
    );
    assert_eq!(vp.sint(sint(n)), Sint(stored));
}

fn sint_read_returns_stored(mut vp: VpRegisters, origin: Origin) {
    for index in sints() {
        assert_eq!(rd(&vp, index, origin), 0x1_0000);
        wr(&mut vp, index, 0x2_0040 + u64::from(index - SINT0), Host);
        assert_eq!(rd(&vp, index, origin), 0x2_0040 + u64::from(index - SINT0));
    }
}

#[test]
fn sint_g_tlfs_1_read_returns_stored_reset_masked() {
    sint_read_returns_stored(tlfs(), Guest);
}

#[test]
fn sint_g_tlfs_2_valid_vector_stored_without_rsvdp_bits() {
    let mut vp = tlfs();
    for index in sints() {
        sint_write(&mut vp, index, 0x10, 0x10, Guest);
        sint_write(&mut vp, index, 0xFF, 0xFF, Guest);
        sint_write(&mut vp, index, 0x7_0030, 0x7_0030, Guest);
        sint_write(&mut vp, index, 0xFFFF_FFFF_FFFF_FF20, 0x7_0020, Guest);
        sint_write(&mut vp, index, 0x1_FF40, 0x1_0040, Guest);
        sint_write(&mut vp, index, 0x1_0040, 0x1_0040, Guest);
    }
}

#[test]
fn sint_g_tlfs_3_vector_below_16_is_gp_masked_or_not() {
    let mut vp = tlfs();
    for index in sints() {
        for vector in 0..16u64 {
            for flags in [0, 0x1_0000, 0x7_0000, 0xFF00, !0xFF] {
                assert_eq!(
                    wr_gp(&mut vp, index, flags | vector, Guest),
                    GpReason::InvalidVector {
                        vector: vector as u8
                    }
                );
            }
        }
    }
}

#[test]
fn sint_h_tlfs_1_host_write_any_vector_stored_without_rsvdp_bits() {
    sint_read_returns_stored(tlfs(), Host);
    let mut vp = tlfs();
    for index in sints() {
        sint_write(&mut vp, index, 0x1_0000, 0x1_0000, Host);
        sint_write(&mut vp, index, 0x5, 0x5, Host);
        sint_write(&mut vp, index, u64::MAX, 0x7_00FF, Host);
        sint_write(&mut vp, index, 0, 0, Host);
    }
}

#[test]
fn sint_g_kvm_1_read_returns_stored_value() {
    for vp in kvm_on() {
        sint_read_returns_stored(vp, Guest);
    }
}

#[test]
fn sint_g_kvm_2_valid_or_masked_write_stores_all_bits() {
    for mut vp in kvm_on() {
        for index in sints() {
            sint_write(&mut vp, index, 0x1_0000, 0x1_0000, Guest);
            sint_write(&mut vp, index, 0x1_0005, 0x1_0005, Guest);
            sint_write(&mut vp, index, 0x10, 0x10, Guest);
            sint_write(&mut vp, index, u64::MAX, u64::MAX, Guest);
            sint_write(
                &mut vp,
                index,
                0xFFFF_0000_0000_FF20,
                0xFFFF_0000_0000_FF20,
                Guest,
            );
        }
    }
}

#[test]
fn sint_g_kvm_3_unmasked_vector_below_16_is_gp() {
    for mut vp in kvm_on() {
        for index in sints() {
            for vector in 0..16u64 {
                for flags in [0, 0x6_0000, 0xFFFF_FFFF_FFFE_FF00] {
                    assert_eq!(
                        wr_gp(&mut vp, index, flags | vector, Guest),
                        GpReason::InvalidVector {
                            vector: vector as u8
                        }
                    );
                }
            }
        }
    }
}

#[test]
fn sint_h_kvm_1_host_write_stores_any_value() {
    for vp in kvm_on() {
        sint_read_returns_stored(vp.clone(), Host);
        let mut vp = vp;
        for index in sints() {
            sint_write(&mut vp, index, 0, 0, Host);
            sint_write(&mut vp, index, 0x3, 0x3, Host);
            sint_write(&mut vp, index, u64::MAX, u64::MAX, Host);
        }
    }
}

#[test]
fn sint_g_kvmoff_1_guest_access_is_gp_synic_inactive() {
    for index in sints() {
        inactive_guest_refused(index, true);
    }
}

#[test]
fn sint_h_kvmoff_1_host_zero_write_stores_unmasked_zero_nonzero_refused() {
    let mut vp = kvm_off();
    for index in sints() {
        assert_eq!(rd(&vp, index, Host), 0x1_0000);
        inactive_host_nonzero_refused(&mut vp, index);
        sint_write(&mut vp, index, 0, 0, Host);
        assert!(!vp.sint(sint((index - SINT0) as u8)).masked());
    }
}
