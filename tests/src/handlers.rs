//! The e2e interrupt handlers: message slots taken in the TLFS order, event flags taken
//! atomically. They run on the vCPU's own area (from R15) and keep every register.

use iced_x86::code_asm::*;
use synic_vmm::guest::synic::{apic_eoi as eoi, eom};

use crate::guest::{area_address, Eoi};
use crate::layout::{self, state, LOG_CAP, LOG_SHIFT};

type AsmResult<T> = synic_vmm::Result<T>;

/// What a handler does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HandlerKind {
    /// Take the SINT's message.
    Message(Eoi),
    /// Take the SINT's event flags.
    Flags,
    /// Flags, then the message, one EOI.
    FlagsAndMessage,
}

/// One handler to emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Handler {
    pub vector: u8,
    pub sint: u8,
    pub kind: HandlerKind,
    /// The entry, created when the handler was added (so code emitted before the handlers
    /// can call it) and bound by [`emit`].
    pub entry: CodeLabel,
}

const SAVED: [AsmRegister64; 6] = [rax, rbx, rcx, rdx, rsi, rdi];

/// Emits every handler; returns (vector, entry label) pairs.
pub(crate) fn emit(a: &mut CodeAssembler, handlers: &[Handler]) -> AsmResult<Vec<(u8, CodeLabel)>> {
    let mut gates = Vec::new();
    for h in handlers {
        let mut entry = h.entry;
        let mut alone = a.create_label();
        let mut leave = a.create_label();
        a.set_label(&mut entry)?;
        for r in SAVED {
            a.push(r)?;
        }
        // An entry while a handler runs is a delivery the platform made up (IF is clear in
        // every handler): count it and return, touching neither the slot nor the flags (the
        // handler it interrupted owns them) and sending no EOI (the APIC has the outer vector
        // in service). Handling it would take the outer handler's message a second time.
        area_address(a, rax, layout::STATE)?;
        a.cmp(qword_ptr(rax + state::DEPTH as i32), 0)?;
        a.je(alone)?;
        a.inc(qword_ptr(rax + state::NESTED as i32))?;
        a.jmp(leave)?;
        a.set_label(&mut alone)?;
        a.inc(qword_ptr(rax + state::DEPTH as i32))?;
        a.mov(ebx, u32::from(h.sint))?;
        match h.kind {
            HandlerKind::Message(e) => {
                count_message_irq(a)?;
                take_message(a, e == Eoi::Apic)?;
            }
            HandlerKind::Flags => take_flags(a, true)?,
            HandlerKind::FlagsAndMessage => {
                take_flags(a, false)?;
                count_message_irq(a)?;
                take_message(a, true)?;
            }
        }
        area_address(a, rax, layout::STATE)?;
        a.dec(qword_ptr(rax + state::DEPTH as i32))?;
        a.set_label(&mut leave)?;
        for r in SAVED.iter().rev() {
            a.pop(*r)?;
        }
        a.iretq()?;
        gates.push((h.vector, entry));
    }
    Ok(gates)
}

/// `state.SINT_MSG_IRQS[rbx] += 1`. Clobbers RAX.
fn count_message_irq(a: &mut CodeAssembler) -> AsmResult<()> {
    area_address(a, rax, layout::STATE + state::SINT_MSG_IRQS)?;
    Ok(a.inc(qword_ptr(rax + rbx * 8))?)
}

/// Takes SINT `rbx`'s message, in the TLFS order: copy it out (to the log), set the type to
/// None, EOI (if `apic_eoi`), then — after a full fence, so the freed type is globally visible
/// before the flag is read — test MessagePending and write EOM if it was set. An empty slot is
/// counted and EOI'd. Clobbers RAX, RCX, RDX, RSI, RDI.
pub(crate) fn take_message(a: &mut CodeAssembler, apic_eoi: bool) -> AsmResult<()> {
    let mut have = a.create_label();
    let mut no_copy = a.create_label();
    let mut out = a.create_label();
    area_address(a, rdx, layout::STATE)?;
    area_address(a, rsi, layout::SIMP)?;
    a.mov(rax, rbx)?;
    a.shl(rax, 8)?;
    a.add(rsi, rax)?;
    a.cmp(dword_ptr(rsi), 0)?;
    a.jne(have)?;
    a.inc(qword_ptr(rdx + state::EMPTY_IRQS as i32))?;
    if apic_eoi {
        eoi(a)?;
    }
    a.jmp(out)?;

    a.set_label(&mut have)?;
    a.mov(rax, qword_ptr(rdx + state::MESSAGES as i32))?;
    a.cmp(rax, LOG_CAP as i32)?;
    a.jae(no_copy)?;
    a.mov(rdi, r15)?;
    a.shl(rdi, LOG_SHIFT)?;
    a.add(rdi, layout::LOG_BASE as i32)?;
    a.shl(rax, 8)?;
    a.add(rdi, rax)?;
    a.push(rsi)?;
    a.mov(ecx, 256u32)?;
    a.cld()?;
    a.rep().movsb()?;
    a.pop(rsi)?;
    // Byte 6 of the log entry (reserved in the slot) records which SINT it came from.
    a.mov(byte_ptr(rdi - 256 + 6), bl)?;
    a.set_label(&mut no_copy)?;
    classify(a)?;
    a.inc(qword_ptr(rdx + state::MESSAGES as i32))?;
    a.inc(qword_ptr(rdx + rbx * 8 + state::SINT_MESSAGES as i32))?;
    a.mov(dword_ptr(rsi), 0u32)?;
    a.mfence()?;
    if apic_eoi {
        eoi(a)?;
    }
    a.test(byte_ptr(rsi + 5), 1)?;
    a.je(out)?;
    a.inc(qword_ptr(rdx + state::PENDING_SEEN as i32))?;
    a.inc(qword_ptr(rdx + state::EOMS as i32))?;
    eom(a)?;
    a.set_label(&mut out)?;
    Ok(a.nop()?)
}

/// Counts the message in the slot at RSI by type: timer expiries, and host messages checked
/// against the expected sequence number (RDX = the state area). Clobbers RAX, RCX.
fn classify(a: &mut CodeAssembler) -> AsmResult<()> {
    let mut host = a.create_label();
    let mut in_order = a.create_label();
    let mut done = a.create_label();
    a.mov(eax, dword_ptr(rsi))?;
    a.cmp(eax, synic::MessageType::TIMER_EXPIRED.0 as i32)?;
    a.jne(host)?;
    a.inc(qword_ptr(rdx + state::TIMER_MESSAGES as i32))?;
    a.jmp(done)?;
    a.set_label(&mut host)?;
    a.cmp(eax, layout::MESSAGE_TYPE as i32)?;
    a.jne(done)?;
    a.mov(rax, qword_ptr(rsi + 16))?;
    a.mov(rcx, qword_ptr(rdx + state::NEXT_SEQ as i32))?;
    a.cmp(rax, rcx)?;
    a.je(in_order)?;
    a.inc(qword_ptr(rdx + state::SEQ_ERRORS as i32))?;
    a.set_label(&mut in_order)?;
    a.inc(rax)?;
    a.mov(qword_ptr(rdx + state::NEXT_SEQ as i32), rax)?;
    a.set_label(&mut done)?;
    Ok(a.nop()?)
}

/// Takes every set event flag of SINT `rbx` with locked exchanges, ORs them into the
/// FLAGS_SEEN page and counts them; then EOIs if `apic_eoi`. Keeps RBX; clobbers RAX, RCX,
/// RDX, RSI, RDI.
fn take_flags(a: &mut CodeAssembler, apic_eoi: bool) -> AsmResult<()> {
    let mut top = a.create_label();
    let mut next = a.create_label();
    area_address(a, rdx, layout::STATE)?;
    a.inc(qword_ptr(rdx + state::FLAG_IRQS as i32))?;
    a.inc(qword_ptr(rdx + rbx * 8 + state::SINT_FLAG_IRQS as i32))?;
    area_address(a, rsi, layout::SIEFP)?;
    area_address(a, rdi, layout::FLAGS_SEEN)?;
    a.mov(rax, rbx)?;
    a.shl(rax, 8)?;
    a.add(rsi, rax)?;
    a.add(rdi, rax)?;
    a.push(rbx)?; // the bit count below needs a scratch register
    a.mov(ecx, 32u32)?;
    a.set_label(&mut top)?;
    a.xor(eax, eax)?;
    // XCHG with memory is always locked: a flag the host sets concurrently is either taken
    // now or stays set for the next interrupt.
    a.xchg(qword_ptr(rsi), rax)?;
    a.test(rax, rax)?;
    a.je(next)?;
    a.or(qword_ptr(rdi), rax)?;
    // Count the bits (no POPCNT: this host's guests fault on it).
    let mut bits = a.create_label();
    a.set_label(&mut bits)?;
    a.inc(qword_ptr(rdx + state::FLAG_BITS as i32))?;
    a.lea(rbx, qword_ptr(rax - 1))?;
    a.and(rax, rbx)?;
    a.jne(bits)?;
    a.set_label(&mut next)?;
    a.add(rsi, 8)?;
    a.add(rdi, 8)?;
    a.dec(ecx)?;
    a.jne(top)?;
    a.pop(rbx)?;
    if apic_eoi {
        eoi(a)?;
    }
    Ok(())
}
