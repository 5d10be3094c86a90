//! Guest programs assembled in Rust (iced-x86's `CodeAssembler`): 64-bit code with an IDT,
//! exception and interrupt handlers, and helpers for MSRs, the local APIC, hypercalls and
//! reporting to the host.
//!
//! Every vCPU enters the program's first instruction in long mode with interrupts off,
//! RDI = its vCPU index and RSP = its own stack. The prologue keeps the vCPU index in **R15**
//! and the vCPU's data page in **R14** for the whole program: code built here must not
//! change them. The data page holds the per-vector interrupt counters the ISRs increment and
//! the #GP count ([`layout`]).
//!
//! ```no_run
//! use synic_vmm::guest::{tag, GuestBuilder};
//! use iced_x86::code_asm::*;
//! # fn main() -> Result<(), synic_vmm::Error> {
//! let mut g = GuestBuilder::new()?;
//! g.rdmsr_report(0x4000_0080, tag::USER)?; // reports the value, or a GP report
//! g.exit(0)?;
//! let program = g.build()?;
//! # Ok(()) }
//! ```

mod handlers;
mod program;
pub mod synic;

use iced_x86::code_asm::*;

use crate::error::{Error, Result};
use crate::layout::{ports, LAPIC_ADDR};
pub use program::GuestProgram;
pub use synic::SynicSetup;

/// Where toolkit programs live in guest memory.
pub mod layout {
    /// The program's code (and entry point).
    pub const CODE_BASE: u64 = 0x10_0000;
    /// First vCPU's data page; vCPU n's is at `PERCPU_BASE + n * PERCPU_SIZE` (in R14).
    pub const PERCPU_BASE: u64 = 0x20_0000;
    /// Size of a vCPU's data page.
    pub const PERCPU_SIZE: u64 = 0x1000;
    /// Offset in the data page of the 256 interrupt counters (u64 each, by vector).
    pub const IRQ_COUNTERS: u64 = 0;
    /// Offset in the data page of the #GP counter (u64).
    pub const GP_COUNT: u64 = 0x800;
    /// Offset in the data page of the ECX of the last recovered #GP (u64).
    pub const LAST_GP_MSR: u64 = 0x808;
    /// Offset in the data page of the toolkit ISRs running now (u64: 0 or 1, since every
    /// gate is an interrupt gate and IF stays clear until `iretq`).
    pub const ISR_DEPTH: u64 = 0x810;
    /// Offset in the data page of the toolkit ISR entries made while another ran (u64):
    /// deliveries the platform made up (the kvm-lab's emulated SVM delivers an injected vector
    /// once more inside the ISR, docs/kernel-mode-lab.md). Not counted as interrupts.
    pub const NESTED_ISRS: u64 = 0x818;
    /// Top of vCPU 0's stack; vCPU n's is `STACK_SIZE * n` lower.
    pub const STACKS_TOP: u64 = 0x40_0000;
    /// Size of one vCPU's stack.
    pub const STACK_SIZE: u64 = 0x4000;
    /// Most vCPUs a toolkit program supports (stacks and data pages must not meet).
    pub const MAX_VCPUS: u32 = 32;
    /// Where [`super::GuestBuilder::enable_hypercall_page`] puts the hypercall page by default.
    pub const HYPERCALL_PAGE: u64 = 0x41_0000;
    /// First of the free pages programs may use for anything (SynIC pages, hypercall
    /// input/output); free up to the end of RAM.
    pub const FREE_PAGES: u64 = 0x50_0000;

    /// vCPU `cpu`'s data page.
    pub const fn percpu(cpu: u32) -> u64 {
        PERCPU_BASE + cpu as u64 * PERCPU_SIZE
    }

    /// vCPU `cpu`'s initial stack pointer.
    pub const fn stack_top(cpu: u32) -> u64 {
        STACKS_TOP - cpu as u64 * STACK_SIZE
    }
}

/// Report tags the toolkit's handlers use; programs use [`tag::USER`] and up.
pub mod tag {
    /// A recovered #GP on RDMSR/WRMSR; value = ECX (the MSR index).
    pub const GP: u32 = 1;
    /// An interrupt reached a toolkit ISR; value = the vector.
    pub const IRQ: u32 = 2;
    /// An exception the program did not expect; value = vector | faulting RIP << 8 (for #NP
    /// from an absent gate, the error code says which vector: `(err >> 3) & 0xFF`).
    pub const EXCEPTION: u32 = 3;
    /// First tag free for programs.
    pub const USER: u32 = 0x100;
}

/// isa-debug-exit value written after an unexpected exception.
pub const EXIT_UNEXPECTED_EXCEPTION: u32 = 0xE0;

/// The GUEST_OS_ID value toolkit programs write (any non-zero value enables hypercalls).
pub const GUEST_OS_ID_VALUE: u64 = 0x8100_0000_0000_0001;

/// What a toolkit ISR does besides counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isr {
    /// Send a [`tag::IRQ`] report (an exit per interrupt).
    pub report: bool,
    /// Write the APIC EOI register before returning (off for AutoEOI-style vectors).
    pub eoi: bool,
}

impl Isr {
    /// Count, report and EOI.
    pub const REPORT_AND_EOI: Isr = Isr {
        report: true,
        eoi: true,
    };
    /// Count and EOI, no exit.
    pub const QUIET: Isr = Isr {
        report: false,
        eoi: true,
    };
}

fn asm_err(e: iced_x86::IcedError) -> Error {
    Error::Asm(e)
}

/// Builds a [`GuestProgram`].
pub struct GuestBuilder {
    a: CodeAssembler,
    isrs: Vec<(u8, Isr)>,
    gates: Vec<(u8, CodeLabel)>,
}

impl std::fmt::Debug for GuestBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestBuilder")
            .field("instructions", &self.a.instructions().len())
            .field("isrs", &self.isrs)
            .finish()
    }
}

impl GuestBuilder {
    /// A program whose prologue sets up R15 (vCPU index) and R14 (data page).
    pub fn new() -> Result<Self> {
        let mut a = CodeAssembler::new(64).map_err(asm_err)?;
        a.mov(r15, rdi).map_err(asm_err)?;
        a.mov(r14, r15).map_err(asm_err)?;
        a.shl(r14, 12).map_err(asm_err)?;
        a.mov(rax, layout::PERCPU_BASE).map_err(asm_err)?;
        a.add(r14, rax).map_err(asm_err)?;
        Ok(Self {
            a,
            isrs: Vec::new(),
            gates: Vec::new(),
        })
    }

    /// The assembler, for instructions the helpers do not cover.
    pub fn asm(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }

    /// Installs a toolkit ISR on `vector` (32..=254): it increments the vCPU's counter for the
    /// vector, then reports and EOIs as `isr` says.
    pub fn isr(&mut self, vector: u8, isr: Isr) -> Result<()> {
        if !(32..=254).contains(&vector) {
            return Err(Error::Assemble(format!(
                "vector {vector} is not an interrupt vector (32..=254)"
            )));
        }
        self.isrs.retain(|(v, _)| *v != vector);
        self.gates.retain(|(v, _)| *v != vector);
        self.isrs.push((vector, isr));
        Ok(())
    }

    /// Points `vector` (32..=254) at the program's own handler at `label`: code the program
    /// emits itself (typically after its main flow has halted or exited), which must preserve
    /// every register it uses, R14 and R15 included, and end in `iretq`. Replaces a toolkit ISR
    /// on the same vector.
    pub fn gate(&mut self, vector: u8, label: CodeLabel) -> Result<()> {
        if !(32..=254).contains(&vector) {
            return Err(Error::Assemble(format!(
                "vector {vector} is not an interrupt vector (32..=254)"
            )));
        }
        self.isrs.retain(|(v, _)| *v != vector);
        self.gates.retain(|(v, _)| *v != vector);
        self.gates.push((vector, label));
        Ok(())
    }

    /// Reports `value` under `tag`. Preserves every register.
    pub fn report(&mut self, tag: u32, value: u64) -> Result<()> {
        self.a.push(rax).map_err(asm_err)?;
        self.a.mov(rax, value).map_err(asm_err)?;
        self.report_reg(tag, rax)?;
        self.a.pop(rax).map_err(asm_err)
    }

    /// Reports the value of `reg` under `tag`. Preserves every register.
    pub fn report_reg(&mut self, tag: u32, reg: AsmRegister64) -> Result<()> {
        handlers::emit_report(&mut self.a, tag, reg)
    }

    /// `mov ecx, msr; rdmsr`: the value lands in EDX:EAX; a #GP is recovered by the #GP
    /// handler (reported as [`tag::GP`], counted, EDX:EAX left as they were).
    pub fn rdmsr(&mut self, msr: u32) -> Result<()> {
        self.a.mov(ecx, msr).map_err(asm_err)?;
        self.a.rdmsr().map_err(asm_err)
    }

    /// RDMSR into RAX (EDX:EAX combined; RAX = `u64::MAX` if the read faulted).
    pub fn rdmsr_rax(&mut self, msr: u32) -> Result<()> {
        self.a.mov(rax, u64::MAX).map_err(asm_err)?;
        self.a.mov(rdx, u64::MAX).map_err(asm_err)?;
        self.rdmsr(msr)?;
        self.a.shl(rdx, 32).map_err(asm_err)?;
        self.a.mov(eax, eax).map_err(asm_err)?;
        self.a.or(rax, rdx).map_err(asm_err)
    }

    /// RDMSR and report the value under `tag` (nothing under `tag` if it faulted: the #GP
    /// handler's report comes instead).
    pub fn rdmsr_report(&mut self, msr: u32, tag: u32) -> Result<()> {
        let mut done = self.a.create_label();
        self.a.mov(rax, layout::GP_COUNT).map_err(asm_err)?;
        self.a.mov(rbx, qword_ptr(r14 + rax)).map_err(asm_err)?;
        self.rdmsr_rax(msr)?;
        self.a.mov(rcx, layout::GP_COUNT).map_err(asm_err)?;
        self.a.cmp(rbx, qword_ptr(r14 + rcx)).map_err(asm_err)?;
        self.a.jne(done).map_err(asm_err)?;
        self.report_reg(tag, rax)?;
        self.a.set_label(&mut done).map_err(asm_err)?;
        self.a.nop().map_err(asm_err)
    }

    /// `wrmsr` of `value` to `msr` (clobbers RAX, RCX, RDX). A #GP is recovered and reported.
    pub fn wrmsr(&mut self, msr: u32, value: u64) -> Result<()> {
        self.a.mov(ecx, msr).map_err(asm_err)?;
        self.a.mov(eax, value as u32).map_err(asm_err)?;
        self.a.mov(edx, (value >> 32) as u32).map_err(asm_err)?;
        self.a.wrmsr().map_err(asm_err)
    }

    /// Software-enables the local APIC (SVR = 0x1FF, spurious vector 0xFF) and sets TPR = 0.
    /// Clobbers RAX.
    pub fn lapic_enable(&mut self) -> Result<()> {
        self.a.mov(rax, LAPIC_ADDR).map_err(asm_err)?;
        self.a
            .mov(dword_ptr(rax + 0xF0), 0x1FFu32)
            .map_err(asm_err)?;
        self.a.mov(dword_ptr(rax + 0x80), 0u32).map_err(asm_err)
    }

    /// Writes the APIC EOI register. Clobbers RAX.
    pub fn eoi(&mut self) -> Result<()> {
        handlers::emit_eoi(&mut self.a)
    }

    /// Waits with `sti; hlt` until this vCPU's counter for `vector` reaches `count`; returns
    /// with interrupts off. Clobbers RAX.
    pub fn wait_for_irqs(&mut self, vector: u8, count: u64) -> Result<()> {
        let mut top = self.a.create_label();
        let mut done = self.a.create_label();
        let a = &mut self.a;
        a.set_label(&mut top).map_err(asm_err)?;
        a.cli().map_err(asm_err)?;
        a.mov(rax, qword_ptr(r14 + u32::from(vector) * 8))
            .map_err(asm_err)?;
        a.mov(rcx, count).map_err(asm_err)?;
        a.cmp(rax, rcx).map_err(asm_err)?;
        a.jae(done).map_err(asm_err)?;
        // STI's one-instruction shadow makes "sti; hlt" atomic: no wakeup is lost.
        a.sti().map_err(asm_err)?;
        a.hlt().map_err(asm_err)?;
        a.jmp(top).map_err(asm_err)?;
        a.set_label(&mut done).map_err(asm_err)?;
        a.nop().map_err(asm_err)
    }

    /// Writes GUEST_OS_ID and enables the hypercall page at `gpa`. Clobbers RAX, RCX, RDX.
    pub fn enable_hypercall_page(&mut self, gpa: u64) -> Result<()> {
        self.wrmsr(synic_msr::index::GUEST_OS_ID, GUEST_OS_ID_VALUE)?;
        self.wrmsr(synic_msr::index::HYPERCALL, gpa | 1)
    }

    /// Calls the hypercall page at `page`: RCX = `input`, RDX = `param0`, R8 = `param1`; the
    /// result is in RAX.
    pub fn hypercall(&mut self, page: u64, input: u64, param0: u64, param1: u64) -> Result<()> {
        let a = &mut self.a;
        a.mov(rcx, input).map_err(asm_err)?;
        a.mov(rdx, param0).map_err(asm_err)?;
        a.mov(r8, param1).map_err(asm_err)?;
        a.mov(rax, page).map_err(asm_err)?;
        a.call(rax).map_err(asm_err)
    }

    /// Jumps to `label` unless this is vCPU `cpu`.
    pub fn jump_unless_cpu(&mut self, cpu: u32, label: CodeLabel) -> Result<()> {
        self.a.cmp(r15, cpu as i32).map_err(asm_err)?;
        self.a.jne(label).map_err(asm_err)
    }

    /// Stops the VM with `code` through isa-debug-exit. Clobbers RAX.
    pub fn exit(&mut self, code: u32) -> Result<()> {
        handlers::emit_exit(&mut self.a, code)
    }

    /// `cli; hlt` forever.
    pub fn halt(&mut self) -> Result<()> {
        handlers::emit_halt(&mut self.a)
    }

    /// Assembles the program at [`layout::CODE_BASE`] with its handlers and IDT.
    pub fn build(mut self) -> Result<GuestProgram> {
        // A program that runs off its end halts instead of running into the handlers.
        handlers::emit_halt(&mut self.a)?;
        let mut gates = handlers::emit_all(&mut self.a, &self.isrs)?;
        gates.extend(self.gates);
        GuestProgram::assemble(self.a, gates)
    }
}

/// The report ports, for code that writes reports by hand.
pub const REPORT_PORTS: [u16; 3] = [ports::REPORT_LOW, ports::REPORT_HIGH, ports::REPORT_TAG];
