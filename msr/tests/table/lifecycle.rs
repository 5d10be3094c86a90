//! Rows for activation and reset: ACT, RST.

use super::*;

// ---------------------------------------------------------------------------------------------
// ACT and RST

/// Host reads of every per-VP register.
fn vp_snapshot(vp: &VpRegisters) -> Vec<u64> {
    KNOWN
        .into_iter()
        .filter(|i| !PARTITION.contains(i))
        .map(|i| rd(vp, i, Host))
        .collect()
}

#[test]
fn act_h_tlfs_1_activation_has_no_effect() {
    let mut vp = tlfs();
    wr(&mut vp, SIMP, 0x5001, Guest);
    let before = vp.clone();
    assert!(vp.active());
    for v in [KvmSynic::V1, KvmSynic::V2] {
        vp.activate(v);
        assert_eq!(vp, before);
        assert!(vp.active());
        assert_eq!(vp.kvm_synic(), None);
    }
}

#[test]
fn act_h_kvm_1_activation_opens_synic_and_sets_scontrol() {
    for v in [KvmSynic::V1, KvmSynic::V2] {
        let mut vp = kvm_off();
        assert!(!vp.active());
        assert_eq!(vp.kvm_synic(), None);
        wr(&mut vp, VP_INDEX, 9, Host);
        wr(&mut vp, SINT0 + 4, 0, Host);
        let mut expected = vp_snapshot(&vp);
        vp.activate(v);
        assert!(vp.active());
        assert_eq!(vp.kvm_synic(), Some(v));
        // Only SCONTROL (index 1 of the per-VP snapshot: VP_INDEX, SCONTROL, ...) changed.
        expected[1] = 1;
        assert_eq!(vp_snapshot(&vp), expected);
        assert_eq!(rd(&vp, SCONTROL, Guest), 1);
        for index in SYNIC.into_iter().chain(sints()) {
            rd(&vp, index, Guest);
        }
        // Again, with the other version: SCONTROL back to 1, version replaced.
        wr(&mut vp, SCONTROL, 0, Guest);
        let other = if v == KvmSynic::V1 {
            KvmSynic::V2
        } else {
            KvmSynic::V1
        };
        vp.activate(other);
        assert_eq!(rd(&vp, SCONTROL, Guest), 1);
        assert_eq!(vp.kvm_synic(), Some(other));
    }
}

fn dirty(vp: &mut VpRegisters, p: &mut PartitionRegisters) {
    wr(vp, VP_INDEX, 7, Host);
    wr(vp, SCONTROL, 1, Host);
    wr(vp, SIMP, 0x5001, Host);
    wr(vp, SIEFP, 0x6001, Host);
    for index in sints() {
        wr(vp, index, 0x40, Host);
    }
    for index in stimer_regs() {
        wr(vp, index, 0x2_0001, Host);
    }
    pwr(p, GUEST_OS_ID, 1, Host);
    pwr(p, HYPERCALL, 0x7003, Host);
    pwr(p, REFERENCE_TSC, 0x8001, Host);
}

fn power_on_snapshot(scontrol: u64) -> Vec<u64> {
    let mut v = vec![7, scontrol, 1, 0, 0, 0];
    v.extend([0x1_0000; 16]);
    v.extend([0; 8]);
    v
}

#[test]
fn rst_h_tlfs_1_reset_restores_power_on_values_keeping_index_and_width() {
    let mut vp = tlfs().with_phys_addr_bits(40);
    let mut p = part(Profile::Tlfs).with_phys_addr_bits(40);
    dirty(&mut vp, &mut p);
    vp.reset();
    p.reset();
    assert_eq!(vp_snapshot(&vp), power_on_snapshot(0));
    assert_eq!(
        (
            prd(&p, GUEST_OS_ID, Host),
            prd(&p, HYPERCALL, Host),
            prd(&p, REFERENCE_TSC, Host)
        ),
        (0, 0, 0)
    );
    // The width survives reset.
    assert!(vp.wrmsr(SIMP, 1 << 40, Host).is_err());
    pwr(&mut p, GUEST_OS_ID, 1, Host);
    assert!(p.wrmsr(HYPERCALL, 1 << 40, Host).is_err());
    // Locked is gone.
    pwr(&mut p, HYPERCALL, 0x8001, Guest);
}

#[test]
fn rst_h_kvm_1_reset_keeps_activation() {
    for a in ACTIVATIONS {
        let mut vp = kvm_any(a);
        let mut p = part(Profile::Kvm);
        if a.is_some() {
            dirty(&mut vp, &mut p);
        } else {
            wr(&mut vp, VP_INDEX, 7, Host);
            wr(&mut vp, SINT0, 0, Host);
        }
        vp.reset();
        p.reset();
        assert_eq!(vp.kvm_synic(), a);
        let scontrol = u64::from(a.is_some());
        assert_eq!(vp_snapshot(&vp), power_on_snapshot(scontrol));
        assert_eq!(
            (
                prd(&p, GUEST_OS_ID, Host),
                prd(&p, HYPERCALL, Host),
                prd(&p, REFERENCE_TSC, Host)
            ),
            (0, 0, 0)
        );
    }
}
