//! The handler stubs every toolkit program carries: #GP recovery for RDMSR/WRMSR, a reporting
//! handler for every other exception, the spurious-interrupt vector and the toolkit ISRs.

use iced_x86::code_asm::*;

use super::{asm_err, layout, tag, Isr, EXIT_UNEXPECTED_EXCEPTION};
use crate::error::Result;
use crate::layout::{ports, LAPIC_ADDR};

/// Exceptions that push an error code.
const ERROR_CODE_VECTORS: [u8; 8] = [8, 10, 11, 12, 13, 14, 17, 21];
const GP: u8 = 13;
const SPURIOUS: u8 = 0xFF;
const RDMSR: u32 = 0x320F; // 0F 32, little-endian
const WRMSR: u32 = 0x300F; // 0F 30

pub(super) fn emit_report(a: &mut CodeAssembler, tag: u32, reg: AsmRegister64) -> Result<()> {
    a.push(rax).map_err(asm_err)?;
    a.push(rdx).map_err(asm_err)?;
    a.mov(rax, reg).map_err(asm_err)?;
    a.mov(dx, ports::REPORT_LOW as u32).map_err(asm_err)?;
    a.out(dx, eax).map_err(asm_err)?;
    a.shr(rax, 32).map_err(asm_err)?;
    a.mov(dx, ports::REPORT_HIGH as u32).map_err(asm_err)?;
    a.out(dx, eax).map_err(asm_err)?;
    a.mov(eax, tag).map_err(asm_err)?;
    a.mov(dx, ports::REPORT_TAG as u32).map_err(asm_err)?;
    a.out(dx, eax).map_err(asm_err)?;
    a.pop(rdx).map_err(asm_err)?;
    a.pop(rax).map_err(asm_err)
}

pub(super) fn emit_eoi(a: &mut CodeAssembler) -> Result<()> {
    a.mov(rax, LAPIC_ADDR).map_err(asm_err)?;
    a.mov(dword_ptr(rax + 0xB0), 0u32).map_err(asm_err)
}

pub(super) fn emit_exit(a: &mut CodeAssembler, code: u32) -> Result<()> {
    a.mov(eax, code).map_err(asm_err)?;
    a.out(i32::from(ports::DEBUG_EXIT), eax).map_err(asm_err)
}

pub(super) fn emit_halt(a: &mut CodeAssembler) -> Result<()> {
    let mut top = a.create_label();
    a.set_label(&mut top).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.jmp(top).map_err(asm_err)
}

/// #GP: if the faulting instruction is RDMSR or WRMSR, count it, remember ECX, report it and
/// resume after the instruction; otherwise it is unexpected.
fn emit_gp(a: &mut CodeAssembler) -> Result<()> {
    let mut recover = a.create_label();
    for r in [rax, rbx, rcx, rdx] {
        a.push(r).map_err(asm_err)?;
    }
    // Stack: 4 saved registers, error code, RIP.
    let rip_slot = qword_ptr(rsp + 40);
    a.mov(rbx, rip_slot).map_err(asm_err)?;
    a.movzx(eax, word_ptr(rbx)).map_err(asm_err)?;
    a.cmp(eax, RDMSR as i32).map_err(asm_err)?;
    a.je(recover).map_err(asm_err)?;
    a.cmp(eax, WRMSR as i32).map_err(asm_err)?;
    a.je(recover).map_err(asm_err)?;
    emit_unexpected(a, GP, 40)?;
    a.set_label(&mut recover).map_err(asm_err)?;
    a.mov(rax, layout::GP_COUNT).map_err(asm_err)?;
    a.inc(qword_ptr(r14 + rax)).map_err(asm_err)?;
    a.mov(eax, ecx).map_err(asm_err)?;
    a.mov(rdx, layout::LAST_GP_MSR).map_err(asm_err)?;
    a.mov(qword_ptr(r14 + rdx), rax).map_err(asm_err)?;
    emit_report(a, tag::GP, rax)?;
    a.add(qword_ptr(rsp + 40), 2).map_err(asm_err)?;
    for r in [rdx, rcx, rbx, rax] {
        a.pop(r).map_err(asm_err)?;
    }
    a.add(rsp, 8).map_err(asm_err)?; // error code
    a.iretq().map_err(asm_err)
}

/// Reports vector | RIP << 8 (RIP at `[rsp + rip_offset]`) and stops the VM.
fn emit_unexpected(a: &mut CodeAssembler, vector: u8, rip_offset: i32) -> Result<()> {
    a.mov(rax, qword_ptr(rsp + rip_offset)).map_err(asm_err)?;
    a.shl(rax, 8).map_err(asm_err)?;
    a.or(rax, i32::from(vector)).map_err(asm_err)?;
    emit_report(a, tag::EXCEPTION, rax)?;
    emit_exit(a, EXIT_UNEXPECTED_EXCEPTION)?;
    emit_halt(a)
}

/// A toolkit ISR: counts the vector, reports it if asked, EOIs if asked. An entry while
/// another toolkit ISR runs is a delivery the platform made up (IF is clear in every ISR): it
/// is counted under [`layout::NESTED_ISRS`] instead, and returns without an EOI (the local
/// APIC has the outer vector in service), so no interrupt is counted twice.
fn emit_isr(a: &mut CodeAssembler, vector: u8, isr: Isr) -> Result<()> {
    let mut nested = a.create_label();
    a.push(rax).map_err(asm_err)?;
    a.mov(rax, layout::ISR_DEPTH).map_err(asm_err)?;
    a.cmp(qword_ptr(r14 + rax), 0).map_err(asm_err)?;
    a.jne(nested).map_err(asm_err)?;
    a.inc(qword_ptr(r14 + rax)).map_err(asm_err)?;
    a.inc(qword_ptr(r14 + u32::from(vector) * 8))
        .map_err(asm_err)?;
    if isr.report {
        a.mov(eax, u32::from(vector)).map_err(asm_err)?;
        emit_report(a, tag::IRQ, rax)?;
    }
    if isr.eoi {
        emit_eoi(a)?;
    }
    a.mov(rax, layout::ISR_DEPTH).map_err(asm_err)?;
    a.dec(qword_ptr(r14 + rax)).map_err(asm_err)?;
    a.pop(rax).map_err(asm_err)?;
    a.iretq().map_err(asm_err)?;
    a.set_label(&mut nested).map_err(asm_err)?;
    a.mov(rax, layout::NESTED_ISRS).map_err(asm_err)?;
    a.inc(qword_ptr(r14 + rax)).map_err(asm_err)?;
    a.pop(rax).map_err(asm_err)?;
    a.iretq().map_err(asm_err)
}

/// Emits every handler; returns (vector, label) for each IDT gate to fill.
pub(super) fn emit_all(a: &mut CodeAssembler, isrs: &[(u8, Isr)]) -> Result<Vec<(u8, CodeLabel)>> {
    let mut gates = Vec::new();
    for vector in 0u8..32 {
        let mut l = a.create_label();
        a.set_label(&mut l).map_err(asm_err)?;
        if vector == GP {
            emit_gp(a)?;
        } else {
            let rip_offset = if ERROR_CODE_VECTORS.contains(&vector) {
                8
            } else {
                0
            };
            emit_unexpected(a, vector, rip_offset)?;
        }
        gates.push((vector, l));
    }
    let mut l = a.create_label();
    a.set_label(&mut l).map_err(asm_err)?;
    a.iretq().map_err(asm_err)?; // spurious: no EOI
    gates.push((SPURIOUS, l));
    for &(vector, isr) in isrs {
        let mut l = a.create_label();
        a.set_label(&mut l).map_err(asm_err)?;
        emit_isr(a, vector, isr)?;
        gates.push((vector, l));
    }
    Ok(gates)
}
