//! The Hyper-V CPUID leaves 0x4000_0000..=0x4000_0005, built from the features the VM wires
//! ([`HvFeatures`]), and [`apply`] to put them into a vCPU's CPUID in place of KVM's own
//! paravirtual leaves.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};

use crate::error::{Error, Result};
use crate::probe::SynicMode;

/// First Hyper-V leaf.
pub const HV_LEAF_VENDOR: u32 = 0x4000_0000;
/// Interface signature leaf ("Hv#1").
pub const HV_LEAF_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version leaf.
pub const HV_LEAF_VERSION: u32 = 0x4000_0002;
/// Feature (privilege) leaf.
pub const HV_LEAF_FEATURES: u32 = 0x4000_0003;
/// Recommendations leaf.
pub const HV_LEAF_ENLIGHTENMENTS: u32 = 0x4000_0004;
/// Implementation limits leaf.
pub const HV_LEAF_LIMITS: u32 = 0x4000_0005;
/// "Hv#1".
pub const HV_INTERFACE_SIGNATURE: u32 = 0x3123_7648;

/// 0x4000_0003 EAX: AccessPartitionReferenceCounter (TIME_REF_COUNT).
pub const EAX_TIME_REF_COUNT: u32 = 1 << 1;
/// 0x4000_0003 EAX: AccessSynicRegs.
pub const EAX_SYNIC: u32 = 1 << 2;
/// 0x4000_0003 EAX: AccessSyntheticTimerRegs.
pub const EAX_STIMER: u32 = 1 << 3;
/// 0x4000_0003 EAX: AccessHypercallMsrs (GUEST_OS_ID, HYPERCALL).
pub const EAX_HYPERCALL: u32 = 1 << 5;
/// 0x4000_0003 EAX: AccessVpIndex.
pub const EAX_VP_INDEX: u32 = 1 << 6;
/// 0x4000_0003 EAX: AccessFrequencyMsrs (TSC_FREQUENCY, APIC_FREQUENCY).
pub const EAX_FREQUENCY_MSRS: u32 = 1 << 11;
/// 0x4000_0003 EBX: PostMessages.
pub const EBX_POST_MESSAGES: u32 = 1 << 4;
/// 0x4000_0003 EBX: SignalEvents.
pub const EBX_SIGNAL_EVENTS: u32 = 1 << 5;
/// 0x4000_0003 EDX: the frequency MSRs are available.
pub const EDX_FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;
/// 0x4000_0003 EDX: SINT polling mode available.
pub const EDX_SINT_POLLING: u32 = 1 << 17;
/// 0x4000_0003 EDX: direct synthetic timers.
pub const EDX_DIRECT_STIMER: u32 = 1 << 19;
/// 0x4000_0004 EAX: deprecating AutoEOI recommended.
pub const REC_DEPRECATING_AUTO_EOI: u32 = 1 << 9;
/// CPUID.1:ECX bit 31: a hypervisor is present.
pub const ECX_HYPERVISOR: u32 = 1 << 31;

/// The Hyper-V features a VM advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HvFeatures {
    /// TIME_REF_COUNT.
    pub time_ref_count: bool,
    /// SynIC MSRs.
    pub synic: bool,
    /// Synthetic timer MSRs.
    pub stimer: bool,
    /// Direct-mode synthetic timers.
    pub direct_stimer: bool,
    /// GUEST_OS_ID and HYPERCALL.
    pub hypercall: bool,
    /// VP_INDEX.
    pub vp_index: bool,
    /// HvPostMessage.
    pub post_messages: bool,
    /// HvSignalEvent.
    pub signal_events: bool,
    /// SINT polling mode.
    pub sint_polling: bool,
    /// TSC_FREQUENCY and APIC_FREQUENCY (the VM must answer them: KVM does in kernel mode,
    /// [`crate::VcpuSynic`] in userspace mode once given the frequencies).
    pub frequency_msrs: bool,
}

impl HvFeatures {
    /// Everything the library implements for SynIC guests: synthetic timers including direct
    /// mode (userspace mode: the model and [`crate::TimerThread`]; kernel mode: KVM's), no SINT
    /// polling, no frequency MSRs (they need the frequencies: see
    /// [`crate::VmSynicBuilder::frequencies`]).
    pub const SYNIC: HvFeatures = HvFeatures {
        time_ref_count: true,
        synic: true,
        stimer: true,
        direct_stimer: true,
        hypercall: true,
        vp_index: true,
        post_messages: true,
        signal_events: true,
        sint_polling: false,
        frequency_msrs: false,
    };

    /// Nothing: a guest that sees these leaves does not take the machine for Hyper-V.
    pub const NONE: HvFeatures = HvFeatures {
        time_ref_count: false,
        synic: false,
        stimer: false,
        direct_stimer: false,
        hypercall: false,
        vp_index: false,
        post_messages: false,
        signal_events: false,
        sint_polling: false,
        frequency_msrs: false,
    };
}

impl Default for HvFeatures {
    fn default() -> Self {
        Self::SYNIC
    }
}

fn leaf(function: u32, [eax, ebx, ecx, edx]: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

fn le(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// The six Hyper-V leaves. In userspace mode the hypervisor cannot honour AutoEOI (it does not
/// own the APIC), so it recommends that guests not use it.
pub fn hyperv_leaves(features: HvFeatures, mode: SynicMode, max_vps: u32) -> Vec<kvm_cpuid_entry2> {
    let f = features;
    let bit = |on: bool, b: u32| if on { b } else { 0 };
    let privileges_eax = bit(f.time_ref_count, EAX_TIME_REF_COUNT)
        | bit(f.synic, EAX_SYNIC)
        | bit(f.stimer, EAX_STIMER)
        | bit(f.hypercall, EAX_HYPERCALL)
        | bit(f.vp_index, EAX_VP_INDEX)
        | bit(f.frequency_msrs, EAX_FREQUENCY_MSRS);
    let privileges_ebx =
        bit(f.post_messages, EBX_POST_MESSAGES) | bit(f.signal_events, EBX_SIGNAL_EVENTS);
    let features_edx = bit(f.sint_polling, EDX_SINT_POLLING)
        | bit(f.direct_stimer, EDX_DIRECT_STIMER)
        | bit(f.frequency_msrs, EDX_FREQUENCY_MSRS_AVAILABLE);
    let recommendations = bit(mode == SynicMode::Userspace, REC_DEPRECATING_AUTO_EOI);
    vec![
        leaf(
            HV_LEAF_VENDOR,
            [HV_LEAF_LIMITS, le(b"Micr"), le(b"osof"), le(b"t Hv")],
        ),
        leaf(HV_LEAF_INTERFACE, [HV_INTERFACE_SIGNATURE, 0, 0, 0]),
        // Build 14393, version 10.0: what guests expect of a modern Hyper-V.
        leaf(HV_LEAF_VERSION, [14393, 0x000A_0000, 0, 0]),
        leaf(
            HV_LEAF_FEATURES,
            [privileges_eax, privileges_ebx, 0, features_edx],
        ),
        // EBX = 0xFFFF_FFFF: never notify about long spinlock waits.
        leaf(HV_LEAF_ENLIGHTENMENTS, [recommendations, 0xFFFF_FFFF, 0, 0]),
        leaf(HV_LEAF_LIMITS, [max_vps, max_vps, 0, 0]),
    ]
}

/// Puts `hv` (from [`hyperv_leaves`]) into a vCPU's CPUID table in place of whatever claims
/// 0x4000_0000..=0x4000_FFFF (KVM's own paravirtual leaves, from `KVM_GET_SUPPORTED_CPUID`),
/// and sets CPUID.1:ECX bit 31 (hypervisor present). Everything else is left as it is.
pub fn apply(cpuid: &mut CpuId, hv: &[kvm_cpuid_entry2]) -> Result<()> {
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| !(0x4000_0000..=0x4000_FFFF).contains(&e.function))
        .copied()
        .collect();
    for e in &mut entries {
        if e.function == 1 {
            e.ecx |= ECX_HYPERVISOR;
        }
    }
    entries.extend_from_slice(hv);
    *cpuid = CpuId::from_entries(&entries).map_err(|_| Error::TooManyEntries {
        what: "CPUID table",
        limit: KVM_MAX_CPUID_ENTRIES,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(entries: &[kvm_cpuid_entry2], f: u32) -> kvm_cpuid_entry2 {
        *entries.iter().find(|e| e.function == f).unwrap()
    }

    #[test]
    fn hyperv_leaves_spell_microsoft_hv_and_hv1() {
        let l = hyperv_leaves(HvFeatures::SYNIC, SynicMode::Userspace, 4);
        let v = find(&l, HV_LEAF_VENDOR);
        assert!(v.eax >= HV_LEAF_LIMITS);
        let mut vendor = Vec::new();
        for r in [v.ebx, v.ecx, v.edx] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(vendor, b"Microsoft Hv");
        assert_eq!(find(&l, HV_LEAF_INTERFACE).eax.to_le_bytes(), *b"Hv#1");
        assert_eq!(find(&l, HV_LEAF_LIMITS).eax, 4);
    }

    #[test]
    fn privileges_follow_features() {
        let l = hyperv_leaves(HvFeatures::SYNIC, SynicMode::Userspace, 1);
        let f = find(&l, HV_LEAF_FEATURES);
        assert_eq!(
            f.eax,
            EAX_TIME_REF_COUNT | EAX_SYNIC | EAX_STIMER | EAX_HYPERCALL | EAX_VP_INDEX
        );
        assert_eq!(f.ebx, EBX_POST_MESSAGES | EBX_SIGNAL_EVENTS);
        assert_eq!(f.edx, EDX_DIRECT_STIMER);
        let freq = HvFeatures {
            frequency_msrs: true,
            ..HvFeatures::SYNIC
        };
        let f = find(&hyperv_leaves(freq, SynicMode::Kernel, 1), HV_LEAF_FEATURES);
        assert_eq!(f.eax & EAX_FREQUENCY_MSRS, EAX_FREQUENCY_MSRS);
        assert_eq!(f.edx, EDX_DIRECT_STIMER | EDX_FREQUENCY_MSRS_AVAILABLE);
        let none = HvFeatures {
            synic: false,
            signal_events: false,
            ..HvFeatures::SYNIC
        };
        let f = find(&hyperv_leaves(none, SynicMode::Kernel, 1), HV_LEAF_FEATURES);
        assert_eq!(f.eax & EAX_SYNIC, 0);
        assert_eq!(f.ebx, EBX_POST_MESSAGES);
        assert_eq!(f.edx, EDX_DIRECT_STIMER);
    }

    #[test]
    fn autoeoi_deprecation_only_in_userspace_mode() {
        let rec = |mode| {
            find(
                &hyperv_leaves(HvFeatures::SYNIC, mode, 1),
                HV_LEAF_ENLIGHTENMENTS,
            )
            .eax
        };
        assert_eq!(
            rec(SynicMode::Userspace) & REC_DEPRECATING_AUTO_EOI,
            REC_DEPRECATING_AUTO_EOI
        );
        assert_eq!(rec(SynicMode::Kernel) & REC_DEPRECATING_AUTO_EOI, 0);
    }

    #[test]
    fn apply_replaces_kvm_leaves_and_sets_hypervisor_bit() {
        let mut cpuid = CpuId::from_entries(&[
            leaf(1, [0x806F8, 0x0001_0800, 0x0000_0001, 0]),
            leaf(
                0x4000_0000,
                [0x4000_0001, le(b"KVMK"), le(b"VMKV"), le(b"M\0\0\0")],
            ),
            leaf(0x4000_0001, [0xFFFF, 0, 0, 0]),
        ])
        .unwrap();
        let hv = hyperv_leaves(HvFeatures::SYNIC, SynicMode::Userspace, 2);
        apply(&mut cpuid, &hv).unwrap();
        let s = cpuid.as_slice();
        let l1 = find(s, 1);
        assert_eq!(l1.ecx, 1 | ECX_HYPERVISOR);
        assert_eq!(l1.ebx, 0x0001_0800, "the rest of leaf 1 is untouched");
        assert_eq!(find(s, HV_LEAF_VENDOR).ebx, le(b"Micr"));
        assert_eq!(find(s, HV_LEAF_INTERFACE).eax, HV_INTERFACE_SIGNATURE);
        assert_eq!(s.iter().filter(|e| e.function == 0x4000_0000).count(), 1);
    }
}
