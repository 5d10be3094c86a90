//! The enlightenment set as a guest sees it: every Hyper-V MSR and hypercall CPUID 0x4000_0003
//! advertises works, and the Hyper-V MSRs it does not advertise fault — in userspace mode
//! because the library answers only what it advertises, in kernel mode because synic-kvm turns
//! on `KVM_CAP_HYPERV_ENFORCE_CPUID`. The guest reads the leaf itself; the host checks every
//! access against the bits the guest saw. `docs/enlightenments.md` has the table.

use synic::HvStatus;
use synic_kvm::cpuid::{
    EAX_APIC_ACCESS, EAX_FREQUENCY_MSRS, EAX_HYPERCALL, EAX_REFERENCE_TSC, EAX_STIMER, EAX_SYNIC,
    EAX_TIME_REF_COUNT, EAX_VP_INDEX, EBX_POST_MESSAGES, EBX_SIGNAL_EVENTS, HV_LEAF_FEATURES,
};
use synic_kvm::HvFeatures;
use synic_msr::index;

use crate::guest::{control, PostInput};
use crate::harness::{run, VmSpec};
use crate::layout::tag;
use crate::{Mode, Setup, SynicGuest};

/// Where a bit lives in leaf 0x4000_0003.
#[derive(Clone, Copy, Debug)]
enum Bit {
    Eax(u32),
    Edx(u32),
    /// A privilege no version of this library advertises.
    Never,
}

/// Each Hyper-V MSR the guest reads and the privilege that makes it available (TLFS).
const MSRS: [(u32, Bit); 24] = [
    (index::GUEST_OS_ID, Bit::Eax(EAX_HYPERCALL)),
    (index::HYPERCALL, Bit::Eax(EAX_HYPERCALL)),
    (index::VP_INDEX, Bit::Eax(EAX_VP_INDEX)),
    (0x4000_0003, Bit::Never), // HV_X64_MSR_RESET (AccessResetReg)
    (0x4000_0010, Bit::Never), // HV_X64_MSR_VP_RUNTIME (AccessVpRuntimeReg)
    (index::TIME_REF_COUNT, Bit::Eax(EAX_TIME_REF_COUNT)),
    (index::REFERENCE_TSC, Bit::Eax(EAX_REFERENCE_TSC)),
    (index::TSC_FREQUENCY, Bit::Eax(EAX_FREQUENCY_MSRS)),
    (index::APIC_FREQUENCY, Bit::Eax(EAX_FREQUENCY_MSRS)),
    (0x4000_0072, Bit::Eax(EAX_APIC_ACCESS)), // HV_X64_MSR_TPR
    (index::VP_ASSIST_PAGE, Bit::Eax(EAX_APIC_ACCESS)),
    (index::SCONTROL, Bit::Eax(EAX_SYNIC)),
    (index::SVERSION, Bit::Eax(EAX_SYNIC)),
    (index::SIEFP, Bit::Eax(EAX_SYNIC)),
    (index::SIMP, Bit::Eax(EAX_SYNIC)),
    (index::SINT0, Bit::Eax(EAX_SYNIC)),
    (index::SINT15, Bit::Eax(EAX_SYNIC)),
    (index::STIMER0_CONFIG, Bit::Eax(EAX_STIMER)),
    (index::STIMER3_COUNT, Bit::Eax(EAX_STIMER)),
    (0x4000_00F0, Bit::Never), // HV_X64_MSR_GUEST_IDLE (AccessGuestIdleReg)
    (0x4000_0100, Bit::Edx(1 << 10)), // HV_X64_MSR_CRASH_P0 (guest crash MSRs)
    (0x4000_0105, Bit::Edx(1 << 10)), // HV_X64_MSR_CRASH_CTL
    (0x4000_0106, Bit::Never), // HV_X64_MSR_REENLIGHTENMENT_CONTROL
    (0x4000_0107, Bit::Never), // HV_X64_MSR_TSC_EMULATION_CONTROL
];

/// HvCallNotifyLongSpinWait: never advertised (0x4000_0004 EBX says "never notify").
const NOTIFY_LONG_SPIN_WAIT: u16 = 0x0008;
/// A connection id nobody registered.
const NOBODY: u32 = 0x77;

/// Reads leaf 0x4000_0003, then every MSR of the `MSRS` table, then calls HvPostMessage,
/// HvSignalEvent and an unadvertised hypercall; checks each against the leaf. Run with the
/// default features and with the frequency MSRs on.
pub fn advertised_work_and_the_rest_faults(setup: Setup) {
    for features in [
        HvFeatures::SYNIC,
        HvFeatures {
            frequency_msrs: true,
            ..HvFeatures::SYNIC
        },
    ] {
        one_run(setup, features);
    }
}

fn one_run(setup: Setup, features: HvFeatures) {
    let mut g = SynicGuest::new().unwrap();
    g.report_cpuid(HV_LEAF_FEATURES).unwrap();
    g.enable_hypercalls().unwrap();
    for (msr, _) in MSRS {
        g.rdmsr_report(msr).unwrap();
    }
    g.post_message(PostInput::new(NOBODY, 16, 0)).unwrap();
    g.report_rax_as(tag::HYPERCALL).unwrap();
    g.signal_event_fast(NOBODY, 0).unwrap();
    g.report_rax_as(tag::HYPERCALL).unwrap();
    g.hypercall_raw(control(NOTIFY_LONG_SPIN_WAIT, true), 0)
        .unwrap();
    g.report_rax_as(tag::HYPERCALL).unwrap();
    g.exit_ok().unwrap();
    let spec = VmSpec {
        features,
        ..VmSpec::new(setup, 1)
    };
    let f = run(spec, &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    let cpuid = f.values(0, tag::VALUE);
    let (eax, ebx, edx) = (cpuid[0] as u32, cpuid[1] as u32, cpuid[3] as u32);
    assert_eq!(
        eax & EAX_FREQUENCY_MSRS != 0,
        features.frequency_msrs,
        "frequency MSRs advertised as asked: {eax:#x}"
    );
    let advertised = |bit: Bit| match bit {
        Bit::Eax(b) => eax & b != 0,
        Bit::Edx(b) => edx & b != 0,
        Bit::Never => false,
    };
    let faulted = f.gps(0);
    for (msr, bit) in MSRS {
        let works = !faulted.contains(&msr);
        // Documented exception (docs/enlightenments.md): Linux writes the VP assist page on
        // every CPU whatever CPUID says, so userspace mode stores it without advertising it.
        let tolerated = msr == index::VP_ASSIST_PAGE && setup.mode == Mode::Userspace;
        if tolerated {
            assert!(
                works && !advertised(bit),
                "VP assist page in userspace mode"
            );
            continue;
        }
        assert_eq!(
            works,
            advertised(bit),
            "MSR {msr:#x}: advertised {} (leaf 0x4000_0003 eax {eax:#x} edx {edx:#x}), \
             {} for the guest",
            advertised(bit),
            if works { "works" } else { "faults" }
        );
    }
    let statuses = f.values(0, tag::HYPERCALL);
    let status = |n: usize| HvStatus::from_code(statuses[n] as u16);
    assert!(ebx & EBX_POST_MESSAGES != 0 && ebx & EBX_SIGNAL_EVENTS != 0);
    assert_eq!(
        status(0),
        Some(HvStatus::InvalidConnectionId),
        "HvPostMessage works"
    );
    assert_eq!(
        status(1),
        Some(HvStatus::InvalidConnectionId),
        "HvSignalEvent works"
    );
    assert!(
        matches!(
            status(2),
            Some(HvStatus::InvalidHypercallCode | HvStatus::AccessDenied)
        ),
        "an unadvertised hypercall is refused: {:?}",
        status(2)
    );
}
