//! A VMM of its own on raw kvm-ioctls — `KVM_CREATE_VM`, irqchip, a memory region, a vCPU, its
//! own `KVM_RUN` loop — with the SynIC from synic-kvm. The guest (guest.rs) takes a message and
//! an event and answers with HvPostMessage; the host checks all of it and exits non-zero when
//! something is missing.
//!
//! ```sh
//! cargo run -p synic-kvm --example embed                 # kernel mode where KVM has it
//! cargo run -p synic-kvm --example embed -- userspace    # or force a mode
//! ```
//!
//! The lines between `synic-begin` and `synic-end` markers are everything an embedder writes
//! for the SynIC; the rest is the VMM it already has. `docs/embedding.md` walks through them.

mod guest;

use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};
use synic::{HvMessage, MessageType, VpIndex};
use synic_kvm::{cpuid, Capabilities, HostMessageConnection, HvFeatures, ModeRequest};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let request = match std::env::args().nth(1).as_deref() {
        Some("kernel") => ModeRequest::Kernel,
        Some("userspace") => ModeRequest::Userspace,
        _ => ModeRequest::Auto,
    };
    // A wedged guest must not hang CI.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("embed: FAIL: the guest did not finish within 60 s");
        std::process::exit(1);
    });

    // The VMM's own VM: fd, irqchip (step 1: before the probe), RAM, one vCPU.
    let kvm = Kvm::new()?;
    let vm = Arc::new(kvm.create_vm()?);
    vm.create_irq_chip()?;
    let memory = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(
        GuestAddress(0),
        guest::MEMORY,
    )])?);
    let host = memory.get_host_address(GuestAddress(0))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: guest::MEMORY as u64,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the region is `memory`'s live anonymous mapping of MEMORY bytes, and `memory`
    // outlives the VM (both live until the end of main).
    unsafe { vm.set_user_memory_region(region)? };
    let mut vcpu = vm.create_vcpu(0)?;
    let mut cpuid_table = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;

    // synic-begin: steps 1-3 (docs/embedding.md): mode, MSR exits, Hyper-V CPUID
    let mode = Capabilities::probe(&kvm, &vm).choose_mode(request)?;
    synic_kvm::setup_vm(&vm, mode)?;
    cpuid::apply(
        &mut cpuid_table,
        &cpuid::hyperv_leaves(HvFeatures::SYNIC, mode, 1),
    )?;
    // synic-end
    vcpu.set_cpuid2(&cpuid_table)?;
    // synic-begin: steps 4-7: SYNIC2 on the vCPU, the VM's SynIC, a connection, the vCPU's handler
    synic_kvm::setup_vcpu(&vcpu, mode)?;
    let synic =
        synic_kvm::VmSynicBuilder::new(mode, 1).build(Arc::clone(&vm), Arc::clone(&memory))?;
    let vcpu_synic = synic.vcpu(0)?;
    let (replies, reply_rx) = HostMessageConnection::new(4);
    synic.add_message_connection(guest::REPLY_CONNECTION, replies)?;
    // synic-end
    println!("embed: {mode:?} mode");

    // The guest: page tables, GDT, IDT, program, long mode at its entry.
    let (code, msg_isr, evt_isr) = guest::program()?;
    memory.write_slice(&code, GuestAddress(guest::CODE))?;
    for (gpa, entry) in guest::page_tables() {
        memory.write_obj(entry, GuestAddress(gpa))?;
    }
    for (i, entry) in (0u64..).zip(guest::GDT_ENTRIES) {
        memory.write_obj(entry, GuestAddress(guest::GDT + 8 * i))?;
    }
    for (vector, (low, high)) in guest::idt(msg_isr, evt_isr) {
        let at = guest::IDT + 16 * u64::from(vector);
        memory.write_obj(low, GuestAddress(at))?;
        memory.write_obj(high, GuestAddress(at + 8))?;
    }
    let mut sregs = vcpu.get_sregs()?;
    let segment = |selector, type_, l, db| kvm_bindings::kvm_segment {
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        s: 1,
        l,
        db,
        g: 1,
        ..Default::default()
    };
    sregs.cs = segment(0x08, 0xB, 1, 0);
    sregs.ds = segment(0x10, 3, 0, 1);
    (sregs.es, sregs.ss, sregs.fs, sregs.gs) = (sregs.ds, sregs.ds, sregs.ds, sregs.ds);
    sregs.tr = kvm_bindings::kvm_segment {
        base: guest::TSS,
        limit: 0x67,
        type_: 0xB, // a busy 64-bit TSS, as VM entry requires
        present: 1,
        ..Default::default()
    };
    (sregs.gdt.base, sregs.gdt.limit) = (guest::GDT, 23);
    (sregs.idt.base, sregs.idt.limit) = (guest::IDT, 0xFFF);
    (sregs.cr3, sregs.cr4) = (guest::PAGE_TABLES, 1 << 5); // PAE
    sregs.cr0 = 1 | 1 << 4 | 1 << 5 | 1 << 31; // PE, ET, NE, PG
    sregs.efer = 1 << 8 | 1 << 10; // LME, LMA
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    (regs.rip, regs.rsp, regs.rflags) = (guest::CODE, guest::STACK_TOP, 2);
    vcpu.set_regs(&regs)?;

    // The VMM's vCPU loop; the SynIC takes four arms.
    let mut status = None;
    while status.is_none() {
        match vcpu.run()? {
            // synic-begin: step 7: the exits that concern the SynIC
            VcpuExit::X86Rdmsr(exit) => vcpu_synic.handle_rdmsr(exit),
            VcpuExit::X86Wrmsr(exit) => vcpu_synic.handle_wrmsr(exit),
            VcpuExit::IoOut(port, _) if vcpu_synic.is_hypercall_trap(port) => {
                vcpu_synic.hypercall_trap(&mut vcpu)?;
            }
            VcpuExit::Hyperv => {
                vcpu_synic.hyperv_exit(&mut vcpu)?;
            }
            // synic-end
            VcpuExit::IoOut(guest::READY_PORT, _) => {
                // synic-begin: step 8: a device thread posts a message and sets an event flag
                let partition = Arc::clone(synic.partition());
                std::thread::spawn(move || {
                    let msg = HvMessage::new(MessageType(1), 0, b"embedded").expect("240 bytes");
                    let posted = partition.post_message(VpIndex(0), guest::MSG_SINT, msg);
                    let flag = partition.signal_event(VpIndex(0), guest::EVT_SINT, guest::EVT_FLAG);
                    println!("embed: host posted {posted:?}, signalled {flag:?}");
                });
                // synic-end
            }
            VcpuExit::IoOut(guest::EXIT_PORT, data) => status = Some(data[0]),
            VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => {}
            other => return Err(format!("unexpected exit {other:?}").into()),
        }
    }

    // Check the whole exchange.
    let status = status.unwrap_or(0xFF);
    let reply = reply_rx.recv_timeout(Duration::from_secs(1)).ok();
    let payload = reply.as_ref().map(|r| r.message.payload().to_vec());
    let mut expected = b"embedded".to_vec();
    expected.extend_from_slice(&[1 << (guest::EVT_FLAG % 8), 0, 0, 0, 0, 0, 0, 0]);
    println!("embed: HvPostMessage status {status:#x}, reply payload {payload:x?}");
    if status != 0 || payload.as_deref() != Some(&expected[..]) {
        eprintln!("embed: FAIL: expected status 0 and reply payload {expected:x?}");
        std::process::exit(1);
    }
    println!("embed: PASS ({mode:?} mode): message and event taken, reply received");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The SynIC wiring an embedder writes stays small: at most 80 lines between the markers.
    #[test]
    fn synic_wiring_is_at_most_80_lines() {
        let src = include_str!("main.rs");
        let mut inside = false;
        let mut lines = 0;
        for line in src.lines() {
            let t = line.trim();
            if t.starts_with("// synic-begin") {
                inside = true;
            } else if t.starts_with("// synic-end") {
                inside = false;
            } else if inside && !t.is_empty() {
                lines += 1;
            }
        }
        assert!(!inside, "unbalanced markers");
        assert!(lines > 0 && lines <= 80, "{lines} lines of SynIC wiring");
        println!("SynIC wiring: {lines} lines");
    }
}
