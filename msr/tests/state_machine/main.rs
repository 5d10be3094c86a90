//! Reference-model state machine for `VpRegisters` and `PartitionRegisters`.
//!
//! The model (`model.rs`) is a second, deliberately plain implementation of
//! `docs/msr-semantics.md`; it never calls the crate's logic. Random
//! sequences of guest and host reads and writes (every index in 0x4000_0000..=0x4000_00FF and
//! some outside, edge-biased values), activation, reset, the timer layer's enable switch and the
//! reference clock run against both; after every step the result and a guest and host read of
//! every register must agree.
//!
//! `SYNIC_PROPTEST_CASES` sets the number of cases (default 10 000).

#[path = "../common/mod.rs"]
mod common;
mod model;

use proptest::prelude::*;
use proptest::sample::select;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use synic_msr::{
    Gp, KvmSynic, Msr, Origin, PartitionRegisters, Profile, Scope, VpRegisters, WriteOutcome,
};

use common::{cases, config, index, origin, value, KNOWN};
use model::{timer_index, Act, Expect, Model, Via, WriteResult};

// ---------------------------------------------------------------------------------------------
// Transitions and their generators.

#[derive(Clone)]
enum Transition {
    Read {
        via: Via,
        index: u32,
        origin: Origin,
    },
    Write {
        via: Via,
        index: u32,
        value: u64,
        origin: Origin,
    },
    Activate(KvmSynic),
    Reset,
    SetStimerEnabled {
        timer: u8,
        enabled: bool,
    },
    SetClock(u64),
}

/// Indices and values in hex, so a failing sequence reads like the table.
impl std::fmt::Debug for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transition::Read { via, index, origin } => {
                write!(f, "Read {{ {via:?}, {index:#x}, {origin:?} }}")
            }
            Transition::Write {
                via,
                index,
                value,
                origin,
            } => write!(
                f,
                "Write {{ {via:?}, {index:#x} = {value:#x}, {origin:?} }}"
            ),
            Transition::Activate(v) => write!(f, "Activate({v:?})"),
            Transition::Reset => f.write_str("Reset"),
            Transition::SetStimerEnabled { timer, enabled } => {
                write!(f, "SetStimerEnabled({timer}, {enabled})")
            }
            Transition::SetClock(c) => write!(f, "SetClock({c:#x})"),
        }
    }
}

fn via() -> BoxedStrategy<Via> {
    prop_oneof![8 => Just(Via::Dispatch), 1 => Just(Via::Vp), 1 => Just(Via::Partition)].boxed()
}

fn transition_strategy() -> BoxedStrategy<Transition> {
    prop_oneof![
            10 => (via(), index(), origin())
                .prop_map(|(via, index, origin)| Transition::Read { via, index, origin }),
            24 => (via(), index(), value(), origin()).prop_map(|(via, index, value, origin)| {
                Transition::Write { via, index, value, origin }
            }),
            1 => prop_oneof![Just(KvmSynic::V1), Just(KvmSynic::V2)].prop_map(Transition::Activate),
            1 => Just(Transition::Reset),
            1 => (0u8..4, any::<bool>())
                .prop_map(|(timer, enabled)| Transition::SetStimerEnabled { timer, enabled }),
            1 => any::<u64>().prop_map(Transition::SetClock),
    ]
    .boxed()
}

struct RegisterMachine;

impl ReferenceStateMachine for RegisterMachine {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        let act = prop_oneof![2 => Just(Act::Off), 1 => Just(Act::V1), 1 => Just(Act::V2)];
        let bits = select(vec![0u8, 12, 36, 39, 46, 48, 52, 60, 255]);
        let vp_index = prop_oneof![0u32..8, select(vec![4095u32, 4096, 0xFFFF_FFFE, u32::MAX])];
        (any::<bool>(), act, bits, vp_index, any::<u64>())
            .prop_map(|(kvm, act, bits, vp, clock)| Model::new(kvm, act, bits, vp, clock))
            .boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Transition> {
        // The choice does not depend on the state: build the strategy once per thread instead
        // of once per generated step.
        thread_local! {
            static TRANSITIONS: BoxedStrategy<Transition> = transition_strategy();
        }
        TRANSITIONS.with(Clone::clone)
    }

    fn apply(mut m: Model, t: &Transition) -> Model {
        m.expect = Expect::Nothing;
        match *t {
            Transition::Read { via, index, origin } => {
                m.expect = Expect::Read(m.read(via, index, origin));
            }
            Transition::Write {
                via,
                index,
                value,
                origin,
            } => {
                // The model returns every refusal before it changes anything.
                m.expect = Expect::Write(m.write(via, index, value, origin));
            }
            Transition::Activate(v) => {
                if m.kvm {
                    m.act = match v {
                        KvmSynic::V1 => Act::V1,
                        KvmSynic::V2 => Act::V2,
                    };
                    m.scontrol = 1;
                }
            }
            Transition::Reset => m.power_on(),
            Transition::SetStimerEnabled { timer, enabled } => {
                let c = &mut m.config[timer as usize];
                *c = if enabled { *c | 1 } else { *c & !1 };
            }
            Transition::SetClock(c) => m.clock = c,
        }
        m
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test.

struct Sut {
    vp: VpRegisters,
    partition: PartitionRegisters,
    clock: u64,
}

impl Sut {
    fn scope(index: u32) -> Option<Scope> {
        Msr::from_index(index).map(Msr::scope)
    }

    fn read(&self, via: Via, index: u32, origin: Origin) -> Result<u64, Gp> {
        let to_partition = match via {
            Via::Dispatch => Self::scope(index) == Some(Scope::Partition),
            Via::Vp => false,
            Via::Partition => true,
        };
        if to_partition {
            self.partition.rdmsr(index, origin, self.clock)
        } else {
            self.vp.rdmsr(index, origin)
        }
    }

    fn write(&mut self, via: Via, index: u32, value: u64, origin: Origin) -> WriteResult {
        let to_partition = match via {
            Via::Dispatch => Self::scope(index) == Some(Scope::Partition),
            Via::Vp => false,
            Via::Partition => true,
        };
        let out: Result<WriteOutcome, Gp> = if to_partition {
            self.partition.wrmsr(index, value, origin)
        } else {
            self.vp.wrmsr(index, value, origin)
        };
        out.map(|o| (o.msr, o.old, o.new, o.change))
    }
}

impl StateMachineTest for RegisterMachine {
    type SystemUnderTest = Sut;
    type Reference = RegisterMachine;

    fn init_test(m: &Model) -> Sut {
        let profile = if m.kvm { Profile::Kvm } else { Profile::Tlfs };
        let mut vp =
            VpRegisters::new(profile, m.vp_index as u32).with_phys_addr_bits(m.requested_bits);
        match m.act {
            Act::Off => {}
            Act::V1 => vp.activate(KvmSynic::V1),
            Act::V2 => vp.activate(KvmSynic::V2),
        }
        let partition = PartitionRegisters::new(profile).with_phys_addr_bits(m.requested_bits);
        Sut {
            vp,
            partition,
            clock: m.clock,
        }
    }

    fn apply(mut sut: Sut, m: &Model, t: Transition) -> Sut {
        match t {
            Transition::Read { via, index, origin } => {
                let got = sut.read(via, index, origin);
                assert_eq!(Expect::Read(got), m.expect, "{t:?}");
            }
            Transition::Write {
                via,
                index,
                value,
                origin,
            } => {
                let got = sut.write(via, index, value, origin);
                assert_eq!(Expect::Write(got), m.expect, "{t:?}");
            }
            Transition::Activate(v) => sut.vp.activate(v),
            Transition::Reset => {
                sut.vp.reset();
                sut.partition.reset();
            }
            Transition::SetStimerEnabled { timer, enabled } => {
                sut.vp.set_stimer_enabled(timer_index(timer), enabled)
            }
            Transition::SetClock(c) => sut.clock = c,
        }
        sut
    }

    fn check_invariants(sut: &Sut, m: &Model) {
        for index in KNOWN {
            for origin in [Origin::Guest, Origin::Host] {
                assert_eq!(
                    sut.read(Via::Dispatch, index, origin),
                    m.read(Via::Dispatch, index, origin),
                    "read of {index:#x} by {origin:?}"
                );
            }
        }
        assert_eq!(sut.vp.active(), m.open());
        let act = match sut.vp.kvm_synic() {
            None => Act::Off,
            Some(KvmSynic::V1) => Act::V1,
            Some(KvmSynic::V2) => Act::V2,
        };
        assert_eq!(act, m.act);
        assert_eq!(u64::from(sut.vp.vp_index()), m.vp_index);
    }
}

prop_state_machine! {
    #![proptest_config(config(cases()))]

    #[test]
    fn registers_match_reference_model(sequential 1..24 => RegisterMachine);
}
