//! Read and write cost of each MSR kind, both profiles, through the raw-index entry points a
//! VMM calls on an MSR exit (`rdmsr`/`wrmsr`). Writes repeat one accepted value, so each
//! iteration takes the full path (checks, store, outcome) in steady state; the unknown index
//! measures the refusal path.
//!
//! `cargo bench -p synic-msr` (add `-- --warm-up-time 1 --measurement-time 2` for a short run).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use synic_msr::index::{
    EOM, GUEST_OS_ID, HYPERCALL, SCONTROL, SIMP, SINT0, STIMER0_CONFIG, STIMER0_COUNT, VP_INDEX,
};
use synic_msr::{KvmSynic, Origin, PartitionRegisters, Profile, VpRegisters};

/// Which register file a register lives in.
#[derive(Clone, Copy)]
enum File {
    Vp,
    Partition,
}

/// (name, index, file, value written, origin of the write). VP_INDEX is written by the host:
/// the guest may not.
const KINDS: [(&str, u32, File, u64, Origin); 10] = [
    ("SCONTROL", SCONTROL, File::Vp, 1, Origin::Guest),
    ("SIMP", SIMP, File::Vp, 0x5001, Origin::Guest),
    ("EOM", EOM, File::Vp, 0, Origin::Guest),
    ("SINT", SINT0 + 2, File::Vp, 0x30, Origin::Guest),
    (
        "STIMER_CONFIG",
        STIMER0_CONFIG,
        File::Vp,
        0x2_0003,
        Origin::Guest,
    ),
    (
        "STIMER_COUNT",
        STIMER0_COUNT,
        File::Vp,
        10_000,
        Origin::Guest,
    ),
    ("VP_INDEX", VP_INDEX, File::Vp, 5, Origin::Host),
    (
        "GUEST_OS_ID",
        GUEST_OS_ID,
        File::Partition,
        0x8100_0000_0000_0001,
        Origin::Guest,
    ),
    (
        "HYPERCALL",
        HYPERCALL,
        File::Partition,
        0x7001,
        Origin::Guest,
    ),
    ("unknown", 0x4000_0085, File::Vp, 0, Origin::Guest),
];

fn registers(profile: Profile) -> (VpRegisters, PartitionRegisters) {
    let mut vp = VpRegisters::new(profile, 0);
    vp.activate(KvmSynic::V2);
    let mut partition = PartitionRegisters::new(profile);
    partition
        .wrmsr(GUEST_OS_ID, 0x8100_0000_0000_0001, Origin::Guest)
        .expect("guest OS id accepted");
    (vp, partition)
}

fn bench_profile(c: &mut Criterion, profile: Profile, name: &str) {
    let mut group = c.benchmark_group(name);
    let (mut vp, mut partition) = registers(profile);
    for (kind, index, file, value, origin) in KINDS {
        // Measure the path meant: accepted writes for registers, the refusal for "unknown".
        let accepted = match file {
            File::Vp => vp.wrmsr(index, value, origin).is_ok(),
            File::Partition => partition.wrmsr(index, value, origin).is_ok(),
        };
        assert_eq!(accepted, kind != "unknown", "{name} {kind}");
        group.bench_function(format!("read/{kind}"), |b| match file {
            File::Vp => b.iter(|| vp.rdmsr(black_box(index), Origin::Guest)),
            File::Partition => {
                b.iter(|| partition.rdmsr(black_box(index), Origin::Guest, black_box(7)))
            }
        });
        group.bench_function(format!("write/{kind}"), |b| match file {
            File::Vp => b.iter(|| vp.wrmsr(black_box(index), black_box(value), origin)),
            File::Partition => {
                b.iter(|| partition.wrmsr(black_box(index), black_box(value), origin))
            }
        });
    }
    group.finish();
}

fn msr(c: &mut Criterion) {
    // The floor: fetching one u64 from a register-file-sized array, to read the numbers below
    // as multiples of the cheapest possible "register read".
    let file = [0u64; 33];
    c.bench_function("floor/array_read", |b| {
        b.iter(|| black_box(&file)[black_box(9)])
    });
    bench_profile(c, Profile::Tlfs, "tlfs");
    bench_profile(c, Profile::Kvm, "kvm");
}

criterion_group!(benches, msr);
criterion_main!(benches);
