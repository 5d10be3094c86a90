//! Shared by the hostile-guest tests (`tests/tests/hostile_*.rs`).

#![allow(dead_code)]

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use synic_e2e::layout;
use synic_e2e::Setup;
use synic_vmm::GuestMemory;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// vCPU 0's area (its SIMP, SIEFP, hypercall input and state pages).
pub const AREA0: u64 = layout::area(0);
/// vCPU 0's message page.
pub const SIMP0: u64 = AREA0 + layout::SIMP;
/// vCPU 0's event-flags page.
pub const SIEFP0: u64 = AREA0 + layout::SIEFP;

/// One `#[test]` per userspace setup (TLFS and KVM register semantics), each calling
/// `$scenario(setup)`. Kernel mode is KVM's own register file: what a hostile guest does to it
/// is KVM's to answer (the library's part there, any page KVM reports, is fuzzed by
/// `synic_model`).
#[macro_export]
macro_rules! userspace_setups {
    ($($name:ident => $scenario:path;)*) => {
        $(
            mod $name {
                use super::*;

                #[test]
                fn tlfs() {
                    let test = concat!(stringify!($name), "::tlfs");
                    if synic_e2e::Setup::USERSPACE.available(test) {
                        $scenario(synic_e2e::Setup::USERSPACE);
                    }
                }

                #[test]
                fn kvm_profile() {
                    let test = concat!(stringify!($name), "::kvm_profile");
                    if synic_e2e::Setup::USERSPACE_KVM.available(test) {
                        $scenario(synic_e2e::Setup::USERSPACE_KVM);
                    }
                }
            }
        )*
    };
}

/// True for the TLFS profile.
pub fn tlfs(setup: Setup) -> bool {
    setup.profile == synic_msr::Profile::Tlfs
}

/// Guest pages the host wrote (through guest memory's dirty bitmap) since [`clear_dirty`].
/// The guest's own stores go straight to the mapping and are not counted.
pub fn dirty_pages(mem: &GuestMemory) -> Vec<u64> {
    let mut out = Vec::new();
    for region in mem.iter() {
        let bitmap: &AtomicBitmap = Deref::deref(region).bitmap();
        for page in (0..region.len()).step_by(0x1000) {
            if bitmap.is_addr_set(page as usize) {
                out.push(region.start_addr().0 + page);
            }
        }
    }
    out
}

/// Forgets which pages the host wrote.
pub fn clear_dirty(mem: &GuestMemory) {
    for region in mem.iter() {
        let bitmap: &AtomicBitmap = Deref::deref(region).bitmap();
        bitmap.reset();
    }
}

/// Panics unless every page the host wrote since [`clear_dirty`] is in `allowed`.
pub fn assert_wrote_only(mem: &GuestMemory, allowed: &[u64], when: &str) {
    let stray: Vec<String> = dirty_pages(mem)
        .into_iter()
        .filter(|p| !allowed.contains(p))
        .map(|p| format!("{p:#x}"))
        .collect();
    assert!(
        stray.is_empty(),
        "{when}: the host wrote pages {stray:?} (allowed: {allowed:#x?})"
    );
}

/// A log the host's step actions append to and the test reads afterwards.
#[derive(Debug)]
pub struct Record<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Record<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Clone> Record<T> {
    /// An empty record.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }

    /// Appends `v`.
    pub fn push(&self, v: T) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(v);
    }

    /// Everything so far.
    pub fn get(&self) -> Vec<T> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
