//! Property test: the SynIC model against a simulated guest, one random operation at a time.
//!
//! The simulated guest runs ISRs (read the slot, clear the type, EOM when MessagePending is
//! set) and sometimes misbehaves: it never EOMs, peeks without consuming, scribbles on its
//! slot, disables or moves its message page mid-flight, masks SINTs, toggles SCONTROL. The host
//! side posts, signals, acks, saves and restores into a fresh model, and resets the VP.
//!
//! After every step: no message is duplicated, each SINT's messages arrive in post order,
//! every accepted message is accounted for (received, in the slot, queued, or handed back by a
//! reset), interrupts match deliveries, and the host wrote no page but the current message and
//! event-flags pages. At the end a well-behaved guest drains everything: nothing is lost.

#[path = "../common/mod.rs"]
mod common;
mod sut;

use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use synic::Mode;
use synic_msr::Profile;

use sut::Sut;

const SINTS: u8 = 4;
const FLAGS: u32 = 40;
const CAPACITY: usize = 3;
/// Candidate message pages; the last is outside guest RAM.
const PAGES: [u64; 4] = [0x1_0000, 0x2_0000, 0x3_0000, 0x2000_0000];
const SIEFP: u64 = 0x4_0000;
const GARBAGE_TYPE: u32 = 0x7777_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isr {
    /// Consume, and EOM when MessagePending is set.
    Good,
    /// Consume, never EOM.
    NoEom,
    /// Look without consuming.
    Peek,
}

#[derive(Clone, Debug)]
enum Op {
    Post {
        sint: u8,
        hypervisor: bool,
    },
    Isr {
        sint: u8,
        how: Isr,
    },
    Eom,
    Ack {
        sint: u8,
    },
    Scribble {
        sint: u8,
        ty: u32,
        byte: u8,
    },
    DisableSimp,
    SetSimp {
        page: usize,
    },
    Scontrol {
        enabled: bool,
    },
    Siefp {
        enabled: bool,
    },
    SintConfig {
        sint: u8,
        masked: bool,
        polling: bool,
        auto_eoi: bool,
    },
    Signal {
        sint: u8,
        flag: u32,
    },
    ClearFlags {
        sint: u8,
    },
    SaveRestore,
    Reset,
}

/// The configuration under test; the reference model only generates operations.
#[derive(Clone, Copy, Debug)]
struct Setup {
    mode: Mode,
    profile: Profile,
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Setup;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Setup> {
        prop_oneof![
            Just(Setup {
                mode: Mode::Userspace,
                profile: Profile::Tlfs
            }),
            Just(Setup {
                mode: Mode::Userspace,
                profile: Profile::Kvm
            }),
            Just(Setup {
                mode: Mode::Kernel,
                profile: Profile::Kvm
            }),
        ]
        .boxed()
    }

    fn transitions(_: &Setup) -> BoxedStrategy<Op> {
        let sint = 0..SINTS;
        prop_oneof![
            30 => (sint.clone(), prop::bool::weighted(0.2))
                .prop_map(|(sint, hypervisor)| Op::Post { sint, hypervisor }),
            25 => (sint.clone(), prop_oneof![8 => Just(Isr::Good), 1 => Just(Isr::NoEom), 1 => Just(Isr::Peek)])
                .prop_map(|(sint, how)| Op::Isr { sint, how }),
            4 => Just(Op::Eom),
            4 => sint.clone().prop_map(|sint| Op::Ack { sint }),
            2 => (sint.clone(), prop_oneof![Just(0u32), (1u32..4).prop_map(|k| GARBAGE_TYPE | k)], any::<u8>())
                .prop_map(|(sint, ty, byte)| Op::Scribble { sint, ty, byte }),
            2 => Just(Op::DisableSimp),
            5 => (0..PAGES.len()).prop_map(|page| Op::SetSimp { page }),
            3 => any::<bool>().prop_map(|enabled| Op::Scontrol { enabled }),
            2 => any::<bool>().prop_map(|enabled| Op::Siefp { enabled }),
            5 => (sint.clone(), prop::bool::weighted(0.2), prop::bool::weighted(0.2), any::<bool>())
                .prop_map(|(sint, masked, polling, auto_eoi)| Op::SintConfig { sint, masked, polling, auto_eoi }),
            10 => (sint.clone(), 0..FLAGS).prop_map(|(sint, flag)| Op::Signal { sint, flag }),
            4 => sint.prop_map(|sint| Op::ClearFlags { sint }),
            2 => Just(Op::SaveRestore),
            1 => Just(Op::Reset),
        ]
        .boxed()
    }

    fn apply(state: Setup, _: &Op) -> Setup {
        state
    }
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Self;
    type Reference = Reference;

    fn init_test(setup: &Setup) -> Self {
        Sut::new(*setup)
    }

    fn apply(mut sut: Self, _: &Setup, op: Op) -> Self {
        sut.apply(&op);
        sut
    }

    fn teardown(mut sut: Self, _: Setup) {
        sut.drain();
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_against_simulated_guest(sequential 1..120 => Sut);
}

#[test]
fn harness_detects_a_lost_message() {
    // The checker itself must be able to fail: drop a queued message behind the model's back
    // (a reset whose returned messages are ignored) and the drain must notice.
    let result = std::panic::catch_unwind(|| {
        let mut sut = Sut::new(Setup {
            mode: Mode::Userspace,
            profile: Profile::Tlfs,
        });
        sut.apply(&Op::Post {
            sint: 0,
            hypervisor: false,
        });
        sut.apply(&Op::Post {
            sint: 0,
            hypervisor: false,
        });
        let _ = sut.h.vps[0].reset();
        sut.drain();
    });
    assert!(result.is_err());
}
