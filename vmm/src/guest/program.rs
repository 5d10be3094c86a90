//! An assembled program: code, IDT gates, and loading it into a VM.

use iced_x86::code_asm::{CodeAssembler, CodeAssemblerResult, CodeLabel};
use iced_x86::BlockEncoderOptions;
use vm_memory::{Bytes, GuestAddress};

use super::{asm_err, layout};
use crate::boot::{LongModeEntry, CODE64_SELECTOR};
use crate::error::{Error, Result};
use crate::layout::{IDT_ADDR, IDT_SIZE};
use crate::vm::Vm;

/// A program ready to load: code at [`layout::CODE_BASE`] and its IDT.
#[derive(Debug)]
pub struct GuestProgram {
    result: CodeAssemblerResult,
    idt: Vec<u8>,
}

/// A 64-bit interrupt gate: present, DPL 0, kernel code segment.
fn gate(handler: u64) -> [u8; 16] {
    let low = (handler & 0xFFFF)
        | (u64::from(CODE64_SELECTOR) << 16)
        | (0x8E << 40)
        | (((handler >> 16) & 0xFFFF) << 48);
    let high = handler >> 32;
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&low.to_le_bytes());
    g[8..].copy_from_slice(&high.to_le_bytes());
    g
}

impl GuestProgram {
    pub(super) fn assemble(mut a: CodeAssembler, gates: Vec<(u8, CodeLabel)>) -> Result<Self> {
        let result = a
            .assemble_options(
                layout::CODE_BASE,
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .map_err(asm_err)?;
        let mut idt = vec![0u8; IDT_SIZE as usize];
        for (vector, label) in gates {
            let at = usize::from(vector) * 16;
            let addr = result.label_ip(&label).map_err(asm_err)?;
            idt[at..at + 16].copy_from_slice(&gate(addr));
        }
        Ok(Self { result, idt })
    }

    /// The machine code.
    pub fn code(&self) -> &[u8] {
        &self.result.inner.code_buffer
    }

    /// The guest address of `label` (created with the builder's assembler).
    pub fn address_of(&self, label: &CodeLabel) -> Result<u64> {
        self.result.label_ip(label).map_err(asm_err)
    }

    /// Writes code and IDT into the VM's memory and starts every vCPU at the entry point in
    /// long mode (APs too, without INIT/SIPI).
    pub fn load(&self, vm: &mut Vm) -> Result<()> {
        let vcpus = vm.config().vcpus;
        if vcpus > layout::MAX_VCPUS {
            return Err(Error::Config(format!(
                "toolkit programs support at most {} vCPUs",
                layout::MAX_VCPUS
            )));
        }
        let code = self.code();
        let code_end = layout::CODE_BASE + code.len() as u64;
        if code_end > layout::PERCPU_BASE {
            return Err(Error::Assemble(format!(
                "program is {} bytes: too large",
                code.len()
            )));
        }
        let mem = vm.memory();
        let write = |bytes: &[u8], gpa: u64| {
            mem.write_slice(bytes, GuestAddress(gpa))
                .map_err(|source| Error::GuestMemory {
                    what: "guest program",
                    gpa,
                    source,
                })
        };
        write(code, layout::CODE_BASE)?;
        write(&self.idt, IDT_ADDR)?;
        write(
            &vec![0u8; (layout::PERCPU_SIZE * u64::from(vcpus)) as usize],
            layout::PERCPU_BASE,
        )?;
        vm.boot_long_mode(|cpu| LongModeEntry {
            rip: layout::CODE_BASE,
            rsp: layout::stack_top(cpu),
            rdi: u64::from(cpu),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_splits_the_handler_address() {
        let g = gate(0x1234_5678_9ABC_DEF0);
        let low = u64::from_le_bytes(g[..8].try_into().unwrap());
        assert_eq!(low & 0xFFFF, 0xDEF0);
        assert_eq!((low >> 48) & 0xFFFF, 0x9ABC);
        assert_eq!((low >> 16) & 0xFFFF, u64::from(CODE64_SELECTOR));
        assert_eq!((low >> 40) & 0xFF, 0x8E);
        assert_eq!(u64::from_le_bytes(g[8..].try_into().unwrap()), 0x1234_5678);
    }

    #[test]
    fn every_exception_and_isr_vector_gets_a_gate() {
        let mut b = super::super::GuestBuilder::new().unwrap();
        b.isr(0x40, super::super::Isr::REPORT_AND_EOI).unwrap();
        b.exit(0).unwrap();
        let p = b.build().unwrap();
        let present = |v: usize| p.idt[v * 16 + 5] & 0x80 != 0;
        assert!((0..32).all(present));
        assert!(present(0x40) && present(0xFF));
        assert!(!present(0x41) && !present(0x20));
        assert!(b_is_rejected());
    }

    fn b_is_rejected() -> bool {
        let mut b = super::super::GuestBuilder::new().unwrap();
        b.isr(13, super::super::Isr::QUIET).is_err()
            && b.isr(0xFF, super::super::Isr::QUIET).is_err()
    }
}
