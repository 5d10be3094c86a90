//! MSR access sequences against `synic-msr`, checked step by step against the reference
//! oracle (`synic_msr::oracle`): same answer (value, #GP reason, outcome) for every access and
//! the same guest and host view of every register afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synic_msr::oracle::{Checker, Op};

fuzz_target!(|data: &[u8]| {
    let (setup, ops) = Op::decode_all(data);
    let mut checker = Checker::new(&setup);
    for op in &ops {
        if let Err(divergence) = checker.apply(op) {
            panic!("{setup:?}: {divergence}");
        }
    }
});
