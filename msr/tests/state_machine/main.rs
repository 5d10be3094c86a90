//! Reference-model state machine for `VpRegisters` and `PartitionRegisters`.
//!
//! The model (`synic_msr::oracle`, feature `oracle`) is a second, deliberately plain
//! implementation of `docs/msr-semantics.md`; it never calls the crate's logic. Random
//! sequences of guest and host reads and writes (every index in 0x4000_0000..=0x4000_00FF and
//! some outside, edge-biased values), activation, reset, the timer layer's enable switch and the
//! reference clock run against both; after every step the result and a guest and host read of
//! every register must agree. The fuzz target `msr_access` runs the same checker on operations
//! decoded from bytes.
//!
//! `SYNIC_PROPTEST_CASES` sets the number of cases (default 10 000).

#[path = "../common/mod.rs"]
mod common;

use proptest::prelude::*;
use proptest::sample::select;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use synic_msr::oracle::{Act, Checker, Op, Setup, Via, ODD_VP_INDICES, PHYS_ADDR_BITS};
use synic_msr::KvmSynic;

use common::{cases, config, index, origin, value};

fn via() -> BoxedStrategy<Via> {
    prop_oneof![8 => Just(Via::Dispatch), 1 => Just(Via::Vp), 1 => Just(Via::Partition)].boxed()
}

fn op_strategy() -> BoxedStrategy<Op> {
    prop_oneof![
            10 => (via(), index(), origin())
                .prop_map(|(via, index, origin)| Op::Read { via, index, origin }),
            24 => (via(), index(), value(), origin()).prop_map(|(via, index, value, origin)| {
                Op::Write { via, index, value, origin }
            }),
            1 => prop_oneof![Just(KvmSynic::V1), Just(KvmSynic::V2)].prop_map(Op::Activate),
            1 => Just(Op::Reset),
            1 => (0u8..4, any::<bool>())
                .prop_map(|(timer, enabled)| Op::SetStimerEnabled { timer, enabled }),
            1 => any::<u64>().prop_map(Op::SetClock),
    ]
    .boxed()
}

struct RegisterMachine;

impl ReferenceStateMachine for RegisterMachine {
    type State = Setup;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Setup> {
        let act = prop_oneof![2 => Just(Act::Off), 1 => Just(Act::V1), 1 => Just(Act::V2)];
        let bits = select(PHYS_ADDR_BITS.to_vec());
        let vp_index = prop_oneof![0u32..8, select(ODD_VP_INDICES.to_vec())];
        (any::<bool>(), act, bits, vp_index, any::<u64>())
            .prop_map(|(kvm, act, phys_addr_bits, vp_index, clock)| Setup {
                kvm,
                act,
                phys_addr_bits,
                vp_index,
                clock,
            })
            .boxed()
    }

    fn transitions(_state: &Setup) -> BoxedStrategy<Op> {
        // The choice does not depend on the state: build the strategy once per thread instead
        // of once per generated step.
        thread_local! {
            static OPS: BoxedStrategy<Op> = op_strategy();
        }
        OPS.with(Clone::clone)
    }

    fn apply(state: Setup, _: &Op) -> Setup {
        state
    }
}

impl StateMachineTest for RegisterMachine {
    type SystemUnderTest = Checker;
    type Reference = RegisterMachine;

    fn init_test(setup: &Setup) -> Checker {
        Checker::new(setup)
    }

    fn apply(mut checker: Checker, _: &Setup, op: Op) -> Checker {
        if let Err(divergence) = checker.apply(&op) {
            panic!("{divergence}");
        }
        checker
    }
}

prop_state_machine! {
    #![proptest_config(config(cases()))]

    #[test]
    fn registers_match_reference_model(sequential 1..24 => RegisterMachine);
}

#[test]
fn checker_reports_a_divergence() {
    // The oracle must be able to fail: a model built for another address width disagrees
    // with the crate on a SIMP write between the two widths.
    let crate_setup = Setup {
        kvm: false,
        act: Act::Off,
        phys_addr_bits: 36,
        vp_index: 0,
        clock: 0,
    };
    let model_setup = Setup {
        phys_addr_bits: 39,
        ..crate_setup
    };
    let simp = Op::Write {
        via: Via::Dispatch,
        index: synic_msr::index::SIMP,
        value: (1 << 38) | 1,
        origin: synic_msr::Origin::Guest,
    };
    assert!(Checker::new(&crate_setup).apply(&simp).is_ok());
    let err = Checker::with_setups(&crate_setup, &model_setup)
        .apply(&simp)
        .unwrap_err();
    assert!(err.contains("GpaTooWide"), "{err}");
}

#[test]
fn decode_is_total_and_encode_inverts_it() {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    let (setup, ops) = Op::decode_all(&bytes);
    assert!(ops.len() > 200, "{}", ops.len());
    let again = Op::encode_all(&setup, &ops);
    assert_eq!(Op::decode_all(&again), (setup, ops.clone()));
    let mut checker = Checker::new(&setup);
    for op in &ops {
        checker.apply(op).unwrap();
    }
    assert_eq!(Op::decode_all(&[]).1, Vec::<Op>::new());
}
