//! Routing-table operation sequences (allocate, set, release, batched transactions,
//! commits, injected commit failures) against the fake kernel and a reference model
//! (`synic_routing::ops::OpChecker`): the same answers, and after every successful commit
//! the kernel's table equals the shadow. The first bytes choose the table size, whether the
//! kernel has Hyper-V, and whether KVM's default routes are kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synic_routing::ops::{Op, OpChecker};
use synic_routing::DefaultRoutes;

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let limit = [8, 30, 64, 4096][usize::from(config & 3)];
    let hyperv = config & 4 != 0;
    let defaults = if config & 8 != 0 {
        DefaultRoutes::Keep
    } else {
        DefaultRoutes::Discard
    };
    let mut checker = OpChecker::new(limit, hyperv, defaults);
    for op in Op::decode_all(rest) {
        if let Err(divergence) = checker.apply(&op) {
            panic!("{op:?}: {divergence}");
        }
    }
});
