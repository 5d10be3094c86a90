//! The SynIC model under an operation stream from a sometimes hostile guest and the host
//! (`synic::fuzzing::Checker`): posts, event signals, MSR writes of any value, EOMs, acks,
//! scribbles and pokes on the guest pages, page moves onto hostile addresses, save/restore,
//! reset. After each step: no accepted message lost, duplicated or reordered, host writes
//! only inside the enabled pages, refusals as predicted; at the end a well-behaved guest
//! receives every accepted message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synic::fuzzing::{Checker, Op};

fuzz_target!(|data: &[u8]| {
    let (setup, ops) = Op::decode_all(data);
    let mut checker = Checker::new(setup);
    for op in &ops {
        checker.apply(op);
    }
    checker.drain();
});
