//! The VMBus control plane and ring parsing (`synic_vmbus::sim::fuzz`): Linux-shaped and raw
//! channel messages, host actions, ring traffic with guest pokes into the ring headers and
//! data. The checker keeps the host's and the control plane's views of open channels equal,
//! every reply well-formed, the GPADL bounds, the host's accesses inside the rings' pages, and,
//! while nobody pokes, every packet delivered once, in order, intact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synic_vmbus::sim::fuzz::Case;

fuzz_target!(|data: &[u8]| {
    if let Err(divergence) = Case::decode(data).run() {
        panic!("{divergence}");
    }
});
