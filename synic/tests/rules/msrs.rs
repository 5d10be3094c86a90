//! The userspace-mode MSR path: register semantics from synic-msr plus their consequences.

use synic::{Error, MsrError, Posted, VmmAction, VpIndex};
use synic_msr::{index, GpReason, KvmSynic, Origin, Profile, StimerIndex};
use vm_memory::{Bytes, GuestAddress};

use synic::{Mode, PartitionConfig};

use crate::common::*;

#[test]
fn refused_writes_are_gp_and_change_nothing() {
    let mut h = Harness::enabled();
    let err = h.vps[0]
        .wrmsr(index::SINT0, 0x0F, Origin::Guest)
        .unwrap_err();
    assert!(matches!(err, MsrError::Gp(gp) if gp.reason == GpReason::InvalidVector { vector: 15 }));
    assert_eq!(
        h.vps[0].rdmsr(index::SINT0, Origin::Guest).unwrap(),
        u64::from(vector(0))
    );
    let err = h.vps[0].rdmsr(0x4000_0085, Origin::Guest).unwrap_err();
    assert!(matches!(err, MsrError::Gp(gp) if gp.reason == GpReason::UnknownMsr));
}

#[test]
fn hypercall_enable_asks_the_vmm_to_fill_the_page() {
    let mut h = Harness::enabled();
    let w = h.vps[0]
        .wrmsr(index::HYPERCALL, 0x3000 | 1, Origin::Guest)
        .unwrap();
    assert_eq!(w.action, None, "no guest OS id yet: write discarded");
    h.wrmsr(0, index::GUEST_OS_ID, 0x8100_0000_0000_0000);
    let w = h.vps[0]
        .wrmsr(index::HYPERCALL, 0x3000 | 1, Origin::Guest)
        .unwrap();
    assert_eq!(w.action, Some(VmmAction::FillHypercallPage { gpa: 0x3000 }));
    // Partition-wide: the other VP reads the same value.
    assert_eq!(
        h.vps[1].rdmsr(index::HYPERCALL, Origin::Guest).unwrap(),
        0x3001
    );
}

#[test]
fn stimer_writes_are_handed_to_the_timer_hook() {
    let mut h = Harness::enabled();
    let w = h.vps[0]
        .wrmsr(index::STIMER0_COUNT + 2, 10_000, Origin::Guest)
        .unwrap();
    assert_eq!(
        w.action,
        Some(VmmAction::StimerChanged(StimerIndex::new(1).unwrap()))
    );
    assert_eq!(
        h.vps[0]
            .registers()
            .stimer_count(StimerIndex::new(1).unwrap()),
        10_000
    );
}

#[test]
fn time_ref_count_follows_the_reference_clock() {
    let h = Harness::enabled();
    h.clock.set(12_345);
    assert_eq!(
        h.vps[1]
            .rdmsr(index::TIME_REF_COUNT, Origin::Guest)
            .unwrap(),
        12_345
    );
    h.clock.advance(5);
    assert_eq!(h.partition.reference_time(), 12_350);
}

#[test]
fn host_vp_index_write_moves_the_vp_and_refuses_duplicates() {
    let mut h = Harness::new(Profile::Tlfs);
    h.enable(1);
    let err = h.vps[1]
        .wrmsr(index::VP_INDEX, 0, Origin::Host)
        .unwrap_err();
    assert_eq!(
        err,
        MsrError::Refused {
            index: index::VP_INDEX,
            error: Error::VpIndexInUse { index: 0 }
        }
    );
    h.vps[1].wrmsr(index::VP_INDEX, 7, Origin::Host).unwrap();
    assert_eq!(h.vps[1].index(), VpIndex(7));
    assert_eq!(h.post(7, 0, 1), Posted::Delivered);
    assert_eq!(id_of(&h.slot(1, 0)), 1);
    assert_eq!(h.raised()[0].0, VpIndex(7));
    assert!(h.partition.post_message(VpIndex(1), 0u32, msg(2)).is_err());
    assert_eq!(h.partition.vp_indices(), vec![VpIndex(0), VpIndex(7)]);
    // The guest cannot write it.
    assert!(h.vps[1].wrmsr(index::VP_INDEX, 3, Origin::Guest).is_err());
    // The VMM's convenience form is the same host write.
    h.vps[1].set_index(VpIndex(8)).unwrap();
    assert_eq!(h.vps[1].rdmsr(index::VP_INDEX, Origin::Host).unwrap(), 8);
    assert_eq!(
        h.vps[1].set_index(VpIndex(0)),
        Err(Error::VpIndexInUse { index: 0 })
    );
}

#[test]
fn kvm_v1_zeroes_the_message_page_on_enable() {
    let config = PartitionConfig {
        kvm_synic: Some(KvmSynic::V1),
        ..PartitionConfig::new(Mode::Userspace, Profile::Kvm, 1)
    };
    let mut h = Harness::with_config(config);
    h.mem
        .write_slice(&[0xAA; 0x1000], GuestAddress(simp_gpa(0)))
        .unwrap();
    h.wrmsr(0, index::SIMP, simp_gpa(0) | 1);
    let mut page = [0u8; 0x1000];
    h.mem
        .read_slice(&mut page, GuestAddress(simp_gpa(0)))
        .unwrap();
    assert!(page.iter().all(|&b| b == 0));
}

#[test]
fn kvm_v1_page_outside_ram_is_gp_and_the_register_is_unchanged() {
    let config = PartitionConfig {
        kvm_synic: Some(KvmSynic::V1),
        ..PartitionConfig::new(Mode::Userspace, Profile::Kvm, 1)
    };
    let mut h = Harness::with_config(config);
    h.wrmsr(0, index::SIMP, simp_gpa(0) | 1);
    let err = h.vps[0]
        .wrmsr(index::SIMP, 0x4000_0000 | 1, Origin::Guest)
        .unwrap_err();
    assert!(matches!(
        err,
        MsrError::Refused {
            error: Error::PageNotInRam { gpa: 0x4000_0000 },
            ..
        }
    ));
    assert_eq!(
        h.vps[0].rdmsr(index::SIMP, Origin::Guest).unwrap(),
        simp_gpa(0) | 1
    );
    assert_eq!(h.post(0, 0, 1), Posted::Delivered);
}

#[test]
fn kvm_synic_can_be_activated_by_the_vmm() {
    let config = PartitionConfig {
        kvm_synic: None,
        ..PartitionConfig::new(Mode::Userspace, Profile::Kvm, 1)
    };
    let mut h = Harness::with_config(config);
    let err = h.vps[0].rdmsr(index::SCONTROL, Origin::Guest).unwrap_err();
    assert!(matches!(err, MsrError::Gp(gp) if gp.reason == GpReason::SynicInactive));
    h.vps[0].activate(KvmSynic::V2);
    assert_eq!(h.vps[0].rdmsr(index::SCONTROL, Origin::Guest).unwrap(), 1);
}

#[test]
fn kernel_mode_leaves_msrs_to_kvm() {
    let mut h = Harness::with_config(PartitionConfig::new(Mode::Kernel, Profile::Kvm, 1));
    assert_eq!(
        h.vps[0].wrmsr(index::SIMP, 1, Origin::Guest),
        Err(MsrError::KernelMode { index: index::SIMP })
    );
    assert_eq!(
        h.vps[0].rdmsr(index::SIMP, Origin::Guest),
        Err(MsrError::KernelMode { index: index::SIMP })
    );
}

#[test]
fn kernel_mode_eom_is_the_models_and_retries_the_queue() {
    // The VMM takes EOM writes to userspace in kernel mode (synic-kvm's MSR filter): the ack
    // that puts the next queued message in the slot, on the vCPU's own thread.
    let mut h = Harness::with_config(PartitionConfig::new(Mode::Kernel, Profile::Kvm, 1));
    h.vps[0]
        .apply_synic_exit(synic::SynicExit {
            msr: index::SIMP,
            control: 1,
            evt_page: 0,
            msg_page: simp_gpa(0) | 1,
        })
        .unwrap();
    assert_eq!(h.post(0, 3, 1), Posted::Delivered);
    assert_eq!(h.post(0, 3, 2), Posted::Queued);
    assert!(
        h.guest_free_slot(0, 3),
        "MessagePending set for the queued one"
    );
    assert!(h.slot(0, 3).header.message_type.is_none());
    h.eom(0);
    assert_eq!(
        id_of(&h.slot(0, 3)),
        2,
        "the EOM delivered the queued message"
    );
    assert_eq!(h.raise.raised().len(), 2);
    // KVM's values pass (it ignores the value), and the read is the model's 0.
    h.vps[0].wrmsr(index::EOM, 0xdead, Origin::Guest).unwrap();
    assert_eq!(h.vps[0].rdmsr(index::EOM, Origin::Guest), Ok(0));
}
