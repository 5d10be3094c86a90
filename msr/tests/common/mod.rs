//! Shared by the property tests: the modelled indices, edge-biased generators and the case
//! count.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm};
use synic_msr::oracle::{
    EDGE_VALUES, ODD_INDICES, PAGE_BASES, PAGE_LOW_BITS, SINT_RESERVED, STIMER_RESERVED,
};
use synic_msr::Origin;

/// The 33 modelled indices.
pub use synic_msr::oracle::KNOWN;

pub fn origin() -> BoxedStrategy<Origin> {
    prop_oneof![Just(Origin::Guest), Just(Origin::Host)].boxed()
}

pub fn index() -> BoxedStrategy<u32> {
    prop_oneof![
        5 => select(KNOWN.to_vec()),
        // GUEST_OS_ID and HYPERCALL more often, so the hypercall rules get exercised.
        1 => select(vec![0x4000_0000u32, 0x4000_0001]),
        3 => 0x4000_0000u32..=0x4000_00FF,
        1 => select(ODD_INDICES.to_vec()),
    ]
    .boxed()
}

/// Page-register-shaped values around the interesting address widths.
pub fn page_value() -> BoxedStrategy<u64> {
    (select(PAGE_BASES.to_vec()), select(PAGE_LOW_BITS.to_vec()))
        .prop_map(|(b, low)| b | low)
        .boxed()
}

pub fn sint_value() -> BoxedStrategy<u64> {
    let vector = prop_oneof![0u64..=16, Just(255u64), 0u64..=255];
    let reserved = prop_oneof![3 => Just(0u64), 1 => select(SINT_RESERVED[1..].to_vec())];
    (vector, 0u64..8, reserved)
        .prop_map(|(v, flags, r)| v | flags << 16 | r)
        .boxed()
}

pub fn stimer_config_value() -> BoxedStrategy<u64> {
    let sintx = prop_oneof![Just(0u64), 0u64..16];
    let reserved = prop_oneof![4 => Just(0u64), 1 => select(STIMER_RESERVED[1..].to_vec())];
    (0u64..16, any::<u8>(), any::<bool>(), sintx, reserved)
        .prop_map(|(low, vector, direct, sintx, r)| {
            low | u64::from(vector) << 4 | u64::from(direct) << 12 | sintx << 16 | r
        })
        .boxed()
}

pub fn value() -> BoxedStrategy<u64> {
    prop_oneof![
        3 => select(EDGE_VALUES.to_vec()),
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
