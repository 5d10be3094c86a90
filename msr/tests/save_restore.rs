//! Save/restore property: any register state reachable by guest and host writes, read out with
//! host reads of `Msr::SAVED` and written back with host writes in that order into fresh
//! registers of the same profile, address width and activation, behaves identically: the same
//! host reads of every register, and the same results for any later guest accesses.
//!
//! `SYNIC_PROPTEST_CASES` scales the case count (a quarter of it; default 2 500).

#[path = "common/mod.rs"]
mod common;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use synic_msr::{
    Gp, KvmSynic, Msr, Origin, PartitionRegisters, Profile, Scope, VpRegisters, WriteOutcome,
};

use common::{cases, config, index, origin, value, KNOWN};

/// The source's configuration, shared by the destination.
#[derive(Clone, Copy, Debug)]
struct Setup {
    profile: Profile,
    activation: Option<KvmSynic>,
    bits: u8,
}

fn setup() -> impl Strategy<Value = Setup> {
    let activation = prop_oneof![
        1 => Just(None),
        2 => Just(Some(KvmSynic::V1)),
        2 => Just(Some(KvmSynic::V2)),
    ];
    (any::<bool>(), activation, select(vec![36u8, 39, 48, 52])).prop_map(
        |(kvm, activation, bits)| Setup {
            profile: if kvm { Profile::Kvm } else { Profile::Tlfs },
            activation: if kvm { activation } else { None },
            bits,
        },
    )
}

/// One VP and its partition.
#[derive(Clone, Debug)]
struct Machine {
    vp: VpRegisters,
    partition: PartitionRegisters,
}

/// The partition clock is not register state; both sides read it as the same value.
const CLOCK: u64 = 0x1234_5678;

impl Machine {
    fn new(setup: Setup, vp_index: u32) -> Self {
        let mut vp = VpRegisters::new(setup.profile, vp_index).with_phys_addr_bits(setup.bits);
        if let Some(v) = setup.activation {
            vp.activate(v);
        }
        let partition = PartitionRegisters::new(setup.profile).with_phys_addr_bits(setup.bits);
        Machine { vp, partition }
    }

    fn partition_scope(index: u32) -> bool {
        Msr::from_index(index).map(Msr::scope) == Some(Scope::Partition)
    }

    fn rdmsr(&self, index: u32, origin: Origin) -> Result<u64, Gp> {
        if Self::partition_scope(index) {
            self.partition.rdmsr(index, origin, CLOCK)
        } else {
            self.vp.rdmsr(index, origin)
        }
    }

    fn wrmsr(&mut self, index: u32, value: u64, origin: Origin) -> Result<WriteOutcome, Gp> {
        if Self::partition_scope(index) {
            self.partition.wrmsr(index, value, origin)
        } else {
            self.vp.wrmsr(index, value, origin)
        }
    }

    /// Host reads of every register, in `SAVED` order.
    fn save(&self) -> Vec<(Msr, u64)> {
        Msr::SAVED
            .iter()
            .map(|&msr| {
                let value = self
                    .rdmsr(msr.index(), Origin::Host)
                    .unwrap_or_else(|gp| panic!("saving {msr}: {gp}"));
                (msr, value)
            })
            .collect()
    }

    /// Host writes of `saved`, in order. A never-activated KVM SynIC refuses non-zero host
    /// writes even of the value it holds, so there only differing registers are written
    /// (docs/msr-semantics.md, "Save and restore").
    fn restore(&mut self, saved: &[(Msr, u64)]) {
        let inactive = !self.vp.active();
        for &(msr, value) in saved {
            let index = msr.index();
            if inactive && self.rdmsr(index, Origin::Host) == Ok(value) {
                continue;
            }
            self.wrmsr(index, value, Origin::Host)
                .unwrap_or_else(|gp| panic!("restoring {msr} = {value:#x}: {gp}"));
        }
    }

    /// Guest and host reads of every modelled register, plus the VP's identity.
    fn observe(&self) -> (Vec<Result<u64, Gp>>, bool, Option<KvmSynic>, u32) {
        let reads = KNOWN
            .iter()
            .flat_map(|&i| [self.rdmsr(i, Origin::Host), self.rdmsr(i, Origin::Guest)])
            .collect();
        (
            reads,
            self.vp.active(),
            self.vp.kvm_synic(),
            self.vp.vp_index(),
        )
    }
}

/// An access in the follow-up sequence: a guest read (`None`) or write.
fn guest_access() -> impl Strategy<Value = (u32, Option<u64>)> {
    (
        index(),
        prop_oneof![1 => Just(None), 3 => value().prop_map(Some)],
    )
}

proptest! {
    #![proptest_config(config((cases() / 4).max(1)))]

    #[test]
    fn restore_reproduces_every_reachable_state(
        setup in setup(),
        (source_index, dest_index) in (0u32..4096, 0u32..4096),
        writes in vec((index(), value(), origin()), 0..48),
        follow_up in vec(guest_access(), 0..24),
    ) {
        let mut source = Machine::new(setup, source_index);
        for (index, value, origin) in writes {
            // Refused writes are part of the history too: they must leave no trace.
            let _ = source.wrmsr(index, value, origin);
        }
        let saved = source.save();

        // The destination was created as another vCPU; VP_INDEX restores the index.
        let mut dest = Machine::new(setup, dest_index);
        dest.restore(&saved);
        prop_assert_eq!(dest.save(), saved);
        prop_assert_eq!(dest.observe(), source.observe());

        for (index, access) in follow_up {
            match access {
                None => prop_assert_eq!(
                    dest.rdmsr(index, Origin::Guest),
                    source.rdmsr(index, Origin::Guest)
                ),
                Some(value) => prop_assert_eq!(
                    dest.wrmsr(index, value, Origin::Guest),
                    source.wrmsr(index, value, Origin::Guest)
                ),
            }
        }
        prop_assert_eq!(dest.observe(), source.observe());
    }
}
