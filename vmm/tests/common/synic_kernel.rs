//! A multiboot ELF32 test kernel that uses the SynIC the way kvm-unit-tests' hyperv tests do:
//! from its 32-bit multiboot entry it builds page tables and switches to long mode, installs an
//! IDT, enables the local APIC, the hypercall page and its SynIC (message page, event page,
//! SINT2 -> vector 0x50, SINT3 -> vector 0x51), asks QEMU's hyperv-testdev (port 0x3000) for a
//! message connection back to its own SINT2, posts a message to it with HvPostMessage and takes
//! it in an interrupt handler, then arms synthetic timer 0 (one-shot, message mode, SINT3) and
//! takes its HVMSG_TIMER_EXPIRED. It prints its progress to COM1 and exits through
//! isa-debug-exit with [`PASS`], or with the number of the check that failed.

use iced_x86::code_asm::*;
use synic::hypercall::HVCALL_POST_MESSAGE;
use synic::MessageType;
use synic_msr::index::{
    EOM, GUEST_OS_ID, HYPERCALL, SCONTROL, SIEFP as SIEFP_MSR, SIMP as SIMP_MSR, SINT0,
    STIMER0_CONFIG, STIMER0_COUNT, TIME_REF_COUNT,
};
use synic_vmm::multiboot::{elf32_kernel, ELF32_KERNEL_CODE_OFFSET};

pub const LOAD_ADDR: u32 = 0x40_0000;
/// Exit code when every check passed.
pub const PASS: u32 = 0;
/// Exit codes of the failed checks.
pub const FAIL_MAGIC: u32 = 0x21;
pub const FAIL_CPUID: u32 = 0x22;
pub const FAIL_POST: u32 = 0x23;
pub const FAIL_MESSAGE: u32 = 0x24;
pub const FAIL_TIMER: u32 = 0x25;
/// An unexpected exception: 0x40 + vector.
pub const FAIL_EXCEPTION: u32 = 0x40;

const CODE: u32 = LOAD_ADDR + ELF32_KERNEL_CODE_OFFSET;
const LONG_ENTRY: u32 = CODE + 0x200;
const DATA_AT: u32 = CODE + 0x1000;
const STACK_TOP: u32 = 0x9_0000;
const PML4: u32 = 0x20_0000;
const IDT: u64 = 0x20_8000;
const HYPERCALL_PAGE: u64 = 0x21_0000;
const SIMP: u64 = 0x21_1000;
const SIEFP: u64 = 0x21_2000;
const INPUT: u64 = 0x21_3000;
/// Messages taken at +0, timer expiries at +8, the message's first payload qword at +0x10, the
/// timer message's type at +0x18 and its timer index at +0x20.
const DATA: u64 = 0x21_4000;
const LAPIC: u64 = 0xFEE0_0000;
const MSG_SINT: u64 = 2;
const TIMER_SINT: u64 = 3;
const MSG_VECTOR: u64 = 0x50;
const TIMER_VECTOR: u64 = 0x51;
const CONNECTION: u32 = 7;
/// The payload the kernel posts to itself.
pub const PING: u64 = u64::from_le_bytes(*b"synping!");

/// The GDT at DATA_AT: null, code64 (0x08), data (0x10); the GDTR after it.
fn gdt() -> Vec<u8> {
    let mut d = Vec::new();
    for e in [0u64, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF] {
        d.extend_from_slice(&e.to_le_bytes());
    }
    d.extend_from_slice(&23u16.to_le_bytes());
    d.extend_from_slice(&DATA_AT.to_le_bytes());
    d
}

/// 32 bits: check the boot magic, build an identity map of 0..4 GiB (2 MiB pages), enter long
/// mode and jump to LONG_ENTRY.
fn entry32() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut fail = a.create_label();
    let mut fill = a.create_label();
    a.mov(esp, STACK_TOP).unwrap();
    a.cmp(eax, 0x2BAD_B002u32 as i32).unwrap();
    a.jne(fail).unwrap();
    // PML4[0] -> PDPT; PDPT[0..4] -> four page directories.
    a.mov(dword_ptr(PML4), PML4 + 0x1000 + 3).unwrap();
    for gib in 0..4u32 {
        a.mov(
            dword_ptr(PML4 + 0x1000 + 8 * gib),
            PML4 + 0x2000 + 0x1000 * gib + 3,
        )
        .unwrap();
    }
    // PD entry n maps n * 2 MiB; the top GiB (APIC) uncached.
    a.xor(ecx, ecx).unwrap();
    a.set_label(&mut fill).unwrap();
    a.mov(eax, ecx).unwrap();
    a.shl(eax, 21).unwrap();
    a.or(eax, 0x83).unwrap();
    a.mov(edx, ecx).unwrap();
    a.shr(edx, 11).unwrap();
    let mut cached = a.create_label();
    a.cmp(ecx, 1536).unwrap();
    a.jb(cached).unwrap();
    a.or(eax, 0x18).unwrap();
    a.set_label(&mut cached).unwrap();
    a.mov(dword_ptr(ecx * 8 + (PML4 + 0x2000)), eax).unwrap();
    a.mov(dword_ptr(ecx * 8 + (PML4 + 0x2004)), edx).unwrap();
    a.inc(ecx).unwrap();
    a.cmp(ecx, 2048).unwrap();
    a.jb(fill).unwrap();
    a.lgdt(ptr(DATA_AT + 24)).unwrap();
    a.mov(eax, cr4).unwrap();
    a.or(eax, 1 << 5).unwrap(); // PAE
    a.mov(cr4, eax).unwrap();
    a.mov(eax, PML4).unwrap();
    a.mov(cr3, eax).unwrap();
    a.mov(ecx, 0xC000_0080u32).unwrap(); // EFER.LME
    a.rdmsr().unwrap();
    a.or(eax, 1 << 8).unwrap();
    a.wrmsr().unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(eax, 0x8000_0001u32 as i32).unwrap(); // PG, PE
    a.mov(cr0, eax).unwrap();
    // jmp far 0x08:LONG_ENTRY
    let mut far = vec![0xEA];
    far.extend_from_slice(&LONG_ENTRY.to_le_bytes());
    far.extend_from_slice(&0x08u16.to_le_bytes());
    a.db(&far).unwrap();
    a.set_label(&mut fail).unwrap();
    a.mov(eax, FAIL_MAGIC).unwrap();
    a.out(0xF4i32, eax).unwrap();
    a.hlt().unwrap();
    a.assemble(u64::from(CODE)).unwrap()
}

fn wrmsr(a: &mut CodeAssembler, msr: u32, value: u64) {
    a.mov(ecx, msr).unwrap();
    a.mov(eax, value as u32).unwrap();
    a.mov(edx, (value >> 32) as u32).unwrap();
    a.wrmsr().unwrap();
}

fn print(a: &mut CodeAssembler, text: &str) {
    a.mov(dx, 0x3F8u32).unwrap();
    for b in text.bytes() {
        a.mov(al, u32::from(b)).unwrap();
        a.out(dx, al).unwrap();
    }
}

fn fail(a: &mut CodeAssembler, code: u32) {
    a.mov(eax, code).unwrap();
    a.out(0xF4i32, eax).unwrap();
    a.hlt().unwrap();
}

/// Waits with interrupts on until the counter at `counter` is non-zero, at most `rounds`
/// wake-ups; else fails with `code`.
fn wait_for(a: &mut CodeAssembler, counter: u64, code: u32) {
    let mut top = a.create_label();
    let mut done = a.create_label();
    a.mov(ebx, 100_000u32).unwrap();
    a.set_label(&mut top).unwrap();
    a.cmp(qword_ptr(counter), 0).unwrap();
    a.jne(done).unwrap();
    a.sti().unwrap();
    a.pause().unwrap();
    a.cli().unwrap();
    a.dec(ebx).unwrap();
    a.jnz(top).unwrap();
    fail(a, code);
    a.set_label(&mut done).unwrap();
}

/// A message ISR for `sint`: records the slot's type at `type_at` (if given) and its first
/// payload qword at `payload_at`, frees the slot (EOM when MessagePending), counts at
/// `counter`, EOIs.
fn message_isr(
    a: &mut CodeAssembler,
    sint: u64,
    counter: u64,
    payload_at: u64,
    type_at: Option<u64>,
) {
    let slot = SIMP + sint * 256;
    for r in [rax, rcx, rdx] {
        a.push(r).unwrap();
    }
    let mut empty = a.create_label();
    let mut no_pending = a.create_label();
    a.mov(eax, dword_ptr(slot)).unwrap();
    a.test(eax, eax).unwrap();
    a.jz(empty).unwrap();
    if let Some(at) = type_at {
        a.mov(qword_ptr(at), rax).unwrap();
    }
    a.mov(rax, qword_ptr(slot + 16)).unwrap();
    a.mov(qword_ptr(payload_at), rax).unwrap();
    a.mov(dword_ptr(slot), 0u32).unwrap();
    a.mfence().unwrap();
    a.test(byte_ptr(slot + 5), 1).unwrap();
    a.jz(no_pending).unwrap();
    wrmsr(a, EOM, 0);
    a.set_label(&mut no_pending).unwrap();
    a.inc(qword_ptr(counter)).unwrap();
    a.set_label(&mut empty).unwrap();
    a.mov(rax, LAPIC + 0xB0).unwrap();
    a.mov(dword_ptr(rax), 0u32).unwrap();
    for r in [rdx, rcx, rax] {
        a.pop(r).unwrap();
    }
    a.iretq().unwrap();
}

/// 64 bits: everything else.
fn long64() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut msg_isr = a.create_label();
    let mut timer_isr = a.create_label();
    let mut exception = [(); 32].map(|_| a.create_label());
    a.mov(ax, 0x10u32).unwrap();
    for s in [ds, es, ss] {
        a.mov(s, ax).unwrap();
    }
    a.mov(rsp, u64::from(STACK_TOP)).unwrap();
    // The IDT: a gate per exception and for the two SINT vectors.
    let mut set_gate = a.create_label();
    let vectors: Vec<(u64, CodeLabel)> = (0u64..32)
        .zip(exception.iter().copied())
        .chain([(MSG_VECTOR, msg_isr), (TIMER_VECTOR, timer_isr)])
        .collect();
    for (vector, label) in vectors {
        a.mov(edi, vector as u32).unwrap();
        a.lea(rax, ptr(label)).unwrap();
        a.call(set_gate).unwrap();
    }
    // lidt [idtr]: limit 0xFFF, base IDT, built on the stack.
    a.sub(rsp, 16).unwrap();
    a.mov(word_ptr(rsp), 0xFFFu32).unwrap();
    a.mov(rax, IDT).unwrap();
    a.mov(qword_ptr(rsp + 2), rax).unwrap();
    a.lidt(ptr(rsp)).unwrap();
    a.add(rsp, 16).unwrap();
    print(&mut a, "long mode\n");

    // Hyper-V present with SynIC and timers?
    a.mov(eax, 0x4000_0003u32).unwrap();
    a.cpuid().unwrap();
    a.and(eax, 0b1110).unwrap(); // TIME_REF_COUNT, SynIC, timers
    a.cmp(eax, 0b1110).unwrap();
    let mut has = a.create_label();
    a.je(has).unwrap();
    fail(&mut a, FAIL_CPUID);
    a.set_label(&mut has).unwrap();

    // Local APIC on, hypercall page, SynIC.
    a.mov(rax, LAPIC + 0xF0).unwrap();
    a.mov(dword_ptr(rax), 0x1FFu32).unwrap();
    wrmsr(&mut a, GUEST_OS_ID, 0x8100_0000_0000_0001);
    wrmsr(&mut a, HYPERCALL, HYPERCALL_PAGE | 1);
    wrmsr(&mut a, SIMP_MSR, SIMP | 1);
    wrmsr(&mut a, SIEFP_MSR, SIEFP | 1);
    wrmsr(&mut a, SINT0 + MSG_SINT as u32, MSG_VECTOR);
    wrmsr(&mut a, SINT0 + TIMER_SINT as u32, TIMER_VECTOR);
    wrmsr(&mut a, SCONTROL, 1);
    print(&mut a, "synic up\n");

    // hyperv-testdev: message connection CONNECTION -> VP 0, SINT2 (cmd 4).
    a.mov(dx, 0x3000u32).unwrap();
    a.mov(eax, CONNECTION << 24 | 4 << 16 | MSG_SINT as u32)
        .unwrap();
    a.out(dx, eax).unwrap();
    // HvPostMessage(CONNECTION, type 1, 8 bytes: PING).
    a.mov(dword_ptr(INPUT), CONNECTION).unwrap();
    a.mov(dword_ptr(INPUT + 8), 1u32).unwrap();
    a.mov(dword_ptr(INPUT + 12), 8u32).unwrap();
    a.mov(rax, PING).unwrap();
    a.mov(qword_ptr(INPUT + 16), rax).unwrap();
    a.mov(ecx, u32::from(HVCALL_POST_MESSAGE)).unwrap();
    a.mov(edx, INPUT as u32).unwrap();
    a.xor(r8d, r8d).unwrap();
    a.mov(rax, HYPERCALL_PAGE).unwrap();
    a.call(rax).unwrap();
    a.test(ax, ax).unwrap();
    let mut posted = a.create_label();
    a.jz(posted).unwrap();
    fail(&mut a, FAIL_POST);
    a.set_label(&mut posted).unwrap();
    wait_for(&mut a, DATA, FAIL_MESSAGE);
    a.mov(rax, PING).unwrap();
    a.cmp(qword_ptr(DATA + 0x10), rax).unwrap();
    let mut ping = a.create_label();
    a.je(ping).unwrap();
    fail(&mut a, FAIL_MESSAGE);
    a.set_label(&mut ping).unwrap();
    print(&mut a, "test-device message taken\n");

    // Synthetic timer 0: one-shot, 1 ms from now, message to SINT3.
    a.mov(ecx, TIME_REF_COUNT).unwrap();
    a.rdmsr().unwrap();
    a.shl(rdx, 32).unwrap();
    a.or(rax, rdx).unwrap();
    a.add(rax, 10_000).unwrap();
    a.mov(rdx, rax).unwrap();
    a.shr(rdx, 32).unwrap();
    a.mov(ecx, STIMER0_COUNT).unwrap();
    a.wrmsr().unwrap();
    wrmsr(&mut a, STIMER0_CONFIG, 1 | TIMER_SINT << 16);
    wait_for(&mut a, DATA + 8, FAIL_TIMER);
    a.cmp(dword_ptr(DATA + 0x18), MessageType::TIMER_EXPIRED.0 as i32)
        .unwrap();
    let mut expired = a.create_label();
    a.je(expired).unwrap();
    fail(&mut a, FAIL_TIMER);
    a.set_label(&mut expired).unwrap();
    print(&mut a, "timer expiry taken\nPASS\n");
    fail(&mut a, PASS);

    a.set_label(&mut msg_isr).unwrap();
    message_isr(&mut a, MSG_SINT, DATA, DATA + 0x10, None);
    a.set_label(&mut timer_isr).unwrap();
    message_isr(&mut a, TIMER_SINT, DATA + 8, DATA + 0x20, Some(DATA + 0x18));
    for (v, l) in exception.iter_mut().enumerate() {
        a.set_label(l).unwrap();
        fail(&mut a, FAIL_EXCEPTION + v as u32);
    }
    // set_gate: RDI = vector, RAX = handler. Low qword: offset 15:0, selector 0x08, type 0x8E,
    // offset 31:16; high qword: offset 63:32.
    a.set_label(&mut set_gate).unwrap();
    a.shl(rdi, 4).unwrap();
    a.mov(rcx, IDT).unwrap();
    a.add(rdi, rcx).unwrap();
    a.mov(rdx, rax).unwrap();
    a.and(edx, 0xFFFF).unwrap();
    a.mov(rcx, 0x8E00_0008_0000u64).unwrap();
    a.or(rdx, rcx).unwrap();
    a.mov(rcx, rax).unwrap();
    a.shr(rcx, 16).unwrap();
    a.and(ecx, 0xFFFF).unwrap();
    a.shl(rcx, 48).unwrap();
    a.or(rdx, rcx).unwrap();
    a.mov(qword_ptr(rdi), rdx).unwrap();
    a.shr(rax, 32).unwrap();
    a.mov(qword_ptr(rdi + 8), rax).unwrap();
    a.ret().unwrap();
    a.assemble(u64::from(LONG_ENTRY)).unwrap()
}

/// The kernel image.
pub fn kernel() -> Vec<u8> {
    let mut image = entry32();
    assert!(image.len() <= (LONG_ENTRY - CODE) as usize);
    image.resize((LONG_ENTRY - CODE) as usize, 0xCC);
    image.extend_from_slice(&long64());
    assert!(image.len() <= (DATA_AT - CODE) as usize);
    image.resize((DATA_AT - CODE) as usize, 0xCC);
    image.extend_from_slice(&gdt());
    elf32_kernel(LOAD_ADDR, &image, 0)
}
