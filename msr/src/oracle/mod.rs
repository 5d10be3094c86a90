//! A reference oracle for the register semantics, shared by the property tests and the fuzz
//! targets (feature `oracle`; not part of the stable API).
//!
//! [`Model`] is a second, deliberately plain implementation of `docs/msr-semantics.md`; it
//! never calls the crate's logic. [`Op`] is one step (a guest or host read or write of any
//! index, activation, reset, the timer layer's enable switch, the reference clock), and
//! [`Op::decode_all`] makes a [`Setup`] and steps out of arbitrary bytes. [`Checker`] runs the
//! steps against [`VpRegisters`](crate::VpRegisters) and
//! [`PartitionRegisters`](crate::PartitionRegisters) and the model, and reports the first
//! disagreement.
//!
//! ```
//! use synic_msr::oracle::{Checker, Op};
//! let (setup, ops) = Op::decode_all(b"any bytes at all decode to some steps");
//! let mut checker = Checker::new(&setup);
//! for op in &ops {
//!     checker.apply(op).unwrap();
//! }
//! ```

mod checker;
mod model;
mod op;
mod reader;

pub use checker::Checker;
pub use model::{timer_index, Act, Model, Via, WriteResult};
pub use op::{
    Op, Setup, EDGE_VALUES, KNOWN, ODD_INDICES, ODD_VP_INDICES, PAGE_BASES, PAGE_LOW_BITS,
    PHYS_ADDR_BITS, SINT_RESERVED, STIMER_RESERVED,
};
pub use reader::ByteReader;
