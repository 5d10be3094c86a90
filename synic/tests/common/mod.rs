//! The simulated guest the tests share lives in the library (`synic::fuzzing::guest`, feature
//! `fuzzing`, enabled for the tests by the crate's own dev-dependency), so the fuzz targets use
//! the same one. `Harness` is wrapped here so that test binaries can add their own methods.

#![allow(dead_code, unused_imports)]

use std::ops::{Deref, DerefMut};

use synic::PartitionConfig;
use synic_msr::Profile;

pub use synic::fuzzing::guest::{
    clear_dirty, dirty_pages, guest_free_slot, guest_slot_type, guest_take_slot, guest_write,
    guest_write_byte, id_of, msg, new_memory, siefp_gpa, simp_gpa, sint, vector, with_guest_word,
    Mem, Space, RAM_SIZE,
};

/// The library's harness, with this test binary's extra methods.
#[derive(Debug)]
pub struct Harness(pub synic::fuzzing::guest::Harness);

impl Harness {
    pub fn with_config(config: PartitionConfig) -> Self {
        Self(synic::fuzzing::guest::Harness::with_config(config))
    }

    pub fn with_memory(config: PartitionConfig, mem: Space) -> Self {
        Self(synic::fuzzing::guest::Harness::with_memory(config, mem))
    }

    /// Userspace mode, `profile`, 2 VPs, queue capacity 4.
    pub fn new(profile: Profile) -> Self {
        Self(synic::fuzzing::guest::Harness::new(profile))
    }

    /// TLFS userspace partition with VP 0 fully enabled.
    pub fn enabled() -> Self {
        Self(synic::fuzzing::guest::Harness::enabled())
    }
}

impl Deref for Harness {
    type Target = synic::fuzzing::guest::Harness;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
