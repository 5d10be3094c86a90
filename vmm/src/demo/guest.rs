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
    /// HvPostMessage calls made (retries included).
    pub const MSG_CALLS: u64 = 0x60;
    /// HvSignalEvent calls made (retries included).
    pub const EVT_CALLS: u64 = 0x68;
    /// Interrupts taken while one of the demo's ISRs was running. Both are interrupt gates (IF
    /// stays clear until `iretq`), so a correct platform never does this.
    pub const NESTED: u64 = 0x70;
    /// Hypercalls that returned with RAX still holding [`super::NO_STATUS`]: nothing wrote a
    /// status.
    pub const NO_STATUS: u64 = 0x78;
    /// Anomalies seen (records written to [`super::anomaly`], or dropped once it is full).
    pub const ANOMALIES: u64 = 0x80;
    /// How many of the demo's ISRs are running now (the nesting check's own counter).
    pub const DEPTH: u64 = 0x88;
    /// HvPostMessage calls that returned SUCCESS.
    pub const MSG_OK: u64 = 0x90;
    /// HvSignalEvent calls that returned SUCCESS.
    pub const EVT_OK: u64 = 0x98;
    /// Number of counters above (the host reads this many u64s).
    pub const COUNT: usize = 20;
}

/// The anomaly log in the statistics page: what the guest saw when something went wrong,
/// for the demo's failure report. Each record is 8 u64s: kind, sequence number (message),
/// flag (event) or vector (nested interrupt), RAX (the status a hypercall returned, the slot
/// header the ISR read, or the interrupted RSP), the interrupted RIP and RFLAGS from this
/// ISR's interrupt frame, the message slot's header now, and this vCPU's message and event
/// interrupt counts.
pub mod anomaly {
    /// Offset of the first record in the statistics page.
    pub const RECORDS: u64 = 0x100;
    /// Bytes per record.
    pub const RECORD_SIZE: u64 = 64;
    /// Records kept (later anomalies are only counted).
    pub const CAPACITY: u64 = 32;
    /// The ISR found a message whose sequence number it had seen before.
    pub const DUPLICATE: u64 = 1;
    /// HvPostMessage returned neither SUCCESS nor INSUFFICIENT_BUFFERS.
    pub const REPLY_STATUS: u64 = 2;
    /// HvSignalEvent returned neither SUCCESS nor INSUFFICIENT_BUFFERS.
    pub const EVENT_STATUS: u64 = 3;
    /// An interrupt arrived while a demo ISR was running.
    pub const NESTED: u64 = 4;
    /// A hypercall returned INSUFFICIENT_BUFFERS (retried; the host's connections are far
    /// larger than anything in flight, so this is unexpected too).
    pub const RETRY: u64 = 5;
}

/// The guest signals each anomaly with a 32-bit `out` of its kind to this port, so the host
/// can stop a kernel trace right away (see `super::diag`).
pub const ANOMALY_PORT: u16 = 0x3110;

/// What RAX holds when the guest calls the hypercall page. A hypercall that returns with RAX
/// unchanged never had a status written; its low 16 bits (0xFF) are neither SUCCESS nor
/// INSUFFICIENT_BUFFERS, so it also counts as refused.
pub const NO_STATUS: u64 = 0xDEAD_5EED_0000_00FF;

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

/// Appends an anomaly record (see [`anomaly`]) with `seq` and RAX, and signals it on
/// [`ANOMALY_PORT`]. Only at an ISR's top level (RBX = the vCPU's area, the interrupt frame 80
/// bytes above RSP). Clobbers RCX, RDX; preserves RAX.
fn record(a: &mut CodeAssembler, kind: u64, seq: AsmRegister64) -> Result<()> {
    let mut full = a.create_label();
    a.mov(rcx, stat_ptr(stat::ANOMALIES)).map_err(e)?;
    a.inc(stat_ptr(stat::ANOMALIES)).map_err(e)?;
    a.cmp(rcx, anomaly::CAPACITY as i32).map_err(e)?;
    a.jae(full).map_err(e)?;
    const _: () = assert!(anomaly::RECORD_SIZE == 1 << 6);
    a.shl(rcx, 6).map_err(e)?;
    a.lea(
        rcx,
        qword_ptr(rbx + rcx + (STATS_OFFSET + anomaly::RECORDS) as i32),
    )
    .map_err(e)?;
    a.mov(qword_ptr(rcx), kind as i32).map_err(e)?;
    a.mov(qword_ptr(rcx + 8), seq).map_err(e)?;
    a.mov(qword_ptr(rcx + 16), rax).map_err(e)?;
    let frame = 8 * SAVED.len() as i32;
    let fields = [
        qword_ptr(rsp + frame),      // interrupted RIP
        qword_ptr(rsp + frame + 16), // interrupted RFLAGS
        qword_ptr(rbx + (SIMP_OFFSET + 256 * u64::from(MSG_SINT)) as i32),
        qword_ptr(r14 + u32::from(MSG_VECTOR) * 8),
        qword_ptr(r14 + u32::from(EVT_VECTOR) * 8),
    ];
    for (i, field) in (3..).zip(fields) {
        a.mov(rdx, field).map_err(e)?;
        a.mov(qword_ptr(rcx + 8 * i), rdx).map_err(e)?;
    }
    a.set_label(&mut full).map_err(e)?;
    a.push(rax).map_err(e)?;
    a.mov(eax, kind as u32).map_err(e)?;
    a.mov(dx, u32::from(ANOMALY_PORT)).map_err(e)?;
    a.out(dx, eax).map_err(e)?;
    a.pop(rax).map_err(e)
}

/// Calls the hypercall page until the status is not INSUFFICIENT_BUFFERS; `load` sets RCX,
/// RDX, R8 before each try, RAX is [`NO_STATUS`] at the call. Counts the calls in `calls`,
/// retries, returns with no status written, successes in `ok` and (status != 0) failures in
/// `failed`; each retry and failure is also recorded as `kind` with `seq`. Clobbers RAX, RCX,
/// RDX, R8, R11.
fn hypercall_retrying(
    a: &mut CodeAssembler,
    load: impl Fn(&mut CodeAssembler) -> Result<()>,
    seq: AsmRegister64,
    [calls, ok, failed]: [u64; 3],
    kind: u64,
) -> Result<()> {
    let mut success = a.create_label();
    let mut again = a.create_label();
    let mut done = a.create_label();
    let mut fail = a.create_label();
    let mut has_status = a.create_label();
    a.set_label(&mut again).map_err(e)?;
    load(a)?;
    a.mov(rax, NO_STATUS).map_err(e)?;
    a.inc(stat_ptr(calls)).map_err(e)?;
    call_hypercall_page(a, layout::HYPERCALL_PAGE)?;
    a.mov(rcx, NO_STATUS).map_err(e)?;
    a.cmp(rax, rcx).map_err(e)?;
    a.jne(has_status).map_err(e)?;
    a.inc(stat_ptr(stat::NO_STATUS)).map_err(e)?;
    a.set_label(&mut has_status).map_err(e)?;
    a.test(ax, ax).map_err(e)?;
    a.jz(success).map_err(e)?;
    a.cmp(ax, 0x13).map_err(e)?; // HV_STATUS_INSUFFICIENT_BUFFERS
    a.jne(fail).map_err(e)?;
    a.inc(stat_ptr(stat::RETRIES)).map_err(e)?;
    record(a, anomaly::RETRY, seq)?;
    a.pause().map_err(e)?;
    a.jmp(again).map_err(e)?;
    a.set_label(&mut fail).map_err(e)?;
    a.inc(stat_ptr(failed)).map_err(e)?;
    record(a, kind, seq)?;
    a.jmp(done).map_err(e)?;
    a.set_label(&mut success).map_err(e)?;
    a.inc(stat_ptr(ok)).map_err(e)?;
    a.set_label(&mut done).map_err(e)?;
    a.nop().map_err(e)
}

const SAVED: [AsmRegister64; 10] = [rax, rbx, rcx, rdx, rsi, rdi, r8, r9, r10, r11];

/// An ISR's entry: saves [`SAVED`], counts the interrupt, RBX = the vCPU's area.
///
/// An ISR entered while another demo ISR runs is a delivery the platform made up: both are
/// interrupt gates, so IF stays clear until `iretq` and no maskable interrupt can arrive. The
/// lab's emulated SVM (QEMU TCG) does it: it delivers the vector KVM injected once more, in the
/// middle of the ISR (docs/kernel-mode-lab.md). Such an entry is recorded
/// ([`anomaly::NESTED`], RAX = the interrupted RSP) and returns at once, without touching the
/// slot or the flags (the ISR it interrupted owns them) and without an EOI (the local APIC
/// has only the outer ISR's vector in service). Handling it instead once made the outer ISR
/// read a message the inner one had already answered: a duplicate.
fn enter(a: &mut CodeAssembler, vector: u8) -> Result<()> {
    let mut alone = a.create_label();
    for r in SAVED {
        a.push(r).map_err(e)?;
    }
    count_irq(a, vector)?;
    area(a, rbx)?;
    a.mov(rax, stat_ptr(stat::DEPTH)).map_err(e)?;
    a.inc(stat_ptr(stat::DEPTH)).map_err(e)?;
    a.test(rax, rax).map_err(e)?;
    a.jz(alone).map_err(e)?;
    a.inc(stat_ptr(stat::NESTED)).map_err(e)?;
    a.mov(r11d, u32::from(vector)).map_err(e)?;
    a.mov(rax, qword_ptr(rsp + 8 * SAVED.len() as i32 + 24))
        .map_err(e)?;
    record(a, anomaly::NESTED, r11)?;
    a.dec(stat_ptr(stat::DEPTH)).map_err(e)?;
    pop_and_return(a)?;
    a.set_label(&mut alone).map_err(e)?;
    a.nop().map_err(e)
}

fn pop_and_return(a: &mut CodeAssembler) -> Result<()> {
    for r in SAVED.iter().rev() {
        a.pop(*r).map_err(e)?;
    }
    a.iretq().map_err(e)
}

/// An ISR's exit: EOI, leave the nesting count, restore [`SAVED`], `iretq`. RBX must still
/// be the vCPU's area.
fn restore_and_return(a: &mut CodeAssembler) -> Result<()> {
    apic_eoi(a)?;
    a.dec(stat_ptr(stat::DEPTH)).map_err(e)?;
    pop_and_return(a)
}

/// The message ISR: take the slot's seq and timestamp, free the slot (EOM if MessagePending),
/// check the seq against the bitmap and the expected next one, reply with HvPostMessage.
/// With `phantom_at = Some(n)`, the n-th message interrupt (counted from 1) enters the ISR
/// again, as an interrupt delivery would, between reading the slot's type and its payload:
/// what the lab's emulator once did there.
fn message_isr(a: &mut CodeAssembler, messages: u64, phantom_at: Option<u64>) -> Result<CodeLabel> {
    let mut label = a.create_label();
    let mut spurious = a.create_label();
    let mut bad = a.create_label();
    let mut dup = a.create_label();
    let mut reply = a.create_label();
    let mut in_order = a.create_label();
    let mut not_newer = a.create_label();
    let mut out = a.create_label();
    a.set_label(&mut label).map_err(e)?;
    enter(a, MSG_VECTOR)?;
    a.lea(
        rsi,
        qword_ptr(rbx + (SIMP_OFFSET + 256 * u64::from(MSG_SINT)) as i32),
    )
    .map_err(e)?;
    // The whole header as read (type, size, flags), for an anomaly record.
    a.mov(r11, qword_ptr(rsi)).map_err(e)?;
    a.mov(eax, r11d).map_err(e)?;
    a.test(eax, eax).map_err(e)?;
    a.jz(spurious).map_err(e)?;
    if let Some(n) = phantom_at {
        let mut no = a.create_label();
        a.mov(rcx, n).map_err(e)?;
        a.cmp(qword_ptr(r14 + u32::from(MSG_VECTOR) * 8), rcx)
            .map_err(e)?;
        a.jne(no).map_err(e)?;
        // The interrupt frame a delivery pushes (SS, RSP, RFLAGS with IF clear, CS, RIP),
        // then the ISR: what the ISR sees is what the emulator's delivery gave it. (`int n`
        // would do the same, but nested KVM on some hosts fails to emulate it.)
        a.mov(rdx, rsp).map_err(e)?;
        a.mov(ecx, ss).map_err(e)?;
        a.push(rcx).map_err(e)?;
        a.push(rdx).map_err(e)?;
        a.pushfq().map_err(e)?;
        a.mov(ecx, cs).map_err(e)?;
        a.push(rcx).map_err(e)?;
        a.call(label).map_err(e)?;
        a.set_label(&mut no).map_err(e)?;
        a.nop().map_err(e)?;
    }
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
    a.mov(rax, r11).map_err(e)?;
    record(a, anomaly::DUPLICATE, r9)?;
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
        r9,
        [stat::MSG_CALLS, stat::MSG_OK, stat::REPLY_FAILED],
        anomaly::REPLY_STATUS,
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
    enter(a, EVT_VECTOR)?;
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
        r9,
        [stat::EVT_CALLS, stat::EVT_OK, stat::EVT_REPLY_FAILED],
        anomaly::EVENT_STATUS,
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

/// The demo guest for runs of `messages` messages per vCPU. `phantom_at`: see
/// [`super::Fault::PhantomInterrupt`].
pub fn program(messages: u64, phantom_at: Option<u64>) -> Result<GuestProgram> {
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
    let msg = message_isr(g.asm(), messages, phantom_at)?;
    g.gate(MSG_VECTOR, msg)?;
    let evt = event_isr(g.asm())?;
    g.gate(EVT_VECTOR, evt)?;
    g.build()
}
