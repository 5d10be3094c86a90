//! synic-kvm over `GuestMemoryAtomic`, as a VMM with memory hotplug has it: the SynIC follows
//! the guest's memory map as it changes. A post to a message page enabled where there is no
//! RAM yet is refused with the message given back; once the region is hot-added and the page
//! enabled again, the same post delivers into it; after the page moves back and the region is removed, delivery goes on. Driven through `VcpuSynic`'s value-level handlers (no guest needed), on a real
//! KVM VM for the routes.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use synic::{HvMessage, MessageType, Posted, VpIndex};
use synic_kvm::{Capabilities, ModeRequest, SynicMode, VmSynicBuilder};
use synic_msr::index::{SCONTROL, SIMP, SINT0};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
};

const LOW: u64 = 0x10_0000;
const HOT: u64 = 0x1000_0000;

fn kvm() -> Option<Kvm> {
    synic::testing::kvm_available("the_synic_follows_hotplugged_memory")
        .then(|| Kvm::new().expect("opening /dev/kvm"))
}

#[test]
fn the_synic_follows_hotplugged_memory() {
    let Some(kvm) = kvm() else { return };
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    let mode = Capabilities::probe(&kvm, &vm)
        .choose_mode(ModeRequest::Userspace)
        .unwrap();
    assert_eq!(mode, SynicMode::Userspace);
    synic_kvm::setup_vm(&vm, mode).unwrap();
    let memory = GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), LOW as usize)]).unwrap(),
    );
    let synic = VmSynicBuilder::new(mode, 1)
        .build(Arc::clone(&vm), memory.clone())
        .unwrap();
    let vcpu = synic.vcpu(0).unwrap();
    vcpu.wrmsr(SCONTROL, 1).unwrap();
    vcpu.wrmsr(SINT0 + 2, 0x40).unwrap();
    let msg = |n: u64| HvMessage::new(MessageType(1), 0, &n.to_le_bytes()).unwrap();
    let slot_payload = |page: u64| -> u64 {
        memory
            .memory()
            .read_obj(GuestAddress(page + 2 * 256 + 16))
            .unwrap()
    };
    let post = |n: u64| {
        synic
            .partition()
            .post_message(VpIndex(0), 2u32, msg(n))
            .map_err(Box::new)
    };

    // The message page is enabled where there is no RAM yet: a post is refused with the
    // message given back.
    vcpu.wrmsr(SIMP, HOT | 1).unwrap();
    let early = post(7).unwrap_err();
    assert_eq!(early.error, synic::Error::PageNotInRam { gpa: HOT });

    // Hot-add the region. The overlay stays unbacked until the guest disables and enables the
    // page again (docs/synic-design.md, "Overlay pages"); then the same page takes the message.
    {
        let region = GuestRegionMmap::<()>::from_range(GuestAddress(HOT), 0x10_0000, None).unwrap();
        let grown = memory.memory().insert_region(Arc::new(region)).unwrap();
        memory.lock().unwrap().replace(grown);
    }
    vcpu.wrmsr(SIMP, 0).unwrap();
    vcpu.wrmsr(SIMP, HOT | 1).unwrap();
    let retried = synic
        .partition()
        .post_message(VpIndex(0), 2u32, early.message);
    assert_eq!(retried, Ok(Posted::Delivered));
    assert_eq!(slot_payload(HOT), 7);

    // Back to low memory (the moved page keeps its content: an overlay), then the hot region
    // goes away; delivery goes on in low memory.
    vcpu.wrmsr(SIMP, 0x5000 | 1).unwrap();
    {
        let (shrunk, _) = memory
            .memory()
            .remove_region(GuestAddress(HOT), 0x10_0000)
            .unwrap();
        memory.lock().unwrap().replace(shrunk);
    }
    // Free the slot as a guest would, then post again.
    memory
        .memory()
        .write_obj(0u32, GuestAddress(0x5000 + 2 * 256))
        .unwrap();
    assert_eq!(post(8), Ok(Posted::Delivered));
    assert_eq!(slot_payload(0x5000), 8);
}
