//! Rows for VP_INDEX: VPI.

use super::*;

// ---------------------------------------------------------------------------------------------
// VPI

fn vpi_read_returns_index(mut vp: VpRegisters, origin: Origin) {
    assert_eq!(rd(&vp, VP_INDEX, origin), 3);
    assert_eq!(vp.vp_index(), 3);
    wr(&mut vp, VP_INDEX, 17, Host);
    assert_eq!(rd(&vp, VP_INDEX, origin), 17);
}

fn vpi_guest_write_is_read_only(mut vp: VpRegisters) {
    for value in [0, 3, 17, u64::MAX] {
        assert_eq!(wr_gp(&mut vp, VP_INDEX, value, Guest), GpReason::ReadOnly);
    }
}

fn vpi_host_write_in_range(mut vp: VpRegisters, max: u64) {
    let out = wr(&mut vp, VP_INDEX, max, Host);
    assert_outcome(
        out,
        VP_INDEX,
        3,
        max,
        Change::VpIndex {
            old: 3,
            new: max as u32,
        },
    );
    let out = wr(&mut vp, VP_INDEX, max, Host);
    assert_eq!(
        out.change,
        Change::VpIndex {
            old: max as u32,
            new: max as u32
        }
    );
    wr(&mut vp, VP_INDEX, 0, Host);
    assert_eq!(rd(&vp, VP_INDEX, Host), 0);
}

fn vpi_host_write_out_of_range(mut vp: VpRegisters, limit: u64) {
    for value in [limit, limit + 1, 0x1_0000_0001, 1 << 32, u64::MAX] {
        assert_eq!(
            wr_gp(&mut vp, VP_INDEX, value, Host),
            GpReason::VpIndexOutOfRange { value, limit }
        );
    }
}

#[test]
fn vpi_g_tlfs_1_read_returns_creation_index_then_host_value() {
    vpi_read_returns_index(tlfs(), Guest);
}

#[test]
fn vpi_g_tlfs_2_guest_write_is_gp_read_only() {
    vpi_guest_write_is_read_only(tlfs());
}

#[test]
fn vpi_h_tlfs_1_host_write_below_ffffffff_is_stored() {
    vpi_read_returns_index(tlfs(), Host);
    vpi_host_write_in_range(tlfs(), 0xFFFF_FFFE);
}

#[test]
fn vpi_h_tlfs_2_host_write_of_ffffffff_or_more_is_gp() {
    vpi_host_write_out_of_range(tlfs(), 0xFFFF_FFFF);
}

#[test]
fn vpi_g_kvm_1_read_returns_index_in_any_activation() {
    for vp in kvm_all() {
        vpi_read_returns_index(vp, Guest);
    }
}

#[test]
fn vpi_g_kvm_2_guest_write_is_gp_read_only_in_any_activation() {
    for vp in kvm_all() {
        vpi_guest_write_is_read_only(vp);
    }
}

#[test]
fn vpi_h_kvm_1_host_write_below_4096_is_stored() {
    for vp in kvm_all() {
        vpi_read_returns_index(vp.clone(), Host);
        vpi_host_write_in_range(vp, 4095);
    }
}

#[test]
fn vpi_h_kvm_2_host_write_of_4096_or_more_is_gp_without_truncation() {
    for vp in kvm_all() {
        vpi_host_write_out_of_range(vp, 4096);
    }
}
