//! HvPostMessage / HvSignalEvent input decoding and validation over arbitrary guest memory
//! layouts (`synic::fuzzing::hypercall`): `synic::hypercall::decode` must agree with an
//! independent decoder written from docs/hypercalls.md, and `handle` must answer the status
//! the registered connections predict and deliver the message or flag where the port says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synic::fuzzing::hypercall::Case;

fuzz_target!(|data: &[u8]| {
    if let Err(divergence) = Case::decode(data).run() {
        panic!("{divergence}");
    }
});
