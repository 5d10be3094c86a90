//! Guest-side SynIC code: enabling the SynIC in the order guests use, and the message-slot
//! release protocol every message handler ends with.

use iced_x86::code_asm::*;

use super::{asm_err, handlers, GuestBuilder};
use crate::error::Result;

/// Where a program puts its SynIC pages, and which SINTs it unmasks with which vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynicSetup {
    /// Message page GPA (4 KiB aligned).
    pub simp: u64,
    /// Event-flags page GPA (4 KiB aligned).
    pub siefp: u64,
    /// `(sint, vector)` pairs to unmask (vector 16..=255).
    pub sints: Vec<(u8, u8)>,
}

impl SynicSetup {
    /// The message slot of `sint`.
    pub fn slot(&self, sint: u8) -> u64 {
        self.simp + 256 * u64::from(sint)
    }

    /// The event-flag area (2048 flags) of `sint`.
    pub fn flags(&self, sint: u8) -> u64 {
        self.siefp + 256 * u64::from(sint)
    }
}

impl GuestBuilder {
    /// Enables the SynIC as Linux does: SINTs unmasked first, then SIEFP, SIMP and SCONTROL
    /// last (so no message can arrive before its SINT has a vector). Clobbers RAX, RCX, RDX.
    pub fn synic_enable(&mut self, setup: &SynicSetup) -> Result<()> {
        for &(sint, vector) in &setup.sints {
            self.wrmsr(synic_msr::index::SINT0 + u32::from(sint), u64::from(vector))?;
        }
        self.wrmsr(synic_msr::index::SIEFP, setup.siefp | 1)?;
        self.wrmsr(synic_msr::index::SIMP, setup.simp | 1)?;
        self.wrmsr(synic_msr::index::SCONTROL, 1)
    }
}

/// Frees the message slot at `[slot]` the TLFS way: store message_type = 0, full barrier,
/// then read MessagePending and write EOM only if it was set (the host queued more behind
/// this message). Clobbers RAX, RCX, RDX; `slot` must be another register.
pub fn release_slot(a: &mut CodeAssembler, slot: AsmRegister64) -> Result<()> {
    let mut done = a.create_label();
    a.mov(dword_ptr(slot), 0u32).map_err(asm_err)?;
    // The host sets MessagePending, then re-reads the type; the guest clears the type, then
    // reads MessagePending. The barrier makes sure one of the two sees the other's store.
    a.mfence().map_err(asm_err)?;
    a.test(byte_ptr(slot + 5), 1).map_err(asm_err)?;
    a.jz(done).map_err(asm_err)?;
    eom(a)?;
    a.set_label(&mut done).map_err(asm_err)?;
    a.nop().map_err(asm_err)
}

/// `wrmsr(EOM, 0)`. Clobbers RAX, RCX, RDX.
pub fn eom(a: &mut CodeAssembler) -> Result<()> {
    a.mov(ecx, synic_msr::index::EOM).map_err(asm_err)?;
    a.xor(eax, eax).map_err(asm_err)?;
    a.xor(edx, edx).map_err(asm_err)?;
    a.wrmsr().map_err(asm_err)
}

/// Writes the local APIC's EOI register. Clobbers RAX.
pub fn apic_eoi(a: &mut CodeAssembler) -> Result<()> {
    handlers::emit_eoi(a)
}

/// Counts an interrupt of `vector` in the vCPU's data page (what
/// [`GuestBuilder::wait_for_irqs`] waits for), from a program's own handler.
pub fn count_irq(a: &mut CodeAssembler, vector: u8) -> Result<()> {
    a.inc(qword_ptr(r14 + u32::from(vector) * 8))
        .map_err(asm_err)
}

/// Calls the hypercall page at `page` with RCX/RDX/R8 already loaded; the status comes back
/// in RAX. Clobbers RAX and R11 (used for the call target).
pub fn call_hypercall_page(a: &mut CodeAssembler, page: u64) -> Result<()> {
    a.mov(r11, page).map_err(asm_err)?;
    a.call(r11).map_err(asm_err)
}
