//! One test per delivery rule, through the public API, over real guest memory.

#[path = "../common/mod.rs"]
mod common;

mod events;
mod kernel;
mod messages;
mod msrs;
mod overlays;
mod reference_tsc;
mod state;
