//! A tiny real guest for the routing tests: 64-bit long mode on 2 MiB identity pages (what
//! this project's KVM hosts run; 32-bit protected mode trips KVM's emulator here), the local
//! APIC software-enabled, every vector 0x20..=0xFF handled by a stub that reports the vector
//! on port 0x10 and EOIs, `sti; hlt` in a loop. Enough to prove an interrupt arrived, and how
//! many times; the full mini VMM lives in `vmm/`.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};
use kvm_bindings::{kvm_enable_cap, kvm_msi, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// Port the vector stubs write the vector number to.
const PORT_VECTOR: u16 = 0x10;
/// Port the entry code writes once interrupts are enabled.
const PORT_READY: u16 = 0x11;
/// Port the stop vector's stub writes before halting for good.
const PORT_STOP: u16 = 0x12;
/// Port exception stubs (vectors 0..=31) write to: the guest crashed.
const PORT_EXCEPTION: u16 = 0x13;

/// The lowest-priority vector: delivered after every other pending one, so when it arrives
/// every interrupt injected before it has been seen.
pub const STOP_VECTOR: u8 = 0x21;

/// The marker of [`Guest::vectors_before_marker`]: priority class 2, below every vector the
/// tests route (0x40 and up).
pub const MARK_VECTOR: u8 = 0x22;

/// One 2 MiB page of RAM (untouched parts cost nothing: the mapping is NORESERVE).
const MEM_SIZE: usize = 0x20_0000;
const GDT: usize = 0x500;
const IDT: usize = 0x1000;
const STUBS: usize = 0x2000;
const STUB_SIZE: usize = 32;
const PML4: usize = 0x6000;
const PDPT: usize = 0x7000;
const PD_LOW: usize = 0x8000;
const PD_APIC: usize = 0x9000;
const ENTRY: usize = 0xA000;
const STACK_TOP: u64 = 0xF000;
const LAPIC: u32 = 0xFEE0_0000;

pub use synic::testing::kvm_available;

/// A VM with the full in-kernel irqchip (PIC, IOAPIC, LAPIC) and one vCPU, not yet running.
pub struct Vm {
    pub vm: Arc<VmFd>,
    pub vcpu: VcpuFd,
    memory: Memory,
}

/// What the guest reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Ready,
    Vector(u8),
    Stopped,
    Crashed(String),
}

impl Vm {
    /// A VM with `KVM_CREATE_IRQCHIP` and vCPU 0 (APIC id 0, VP index 0).
    pub fn new() -> Self {
        Self::with_irqchip(false)
    }

    /// As [`Vm::new`], with a split irqchip (LAPIC in the kernel only) when `split`.
    pub fn with_irqchip(split: bool) -> Self {
        let kvm = Kvm::new().expect("open /dev/kvm");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        if split {
            let mut cap = kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = 24;
            vm.enable_cap(&cap).expect("KVM_CAP_SPLIT_IRQCHIP");
        } else {
            vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        }
        let memory = Memory::new();
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: memory.ptr as u64,
        };
        // SAFETY: the region is a private anonymous mapping of exactly MEM_SIZE bytes that
        // stays mapped until `Memory` drops, after the vCPU thread has stopped running.
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        Self {
            vm: Arc::new(vm),
            vcpu,
            memory,
        }
    }

    /// Writes the guest program, enters protected mode at its entry point and runs the vCPU
    /// on a thread. Returns once the guest has enabled interrupts.
    pub fn start(self) -> Guest {
        let Vm { vm, vcpu, memory } = self;
        memory.load_program();
        setup_protected_mode(&vcpu);
        let (tx, rx) = unbounded();
        let thread = std::thread::spawn(move || run_vcpu(vcpu, &tx));
        let guest = Guest {
            vm,
            events: rx,
            thread: Some(thread),
            memory: Some(memory),
        };
        match guest.events.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Ready) => guest,
            other => panic!("guest did not become ready: {other:?}"),
        }
    }
}

/// A running guest.
pub struct Guest {
    pub vm: Arc<VmFd>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
    /// Unmapped only after the vCPU thread is joined.
    memory: Option<Memory>,
}

impl Guest {
    /// The next vector the guest received, or `None` if none arrives within `timeout`.
    pub fn next_vector(&self, timeout: Duration) -> Option<u8> {
        match self.events.recv_timeout(timeout) {
            Ok(Event::Vector(v)) => Some(v),
            Ok(other) => panic!("unexpected guest event {other:?}"),
            Err(RecvTimeoutError::Timeout) => None,
            Err(e) => panic!("vCPU thread gone: {e}"),
        }
    }

    /// The vectors the guest takes before a marker interrupt ([`MARK_VECTOR`]) sent now, in
    /// order: empty when nothing else was pending. This is how the tests check that something
    /// did *not* interrupt the guest, by the guest's own progress instead of a wall-clock wait:
    /// an interrupt injected before the marker (an irqfd write on an MSI or HV_SINT route
    /// injects before the write returns; a masked vector never writes) waits in the APIC at a
    /// higher priority than the marker, so the guest takes it first however late its vCPU
    /// thread runs.
    pub fn vectors_before_marker(&self) -> Vec<u8> {
        let msi = kvm_msi {
            address_lo: LAPIC,
            data: u32::from(MARK_VECTOR),
            ..Default::default()
        };
        self.vm.signal_msi(msi).expect("KVM_SIGNAL_MSI");
        let mut seen = Vec::new();
        loop {
            match self.events.recv_timeout(Duration::from_secs(30)) {
                Ok(Event::Vector(MARK_VECTOR)) => return seen,
                Ok(Event::Vector(v)) => seen.push(v),
                other => panic!("the guest did not take the marker: {other:?}"),
            }
        }
    }

    /// Sends the stop vector and returns every vector received before it (in order).
    pub fn stop(mut self) -> Vec<u8> {
        let msi = kvm_msi {
            address_lo: LAPIC,
            data: u32::from(STOP_VECTOR),
            ..Default::default()
        };
        self.vm.signal_msi(msi).expect("KVM_SIGNAL_MSI");
        let mut seen = Vec::new();
        loop {
            match self.events.recv_timeout(Duration::from_secs(10)) {
                Ok(Event::Vector(v)) => seen.push(v),
                Ok(Event::Stopped) => break,
                other => panic!("guest did not stop: {other:?}"),
            }
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("vCPU thread");
        }
        seen
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // A test failed before stopping the guest: the vCPU may still run, so its memory
            // must stay mapped.
            std::mem::forget(self.memory.take());
            if !std::thread::panicking() {
                panic!("call Guest::stop so the vCPU thread ends");
            }
        }
    }
}

fn run_vcpu(mut vcpu: VcpuFd, tx: &crossbeam_channel::Sender<Event>) {
    loop {
        let event = match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_VECTOR, data)) => Event::Vector(data[0]),
            Ok(VcpuExit::IoOut(PORT_READY, _)) => Event::Ready,
            Ok(VcpuExit::IoOut(PORT_STOP, _)) => Event::Stopped,
            Ok(VcpuExit::IoOut(PORT_EXCEPTION, data)) => {
                Event::Crashed(format!("exception {}", data[0]))
            }
            Ok(VcpuExit::InternalError) => {
                let run = vcpu.get_kvm_run();
                // SAFETY: KVM filled the `internal` member for this exit reason.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                Event::Crashed(format!(
                    "internal error {} {:x?}",
                    internal.suberror,
                    &internal.data[..n]
                ))
            }
            Ok(other) => Event::Crashed(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => Event::Crashed(format!("KVM_RUN: {e}")),
        };
        let last = matches!(event, Event::Stopped | Event::Crashed(_));
        if tx.send(event).is_err() || last {
            return;
        }
    }
}

fn setup_protected_mode(vcpu: &VcpuFd) {
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    let seg = |selector: u16, type_: u8| kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = kvm_segment {
        l: 1,
        db: 0,
        ..seg(0x08, 0xB)
    };
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *s = seg(0x10, 0x3);
    }
    sregs.gdt.base = GDT as u64;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.idt.base = IDT as u64;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.cr3 = PML4 as u64;
    sregs.cr4 |= 1 << 5; // PAE
    sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
    sregs.cr0 |= (1 << 31) | 1; // PG, PE
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = ENTRY as u64;
    regs.rsp = STACK_TOP;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
}

/// `mov edi, addr; mov dword [rdi], imm32` (a register operand, because a 64-bit absolute
/// disp32 would sign-extend 0xFEE0_0000 to 0xFFFF_FFFF_FEE0_0000).
fn mov_mem_imm(addr: u32, imm: u32) -> Vec<u8> {
    let mut v = vec![0xBF];
    v.extend_from_slice(&addr.to_le_bytes());
    v.extend_from_slice(&[0xC7, 0x07]);
    v.extend_from_slice(&imm.to_le_bytes());
    v
}

/// The stub for vector `v`: report it, EOI (unless it is an exception), return; the stop
/// vector and exceptions halt instead of returning.
fn stub(v: u8) -> Vec<u8> {
    let port = match v {
        0..=0x1F => PORT_EXCEPTION,
        STOP_VECTOR => PORT_STOP,
        _ => PORT_VECTOR,
    };
    let mut code = vec![0xB0, v, 0xE6, port as u8]; // mov al, v; out port, al
    if port == PORT_VECTOR {
        code.extend(mov_mem_imm(LAPIC + 0xB0, 0)); // EOI
        code.extend([0x48, 0xCF]); // iretq
    } else {
        code.extend([0xFA, 0xF4, 0xEB, 0xFD]); // cli; hlt; jmp back to hlt
    }
    assert!(code.len() <= STUB_SIZE);
    code
}

struct Memory {
    ptr: *mut u8,
}

// SAFETY: the mapping is plain memory owned by this value; it is only written before the
// vCPU starts and freed after it stops.
unsafe impl Send for Memory {}

impl Memory {
    fn new() -> Self {
        // SAFETY: an anonymous private mapping with no address hint; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap guest memory");
        Self { ptr: ptr.cast() }
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= MEM_SIZE);
        // SAFETY: in bounds of the MEM_SIZE mapping (checked above); the vCPU is not running.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) }
    }

    fn load_program(&self) {
        // GDT: null, 64-bit code (0x08), flat data (0x10).
        let gdt: [u64; 3] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
        for (i, d) in gdt.iter().enumerate() {
            self.write(GDT + 8 * i, &d.to_le_bytes());
        }
        // Identity map: 0..2 MiB (RAM) and the 2 MiB page holding the local APIC (uncached).
        let table = |addr: usize| addr as u64 | 0x3; // present, writable
        self.write(PML4, &table(PDPT).to_le_bytes());
        self.write(PDPT, &table(PD_LOW).to_le_bytes());
        self.write(PDPT + 8 * 3, &table(PD_APIC).to_le_bytes());
        self.write(PD_LOW, &0x83u64.to_le_bytes()); // 2 MiB page at 0
        let apic_page = u64::from(LAPIC) | 0x83 | 0x18; // 2 MiB, PCD | PWT
        self.write(PD_APIC + 8 * 0x1F7, &apic_page.to_le_bytes());
        for v in 0..=255u8 {
            let handler = (STUBS + usize::from(v) * STUB_SIZE) as u64;
            self.write(handler as usize, &stub(v));
            // 64-bit interrupt gate, present, DPL 0, selector 0x08.
            let low =
                (handler & 0xFFFF) | 0x08 << 16 | 0x8E00 << 32 | (handler >> 16 & 0xFFFF) << 48;
            let high = handler >> 32;
            self.write(IDT + 16 * usize::from(v), &low.to_le_bytes());
            self.write(IDT + 16 * usize::from(v) + 8, &high.to_le_bytes());
        }
        let mut entry = mov_mem_imm(LAPIC + 0xF0, 0x1FF); // SVR: APIC on, spurious 0xFF
        entry.extend([0xFB]); // sti
        entry.extend([0xB0, 0x00, 0xE6, PORT_READY as u8]); // out ready
        entry.extend([0xF4, 0xEB, 0xFD]); // hlt; jmp back to hlt
        self.write(ENTRY, &entry);
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; no vCPU runs any more.
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}
