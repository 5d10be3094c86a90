//! SynIC guest building blocks on top of the VMM's guest toolkit: per-vCPU SynIC setup, message
//! and event-flag interrupt handlers that follow the TLFS protocol, hypercalls with memory
//! input, host steps and waits.
//!
//! Every block works on the running vCPU's own area ([`crate::layout::area`]), found from R15,
//! so the same program runs on every vCPU and in both SynIC modes. Blocks document the
//! registers they clobber; R14/R15 are never touched.

use iced_x86::code_asm::*;
use synic::hypercall::{HypercallControl, HVCALL_POST_MESSAGE, HVCALL_SIGNAL_EVENT};
use synic_msr::index;
use synic_vmm::guest::{self, GuestBuilder, GuestProgram};
use synic_vmm::{Error, Result, Vm};

use crate::handlers::{self, Handler, HandlerKind};
use crate::layout::{self, ports, state, tag, AREA_BASE, AREA_SHIFT};

/// How a message handler ends an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Eoi {
    /// Write the local APIC's EOI register (the normal case).
    Apic,
    /// Do not EOI: the SINT is programmed with AutoEOI.
    Auto,
}

/// A SINT register value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SintValue {
    /// Vector 7:0.
    pub vector: u8,
    /// Masked (bit 16).
    pub masked: bool,
    /// AutoEOI (bit 17).
    pub auto_eoi: bool,
    /// Polling (bit 18).
    pub polling: bool,
}

impl SintValue {
    /// Unmasked, interrupting with `vector`.
    pub const fn vector(vector: u8) -> Self {
        Self {
            vector,
            masked: false,
            auto_eoi: false,
            polling: false,
        }
    }

    /// The raw register value.
    pub const fn raw(self) -> u64 {
        self.vector as u64
            | (self.masked as u64) << 16
            | (self.auto_eoi as u64) << 17
            | (self.polling as u64) << 18
    }
}

/// HvPostMessage input built in the vCPU's input page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PostInput {
    /// ConnectionId (the whole u32 as written, so tests can set reserved bits).
    pub connection_id: u32,
    /// MessageType.
    pub message_type: u32,
    /// PayloadSize.
    pub payload_size: u32,
    /// The first payload qword (the rest of the payload is this value plus its qword index).
    pub payload_tag: u64,
    /// Byte offset of the input from the start of the input page (misalignment tests).
    pub offset: u64,
}

impl PostInput {
    /// A well-formed post of `payload_size` bytes to `connection_id`.
    pub const fn new(connection_id: u32, payload_size: u32, payload_tag: u64) -> Self {
        Self {
            connection_id,
            message_type: layout::MESSAGE_TYPE,
            payload_size,
            payload_tag,
            offset: 0,
        }
    }
}

/// The control value (RCX) of a simple call: `code`, memory or fast form.
pub const fn control(code: u16, fast: bool) -> u64 {
    HypercallControl::simple(code, fast).0
}

/// A toolkit program plus the e2e handlers and their IDT gates.
#[derive(Debug)]
pub struct SynicGuest {
    g: GuestBuilder,
    handlers: Vec<Handler>,
}

/// An assembled e2e program.
#[derive(Debug)]
pub struct SynicProgram {
    program: GuestProgram,
    vectors: Vec<u8>,
}

impl SynicProgram {
    /// Loads the program (code, IDT) and starts every vCPU at its first instruction.
    pub fn load(&self, vm: &mut Vm) -> Result<()> {
        self.program.load(vm)
    }

    /// The guest address of `label` (bound in the program), e.g. a second entry point.
    pub fn address_of(&self, label: &CodeLabel) -> Result<u64> {
        self.program.address_of(label)
    }

    /// The vectors with an e2e handler.
    pub fn vectors(&self) -> Vec<u8> {
        self.vectors.clone()
    }
}

impl SynicGuest {
    /// A program with the toolkit prologue. Every vCPU runs it from the top.
    pub fn new() -> Result<Self> {
        Ok(Self {
            g: GuestBuilder::new()?,
            handlers: Vec::new(),
        })
    }

    /// The toolkit builder, for its helpers (reports, MSRs, hypercall page, ...).
    pub fn toolkit(&mut self) -> &mut GuestBuilder {
        &mut self.g
    }

    /// Runs `f` on the assembler.
    pub fn emit<E>(
        &mut self,
        f: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), E>,
    ) -> Result<()>
    where
        Error: From<E>,
    {
        Ok(f(self.g.asm())?)
    }

    /// A new label (for [`SynicGuest::emit`] and [`SynicGuest::jump_unless_cpu`]).
    pub fn label(&mut self) -> CodeLabel {
        self.g.asm().create_label()
    }

    /// Binds `label` here.
    pub fn bind(&mut self, label: &mut CodeLabel) -> Result<()> {
        self.emit(|a| {
            a.set_label(label)?;
            a.nop()
        })
    }

    /// Jumps to `label` unless this is vCPU `cpu`.
    pub fn jump_unless_cpu(&mut self, cpu: u32, label: CodeLabel) -> Result<()> {
        self.g.jump_unless_cpu(cpu, label)
    }

    /// Installs a message handler on `vector` for SINT `sint`: copy the slot to the log, free
    /// the slot, EOI (unless `eoi` is [`Eoi::Auto`]), then test MessagePending and write EOM
    /// if it was set, exactly in the TLFS order.
    pub fn message_isr(&mut self, vector: u8, sint: u8, eoi: Eoi) -> Result<()> {
        self.add_handler(vector, sint, HandlerKind::Message(eoi))
    }

    /// Installs an event-flag handler on `vector` for SINT `sint`: atomically takes every set
    /// flag of the SINT's 2048 (recording them), then EOIs.
    pub fn flags_isr(&mut self, vector: u8, sint: u8) -> Result<()> {
        self.add_handler(vector, sint, HandlerKind::Flags)
    }

    /// Installs a handler that first takes the SINT's event flags, then its message (one EOI),
    /// as a VMBus-style guest does when a SINT carries both.
    pub fn flags_and_message_isr(&mut self, vector: u8, sint: u8) -> Result<()> {
        self.add_handler(vector, sint, HandlerKind::FlagsAndMessage)
    }

    fn add_handler(&mut self, vector: u8, sint: u8, kind: HandlerKind) -> Result<()> {
        if !(32..=254).contains(&vector) || sint > 15 {
            return Err(Error::Assemble(format!(
                "handler for vector {vector:#x}, SINT {sint}: vector must be 32..=254, SINT 0..=15"
            )));
        }
        self.handlers.retain(|h| h.vector != vector);
        let entry = self.g.asm().create_label();
        self.handlers.push(Handler {
            vector,
            sint,
            kind,
            entry,
        });
        Ok(())
    }

    /// Software-enables the local APIC. Clobbers RAX.
    pub fn lapic_enable(&mut self) -> Result<()> {
        self.g.lapic_enable()
    }

    /// WRMSR of a constant. Clobbers RAX, RCX, RDX. A #GP is recovered and reported.
    pub fn wrmsr(&mut self, msr: u32, value: u64) -> Result<()> {
        self.g.wrmsr(msr, value)
    }

    /// RDMSR, reported under [`tag::MSR`] (or a toolkit GP report if it faults).
    pub fn rdmsr_report(&mut self, msr: u32) -> Result<()> {
        self.g.rdmsr_report(msr, tag::MSR)
    }

    /// WRMSR of this vCPU's area address plus `offset`, or-ed with `low_bits` (page registers).
    /// Clobbers RAX, RCX, RDX.
    pub fn wrmsr_area(&mut self, msr: u32, offset: u64, low_bits: u64) -> Result<()> {
        self.emit(|a| {
            area_address(a, rax, offset | low_bits)?;
            a.mov(rdx, rax)?;
            a.shr(rdx, 32)?;
            a.mov(ecx, msr)?;
            a.wrmsr()
        })
    }

    /// Writes SINT `sint`. Clobbers RAX, RCX, RDX.
    pub fn set_sint(&mut self, sint: u8, value: SintValue) -> Result<()> {
        self.wrmsr(index::SINT0 + u32::from(sint), value.raw())
    }

    /// Enables this vCPU's message page (SIMP). Clobbers RAX, RCX, RDX.
    pub fn enable_simp(&mut self) -> Result<()> {
        self.wrmsr_area(index::SIMP, layout::SIMP, 1)
    }

    /// Enables this vCPU's event-flags page (SIEFP). Clobbers RAX, RCX, RDX.
    pub fn enable_siefp(&mut self) -> Result<()> {
        self.wrmsr_area(index::SIEFP, layout::SIEFP, 1)
    }

    /// Sets SCONTROL.Enable. Clobbers RAX, RCX, RDX.
    pub fn enable_scontrol(&mut self) -> Result<()> {
        self.wrmsr(index::SCONTROL, 1)
    }

    /// The usual bring-up, in the order Linux uses for SINTs before pages so that no first
    /// interrupt is lost: APIC on, `sints` unmasked with their vectors, SIMP, SIEFP,
    /// SCONTROL. Clobbers RAX, RCX, RDX.
    pub fn synic_up(&mut self, sints: &[(u8, SintValue)]) -> Result<()> {
        self.lapic_enable()?;
        for &(sint, value) in sints {
            self.set_sint(sint, value)?;
        }
        self.enable_simp()?;
        self.enable_siefp()?;
        self.enable_scontrol()
    }

    /// Writes GUEST_OS_ID and enables the hypercall page. Clobbers RAX, RCX, RDX.
    pub fn enable_hypercalls(&mut self) -> Result<()> {
        self.g.enable_hypercall_page(guest::layout::HYPERCALL_PAGE)
    }

    /// Runs the host's action for `step` (on this vCPU's thread) before continuing.
    /// Clobbers RAX, RDX.
    pub fn step(&mut self, step: u32) -> Result<()> {
        self.emit(|a| {
            a.mov(eax, step)?;
            a.mov(edx, u32::from(ports::STEP))?;
            a.out(dx, eax)
        })
    }

    /// Opens interrupts while the host sleeps a few ms, twice, so any interrupt raised so far
    /// is taken; returns with interrupts off. Clobbers RAX, RDX.
    pub fn settle(&mut self) -> Result<()> {
        self.emit(|a| {
            a.sti()?;
            for _ in 0..2 {
                a.mov(edx, u32::from(ports::SETTLE))?;
                a.out(dx, eax)?;
                a.nop()?;
            }
            a.cli()
        })
    }

    /// Waits (`sti; hlt`) until the state counter at `offset` reaches `count`; returns with
    /// interrupts off. A lost interrupt leaves the guest halted: the host's time limit ends
    /// the run. Clobbers RAX, RCX.
    pub fn wait_counter(&mut self, offset: u64, count: u64) -> Result<()> {
        self.emit(|a| {
            let mut top = a.create_label();
            let mut done = a.create_label();
            a.set_label(&mut top)?;
            a.cli()?;
            area_address(a, rax, layout::STATE + offset)?;
            a.mov(rax, qword_ptr(rax))?;
            a.mov(rcx, count)?;
            a.cmp(rax, rcx)?;
            a.jae(done)?;
            // STI's shadow makes "sti; hlt" atomic: an interrupt cannot slip in between.
            a.sti()?;
            a.hlt()?;
            a.jmp(top)?;
            a.set_label(&mut done)?;
            a.nop()
        })
    }

    /// Like [`SynicGuest::wait_counter`], but gives up after `rounds` settle periods (interrupts
    /// open while the host sleeps [`layout::SETTLE_MS`] ms each): for things that may
    /// legitimately never happen. Returns with interrupts off. Clobbers RAX, RCX, RDX.
    pub fn wait_counter_bounded(&mut self, offset: u64, count: u64, rounds: u32) -> Result<()> {
        self.emit(|a| {
            let mut top = a.create_label();
            let mut done = a.create_label();
            a.mov(edx, rounds)?;
            a.push(rdx)?;
            a.set_label(&mut top)?;
            a.cli()?;
            area_address(a, rax, layout::STATE + offset)?;
            a.mov(rax, qword_ptr(rax))?;
            a.mov(rcx, count)?;
            a.cmp(rax, rcx)?;
            a.jae(done)?;
            a.cmp(qword_ptr(rsp), 0)?;
            a.je(done)?;
            a.dec(qword_ptr(rsp))?;
            a.sti()?;
            a.mov(edx, u32::from(ports::SETTLE))?;
            a.out(dx, eax)?;
            a.jmp(top)?;
            a.set_label(&mut done)?;
            a.add(rsp, 8)
        })
    }

    /// Waits until this vCPU has taken `count` messages in all.
    pub fn wait_messages(&mut self, count: u64) -> Result<()> {
        self.wait_counter(state::MESSAGES, count)
    }

    /// Reports the state counter at `offset` under [`tag::VALUE`]. Clobbers RAX.
    pub fn report_counter(&mut self, offset: u64) -> Result<()> {
        self.emit(|a| {
            area_address(a, rax, layout::STATE + offset)?;
            a.mov(rax, qword_ptr(rax))
        })?;
        self.g.report_reg(tag::VALUE, rax)
    }

    /// Reports `value` under [`tag::CHECKPOINT`].
    pub fn checkpoint(&mut self, value: u64) -> Result<()> {
        self.g.report(tag::CHECKPOINT, value)
    }

    /// Reports RAX under [`tag::HYPERCALL`].
    pub fn report_rax(&mut self) -> Result<()> {
        self.g.report_reg(tag::HYPERCALL, rax)
    }

    /// Reports RAX under `tag`.
    pub fn report_rax_as(&mut self, tag: u32) -> Result<()> {
        self.g.report_reg(tag, rax)
    }

    /// Builds an HvPostMessage input in this vCPU's input page and calls it; RAX = result.
    /// Clobbers RAX, RCX, RDX, RDI, R8.
    pub fn post_message(&mut self, input: PostInput) -> Result<()> {
        self.emit(|a| {
            area_address(a, rdi, layout::HC_INPUT + input.offset)?;
            a.mov(dword_ptr(rdi), input.connection_id)?;
            a.mov(dword_ptr(rdi + 4), 0u32)?;
            a.mov(dword_ptr(rdi + 8), input.message_type)?;
            a.mov(dword_ptr(rdi + 12), input.payload_size)?;
            // 30 payload qwords: tag, tag + 1, ... (the receiver checks them).
            a.mov(rax, input.payload_tag)?;
            for i in 0..30 {
                a.mov(qword_ptr(rdi + 16 + i * 8), rax)?;
                a.inc(rax)?;
            }
            a.mov(rcx, control(HVCALL_POST_MESSAGE, false))?;
            a.mov(rdx, rdi)?;
            area_address(a, r8, layout::HC_OUTPUT)?;
            call_hypercall_page(a)
        })
    }

    /// HvSignalEvent, fast form (`connection_id | flag << 32` in RDX); RAX = result.
    /// Clobbers RAX, RCX, RDX, R8.
    pub fn signal_event_fast(&mut self, connection_id: u32, flag: u16) -> Result<()> {
        self.hypercall_raw(
            control(HVCALL_SIGNAL_EVENT, true),
            u64::from(connection_id) | u64::from(flag) << 32,
        )
    }

    /// HvSignalEvent with its 8-byte input in memory at the input page + `offset`.
    /// Clobbers RAX, RCX, RDX, R8.
    pub fn signal_event_memory(
        &mut self,
        connection_id: u32,
        flag: u16,
        offset: u64,
    ) -> Result<()> {
        self.emit(|a| {
            area_address(a, rdx, layout::HC_INPUT + offset)?;
            a.mov(dword_ptr(rdx), connection_id)?;
            a.mov(word_ptr(rdx + 4), u32::from(flag))?;
            a.mov(word_ptr(rdx + 6), 0u32)?;
            a.mov(rcx, control(HVCALL_SIGNAL_EVENT, false))?;
            a.xor(r8, r8)?;
            call_hypercall_page(a)
        })
    }

    /// Calls the hypercall page with RCX = `control`, RDX = `param0`, R8 = 0; RAX = result.
    /// Clobbers RAX, RCX, RDX, R8.
    pub fn hypercall_raw(&mut self, control: u64, param0: u64) -> Result<()> {
        self.emit(|a| {
            a.mov(rcx, control)?;
            a.mov(rdx, param0)?;
            a.xor(r8, r8)?;
            call_hypercall_page(a)
        })
    }

    /// Polls SINT `sint`'s slot until a message is there, then takes it like a handler does
    /// (log, free, MessagePending -> EOM) but without EOI, counting it under
    /// [`state::POLLED`]. Interrupts stay as they are. Clobbers RAX, RBX, RCX, RDX, RSI, RDI.
    pub fn poll_message(&mut self, sint: u8) -> Result<()> {
        self.take_polled(sint, true)
    }

    /// Takes SINT `sint`'s message like [`SynicGuest::poll_message`] if one is in the slot;
    /// does nothing if the slot is empty. Clobbers RAX, RBX, RCX, RDX, RSI, RDI.
    pub fn take_if_present(&mut self, sint: u8) -> Result<()> {
        self.take_polled(sint, false)
    }

    fn take_polled(&mut self, sint: u8, wait: bool) -> Result<()> {
        self.emit(|a| {
            let mut top = a.create_label();
            let mut done = a.create_label();
            a.set_label(&mut top)?;
            area_address(a, rsi, layout::SIMP + u64::from(sint) * 256)?;
            a.pause()?;
            a.cmp(dword_ptr(rsi), 0)?;
            if wait {
                a.je(top)?;
            } else {
                a.je(done)?;
            }
            a.mov(ebx, u32::from(sint))?;
            handlers::take_message(a, false)?;
            area_address(a, rax, layout::STATE + state::POLLED)?;
            a.inc(qword_ptr(rax))?;
            a.set_label(&mut done)?;
            Ok::<_, Error>(a.nop()?)
        })
    }

    /// Spins (interrupts as they are) until SINT `sint`'s slot holds a message with
    /// MessagePending set, i.e. the host has queued another behind it. Clobbers RAX.
    pub fn wait_pending(&mut self, sint: u8) -> Result<()> {
        self.emit(|a| {
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.pause()?;
            area_address(a, rax, layout::SIMP + u64::from(sint) * 256)?;
            a.cmp(dword_ptr(rax), 0)?;
            a.je(top)?;
            a.test(byte_ptr(rax + 5), 1)?;
            a.je(top)
        })
    }

    /// Binds `label` as a second entry point: vCPUs started there (RDI = index) get the same
    /// prologue as at the first instruction (R15, R14). Used to resume a saved guest in a new
    /// VM, whose local APIC starts from reset.
    pub fn entry_point(&mut self, label: &mut CodeLabel) -> Result<()> {
        self.emit(|a| {
            a.set_label(label)?;
            a.mov(r15, rdi)?;
            a.mov(r14, r15)?;
            a.shl(r14, 12)?;
            a.mov(rax, guest::layout::PERCPU_BASE)?;
            a.add(r14, rax)
        })
    }

    /// Stops the VM with exit code `code`. Clobbers RAX.
    pub fn exit(&mut self, code: u32) -> Result<()> {
        self.g.exit(code)
    }

    /// Reports the message type in SINT `sint`'s slot (0 = empty) under [`tag::VALUE`].
    /// Clobbers RAX.
    pub fn report_slot_type(&mut self, sint: u8) -> Result<()> {
        self.emit(|a| {
            area_address(a, rax, layout::SIMP + u64::from(sint) * 256)?;
            a.mov(eax, dword_ptr(rax))
        })?;
        self.g.report_reg(tag::VALUE, rax)
    }

    /// Stores RAX in scratch slot `n` of the state page. Clobbers RCX.
    pub fn store_rax(&mut self, n: u64) -> Result<()> {
        self.emit(|a| {
            area_address(a, rcx, layout::STATE + state::SCRATCH + n * 8)?;
            a.mov(qword_ptr(rcx), rax)
        })
    }

    /// Sets sync flag `n` (another vCPU may be waiting for it). Clobbers RAX.
    pub fn set_sync(&mut self, n: u64) -> Result<()> {
        self.emit(|a| {
            a.mov(rax, layout::SYNC_PAGE + n * 8)?;
            // A locked write: the flag is visible to the other vCPUs before anything this
            // vCPU does next.
            a.lock().inc(qword_ptr(rax))
        })
    }

    /// Spins (interrupts as they are) until sync flag `n` is set. Clobbers RAX, RCX.
    pub fn wait_sync(&mut self, n: u64) -> Result<()> {
        self.wait_sync_count(n, 1)
    }

    /// Spins until sync flag `n` was set `count` times (by as many vCPUs). Clobbers RAX, RCX.
    pub fn wait_sync_count(&mut self, n: u64, count: u64) -> Result<()> {
        self.emit(|a| {
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.pause()?;
            a.mov(rax, layout::SYNC_PAGE + n * 8)?;
            a.mov(rcx, count)?;
            a.cmp(qword_ptr(rax), rcx)?;
            a.jb(top)
        })
    }

    /// Writes `command` to the hyperv-testdev port (QEMU's protocol). Clobbers RAX, RDX.
    pub fn testdev(&mut self, command: u32) -> Result<()> {
        self.emit(|a| {
            a.mov(eax, command)?;
            a.mov(edx, u32::from(synic_vmm::layout::ports::HV_TESTDEV))?;
            a.out(dx, eax)
        })
    }

    /// CPUID leaf `leaf`, EAX reported under [`tag::VALUE`]. Clobbers RAX, RBX, RCX, RDX.
    pub fn report_cpuid_eax(&mut self, leaf: u32) -> Result<()> {
        self.emit(|a| {
            a.mov(eax, leaf)?;
            a.xor(ecx, ecx)?;
            a.cpuid()
        })?;
        self.g.report_reg(tag::VALUE, rax)
    }

    /// Reports CPUID leaf `leaf`'s EAX, EBX, ECX and EDX under [`tag::VALUE`], in that order.
    /// Clobbers RAX, RBX, RCX, RDX.
    pub fn report_cpuid(&mut self, leaf: u32) -> Result<()> {
        self.emit(|a| {
            a.mov(eax, leaf)?;
            a.xor(ecx, ecx)?;
            a.cpuid()
        })?;
        for reg in [rax, rbx, rcx, rdx] {
            self.g.report_reg(tag::VALUE, reg)?;
        }
        Ok(())
    }

    /// Reports bit `vector` of the 256-bit local APIC register array at `base` (ISR 0x100,
    /// TMR 0x180, IRR 0x200) as 0 or 1 under [`tag::VALUE`]. Clobbers RAX, RCX.
    pub fn report_lapic_bit(&mut self, base: u32, vector: u8) -> Result<()> {
        let reg = synic_vmm::layout::LAPIC_ADDR + u64::from(base) + u64::from(vector / 32) * 16;
        self.emit(|a| {
            a.mov(rax, reg)?;
            a.mov(eax, dword_ptr(rax))?;
            a.mov(ecx, u32::from(vector % 32))?;
            a.shr(eax, cl)?;
            a.and(eax, 1)
        })?;
        self.g.report_reg(tag::VALUE, rax)
    }

    /// Reports how many interrupts of `vector` the toolkit ISR counted, under [`tag::VALUE`].
    /// Clobbers RAX.
    pub fn report_toolkit_irqs(&mut self, vector: u8) -> Result<()> {
        let offset = guest::layout::IRQ_COUNTERS + u64::from(vector) * 8;
        self.emit(|a| a.mov(rax, qword_ptr(r14 + offset as i32)))?;
        self.g.report_reg(tag::VALUE, rax)
    }

    /// Clears event flag `flag` of SINT `sint` in this vCPU's event-flags page with a locked
    /// BTR (as a guest acknowledges a flag). Clobbers RAX.
    pub fn clear_event_flag(&mut self, sint: u8, flag: u32) -> Result<()> {
        let dword = u64::from(sint) * 256 + u64::from(flag / 32) * 4;
        self.emit(|a| {
            area_address(a, rax, layout::SIEFP + dword)?;
            a.lock().btr(dword_ptr(rax), flag % 32)
        })
    }

    /// Enters the e2e handler of `vector` as a delivery the platform made up inside another
    /// handler would (handler depth 1 around a software `int`; the lab's emulated SVM does
    /// this: docs/kernel-mode-lab.md). The handler must count it under [`state::NESTED`] and
    /// return touching nothing. Clobbers RAX.
    pub fn nested_delivery(&mut self, vector: u8) -> Result<()> {
        let entry = self
            .handlers
            .iter()
            .find(|h| h.vector == vector)
            .map(|h| h.entry)
            .ok_or_else(|| Error::Assemble(format!("no e2e handler on vector {vector:#x}")))?;
        self.emit(|a| {
            area_address(a, rax, layout::STATE)?;
            a.mov(qword_ptr(rax + state::DEPTH as i32), 1)?;
            // The frame an interrupt delivery pushes (SS, RSP, RFLAGS, CS, RIP), then the
            // handler. (`int n` would do the same, but this host's KVM fails to emulate it.)
            a.mov(rax, rsp)?;
            a.push(0x18)?; // placeholder for SS, replaced below
            a.mov(qword_ptr(rsp), ss)?;
            a.push(rax)?;
            a.pushfq()?;
            a.push(0x10)?; // placeholder for CS, replaced below
            a.mov(qword_ptr(rsp), cs)?;
            a.call(entry)?;
            area_address(a, rax, layout::STATE)?;
            a.mov(qword_ptr(rax + state::DEPTH as i32), 0)
        })
    }

    /// `cli` (`true`) or `sti` (`false`).
    pub fn interrupts_off(&mut self, off: bool) -> Result<()> {
        self.emit(|a| if off { a.cli() } else { a.sti() })
    }

    /// Writes the local APIC's EOI register. Clobbers RAX.
    pub fn eoi(&mut self) -> Result<()> {
        self.g.eoi()
    }

    /// Stops the VM with exit code 0 (the host treats anything else as a failure).
    pub fn exit_ok(&mut self) -> Result<()> {
        self.g.exit(0)
    }

    /// `cli; hlt` forever (a vCPU whose part is done while another finishes the program).
    pub fn halt(&mut self) -> Result<()> {
        self.g.halt()
    }

    /// Assembles the program: main code, then the e2e handlers, then the toolkit's.
    pub fn build(mut self) -> Result<SynicProgram> {
        self.g.halt()?;
        let labels = handlers::emit(self.g.asm(), &self.handlers)?;
        let vectors = labels.iter().map(|&(v, _)| v).collect();
        for (vector, label) in labels {
            self.g.gate(vector, label)?;
        }
        let program = self.g.build()?;
        Ok(SynicProgram { program, vectors })
    }
}

/// `reg = this vCPU's area + offset` (from R15).
const _: () = assert!(
    AREA_BASE + (layout::AREA_SIZE << 5) < i32::MAX as u64,
    "32 vCPU areas must lie below 2 GiB"
);

pub(crate) fn area_address(
    a: &mut CodeAssembler,
    reg: AsmRegister64,
    offset: u64,
) -> std::result::Result<(), iced_x86::IcedError> {
    assert!(
        offset < layout::AREA_SIZE,
        "offset {offset:#x} is outside a vCPU area"
    );
    a.mov(reg, r15)?;
    a.shl(reg, AREA_SHIFT)?;
    // Below 2 GiB (asserted above), so the sign-extended imm32 is the address.
    a.add(reg, (AREA_BASE + offset) as i32)
}

fn call_hypercall_page(a: &mut CodeAssembler) -> Result<()> {
    synic_vmm::guest::synic::call_hypercall_page(a, guest::layout::HYPERCALL_PAGE)
}
