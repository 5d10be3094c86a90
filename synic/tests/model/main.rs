//! Property test: the SynIC model against a simulated guest, one random operation at a time.
//!
//! The checker (`synic::fuzzing::Checker`, shared with the fuzz target `synic_model`) runs
//! ISRs (read the slot, clear the type, EOM when MessagePending is set) for a guest that
//! sometimes misbehaves: it never EOMs, peeks without consuming, scribbles on or pokes at its
//! slot, disables or moves its message page (also outside RAM, onto its event-flags page, to
//! the last page of RAM or beyond any address width), writes any value to any SynIC MSR,
//! masks SINTs, toggles SCONTROL, programs synthetic timers (any config, any count) while the
//! clock moves. The host side posts (also to invalid SINTs), signals (also
//! invalid flags), acks, saves and restores into a fresh model, and resets the VP.
//!
//! After every step: no message is duplicated, each SINT's messages arrive in post order,
//! every accepted message is accounted for (received, in the slot, queued, or handed back by a
//! reset), interrupts match deliveries, refusals are the predicted errors, and the host wrote
//! no page but the current message and event-flags pages. At the end a well-behaved guest
//! drains everything: nothing is lost.

use proptest::prelude::*;
use proptest::sample::select;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use synic::fuzzing::{
    Checker, Isr, Op, Setup, EDGE_VALUES, FLAGS, INVALID_FLAGS, INVALID_SINTS, PAGES,
    PAGE_LOW_BITS, SCRIBBLE_TYPES, SETUPS, SIEFP_PAGES, SINTS, WRMSR_INDICES,
};

struct Reference;

fn any_sint() -> BoxedStrategy<u32> {
    prop_oneof![15 => 0..u32::from(SINTS), 1 => select(INVALID_SINTS.to_vec())].boxed()
}

fn msr_value() -> BoxedStrategy<u64> {
    prop_oneof![
        (select(PAGES.to_vec()), select(PAGE_LOW_BITS.to_vec())).prop_map(|(p, l)| p | l),
        (select(SIEFP_PAGES.to_vec()), select(PAGE_LOW_BITS.to_vec())).prop_map(|(p, l)| p | l),
        (any::<u8>(), 0u64..8).prop_map(|(v, f)| u64::from(v) | f << 16),
        select(EDGE_VALUES.to_vec()),
        (0u64..16, any::<u8>(), any::<bool>(), 0u64..6).prop_map(|(low, v, direct, sintx)| {
            low | u64::from(v) << 4 | u64::from(direct) << 12 | sintx << 16
        }),
        0u64..65_536,
        any::<u64>(),
    ]
    .boxed()
}

impl ReferenceStateMachine for Reference {
    type State = Setup;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Setup> {
        (select(SETUPS.to_vec()), 1usize..=4)
            .prop_map(|((mode, profile), capacity)| Setup {
                mode,
                profile,
                capacity,
            })
            .boxed()
    }

    fn transitions(_: &Setup) -> BoxedStrategy<Op> {
        let sint = 0..SINTS;
        let flag = prop_oneof![
            8 => 0..FLAGS,
            1 => 0u32..2048,
            1 => select(INVALID_FLAGS.to_vec()),
        ];
        let isr = prop_oneof![8 => Just(Isr::Good), 1 => Just(Isr::NoEom), 1 => Just(Isr::Peek)];
        prop_oneof![
            30 => (any_sint(), prop::bool::weighted(0.2))
                .prop_map(|(sint, hypervisor)| Op::Post { sint, hypervisor }),
            25 => (sint.clone(), isr).prop_map(|(sint, how)| Op::Isr { sint, how }),
            4 => Just(Op::Eom),
            4 => any_sint().prop_map(|sint| Op::Ack { sint }),
            2 => (sint.clone(), select(SCRIBBLE_TYPES.to_vec()), any::<u8>())
                .prop_map(|(sint, ty, byte)| Op::Scribble { sint, ty, byte }),
            3 => (sint.clone(), 0u8..16, any::<u8>())
                .prop_map(|(sint, offset, value)| Op::Poke { sint, offset, value }),
            2 => Just(Op::DisableSimp),
            5 => prop_oneof![3 => 0u8..3, 1 => 0..PAGES.len() as u8]
                .prop_map(|page| Op::SetSimp { page }),
            3 => any::<bool>().prop_map(|enabled| Op::Scontrol { enabled }),
            3 => (prop_oneof![3 => Just(0u8), 1 => 0..SIEFP_PAGES.len() as u8], any::<bool>())
                .prop_map(|(page, enabled)| Op::Siefp { page, enabled }),
            5 => (sint.clone(), prop::bool::weighted(0.2), prop::bool::weighted(0.2), any::<bool>())
                .prop_map(|(sint, masked, polling, auto_eoi)| Op::SintConfig { sint, masked, polling, auto_eoi }),
            6 => (select(WRMSR_INDICES.to_vec()), msr_value())
                .prop_map(|(index, value)| Op::Wrmsr { index, value }),
            10 => (any_sint(), flag).prop_map(|(sint, flag)| Op::Signal { sint, flag }),
            4 => sint.prop_map(|sint| Op::ClearFlags { sint }),
            3 => (0u32..20_000).prop_map(|t| Op::Tick { ticks: t * 4 }),
            2 => Just(Op::SaveRestore),
            1 => Just(Op::Reset),
        ]
        .boxed()
    }

    fn apply(state: Setup, _: &Op) -> Setup {
        state
    }
}

struct Machine;

impl StateMachineTest for Machine {
    type SystemUnderTest = Checker;
    type Reference = Reference;

    fn init_test(setup: &Setup) -> Checker {
        Checker::new(*setup)
    }

    fn apply(mut checker: Checker, _: &Setup, op: Op) -> Checker {
        checker.apply(&op);
        checker
    }

    fn teardown(mut checker: Checker, _: Setup) {
        checker.drain();
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_against_simulated_guest(sequential 1..120 => Machine);
}

fn tlfs() -> Setup {
    Setup {
        mode: synic::Mode::Userspace,
        profile: synic_msr::Profile::Tlfs,
        capacity: 3,
    }
}

#[test]
fn harness_detects_a_lost_message() {
    // The checker itself must be able to fail: drop a queued message behind its back (a
    // reset whose returned messages are ignored) and the drain must notice.
    let result = std::panic::catch_unwind(|| {
        let mut checker = Checker::new(tlfs());
        let post = Op::Post {
            sint: 0,
            hypervisor: false,
        };
        checker.apply(&post);
        checker.apply(&post);
        checker.lose_queued_messages();
        checker.drain();
    });
    assert!(result.is_err());
}

#[test]
fn decode_is_total_and_encode_inverts_it() {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let (setup, ops) = Op::decode_all(&bytes);
    assert!(ops.len() > 500, "{}", ops.len());
    assert_eq!(Op::decode_all(&Op::encode_all(&setup, &ops)), (setup, ops));
    assert!(Op::decode_all(&[]).1.is_empty());
}

#[test]
fn hostile_pages_and_values_keep_every_message() {
    // Every hostile page for SIMP and SIEFP, with posts, signals and ISRs in between, in
    // every setup; then the guest behaves and receives everything.
    for (mode, profile) in SETUPS {
        let mut checker = Checker::new(Setup {
            mode,
            profile,
            ..tlfs()
        });
        for page in 0..PAGES.len() as u8 {
            for op in [
                Op::SetSimp { page },
                Op::Siefp {
                    page: page % SIEFP_PAGES.len() as u8,
                    enabled: true,
                },
                Op::Post {
                    sint: 1,
                    hypervisor: false,
                },
                Op::Signal { sint: 1, flag: 3 },
                Op::Signal { sint: 1, flag: 40 },
                Op::Isr {
                    sint: 1,
                    how: Isr::Good,
                },
                Op::Post {
                    sint: 1,
                    hypervisor: true,
                },
            ] {
                checker.apply(&op);
            }
        }
        checker.drain();
        assert!(checker.accepted() > 0);
        assert_eq!(checker.received(), checker.accepted());
    }
}
