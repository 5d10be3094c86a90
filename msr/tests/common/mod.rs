//! Shared by the property tests: the modelled indices, edge-biased generators and the case
//! count.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm};
use synic_msr::Origin;

/// The 33 modelled indices.
pub const KNOWN: [u32; 33] = {
    let mut all = [0u32; 33];
    let fixed = [
        0x4000_0000,
        0x4000_0001,
        0x4000_0002,
        0x4000_0020,
        0x4000_0080,
        0x4000_0081,
        0x4000_0082,
        0x4000_0083,
        0x4000_0084,
    ];
    let mut i = 0;
    while i < 9 {
        all[i] = fixed[i];
        i += 1;
    }
    while i < 25 {
        all[i] = 0x4000_0090 + (i as u32 - 9);
        i += 1;
    }
    while i < 33 {
        all[i] = 0x4000_00B0 + (i as u32 - 25);
        i += 1;
    }
    all
};

pub fn origin() -> BoxedStrategy<Origin> {
    prop_oneof![Just(Origin::Guest), Just(Origin::Host)].boxed()
}

pub fn index() -> BoxedStrategy<u32> {
    prop_oneof![
        5 => select(KNOWN.to_vec()),
        // GUEST_OS_ID and HYPERCALL more often, so the hypercall rules get exercised.
        1 => select(vec![0x4000_0000u32, 0x4000_0001]),
        3 => 0x4000_0000u32..=0x4000_00FF,
        1 => select(vec![
            0u32,
            0x3FFF_FFFF,
            0x4000_0100,
            0x4000_0180,
            0x4001_0080,
            0x8000_0080,
            0xC000_0080,
            u32::MAX,
        ]),
    ]
    .boxed()
}

/// Page-register-shaped values around the interesting address widths.
pub fn page_value() -> BoxedStrategy<u64> {
    let bases = vec![
        0u64,
        0x1000,
        0x5000,
        (1 << 36) - 0x1000,
        1 << 36,
        (1 << 39) - 0x1000,
        1 << 39,
        (1 << 46) - 0x1000,
        1 << 48,
        (1 << 52) - 0x1000,
        1 << 52,
        (1 << 52) + 0x1000,
        1 << 63,
        !0xFFF,
    ];
    (select(bases), select(vec![0u64, 1, 2, 3, 0xFFE, 0xFFF]))
        .prop_map(|(b, low)| b | low)
        .boxed()
}

pub fn sint_value() -> BoxedStrategy<u64> {
    let vector = prop_oneof![0u64..=16, Just(255u64), 0u64..=255];
    let reserved =
        prop_oneof![3 => Just(0u64), 1 => select(vec![0xFF00u64, 1 << 19, 1 << 63, !0x7_00FF])];
    (vector, 0u64..8, reserved)
        .prop_map(|(v, flags, r)| v | flags << 16 | r)
        .boxed()
}

pub fn stimer_config_value() -> BoxedStrategy<u64> {
    let sintx = prop_oneof![Just(0u64), 0u64..16];
    let reserved = prop_oneof![4 => Just(0u64), 1 => select(vec![1u64 << 13, 1 << 15, 1 << 20, 1 << 63, !0xF_1FFF])];
    (0u64..16, any::<u8>(), any::<bool>(), sintx, reserved)
        .prop_map(|(low, vector, direct, sintx, r)| {
            low | u64::from(vector) << 4 | u64::from(direct) << 12 | sintx << 16 | r
        })
        .boxed()
}

pub fn value() -> BoxedStrategy<u64> {
    let edges = vec![
        0u64,
        1,
        2,
        u64::MAX,
        !1,
        0xFFE,
        !0xFFE,
        0xFFC,
        !0xFFC,
        0x7_00FF,
        !0x7_00FF,
        0xF_1FFF,
        !0xF_1FFF,
        0x1_0000,
        0x1_0000_0001,
        4095,
        4096,
        0xFFFF_FFFE,
        0xFFFF_FFFF,
        1 << 63,
    ];
    prop_oneof![
        3 => select(edges),
        2 => (0u32..64).prop_map(|b| 1u64 << b),
        3 => sint_value(),
        3 => page_value(),
        3 => stimer_config_value(),
        1 => 0u64..1000,
        2 => any::<u64>(),
    ]
    .boxed()
}

/// Number of cases: `SYNIC_PROPTEST_CASES`, else 10 000.
pub fn cases() -> u32 {
    std::env::var("SYNIC_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

/// The proptest configuration for `cases` cases.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        max_shrink_iters: 20_000,
        // ChaCha dominates the run time of an unoptimised test build; XorShift is plenty here.
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    }
}
