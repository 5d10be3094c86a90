//! A simulated Linux guest for tests and fuzzing: the messages `hv_vmbus` sends, Linux's ring
//! algorithms (guest side), and a guest that drives a [`crate::host::VmbusHost`] through a
//! real [`synic::Partition`] and hypercall [`synic::hypercall::Connections`], answering the
//! integration services the way `hv_utils` and `hv_kvp_daemon` do.

pub mod fuzz;
pub mod guest;
pub mod messages;
pub mod ring;

pub use guest::{SimGuest, SimGuestThread, SimMemory};
pub use ring::GuestRing;
