//! The demo's guest: every vCPU enables its SynIC, then sleeps; its ISRs check sequence
//! numbers, free the slot the TLFS way, and answer every host message with HvPostMessage and
//! every host event with HvSignalEvent.
//!
//! Per-vCPU memory (`base = layout::FREE_PAGES + vcpu * VCPU_AREA`): the message page, the
//! event-flags page, the hypercall input page, the statistics page (read by the host after
//! the run) and a bitmap of the message sequence numbers seen.

use iced_x86::code_asm::*;

use crate::error::{Error, Result};
use crate::guest::synic::{apic_eoi, call_hypercall_page, count_irq, release_slot};
use crate::guest::{layout, tag, GuestBuilder, GuestProgram};

/// Bytes of guest memory per vCPU.
pub const VCPU_AREA: u64 = 0x1_0000;
/// Offset of the message page in a vCPU's area.
pub const SIMP_OFFSET: u64 = 0;
/// Offset of the event-flags page.
pub const SIEFP_OFFSET: u64 = 0x1000;
/// Offset of the hypercall input page.
pub const INPUT_OFFSET: u64 = 0x2000;
/// Offset of the statistics page ([`stat`]).
pub const STATS_OFFSET: u64 = 0x3000;
/// Offset of the bitmap of message sequence numbers seen.
pub const BITMAP_OFFSET: u64 = 0x4000;
/// Most messages per vCPU the bitmap can track.
pub const MAX_MESSAGES: u64 = (VCPU_AREA - BITMAP_OFFSET) * 8;

/// Host -> guest messages arrive on this SINT...
pub const MSG_SINT: u8 = 2;
/// ... with this vector.
pub const MSG_VECTOR: u8 = 0x50;
/// Host -> guest event flags are set on this SINT...
pub const EVT_SINT: u8 = 3;
/// ... with this vector.
pub const EVT_VECTOR: u8 = 0x51;
/// Event flags in flight use flags `seq % EVENT_FLAGS` of [`EVT_SINT`] (one qword the ISR
/// takes with one `xchg`); the host keeps fewer than this many in flight.
pub const EVENT_FLAGS: u64 = 64;
/// Message type of host -> guest messages (payload: seq u64, host timestamp u64).
pub const HOST_MESSAGE_TYPE: u32 = 0x100;
/// Message type of the guest's replies (same payload).
pub const REPLY_MESSAGE_TYPE: u32 = 0x101;
/// vCPU n's replies go to message connection `MSG_CONNECTION + n`...
pub const MSG_CONNECTION: u32 = 0x10;
/// ... and its event replies to event connection `EVT_CONNECTION + n` (flag = seq % 64).
pub const EVT_CONNECTION: u32 = 0x20;

/// The statistics page, one u64 each (guest-side sequence checks).
pub mod stat {
    /// Distinct host messages received.
    pub const MSG_RECEIVED: u64 = 0x00;
    /// Messages whose sequence number was seen before.
    pub const MSG_DUPLICATED: u64 = 0x08;
    /// Messages not carrying the next expected sequence number.
    pub const MSG_OUT_OF_ORDER: u64 = 0x10;
    /// The next expected message sequence number.
    pub const MSG_EXPECTED: u64 = 0x18;
    /// Messages of a wrong type or a sequence number beyond the run.
    pub const MSG_BAD: u64 = 0x20;
    /// Replies the host refused (HvPostMessage status other than SUCCESS / retry).
    pub const REPLY_FAILED: u64 = 0x28;
    /// Host events consumed (in order).
    pub const EVT_RECEIVED: u64 = 0x30;
    /// Event interrupts that found flags set out of sequence.
    pub const EVT_OUT_OF_ORDER: u64 = 0x38;
    /// The next expected event sequence number.
    pub const EVT_EXPECTED: u64 = 0x40;
    /// Event replies the host refused (HvSignalEvent status other than SUCCESS / retry).
    pub const EVT_REPLY_FAILED: u64 = 0x48;
    /// Interrupts that found nothing to do (an empty slot or no flag).
    pub const SPURIOUS: u64 = 0x50;
    /// Hypercalls answered INSUFFICIENT_BUFFERS and retried.
    pub const RETRIES: u64 = 0x58;
}

fn e(err: IcedError) -> Error {
    Error::Asm(err)
}

/// The vCPU's area into `reg` (from R15).
fn area(a: &mut CodeAssembler, reg: AsmRegister64) -> Result<()> {
    a.mov(reg, r15).map_err(e)?;
    a.shl(reg, 16).map_err(e)?;
    const _: () = assert!(VCPU_AREA == 1 << 16);
    a.add(reg, layout::FREE_PAGES as i32).map_err(e)
}

/// `wrmsr(msr, rbx + offset | low)`; addresses are below 4 GiB. Clobbers RAX, RCX, RDX.
fn wrmsr_area(a: &mut CodeAssembler, msr: u32, offset: u64, low: u64) -> Result<()> {
    a.mov(ecx, msr).map_err(e)?;
    a.lea(rax, qword_ptr(rbx + (offset | low) as i32))
        .map_err(e)?;
    a.xor(edx, edx).map_err(e)?;
    a.wrmsr().map_err(e)
}

fn stat_ptr(s: u64) -> AsmMemoryOperand {
    qword_ptr(rbx + (STATS_OFFSET + s) as i32)
}

/// Calls the hypercall page until the status is not INSUFFICIENT_BUFFERS; `load` sets RCX,
/// RDX, R8 before each try. Counts retries and (status != 0) failures in `failed`.
fn hypercall_retrying(
    a: &mut CodeAssembler,
    load: impl Fn(&mut CodeAssembler) -> Result<()>,
    failed: u64,
) -> Result<()> {
    let mut again = a.create_label();
    let mut done = a.create_label();
    let mut fail = a.create_label();
    a.set_label(&mut again).map_err(e)?;
    load(a)?;
    call_hypercall_page(a, layout::HYPERCALL_PAGE)?;
    a.test(ax, ax).map_err(e)?;
    a.jz(done).map_err(e)?;
    a.cmp(ax, 0x13).map_err(e)?; // HV_STATUS_INSUFFICIENT_BUFFERS
    a.jne(fail).map_err(e)?;
    a.inc(stat_ptr(stat::RETRIES)).map_err(e)?;
    a.pause().map_err(e)?;
    a.jmp(again).map_err(e)?;
    a.set_label(&mut fail).map_err(e)?;
    a.inc(stat_ptr(failed)).map_err(e)?;
    a.set_label(&mut done).map_err(e)?;
    a.nop().map_err(e)
}

const SAVED: [AsmRegister64; 10] = [rax, rbx, rcx, rdx, rsi, rdi, r8, r9, r10, r11];

fn save(a: &mut CodeAssembler) -> Result<()> {
    for r in SAVED {
        a.push(r).map_err(e)?;
    }
    Ok(())
}

fn restore_and_return(a: &mut CodeAssembler) -> Result<()> {
    apic_eoi(a)?;
    for r in SAVED.iter().rev() {
        a.pop(*r).map_err(e)?;
    }
    a.iretq().map_err(e)
}

/// The message ISR: take the slot's seq and timestamp, free the slot (EOM if MessagePending),
/// check the seq against the bitmap and the expected next one, reply with HvPostMessage.
fn message_isr(a: &mut CodeAssembler, messages: u64) -> Result<CodeLabel> {
    let mut label = a.create_label();
    let mut spurious = a.create_label();
    let mut bad = a.create_label();
    let mut dup = a.create_label();
    let mut reply = a.create_label();
    let mut in_order = a.create_label();
    let mut not_newer = a.create_label();
    let mut out = a.create_label();
    a.set_label(&mut label).map_err(e)?;
    save(a)?;
    count_irq(a, MSG_VECTOR)?;
    area(a, rbx)?;
    a.lea(
        rsi,
        qword_ptr(rbx + (SIMP_OFFSET + 256 * u64::from(MSG_SINT)) as i32),
    )
    .map_err(e)?;
    a.mov(eax, dword_ptr(rsi)).map_err(e)?;
    a.test(eax, eax).map_err(e)?;
    a.jz(spurious).map_err(e)?;
    a.mov(r9, qword_ptr(rsi + 16)).map_err(e)?;
    a.mov(r10, qword_ptr(rsi + 24)).map_err(e)?;
    a.mov(edi, eax).map_err(e)?;
    // Free the slot before the reply's exit, so the host's next message can go straight in.
    release_slot(a, rsi)?;
    a.cmp(edi, HOST_MESSAGE_TYPE).map_err(e)?;
    a.jne(bad).map_err(e)?;
    a.mov(rax, messages).map_err(e)?;
    a.cmp(r9, rax).map_err(e)?;
    a.jae(bad).map_err(e)?;
    a.bts(qword_ptr(rbx + BITMAP_OFFSET as i32), r9)
        .map_err(e)?;
    a.jc(dup).map_err(e)?;
    a.inc(stat_ptr(stat::MSG_RECEIVED)).map_err(e)?;
    a.cmp(r9, stat_ptr(stat::MSG_EXPECTED)).map_err(e)?;
    a.je(in_order).map_err(e)?;
    a.inc(stat_ptr(stat::MSG_OUT_OF_ORDER)).map_err(e)?;
    a.jb(not_newer).map_err(e)?;
    a.set_label(&mut in_order).map_err(e)?;
    a.lea(rax, qword_ptr(r9 + 1)).map_err(e)?;
    a.mov(stat_ptr(stat::MSG_EXPECTED), rax).map_err(e)?;
    a.set_label(&mut not_newer).map_err(e)?;
    a.jmp(reply).map_err(e)?;
    a.set_label(&mut dup).map_err(e)?;
    a.inc(stat_ptr(stat::MSG_DUPLICATED)).map_err(e)?;
    a.set_label(&mut reply).map_err(e)?;
    a.lea(rdi, qword_ptr(rbx + INPUT_OFFSET as i32))
        .map_err(e)?;
    a.mov(eax, r15d).map_err(e)?;
    a.add(eax, MSG_CONNECTION as i32).map_err(e)?;
    a.mov(dword_ptr(rdi), eax).map_err(e)?;
    a.mov(dword_ptr(rdi + 4), 0u32).map_err(e)?;
    a.mov(dword_ptr(rdi + 8), REPLY_MESSAGE_TYPE).map_err(e)?;
    a.mov(dword_ptr(rdi + 12), 16u32).map_err(e)?;
    a.mov(qword_ptr(rdi + 16), r9).map_err(e)?;
    a.mov(qword_ptr(rdi + 24), r10).map_err(e)?;
    hypercall_retrying(
        a,
        |a| {
            a.mov(ecx, 0x5Cu32).map_err(e)?; // HvPostMessage
            a.mov(rdx, rdi).map_err(e)?;
            a.xor(r8d, r8d).map_err(e)
        },
        stat::REPLY_FAILED,
    )?;
    a.jmp(out).map_err(e)?;
    a.set_label(&mut bad).map_err(e)?;
    a.inc(stat_ptr(stat::MSG_BAD)).map_err(e)?;
    a.jmp(out).map_err(e)?;
    a.set_label(&mut spurious).map_err(e)?;
    a.inc(stat_ptr(stat::SPURIOUS)).map_err(e)?;
    a.set_label(&mut out).map_err(e)?;
    restore_and_return(a)?;
    Ok(label)
}

/// The event ISR: take flags 0..63 of the SINT with one `xchg`, consume them in sequence
/// order from the next expected one, reply to each with HvSignalEvent (flag = seq % 64). A
/// flag left over is one set out of sequence.
fn event_isr(a: &mut CodeAssembler) -> Result<CodeLabel> {
    let mut label = a.create_label();
    let mut next = a.create_label();
    let mut done = a.create_label();
    let mut spurious = a.create_label();
    let mut out = a.create_label();
    a.set_label(&mut label).map_err(e)?;
    save(a)?;
    count_irq(a, EVT_VECTOR)?;
    area(a, rbx)?;
    a.xor(esi, esi).map_err(e)?;
    let flags = SIEFP_OFFSET + 256 * u64::from(EVT_SINT);
    a.xchg(qword_ptr(rbx + flags as i32), rsi).map_err(e)?;
    a.test(rsi, rsi).map_err(e)?;
    a.jz(spurious).map_err(e)?;
    a.set_label(&mut next).map_err(e)?;
    a.mov(r9, stat_ptr(stat::EVT_EXPECTED)).map_err(e)?;
    a.and(r9, (EVENT_FLAGS - 1) as i32).map_err(e)?;
    a.bt(rsi, r9).map_err(e)?;
    a.jnc(done).map_err(e)?;
    a.btr(rsi, r9).map_err(e)?;
    a.inc(stat_ptr(stat::EVT_RECEIVED)).map_err(e)?;
    a.inc(stat_ptr(stat::EVT_EXPECTED)).map_err(e)?;
    hypercall_retrying(
        a,
        |a| {
            a.mov(ecx, 0x1_005Du32).map_err(e)?; // HvSignalEvent, fast
            a.mov(rdx, r9).map_err(e)?;
            a.shl(rdx, 32).map_err(e)?;
            a.mov(eax, r15d).map_err(e)?;
            a.add(eax, EVT_CONNECTION as i32).map_err(e)?;
            a.or(rdx, rax).map_err(e)?;
            a.xor(r8d, r8d).map_err(e)
        },
        stat::EVT_REPLY_FAILED,
    )?;
    a.jmp(next).map_err(e)?;
    a.set_label(&mut done).map_err(e)?;
    a.test(rsi, rsi).map_err(e)?;
    a.jz(out).map_err(e)?;
    a.inc(stat_ptr(stat::EVT_OUT_OF_ORDER)).map_err(e)?;
    a.jmp(out).map_err(e)?;
    a.set_label(&mut spurious).map_err(e)?;
    a.inc(stat_ptr(stat::SPURIOUS)).map_err(e)?;
    a.set_label(&mut out).map_err(e)?;
    restore_and_return(a)?;
    Ok(label)
}

/// The demo guest for runs of `messages` messages per vCPU.
pub fn program(messages: u64) -> Result<GuestProgram> {
    if messages > MAX_MESSAGES {
        return Err(Error::Config(format!(
            "at most {MAX_MESSAGES} messages per vCPU"
        )));
    }
    let mut g = GuestBuilder::new()?;
    g.lapic_enable()?;
    g.enable_hypercall_page(layout::HYPERCALL_PAGE)?;
    let a = g.asm();
    area(a, rbx)?;
    // Linux's order: SINTs first, then the pages, SCONTROL last.
    for (sint, vector) in [(MSG_SINT, MSG_VECTOR), (EVT_SINT, EVT_VECTOR)] {
        a.mov(ecx, synic_msr::index::SINT0 + u32::from(sint))
            .map_err(e)?;
        a.mov(eax, u32::from(vector)).map_err(e)?;
        a.xor(edx, edx).map_err(e)?;
        a.wrmsr().map_err(e)?;
    }
    wrmsr_area(a, synic_msr::index::SIEFP, SIEFP_OFFSET, 1)?;
    wrmsr_area(a, synic_msr::index::SIMP, SIMP_OFFSET, 1)?;
    g.wrmsr(synic_msr::index::SCONTROL, 1)?;
    g.report(tag::USER, 0)?; // ready
    let mut sleep = g.asm().create_label();
    g.asm().set_label(&mut sleep).map_err(e)?;
    g.asm().sti().map_err(e)?;
    g.asm().hlt().map_err(e)?;
    g.asm().jmp(sleep).map_err(e)?;
    let msg = message_isr(g.asm(), messages)?;
    g.gate(MSG_VECTOR, msg)?;
    let evt = event_isr(g.asm())?;
    g.gate(EVT_VECTOR, evt)?;
    g.build()
}
