//! The scenarios: each takes a [`crate::Setup`], builds its guest program, runs it and asserts
//! the outcome that setup must give. Test functions call them once per mode.

pub mod enlightenments;
pub mod events;
pub mod hypercalls;
pub mod messages;
pub mod msrs;
pub mod overlays;
pub mod reference_tsc;
pub mod save_restore;
