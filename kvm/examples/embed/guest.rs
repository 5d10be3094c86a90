//! The example's guest: 64-bit code on an identity map, assembled with iced-x86. Not part of
//! what an embedder writes (their guest is Windows or Linux); it is here so the example runs.
//!
//! It enables its SynIC (message page, event page, SINT2 -> vector 0x50, SINT3 -> 0x51) and the
//! hypercall page, tells the host it is ready (`out READY_PORT`), takes one message and one
//! event flag in interrupt handlers that follow the TLFS protocol, answers with HvPostMessage to
//! connection [`REPLY_CONNECTION`] (type 2, payload: the message's first 8 bytes, then the
//! event flag byte it took), and exits (`out EXIT_PORT` with the call's status).

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use synic::hypercall::HVCALL_POST_MESSAGE;
use synic_msr::index::{EOM, GUEST_OS_ID, HYPERCALL, SCONTROL, SINT0};
use synic_msr::index::{SIEFP as SIEFP_MSR, SIMP as SIMP_MSR};

pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const TSS: u64 = 0x1800;
/// PML4 at +0, PDPT at +0x1000, four page directories after it: 0..4 GiB in 2 MiB pages.
pub const PAGE_TABLES: u64 = 0x8000;
pub const HYPERCALL_PAGE: u64 = 0x3000;
pub const SIMP: u64 = 0x4000;
pub const SIEFP: u64 = 0x5000;
pub const INPUT: u64 = 0x6000;
/// Counters: messages taken at +0, events at +4, the message's first qword at +8, the event
/// flag byte at +16.
pub const DATA: u64 = 0x7000;
pub const STACK_TOP: u64 = 0x7F00;
pub const CODE: u64 = 0x10000;
pub const MEMORY: usize = 2 << 20;

pub const MSG_SINT: u32 = 2;
pub const EVT_SINT: u32 = 3;
pub const EVT_FLAG: u32 = 5;
pub const REPLY_CONNECTION: u32 = 7;
pub const READY_PORT: u16 = 0x10;
pub const EXIT_PORT: u16 = 0x11;
const MSG_VECTOR: u32 = 0x50;
const EVT_VECTOR: u32 = 0x51;
const LAPIC_EOI: u64 = 0xFEE0_00B0;
const LAPIC_SVR: u64 = 0xFEE0_00F0;

/// The GDT: null, code64 (0x08), flat data (0x10).
pub const GDT_ENTRIES: [u64; 3] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];

/// The page tables: `(address, entry)` pairs identity-mapping 0..4 GiB with 2 MiB pages (the
/// top GiB, where the local APIC is, uncached).
pub fn page_tables() -> Vec<(u64, u64)> {
    const P_W: u64 = 0b11;
    let pdpt = PAGE_TABLES + 0x1000;
    let mut entries = vec![(PAGE_TABLES, pdpt | P_W)];
    for gib in 0..4u64 {
        let pd = pdpt + 0x1000 * (gib + 1);
        entries.push((pdpt + 8 * gib, pd | P_W));
        let uncached = if gib == 3 { 0b11000 } else { 0 };
        for i in 0..512u64 {
            let page = (gib << 30) | (i << 21);
            entries.push((pd + 8 * i, page | P_W | 0x80 | uncached));
        }
    }
    entries
}

/// A 64-bit interrupt gate to `handler` through code selector 0x08: (low, high) qwords.
pub fn gate(handler: u64) -> (u64, u64) {
    let low = (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48);
    (low, handler >> 32)
}

fn wrmsr(a: &mut CodeAssembler, msr: u32, value: u64) -> Result<(), IcedError> {
    a.mov(ecx, msr)?;
    a.mov(eax, value as u32)?;
    a.mov(edx, (value >> 32) as u32)?;
    a.wrmsr()
}

/// `mov dword [addr], value` for an address above 2 GiB (the local APIC), through RAX.
fn store_high(a: &mut CodeAssembler, addr: u64, value: u32) -> Result<(), IcedError> {
    a.mov(rax, addr)?;
    a.mov(dword_ptr(rax), value)
}

/// The program at [`CODE`], and the offsets of the two handlers in it.
pub fn program() -> Result<(Vec<u8>, u64, u64), IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut msg_isr = a.create_label();
    let mut evt_isr = a.create_label();
    let mut wait = a.create_label();
    // Hyper-V identity, hypercall page, SynIC.
    wrmsr(&mut a, GUEST_OS_ID, 0x8100_0000_0000_0001)?;
    wrmsr(&mut a, HYPERCALL, HYPERCALL_PAGE | 1)?;
    wrmsr(&mut a, SIMP_MSR, SIMP | 1)?;
    wrmsr(&mut a, SIEFP_MSR, SIEFP | 1)?;
    wrmsr(&mut a, SINT0 + MSG_SINT, u64::from(MSG_VECTOR))?;
    wrmsr(&mut a, SINT0 + EVT_SINT, u64::from(EVT_VECTOR))?;
    wrmsr(&mut a, SCONTROL, 1)?;
    // Local APIC software-enabled (spurious vector 0xFF).
    store_high(&mut a, LAPIC_SVR, 0x1FF)?;
    a.out(READY_PORT as i32, al)?;
    // Wait for one message and one event.
    a.set_label(&mut wait)?;
    a.sti()?;
    a.hlt()?;
    a.cli()?;
    a.cmp(dword_ptr(DATA), 0)?;
    a.je(wait)?;
    a.cmp(dword_ptr(DATA + 4), 0)?;
    a.je(wait)?;
    // HvPostMessage(REPLY_CONNECTION, type 2, 16 bytes: message qword, event flag byte).
    a.mov(dword_ptr(INPUT), REPLY_CONNECTION)?;
    a.mov(dword_ptr(INPUT + 8), 2u32)?;
    a.mov(dword_ptr(INPUT + 12), 16u32)?;
    a.mov(rax, qword_ptr(DATA + 8))?;
    a.mov(qword_ptr(INPUT + 16), rax)?;
    a.movzx(eax, byte_ptr(DATA + 16))?;
    a.mov(qword_ptr(INPUT + 24), rax)?;
    // 64-bit hypercall ABI: RCX control, RDX input GPA, R8 output GPA; RAX the result.
    a.mov(ecx, u32::from(HVCALL_POST_MESSAGE))?;
    a.mov(edx, INPUT as u32)?;
    a.xor(r8d, r8d)?;
    a.mov(rax, HYPERCALL_PAGE)?;
    a.call(rax)?;
    a.out(EXIT_PORT as i32, eax)?;
    a.hlt()?;

    // Message ISR: copy the slot's first payload qword, free the slot (type 0), EOM if
    // MessagePending was set, EOI.
    let slot = SIMP + u64::from(MSG_SINT) * 256;
    let saved = [rax, rcx, rdx];
    a.set_label(&mut msg_isr)?;
    for r in saved {
        a.push(r)?;
    }
    let mut no_message = a.create_label();
    let mut no_pending = a.create_label();
    a.cmp(dword_ptr(slot), 0)?;
    a.je(no_message)?;
    a.mov(rax, qword_ptr(slot + 16))?;
    a.mov(qword_ptr(DATA + 8), rax)?;
    a.mov(dword_ptr(slot), 0u32)?;
    a.mfence()?;
    a.test(byte_ptr(slot + 5), 1)?;
    a.je(no_pending)?;
    wrmsr(&mut a, EOM, 0)?;
    a.set_label(&mut no_pending)?;
    a.inc(dword_ptr(DATA))?;
    a.set_label(&mut no_message)?;
    store_high(&mut a, LAPIC_EOI, 0)?;
    for r in saved.iter().rev() {
        a.pop(*r)?;
    }
    a.iretq()?;

    // Event ISR: take the byte holding the flag (atomically), EOI.
    a.set_label(&mut evt_isr)?;
    for r in saved {
        a.push(r)?;
    }
    a.xor(eax, eax)?;
    a.xchg(
        byte_ptr(SIEFP + u64::from(EVT_SINT * 256 + EVT_FLAG / 8)),
        al,
    )?;
    a.or(byte_ptr(DATA + 16), al)?;
    a.test(al, al)?;
    let mut spurious = a.create_label();
    a.je(spurious)?;
    a.inc(dword_ptr(DATA + 4))?;
    a.set_label(&mut spurious)?;
    store_high(&mut a, LAPIC_EOI, 0)?;
    for r in saved.iter().rev() {
        a.pop(*r)?;
    }
    a.iretq()?;

    let result = a.assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let msg = result.label_ip(&msg_isr)?;
    let evt = result.label_ip(&evt_isr)?;
    Ok((result.inner.code_buffer, msg, evt))
}

/// The IDT entries the program needs: (vector, gate).
pub fn idt(msg_isr: u64, evt_isr: u64) -> [(u32, (u64, u64)); 2] {
    [(MSG_VECTOR, gate(msg_isr)), (EVT_VECTOR, gate(evt_isr))]
}
