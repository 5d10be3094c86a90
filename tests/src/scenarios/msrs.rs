//! SynIC bring-up through MSRs as a guest sees it: values read back, the #GP cases of each
//! profile, VP_INDEX.

use synic_msr::index::{EOM, SCONTROL, SIMP, SINT0, SVERSION, VP_INDEX};
use synic_msr::Profile;

use crate::harness::{run, VmSpec};
use crate::layout::{self, tag, vector};
use crate::{Eoi, Setup, SintValue, SynicGuest};

/// A register access and, per profile, what the guest must see.
enum Access {
    /// RDMSR: the value is reported.
    Read(u32),
    /// WRMSR of a constant.
    Write(u32, u64),
    /// WRMSR of this vCPU's area + offset | low bits.
    WriteArea(u32, u64, u64),
}

/// The bring-up sequence and the #GP cases, then a message through the enabled SynIC.
///
/// Per profile (kernel mode is KVM's own SynIC, so the KVM profile):
///
/// | access | TLFS | KVM |
/// |---|---|---|
/// | SCONTROL after reset | 0 | 1 (activation) |
/// | SCONTROL reserved bits written | dropped (RsvdP) | stored |
/// | SVERSION write | #GP | #GP |
/// | 0x4000_0085 / 0x4000_008F | #GP | #GP |
/// | SINT vector 5, unmasked | #GP | #GP |
/// | SINT vector 5, masked | #GP | stored |
/// | SINT reserved bits | dropped | stored |
/// | EOM non-zero | #GP | ignored |
/// | SIMP bits 11:1 | dropped | stored |
/// | SIMP address above the physical width | #GP | stored |
pub fn synic_enable_and_gp_cases(setup: Setup) {
    let kvm = setup.profile == Profile::Kvm;
    let area = |cpu: u32| layout::area(cpu);
    let sint_rsvd = 0x50 | 0xFF00 | 1 << 40;
    let too_wide = 1u64 << 60 | 1;
    let mut seq = vec![
        (Access::Read(SVERSION), Some(1)),
        (Access::Read(SCONTROL), Some(u64::from(kvm))),
        (Access::Write(SCONTROL, 0xFFFF_0000_0000_0001), None),
        (
            Access::Read(SCONTROL),
            Some(if kvm { 0xFFFF_0000_0000_0001 } else { 1 }),
        ),
        (Access::Write(SCONTROL, 1), None),
        (Access::Write(SVERSION, 2), None),
        (Access::Read(SVERSION), Some(1)),
        (Access::Read(0x4000_0085), None),
        (Access::Write(0x4000_008F, 0), None),
        (Access::Write(SINT0, 0x05), None),
        (Access::Write(SINT0, 0x1_0005), None),
        (
            Access::Read(SINT0),
            Some(if kvm { 0x1_0005 } else { 0x1_0000 }),
        ),
        (Access::Write(SINT0 + 1, sint_rsvd), None),
        (
            Access::Read(SINT0 + 1),
            Some(if kvm { sint_rsvd } else { 0x50 }),
        ),
        (Access::Write(EOM, 0), None),
        (Access::Write(EOM, 1), None),
        (Access::Read(EOM), Some(0)),
        (Access::WriteArea(SIMP, layout::SIMP, 0xFFF), None),
        (
            Access::Read(SIMP),
            Some(area(0) | if kvm { 0xFFF } else { 1 }),
        ),
        (Access::Write(SIMP, too_wide), None),
        (
            Access::Read(SIMP),
            Some(if kvm { too_wide } else { area(0) | 1 }),
        ),
        (Access::Read(VP_INDEX), Some(0)),
    ];
    let mut want_gps = vec![SVERSION, 0x4000_0085, 0x4000_008F, SINT0];
    if !kvm {
        want_gps.extend([SINT0, EOM, SIMP]);
    }

    const SINT: u8 = 2;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    g.lapic_enable().unwrap();
    let mut want_values = Vec::new();
    for (access, want) in seq.drain(..) {
        match access {
            Access::Read(msr) => g.rdmsr_report(msr).unwrap(),
            Access::Write(msr, v) => g.wrmsr(msr, v).unwrap(),
            Access::WriteArea(msr, offset, low) => g.wrmsr_area(msr, offset, low).unwrap(),
        }
        want_values.extend(want);
    }
    // Now a working SynIC: a proper message page, SINT2 unmasked, one message.
    g.set_sint(SINT, SintValue::vector(vector(SINT))).unwrap();
    g.enable_simp().unwrap();
    g.step(1).unwrap();
    g.wait_messages(1).unwrap();
    g.exit_ok().unwrap();
    let f = run(VmSpec::new(setup, 1), &g.build().unwrap(), |host, _, _| {
        assert_eq!(host.post(0, SINT, 42), Ok(synic::Posted::Delivered));
    });
    f.assert_exited_ok();
    assert_eq!(f.values(0, tag::MSR), want_values, "values read back");
    assert_eq!(f.gps(0), want_gps, "MSR accesses that faulted");
    super::messages::assert_sequence(&f.view().messages(0), SINT, [42]);
}

/// Every vCPU reads its own VP_INDEX; a guest write is #GP and changes nothing.
pub fn vp_index_per_vcpu(setup: Setup) {
    const VCPUS: u32 = 3;
    let mut g = SynicGuest::new().unwrap();
    g.rdmsr_report(VP_INDEX).unwrap();
    g.wrmsr(VP_INDEX, 7).unwrap();
    g.rdmsr_report(VP_INDEX).unwrap();
    g.set_sync(0).unwrap();
    let mut others = g.label();
    g.jump_unless_cpu(0, others).unwrap();
    g.wait_sync_count(0, u64::from(VCPUS)).unwrap();
    g.exit_ok().unwrap();
    g.bind(&mut others).unwrap();
    g.halt().unwrap();
    let f = run(VmSpec::new(setup, VCPUS), &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    for cpu in 0..VCPUS {
        let me = u64::from(cpu);
        assert_eq!(f.values(cpu, tag::MSR), vec![me, me], "vCPU {cpu}");
        assert_eq!(f.gps(cpu), vec![VP_INDEX], "vCPU {cpu}");
    }
}
