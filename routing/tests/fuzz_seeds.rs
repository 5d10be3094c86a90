//! Seed inputs for the fuzz targets in `fuzz/` (one test for all four, here because this crate
//! sees every library crate).
//!
//! Each seed is built from operations, encoded with the same scheme the fuzz target decodes,
//! checked to decode back to those operations, and run through the target's checker (a seed
//! must pass). With `SYNIC_WRITE_SEEDS=1` the test (re)writes `fuzz/seeds/<target>/<name>`;
//! otherwise it fails when a committed seed differs from what it would write.

use std::path::PathBuf;

use synic::fuzzing::hypercall::{self, Call, Case, Step};
use synic::fuzzing::{self as model, Isr as How, PAGES, SIEFP_PAGES};
use synic::{Mode, SintIndex, VpIndex};
use synic_msr::oracle::{self as msr, Act, Via};
use synic_msr::{index, KvmSynic, Origin, Profile};
use synic_routing::ops::{Op as RouteOp, OpChecker};
use synic_routing::{DefaultRoutes, Gsi, IrqChip, MsiRoute, Route};

fn seeds_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

/// Writes the seeds (`SYNIC_WRITE_SEEDS=1`) or checks the committed ones are current.
fn sync(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = seeds_dir(target);
    let write = std::env::var_os("SYNIC_WRITE_SEEDS").is_some_and(|v| v == "1");
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; run with SYNIC_WRITE_SEEDS=1", path.display())
            });
            assert!(
                committed == *bytes,
                "{} is stale; run with SYNIC_WRITE_SEEDS=1",
                path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// msr_access

fn msr_seed(setup: msr::Setup, ops: &[msr::Op]) -> Vec<u8> {
    let bytes = msr::Op::encode_all(&setup, ops);
    assert_eq!(msr::Op::decode_all(&bytes), (setup, ops.to_vec()));
    let mut checker = msr::Checker::new(&setup);
    for op in ops {
        checker.apply(op).unwrap();
    }
    bytes
}

fn write(index: u32, value: u64, origin: Origin) -> msr::Op {
    msr::Op::Write {
        via: Via::Dispatch,
        index,
        value,
        origin,
    }
}

fn read(index: u32, origin: Origin) -> msr::Op {
    msr::Op::Read {
        via: Via::Dispatch,
        index,
        origin,
    }
}

fn msr_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tlfs = msr::Setup {
        kvm: false,
        act: Act::Off,
        phys_addr_bits: 39,
        vp_index: 1,
        clock: 1000,
    };
    let kvm_off = msr::Setup {
        kvm: true,
        act: Act::Off,
        phys_addr_bits: 52,
        vp_index: 4095,
        clock: 0,
    };
    let g = Origin::Guest;
    let h = Origin::Host;
    let bring_up = [
        write(index::GUEST_OS_ID, 0x8100_0000_0000_0001, g),
        write(index::HYPERCALL, 0x7001, g),
        write(index::SCONTROL, 1, g),
        write(index::SIMP, 0x5001, g),
        write(index::SIEFP, 0x6001, g),
        write(index::SINT0 + 2, 0x40, g),
        write(index::SINT0 + 3, 0x2_0041, g),
        write(index::EOM, 0, g),
        read(index::SIMP, g),
        read(index::TIME_REF_COUNT, g),
        read(index::VP_INDEX, g),
        write(index::STIMER0_COUNT, 10_000, g),
        write(index::STIMER0_CONFIG, 0x2_000B, g),
        msr::Op::SetStimerEnabled {
            timer: 0,
            enabled: false,
        },
        read(index::STIMER0_CONFIG, g),
    ];
    let hostile = [
        write(index::SIMP, (1 << 39) | 1, g),
        write(index::SIEFP, u64::MAX, g),
        write(index::SINT0, 0x0F, g),
        write(index::SINT0 + 15, 0x1_0005, g),
        write(index::SINT0 + 4, 0x40 | 1 << 63, g),
        write(index::EOM, 1, g),
        write(index::SVERSION, 2, g),
        write(index::SVERSION, 2, h),
        write(index::VP_INDEX, 7, g),
        write(0x4000_0085, 0, g),
        write(index::STIMER0_CONFIG + 6, 1 << 13, g),
        write(index::HYPERCALL, 0x7003, h),
        write(index::HYPERCALL, 0x9001, g),
        read(0xC000_0080, g),
        msr::Op::Write {
            via: Via::Vp,
            index: index::GUEST_OS_ID,
            value: 1,
            origin: g,
        },
        msr::Op::Read {
            via: Via::Partition,
            index: index::SCONTROL,
            origin: h,
        },
        msr::Op::Reset,
        msr::Op::SetClock(u64::MAX),
        read(index::TIME_REF_COUNT, g),
    ];
    let kvm_activation = [
        read(index::SCONTROL, g),
        write(index::SIMP, 0x5001, h),
        write(index::SIMP, 0, h),
        write(index::VP_INDEX, 4096, h),
        write(index::VP_INDEX, 4095, h),
        msr::Op::Activate(KvmSynic::V1),
        write(index::SIMP, 0x5001, g),
        write(index::SINT0, 0x1_0000, g),
        write(index::SINT0 + 1, 0x05, g),
        write(index::EOM, 0xFF, g),
        write(index::STIMER0_COUNT + 6, 5, g),
        msr::Op::Activate(KvmSynic::V2),
        msr::Op::Reset,
        read(index::SCONTROL, g),
    ];
    vec![
        ("tlfs-bring-up", msr_seed(tlfs, &bring_up)),
        ("tlfs-hostile", msr_seed(tlfs, &hostile)),
        ("kvm-hostile", msr_seed(kvm_off, &hostile)),
        ("kvm-activation", msr_seed(kvm_off, &kvm_activation)),
    ]
}

// ---------------------------------------------------------------------------------------------
// synic_model

fn model_seed(mode: Mode, profile: Profile, capacity: usize, ops: &[model::Op]) -> Vec<u8> {
    let setup = model::Setup {
        mode,
        profile,
        capacity,
    };
    let bytes = model::Op::encode_all(&setup, ops);
    assert_eq!(model::Op::decode_all(&bytes), (setup, ops.to_vec()));
    let mut checker = model::Checker::new(setup);
    for op in ops {
        checker.apply(op);
    }
    checker.drain();
    assert!(checker.accepted() > 0);
    bytes
}

fn model_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use model::Op::*;
    let post = |sint| Post {
        sint,
        hypervisor: false,
    };
    let isr = |sint| Isr {
        sint,
        how: How::Good,
    };
    let traffic = vec![
        post(0),
        post(0),
        post(0),
        post(1),
        Signal { sint: 1, flag: 7 },
        Signal { sint: 1, flag: 7 },
        isr(0),
        isr(0),
        Isr {
            sint: 1,
            how: How::NoEom,
        },
        Ack { sint: 1 },
        Post {
            sint: 2,
            hypervisor: true,
        },
        ClearFlags { sint: 1 },
        Eom,
        SaveRestore,
        isr(0),
    ];
    let mut hostile_pages = Vec::new();
    for page in 0..PAGES.len() as u8 {
        hostile_pages.extend([
            SetSimp { page },
            post(3),
            Siefp {
                page: page % SIEFP_PAGES.len() as u8,
                enabled: true,
            },
            Signal { sint: 3, flag: 40 },
            Signal { sint: 3, flag: 0 },
            isr(3),
        ]);
    }
    hostile_pages.extend([
        DisableSimp,
        post(3),
        Reset,
        post(16),
        Signal {
            sint: 0,
            flag: 2048,
        },
    ]);
    let slot_games = vec![
        post(0),
        post(0),
        Poke {
            sint: 0,
            offset: 5,
            value: 0,
        },
        Poke {
            sint: 0,
            offset: 0,
            value: 0,
        },
        Eom,
        Scribble {
            sint: 0,
            ty: 0x7777_0001,
            byte: 1,
        },
        post(0),
        Poke {
            sint: 0,
            offset: 5,
            value: 1,
        },
        Isr {
            sint: 0,
            how: How::Peek,
        },
        isr(0),
        isr(0),
    ];
    let registers = vec![
        post(2),
        Wrmsr {
            index: index::SINT0 + 2,
            value: 0x0F,
        },
        Wrmsr {
            index: index::SIMP,
            value: 0x3_0FFF,
        },
        SintConfig {
            sint: 2,
            masked: true,
            polling: false,
            auto_eoi: true,
        },
        post(2),
        Scontrol { enabled: false },
        post(2),
        Wrmsr {
            index: index::EOM,
            value: 1,
        },
        Scontrol { enabled: true },
        Wrmsr {
            index: index::SIEFP,
            value: u64::MAX,
        },
        Signal { sint: 2, flag: 1 },
        isr(2),
    ];
    let timers = vec![
        Wrmsr {
            index: index::STIMER0_COUNT,
            value: 5_000,
        },
        Wrmsr {
            index: index::STIMER0_CONFIG,
            value: 0x1_0003, // enabled, periodic, SINT1
        },
        post(1),
        Tick { ticks: 20_000 },
        isr(1),
        Wrmsr {
            index: index::STIMER0_CONFIG + 2,
            value: 0x1_0F09, // enabled one-shot, AutoEnable, vector 0xF0 (direct bit clear)
        },
        Wrmsr {
            index: index::STIMER3_COUNT,
            value: 1,
        },
        SaveRestore,
        Tick { ticks: 40_000 },
        isr(1),
        isr(1),
        Eom,
    ];
    vec![
        (
            "tlfs-timers",
            model_seed(Mode::Userspace, Profile::Tlfs, 2, &timers),
        ),
        (
            "kvm-timers",
            model_seed(Mode::Userspace, Profile::Kvm, 1, &timers),
        ),
        (
            "tlfs-traffic",
            model_seed(Mode::Userspace, Profile::Tlfs, 2, &traffic),
        ),
        (
            "kernel-traffic",
            model_seed(Mode::Kernel, Profile::Kvm, 1, &traffic),
        ),
        (
            "tlfs-hostile-pages",
            model_seed(Mode::Userspace, Profile::Tlfs, 3, &hostile_pages),
        ),
        (
            "kvm-hostile-pages",
            model_seed(Mode::Userspace, Profile::Kvm, 3, &hostile_pages),
        ),
        (
            "kvm-slot-games",
            model_seed(Mode::Userspace, Profile::Kvm, 4, &slot_games),
        ),
        (
            "tlfs-registers",
            model_seed(Mode::Userspace, Profile::Tlfs, 2, &registers),
        ),
        (
            "kernel-registers",
            model_seed(Mode::Kernel, Profile::Kvm, 2, &registers),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// hypercall

fn hypercall_seed(case: Case) -> Vec<u8> {
    let bytes = case.encode();
    assert_eq!(Case::decode(&bytes), case);
    case.run().unwrap();
    bytes
}

fn hypercall_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let call = |control, input, header, fill| {
        Step::Call(Call {
            control,
            input,
            header,
            fill,
        })
    };
    let statuses = vec![
        call(0x5C, 0x2000, [1, 0, 7, 24], 0xA5),
        call(0x5C, 0x2000, [0xFF_FFFF, 0, 7, 240], 1),
        call(0x5C, 0x2000, [1, 0, 7, 241], 1),
        call(0x5C, 0x2000, [1, 0, 0x8000_0010, 0], 1),
        call(0x5C, 0x2004, [1, 0, 7, 0], 1),
        call(0x5C, 0x2F08, [1, 0, 7, 0], 1),
        call(0x5C, 0x2000, [0x0100_0001, 0, 7, 0], 1),
        call(0x5D, 0x3000, [2, 5, 0, 0], 0),
        call(0x1_005D, 0, [0xFF_FFFF, 7, 0, 0], 0),
        call(0x5D, 0x3000, [2, 1 << 16, 0, 0], 0),
        call(0x5D | 1 << 27, 0x3000, [2, 0, 0, 0], 0),
        call(0x5D | 1 << 32, 0x3000, [2, 0, 0, 0], 0),
        call(0x5E, 0x3000, [2, 0, 0, 0], 0),
        call(0x1_005C, 0x3000, [1, 0, 7, 0], 0),
        Step::GuestIsr,
    ];
    let mut seeds = vec![(
        "statuses",
        hypercall_seed(Case {
            layout: 0,
            steps: statuses,
        }),
    )];
    let names = ["edges-0", "edges-1", "edges-2", "edges-3", "edges-4"];
    for (layout, name) in names.into_iter().enumerate() {
        let regions = hypercall::LAYOUTS[layout];
        let steps = hypercall::interesting_gpas(regions)
            .into_iter()
            .flat_map(|gpa| {
                [
                    call(0x5C, gpa, [1, 0, 9, 16], 3),
                    call(0x5D, gpa, [2, 3, 0, 0], 0),
                    Step::GuestIsr,
                ]
            })
            .collect();
        seeds.push((
            name,
            hypercall_seed(Case {
                layout: layout as u8,
                steps,
            }),
        ));
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// routing_ops: the byte scheme of `synic_routing::ops::Op::decode_all`, after a config byte
// (bits 1:0 table size 8/30/64/4096, bit 2 Hyper-V, bit 3 keep KVM's default routes).

fn encode_route(route: &Route, out: &mut Vec<u8>) {
    match *route {
        Route::HvSint { vp, sint } => out.extend_from_slice(&[0, vp.0 as u8, sint.get()]),
        Route::Msi(m) => {
            let devid = m.devid.map_or(0, |d| (d as u8) << 1 | 1);
            out.extend_from_slice(&[1, devid, (m.address >> 12) as u8, m.data as u8]);
        }
        Route::Irqchip { chip, pin } => {
            let chip = match chip {
                IrqChip::PicMaster => 0,
                IrqChip::PicSlave => 1,
                IrqChip::Ioapic => 2,
            };
            out.extend_from_slice(&[2, chip, pin as u8]);
        }
    }
}

fn encode_route_op(op: &RouteOp, out: &mut Vec<u8>) {
    let u16le = |v: u16, out: &mut Vec<u8>| out.extend_from_slice(&v.to_le_bytes());
    match op {
        RouteOp::Add(r) => {
            out.push(0);
            encode_route(r, out);
        }
        RouteOp::AddAt(g, r) => {
            out.push(1);
            u16le(g.0 as u16, out);
            encode_route(r, out);
        }
        RouteOp::Set { pick, route } => {
            out.push(2);
            u16le(*pick, out);
            encode_route(route, out);
        }
        RouteOp::Release { pick } => {
            out.push(3);
            u16le(*pick, out);
        }
        RouteOp::ReleaseRaw(g) => {
            out.push(4);
            u16le(g.0 as u16, out);
        }
        RouteOp::ReleaseBestEffort { pick } => {
            out.push(5);
            u16le(*pick, out);
        }
        RouteOp::Batch { ops, abort } => {
            out.extend_from_slice(&[6, ops.len() as u8, u8::from(*abort)]);
            for op in ops {
                encode_route_op(op, out);
            }
        }
        RouteOp::Commit => out.push(7),
        RouteOp::FailNextCommit => out.push(8),
        RouteOp::MarkSynicActive(vp) => {
            out.push(9);
            out.extend_from_slice(&vp.0.to_le_bytes());
        }
    }
}

fn routing_seed(config: u8, ops: &[RouteOp]) -> Vec<u8> {
    let mut bytes = vec![config];
    for op in ops {
        encode_route_op(op, &mut bytes);
    }
    assert_eq!(RouteOp::decode_all(&bytes[1..]), ops);
    let limit = [8, 30, 64, 4096][usize::from(config & 3)];
    let defaults = if config & 8 != 0 {
        DefaultRoutes::Keep
    } else {
        DefaultRoutes::Discard
    };
    let mut checker = OpChecker::new(limit, config & 4 != 0, defaults);
    for op in ops {
        checker.apply(op).unwrap();
    }
    bytes
}

fn routing_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let sint = |vp, s| Route::HvSint {
        vp: VpIndex(vp),
        sint: SintIndex::new(s).unwrap(),
    };
    let msi = |dest: u64, vector| {
        Route::Msi(MsiRoute {
            address: 0xFEE0_0000 | dest << 12,
            data: vector,
            devid: None,
        })
    };
    let ops = vec![
        RouteOp::MarkSynicActive(VpIndex(0)),
        RouteOp::Add(sint(0, 2)),
        RouteOp::Add(sint(1, 2)),
        RouteOp::Add(msi(1, 0x40)),
        RouteOp::AddAt(Gsi(5), msi(0, 0x41)),
        RouteOp::Set {
            pick: 1,
            route: Route::Irqchip {
                chip: IrqChip::Ioapic,
                pin: 23,
            },
        },
        RouteOp::Release { pick: 0 },
        RouteOp::ReleaseRaw(Gsi(4100)),
        RouteOp::Batch {
            ops: vec![RouteOp::Add(msi(2, 0x50)), RouteOp::Release { pick: 1 }],
            abort: true,
        },
        RouteOp::FailNextCommit,
        RouteOp::Add(msi(3, 0x51)),
        RouteOp::Commit,
        RouteOp::ReleaseBestEffort { pick: 2 },
        RouteOp::Batch {
            ops: vec![
                RouteOp::Add(Route::Irqchip {
                    chip: IrqChip::PicSlave,
                    pin: 31,
                }),
                RouteOp::Add(msi(4, 0x52)),
            ],
            abort: false,
        },
    ];
    let exhaust: Vec<_> = (0..10).map(|v| RouteOp::Add(msi(v, 0x60))).collect();
    vec![
        ("mixed-hyperv", routing_seed(0b0101, &ops)),
        ("mixed-keep-defaults", routing_seed(0b1011, &ops)),
        ("exhaust", routing_seed(0b0000, &exhaust)),
    ]
}

#[test]
fn fuzz_seeds_decode_pass_and_are_current() {
    sync("msr_access", &msr_seeds());
    sync("synic_model", &model_seeds());
    sync("hypercall", &hypercall_seeds());
    sync("routing_ops", &routing_seeds());
}
