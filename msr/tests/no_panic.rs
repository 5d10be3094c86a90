//! No combination panics: every index in 0x4000_0000..=0x4000_00FF and some outside, times an
//! edge-value set, both origins, every profile and activation, read and write, through both
//! register files' raw and typed entry points, on a state that evolves with the writes. Every
//! access must return `Ok` or `Err(Gp)` naming the accessed index, and a refused write must
//! leave the registers unchanged.

use synic_msr::{
    Gp, KvmSynic, Msr, Origin, PartitionRegisters, Profile, SintIndex, StimerIndex, VpRegisters,
};

/// Values that hit every rule's boundary: masks and their complements, single bits, vectors
/// 0..=16 and 255 with and without Masked, page addresses around 2^36 and 2^52, VP index limits.
fn edge_values() -> Vec<u64> {
    let mut v = vec![
        0,
        1,
        2,
        3,
        u64::MAX,
        u64::MAX - 1,
        !0xFFE,
        0xFFE,
        !0xFFC,
        0xFFC,
        0x7_00FF,
        !0x7_00FF,
        0xF_1FFF,
        !0xF_1FFF,
        0xF_1FF7,
        0x8,
        0x1008,
        4095,
        4096,
        0xFFFF_FFFE,
        0xFFFF_FFFF,
        0x1_0000_0001,
        (1 << 36) - 0x1000 + 1,
        (1 << 36) + 1,
        (1 << 52) - 0x1000 + 1,
        (1 << 52) + 1,
        (1 << 52) + 3,
    ];
    v.extend((0..64).map(|b| 1u64 << b));
    for vector in (0..=16).chain([255]) {
        v.extend([vector, vector | 1 << 16, vector | 0x7_0000, vector | 0xFF00]);
    }
    v
}

fn indices() -> Vec<u32> {
    let mut v: Vec<u32> = (0x4000_0000..=0x4000_00FF).collect();
    v.extend([
        0,
        1,
        0x3FFF_FFFF,
        0x4000_0100,
        0x4000_FFFF,
        0xC000_0080,
        u32::MAX,
    ]);
    v
}

/// Every `Msr` value, built from its parts (not from an index).
fn all_msrs() -> Vec<Msr> {
    let mut v = vec![
        Msr::GuestOsId,
        Msr::Hypercall,
        Msr::VpIndex,
        Msr::TimeRefCount,
        Msr::ReferenceTsc,
        Msr::Scontrol,
        Msr::Sversion,
        Msr::Siefp,
        Msr::Simp,
        Msr::Eom,
    ];
    v.extend(SintIndex::ALL.map(Msr::Sint));
    v.extend(StimerIndex::ALL.map(Msr::StimerConfig));
    v.extend(StimerIndex::ALL.map(Msr::StimerCount));
    v
}

fn check_read(result: Result<u64, Gp>, index: u32) {
    if let Err(gp) = result {
        assert_eq!(gp.index, index, "fault names another index");
        assert!(!gp.to_string().is_empty());
    }
}

fn check_write<T: Clone + PartialEq + std::fmt::Debug>(
    regs: &mut T,
    index: u32,
    write: impl FnOnce(&mut T) -> Result<synic_msr::WriteOutcome, Gp>,
) {
    let before = regs.clone();
    match write(regs) {
        Ok(out) => assert_eq!(out.msr.index(), index),
        Err(gp) => {
            assert_eq!(gp.index, index, "fault names another index");
            assert_eq!(*regs, before, "a refused write of {index:#x} changed state");
        }
    }
}

struct Setup {
    profile: Profile,
    activation: Option<KvmSynic>,
    bits: u8,
}

const SETUPS: [Setup; 5] = [
    Setup {
        profile: Profile::Tlfs,
        activation: None,
        bits: 52,
    },
    Setup {
        profile: Profile::Tlfs,
        activation: None,
        bits: 36,
    },
    Setup {
        profile: Profile::Kvm,
        activation: None,
        bits: 52,
    },
    Setup {
        profile: Profile::Kvm,
        activation: Some(KvmSynic::V1),
        bits: 52,
    },
    Setup {
        profile: Profile::Kvm,
        activation: Some(KvmSynic::V2),
        bits: 52,
    },
];

#[test]
fn no_access_panics_and_refusals_change_nothing() {
    let values = edge_values();
    let indices = indices();
    let msrs = all_msrs();
    let mut accesses = 0u64;
    for setup in &SETUPS {
        let mut vp = VpRegisters::new(setup.profile, 1).with_phys_addr_bits(setup.bits);
        if let Some(v) = setup.activation {
            vp.activate(v);
        }
        let mut partition = PartitionRegisters::new(setup.profile).with_phys_addr_bits(setup.bits);
        for (round, &value) in values.iter().enumerate() {
            for origin in [Origin::Guest, Origin::Host] {
                for &index in &indices {
                    check_read(vp.rdmsr(index, origin), index);
                    check_read(partition.rdmsr(index, origin, value), index);
                    check_write(&mut vp, index, |r| r.wrmsr(index, value, origin));
                    check_write(&mut partition, index, |r| r.wrmsr(index, value, origin));
                    accesses += 4;
                }
                for &msr in &msrs {
                    let index = msr.index();
                    check_read(vp.read(msr, origin), index);
                    check_read(partition.read(msr, origin, value), index);
                    check_write(&mut vp, index, |r| r.write(msr, value, origin));
                    check_write(&mut partition, index, |r| r.write(msr, value, origin));
                    accesses += 4;
                }
            }
            // Now and then the other ways the state moves.
            if round % 17 == 16 {
                vp.reset();
                partition.reset();
            }
            if round % 5 == 4 {
                for t in StimerIndex::ALL {
                    vp.set_stimer_enabled(t, round % 10 == 4);
                }
            }
        }
    }
    // 5 setups x values x 2 origins x (263 indices + 33 typed) x 4 accesses.
    assert_eq!(
        accesses,
        5 * values.len() as u64 * 2 * (indices.len() + msrs.len()) as u64 * 4
    );
}
