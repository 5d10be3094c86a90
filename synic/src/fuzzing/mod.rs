//! The model checker and simulated guest shared by the property tests and the fuzz targets
//! (feature `fuzzing`; not part of the stable API).
//!
//! * [`guest`]: a partition over mmap'd guest RAM with dirty tracking, a recording raise and
//!   a fake clock, and the guest-side accesses (slot reads, the TLFS ISR's slot release).
//! * [`Op`] is one step of a (sometimes hostile) guest or of the host: posts, event signals,
//!   MSR writes of any value, EOMs, acks, scribbles and pokes on the guest pages, page moves
//!   onto hostile addresses, synthetic timers programmed with any value while the clock
//!   moves, save/restore, reset. [`Op::decode_all`] makes steps out of
//!   arbitrary bytes.
//! * [`Checker`] applies steps and checks after each one: no accepted message lost,
//!   duplicated or reordered; every accepted message accounted for (received, in the slot,
//!   queued, or handed back by a reset); a queued message always sits behind a slot with
//!   MessagePending unless the guest broke the protocol; interrupts match deliveries and flag
//!   sets; the host wrote no page but the enabled message and event-flags pages; refusals are
//!   the precise errors the rules predict. [`Checker::drain`] then repairs the guest and
//!   checks that every accepted message arrives.
//! * [`hypercall`]: an independent decoder for HvPostMessage/HvSignalEvent input over
//!   arbitrary guest memory layouts, checked against [`crate::hypercall::decode`] and
//!   [`crate::hypercall::handle`].
//!
//! ```
//! use synic::fuzzing::{Checker, Op};
//! let (setup, ops) = Op::decode_all(b"any bytes at all decode to some steps");
//! let mut checker = Checker::new(setup);
//! for op in &ops {
//!     checker.apply(op);
//! }
//! checker.drain();
//! ```

mod checker;
mod covers;
pub mod guest;
pub mod hypercall;
mod op;

pub use checker::{Checker, MAGIC};
pub use op::{
    Isr, Op, Setup, EDGE_VALUES, FLAGS, INVALID_FLAGS, INVALID_SINTS, PAGES, PAGE_LOW_BITS,
    SCRIBBLE_TYPES, SETUPS, SIEFP_PAGES, SINTS, SINT_RESERVED, WRMSR_INDICES,
};
