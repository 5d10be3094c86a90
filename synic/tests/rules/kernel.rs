//! Kernel mode: registers learned from KVM_EXIT_HYPERV_SYNIC, acks from resamplefds.

use synic::{Acked, Error, Mode, PartitionConfig, Posted, SynicExit, VpIndex};
use synic_msr::{index, Profile};

use crate::common::*;

fn kernel(profile: Profile) -> Harness {
    Harness::with_config(PartitionConfig::new(Mode::Kernel, profile, 2).with_queue_capacity(4))
}

fn exit(msr: u32, control: u64, simp: u64, siefp: u64) -> SynicExit {
    SynicExit {
        msr,
        control,
        evt_page: siefp,
        msg_page: simp,
    }
}

fn enable(h: &mut Harness, vp: usize) {
    h.vps[vp]
        .apply_synic_exit(exit(index::SIMP, 1, simp_gpa(vp) | 1, siefp_gpa(vp) | 1))
        .unwrap();
}

#[test]
fn synic_exit_enables_the_pages_and_delivers_queued_messages() {
    let mut h = kernel(Profile::Kvm);
    assert_eq!(h.post(0, 2, 1), Posted::Queued);
    enable(&mut h, 0);
    assert_eq!(id_of(&h.slot(0, 2)), 1);
    let view = h.partition.synic_view(VpIndex(0)).unwrap();
    assert_eq!(view.simp.enabled_gpa(), Some(simp_gpa(0)));
    assert_eq!(view.siefp.enabled_gpa(), Some(siefp_gpa(0)));
}

#[test]
fn kernel_mode_always_raises_and_lets_kvm_apply_the_sint() {
    let mut h = kernel(Profile::Kvm);
    enable(&mut h, 0);
    h.post(0, 2, 1);
    h.partition.signal_event(VpIndex(0), 5u32, 1).unwrap();
    // The model never saw SINT registers: vector 0 and no AutoEOI are placeholders.
    assert_eq!(
        h.raised(),
        vec![
            (VpIndex(0), sint(2), 0, false),
            (VpIndex(0), sint(5), 0, false)
        ]
    );
}

#[test]
fn ack_redelivers_and_spurious_acks_are_counted() {
    let mut h = kernel(Profile::Kvm);
    enable(&mut h, 0);
    h.post(0, 1, 1);
    h.post(0, 1, 2);
    assert_eq!(h.partition.ack(VpIndex(0), 1u32), Ok(Acked::Spurious));
    assert!(h.guest_free_slot(0, 1));
    assert_eq!(h.partition.ack(VpIndex(0), 1u32), Ok(Acked::Delivered));
    assert_eq!(id_of(&h.slot(0, 1)), 2);
    assert_eq!(h.partition.ack(VpIndex(0), 1u32), Ok(Acked::Spurious));
    let c = h.counters(0, 1);
    assert_eq!((c.acks, c.spurious_acks, c.delivered), (3, 2, 2));
    assert_eq!(
        h.partition.ack(VpIndex(0), 16u32),
        Err(Error::InvalidSint { sint: 16 })
    );
}

#[test]
fn synic_exit_for_another_msr_is_refused() {
    let mut h = kernel(Profile::Kvm);
    assert_eq!(
        h.vps[0].apply_synic_exit(exit(index::EOM, 1, 0, 0)),
        Err(Error::UnexpectedSynicExit { msr: index::EOM })
    );
}

#[test]
fn synic_exit_in_userspace_mode_is_refused() {
    let mut h = Harness::new(Profile::Kvm);
    assert_eq!(
        h.vps[0].apply_synic_exit(exit(index::SIMP, 1, 0x1001, 0)),
        Err(Error::WrongMode {
            mode: Mode::Userspace
        })
    );
}

#[test]
fn tlfs_profile_in_kernel_mode_gates_on_the_reported_scontrol() {
    let mut h = kernel(Profile::Tlfs);
    h.vps[0]
        .apply_synic_exit(exit(index::SCONTROL, 0, simp_gpa(0) | 1, siefp_gpa(0) | 1))
        .unwrap();
    assert!(h.partition.post_message(VpIndex(0), 0u32, msg(1)).is_err());
    h.vps[0]
        .apply_synic_exit(exit(index::SCONTROL, 1, simp_gpa(0) | 1, siefp_gpa(0) | 1))
        .unwrap();
    assert_eq!(h.post(0, 0, 1), Posted::Delivered);
}

#[test]
fn kernel_mode_vp_index_follows_what_the_vmm_set() {
    let mut h = kernel(Profile::Kvm);
    enable(&mut h, 1);
    assert_eq!(
        h.vps[1].set_index(VpIndex(0)),
        Err(Error::VpIndexInUse { index: 0 })
    );
    h.vps[1].set_index(VpIndex(42)).unwrap();
    assert_eq!(h.post(42, 0, 1), Posted::Delivered);
    assert_eq!(id_of(&h.slot(1, 0)), 1);
    assert_eq!(h.raised()[0].0, VpIndex(42));
}
