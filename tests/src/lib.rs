//! End-to-end tests of the SynIC library on real KVM: real x86 guest code (assembled in Rust
//! with the VMM's guest toolkit) enables its SynIC through MSRs, takes messages and event flags
//! in interrupt handlers that follow the TLFS protocol, and calls HvPostMessage/HvSignalEvent.
//!
//! * [`SynicGuest`] adds SynIC building blocks to the toolkit ([`guest`] and its interrupt handlers) on a
//!   per-vCPU memory layout ([`layout`]).
//! * [`Setup`] says which SynIC the guest runs against: userspace mode (this library owns the
//!   registers) or kernel mode (KVM's in-kernel SynIC). Every scenario takes one, so the same
//!   guest program and assertions prove both.
//! * [`GuestView`] reads back what the guest recorded.

#![deny(missing_docs)]

pub mod guest;
mod handlers;
pub mod harness;
pub mod layout;
pub mod scenarios;
pub mod setup;
pub mod view;

pub use guest::{Eoi, PostInput, SintValue, SynicGuest, SynicProgram};
pub use harness::{run, Finished, Host, Prepared, Running, VmSpec, RUN_LIMIT};
pub use setup::{Mode, Setup};
pub use view::{GuestView, Logged};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_with_every_handler_kind_assembles() {
        let mut g = SynicGuest::new().unwrap();
        g.message_isr(layout::vector(0), 0, Eoi::Apic).unwrap();
        g.message_isr(layout::vector(1), 1, Eoi::Auto).unwrap();
        g.flags_isr(layout::vector(2), 2).unwrap();
        g.flags_and_message_isr(layout::vector(3), 3).unwrap();
        g.synic_up(&[(0, SintValue::vector(layout::vector(0)))])
            .unwrap();
        g.enable_hypercalls().unwrap();
        g.post_message(PostInput::new(1, 240, 7)).unwrap();
        g.signal_event_fast(2, 0).unwrap();
        g.signal_event_memory(2, 0, 8).unwrap();
        g.poll_message(4).unwrap();
        g.step(1).unwrap();
        g.settle().unwrap();
        g.wait_messages(3).unwrap();
        g.exit_ok().unwrap();
        let p = g.build().unwrap();
        assert_eq!(p.vectors(), vec![0x50, 0x51, 0x52, 0x53]);
        assert!(g_rejects_bad_handlers());
    }

    fn g_rejects_bad_handlers() -> bool {
        let mut g = SynicGuest::new().unwrap();
        g.message_isr(0x10, 0, Eoi::Apic).is_err() && g.flags_isr(0x60, 16).is_err()
    }

    #[test]
    fn sint_values_encode_the_tlfs_layout() {
        let v = SintValue {
            vector: 0x42,
            masked: true,
            auto_eoi: true,
            polling: true,
        };
        assert_eq!(v.raw(), 0x7_0042);
        assert_eq!(SintValue::vector(0x50).raw(), 0x50);
    }
}
