//! Guest RAM: one anonymous mapping from vm-memory, with a dirty bitmap, registered as KVM slot 0.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{kvm_err, Error, Result};
use crate::layout::{MAX_MEM_SIZE, MIN_MEM_SIZE};

/// Guest RAM. The bitmap records every page the host writes through vm-memory (message and
/// event-flag pages, loaded images), for a future dirty-page log or snapshot.
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// Allocates `size` bytes of RAM at guest-physical 0.
pub fn allocate(size: u64) -> Result<GuestMemory> {
    if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&size) || size & 0xFFF != 0 {
        return Err(Error::Config(format!(
            "memory size {size:#x} must be a multiple of 4 KiB in {MIN_MEM_SIZE:#x}..={MAX_MEM_SIZE:#x}"
        )));
    }
    let len = usize::try_from(size)
        .map_err(|_| Error::Config(format!("memory size {size:#x} overflows usize")))?;
    Ok(GuestMemory::from_ranges(&[(GuestAddress(0), len)])?)
}

/// Registers every region of `memory` with KVM, one slot per region.
pub fn register(vm: &VmFd, memory: &GuestMemory) -> Result<()> {
    for (slot, region) in (0u32..).zip(memory.iter()) {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|source| Error::GuestMemory {
                what: "memory region",
                gpa: region.start_addr().0,
                source,
            })?;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live anonymous mapping owned by `memory`, which the `Vm`
        // keeps alive (through an `Arc`) for as long as the VM fd and its vCPUs exist; the
        // slot numbers are distinct.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
