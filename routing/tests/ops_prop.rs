//! Property test: random operation sequences keep the table, the fake kernel and a reference
//! model in agreement (the same `Op`s a fuzz target decodes from bytes).

use proptest::prelude::*;
use synic_routing::ops::{Op, OpChecker};
use synic_routing::DefaultRoutes;

fn check(bytes: &[u8], limit: u32, hyperv: bool, defaults: DefaultRoutes) -> Result<(), String> {
    let mut checker = OpChecker::new(limit, hyperv, defaults);
    for op in Op::decode_all(bytes) {
        checker.apply(&op)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn table_matches_model_and_kernel(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        limit in prop_oneof![Just(8u32), Just(30), Just(64), Just(4096)],
        hyperv in any::<bool>(),
        keep in any::<bool>(),
    ) {
        let defaults = if keep { DefaultRoutes::Keep } else { DefaultRoutes::Discard };
        if let Err(divergence) = check(&bytes, limit, hyperv, defaults) {
            return Err(TestCaseError::fail(divergence));
        }
    }
}

#[test]
fn decoding_is_total_and_deterministic() {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let a = Op::decode_all(&bytes);
    assert_eq!(a, Op::decode_all(&bytes));
    assert!(a.len() > 100);
    assert!(Op::decode_all(&[]).is_empty());
}

#[test]
fn checker_reports_exhaustion_consistently() {
    // 9 adds into an 8-GSI table: the ninth must fail the same way in model and table.
    let mut checker = OpChecker::new(8, true, DefaultRoutes::Discard);
    let add = Op::Add(synic_routing::Route::Msi(synic_routing::MsiRoute::fixed(
        0, 0x40,
    )));
    for _ in 0..9 {
        checker.apply(&add).unwrap();
    }
    assert_eq!(checker.table().stats().gsis_in_use, 8);
}
