//! The Hyper-V CPUID leaves 0x4000_0000..=0x4000_000A, built in one place from the features the
//! VM wires ([`HvFeatures`], never more than [`HvFeatures::wired`] for the mode), and [`apply`]
//! to put them into a vCPU's CPUID in place of KVM's own paravirtual leaves.
//! `docs/enlightenments.md` has the table of every leaf and bit: its value, why, and the code
//! that backs it.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};

use crate::error::{Error, Result};
use crate::probe::SynicMode;

/// First Hyper-V leaf: the highest leaf and the vendor "Microsoft Hv".
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
/// Hardware features the hypervisor uses (none are reported).
pub const HV_LEAF_HARDWARE: u32 = 0x4000_0006;
/// The last Hyper-V leaf (0x4000_0007..=0x4000_000A: root-partition CPU management, SVM,
/// nested features and nested optimizations: all zero, none is offered).
pub const HV_LEAF_LAST: u32 = 0x4000_000A;
/// "Hv#1".
pub const HV_INTERFACE_SIGNATURE: u32 = 0x3123_7648;

/// 0x4000_0003 EAX: AccessPartitionReferenceCounter (TIME_REF_COUNT).
pub const EAX_TIME_REF_COUNT: u32 = 1 << 1;
/// 0x4000_0003 EAX: AccessSynicRegs.
pub const EAX_SYNIC: u32 = 1 << 2;
/// 0x4000_0003 EAX: AccessSyntheticTimerRegs.
pub const EAX_STIMER: u32 = 1 << 3;
/// 0x4000_0003 EAX: AccessIntrCtrlRegs (the APIC-access MSRs and the VP assist page).
pub const EAX_APIC_ACCESS: u32 = 1 << 4;
/// 0x4000_0003 EAX: AccessHypercallMsrs (GUEST_OS_ID, HYPERCALL).
pub const EAX_HYPERCALL: u32 = 1 << 5;
/// 0x4000_0003 EAX: AccessVpIndex.
pub const EAX_VP_INDEX: u32 = 1 << 6;
/// 0x4000_0003 EAX: AccessPartitionReferenceTsc (the reference TSC page).
pub const EAX_REFERENCE_TSC: u32 = 1 << 9;
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
/// 0x4000_0004 EAX: use the APIC-access MSRs (only with [`EAX_APIC_ACCESS`]).
pub const REC_APIC_ACCESS_MSRS: u32 = 1 << 3;
/// 0x4000_0004 EAX: relaxed timing (no watchdogs on timing: a VM can be descheduled).
pub const REC_RELAXED_TIMING: u32 = 1 << 5;
/// 0x4000_0004 EAX: deprecating AutoEOI recommended.
pub const REC_DEPRECATING_AUTO_EOI: u32 = 1 << 9;
/// 0x4000_0004 EBX: never notify long spinlock waits.
pub const SPINLOCK_NEVER_NOTIFY: u32 = 0xFFFF_FFFF;
/// The version reported: build 14393, 10.0 (what guests expect of a modern Hyper-V).
pub const HV_VERSION: [u32; 4] = [14393, 0x000A_0000, 0, 0];
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
    /// The reference TSC page (HV_X64_MSR_REFERENCE_TSC).
    pub reference_tsc: bool,
    /// The APIC-access MSRs (EOI, ICR, TPR) and the VP assist page.
    pub apic_access: bool,
}

impl HvFeatures {
    /// Every feature the library offers SynIC guests, in either mode; [`HvFeatures::wired`]
    /// narrows it to a mode. No SINT polling; frequency MSRs only when the VMM gives the
    /// frequencies ([`crate::VmSynicBuilder::frequencies`]).
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
        reference_tsc: true,
        apic_access: true,
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
        reference_tsc: false,
        apic_access: false,
    };

    /// What is backed by working code in `mode`: in kernel mode KVM's in-kernel Hyper-V
    /// provides the reference TSC page and the APIC-access MSRs with the VP assist page; in
    /// userspace mode the library provides the reference TSC page (the model's overlay page,
    /// valid when the partition clock follows the guest TSC, sequence 0 otherwise) but not the
    /// APIC-access MSRs (it does not own the APIC). Everything else is the library's in both
    /// modes. SINT polling is not offered.
    pub const fn wired(mode: SynicMode) -> HvFeatures {
        let kernel = matches!(mode, SynicMode::Kernel);
        HvFeatures {
            sint_polling: false,
            apic_access: kernel,
            ..HvFeatures::SYNIC_WITH_FREQUENCIES
        }
    }

    const SYNIC_WITH_FREQUENCIES: HvFeatures = HvFeatures {
        frequency_msrs: true,
        ..HvFeatures::SYNIC
    };

    /// The features of both `self` and `other`.
    pub const fn and(self, other: HvFeatures) -> HvFeatures {
        HvFeatures {
            time_ref_count: self.time_ref_count && other.time_ref_count,
            synic: self.synic && other.synic,
            stimer: self.stimer && other.stimer,
            direct_stimer: self.direct_stimer && other.direct_stimer,
            hypercall: self.hypercall && other.hypercall,
            vp_index: self.vp_index && other.vp_index,
            post_messages: self.post_messages && other.post_messages,
            signal_events: self.signal_events && other.signal_events,
            sint_polling: self.sint_polling && other.sint_polling,
            frequency_msrs: self.frequency_msrs && other.frequency_msrs,
            reference_tsc: self.reference_tsc && other.reference_tsc,
            apic_access: self.apic_access && other.apic_access,
        }
    }
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

/// The Hyper-V leaves 0x4000_0000..=0x4000_000A for `features`, narrowed to what is
/// [`HvFeatures::wired`] in `mode` (a feature nobody backs is never advertised). Relaxed
/// timing is always recommended; in userspace mode the hypervisor cannot honour AutoEOI (it
/// does not own the APIC), so it recommends that guests not use it.
pub fn hyperv_leaves(features: HvFeatures, mode: SynicMode, max_vps: u32) -> Vec<kvm_cpuid_entry2> {
    let f = features.and(HvFeatures::wired(mode));
    let bit = |on: bool, b: u32| if on { b } else { 0 };
    let privileges_eax = bit(f.time_ref_count, EAX_TIME_REF_COUNT)
        | bit(f.synic, EAX_SYNIC)
        | bit(f.stimer, EAX_STIMER)
        | bit(f.apic_access, EAX_APIC_ACCESS)
        | bit(f.hypercall, EAX_HYPERCALL)
        | bit(f.vp_index, EAX_VP_INDEX)
        | bit(f.reference_tsc, EAX_REFERENCE_TSC)
        | bit(f.frequency_msrs, EAX_FREQUENCY_MSRS);
    let privileges_ebx =
        bit(f.post_messages, EBX_POST_MESSAGES) | bit(f.signal_events, EBX_SIGNAL_EVENTS);
    let features_edx = bit(f.sint_polling, EDX_SINT_POLLING)
        | bit(f.direct_stimer && f.stimer, EDX_DIRECT_STIMER)
        | bit(f.frequency_msrs, EDX_FREQUENCY_MSRS_AVAILABLE);
    let hyperv = features != HvFeatures::NONE;
    let recommendations = bit(hyperv, REC_RELAXED_TIMING)
        | bit(f.apic_access, REC_APIC_ACCESS_MSRS)
        | bit(mode == SynicMode::Userspace, REC_DEPRECATING_AUTO_EOI);
    let mut leaves = vec![
        leaf(
            HV_LEAF_VENDOR,
            [HV_LEAF_LAST, le(b"Micr"), le(b"osof"), le(b"t Hv")],
        ),
        leaf(HV_LEAF_INTERFACE, [HV_INTERFACE_SIGNATURE, 0, 0, 0]),
        leaf(HV_LEAF_VERSION, HV_VERSION),
        leaf(
            HV_LEAF_FEATURES,
            [privileges_eax, privileges_ebx, 0, features_edx],
        ),
        leaf(
            HV_LEAF_ENLIGHTENMENTS,
            [recommendations, SPINLOCK_NEVER_NOTIFY, 0, 0],
        ),
        leaf(HV_LEAF_LIMITS, [max_vps, max_vps, 0, 0]),
    ];
    leaves.extend((HV_LEAF_HARDWARE..=HV_LEAF_LAST).map(|f| leaf(f, [0; 4])));
    leaves
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
    fn leaves_spell_microsoft_hv_and_hv1_and_run_to_0x4000000a() {
        let l = hyperv_leaves(HvFeatures::SYNIC, SynicMode::Userspace, 4);
        let v = find(&l, HV_LEAF_VENDOR);
        assert_eq!(v.eax, HV_LEAF_LAST);
        let mut vendor = Vec::new();
        for r in [v.ebx, v.ecx, v.edx] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(vendor, b"Microsoft Hv");
        assert_eq!(find(&l, HV_LEAF_INTERFACE).eax.to_le_bytes(), *b"Hv#1");
        assert_eq!(find(&l, HV_LEAF_LIMITS).eax, 4);
        let functions: Vec<u32> = l.iter().map(|e| e.function).collect();
        assert_eq!(
            functions,
            (HV_LEAF_VENDOR..=HV_LEAF_LAST).collect::<Vec<_>>()
        );
        for f in HV_LEAF_HARDWARE..=HV_LEAF_LAST {
            let e = find(&l, f);
            assert_eq!([e.eax, e.ebx, e.ecx, e.edx], [0; 4], "leaf {f:#x}");
        }
    }

    #[test]
    fn privileges_follow_features_and_what_is_wired() {
        let l = hyperv_leaves(HvFeatures::SYNIC, SynicMode::Userspace, 1);
        let f = find(&l, HV_LEAF_FEATURES);
        assert_eq!(
            f.eax,
            EAX_TIME_REF_COUNT
                | EAX_SYNIC
                | EAX_STIMER
                | EAX_HYPERCALL
                | EAX_VP_INDEX
                | EAX_REFERENCE_TSC,
            "userspace mode: the reference TSC page, no APIC-access MSRs"
        );
        assert_eq!(f.ebx, EBX_POST_MESSAGES | EBX_SIGNAL_EVENTS);
        assert_eq!(f.edx, EDX_DIRECT_STIMER);
        let k = find(
            &hyperv_leaves(HvFeatures::SYNIC, SynicMode::Kernel, 1),
            HV_LEAF_FEATURES,
        );
        assert_eq!(k.eax, f.eax | EAX_APIC_ACCESS, "KVM backs them");
        let no_tsc_page = HvFeatures {
            reference_tsc: false,
            ..HvFeatures::SYNIC
        };
        for mode in [SynicMode::Userspace, SynicMode::Kernel] {
            let f = find(&hyperv_leaves(no_tsc_page, mode, 1), HV_LEAF_FEATURES);
            assert_eq!(f.eax & EAX_REFERENCE_TSC, 0, "{mode:?}: not asked for");
        }
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
            stimer: false,
            ..HvFeatures::SYNIC
        };
        let f = find(&hyperv_leaves(none, SynicMode::Kernel, 1), HV_LEAF_FEATURES);
        assert_eq!(f.eax & (EAX_SYNIC | EAX_STIMER), 0);
        assert_eq!(f.ebx, EBX_POST_MESSAGES);
        assert_eq!(f.edx, 0, "no direct timers without timers");
        let polling = HvFeatures {
            sint_polling: true,
            ..HvFeatures::SYNIC
        };
        let f = find(
            &hyperv_leaves(polling, SynicMode::Userspace, 1),
            HV_LEAF_FEATURES,
        );
        assert_eq!(f.edx & EDX_SINT_POLLING, 0, "not wired: never advertised");
    }

    #[test]
    fn recommendations_per_mode() {
        let rec = |mode| {
            find(
                &hyperv_leaves(HvFeatures::SYNIC, mode, 1),
                HV_LEAF_ENLIGHTENMENTS,
            )
        };
        let u = rec(SynicMode::Userspace);
        assert_eq!(u.eax, REC_RELAXED_TIMING | REC_DEPRECATING_AUTO_EOI);
        assert_eq!(u.ebx, SPINLOCK_NEVER_NOTIFY);
        let k = rec(SynicMode::Kernel);
        assert_eq!(k.eax, REC_RELAXED_TIMING | REC_APIC_ACCESS_MSRS);
        let none = find(
            &hyperv_leaves(HvFeatures::NONE, SynicMode::Kernel, 1),
            HV_LEAF_ENLIGHTENMENTS,
        );
        assert_eq!(none.eax, 0);
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
