//! A multiboot ELF32 test kernel assembled here: checks the boot protocol, prints to COM1,
//! asks fw_cfg for the CPU count, starts the APs with INIT/SIPI and exits through
//! isa-debug-exit.

use iced_x86::code_asm::*;
use synic_vmm::multiboot::{elf32_kernel, ELF32_KERNEL_CODE_OFFSET};

pub const LOAD_ADDR: u32 = 0x40_0000;
/// Exit code when every check passed.
pub const PASS: u32 = 5;
/// Exit codes of the failed checks.
pub const FAIL_MAGIC: u32 = 0x11;
pub const FAIL_MEM: u32 = 0x12;
pub const FAIL_AP: u32 = 0x13;
const STACK_TOP: u32 = 0x9_0000;
const TRAMPOLINE: u32 = 0x1_0000; // SIPI vector 0x10
const AP_FLAGS: u32 = 0x500; // one byte per AP, set by the AP
const LAPIC: u32 = 0xFEE0_0000;

/// The AP's real-mode code: count itself in, then halt.
fn trampoline() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.lock().inc(byte_ptr(AP_FLAGS)).unwrap();
    let mut top = a.create_label();
    a.set_label(&mut top).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    a.jmp(top).unwrap();
    a.assemble(0).unwrap()
}

fn exit(a: &mut CodeAssembler, code: u32) {
    a.mov(eax, code).unwrap();
    a.out(0xF4i32, eax).unwrap();
}

const HELLO: &[u8] = b"hello from a multiboot kernel\n\0";
const CPUS: &[u8] = b"cpus=\0";
const APS_UP: &[u8] = b"APs up\n\0";

/// The kernel image for a VM of `cpus` vCPUs and `mem_size` bytes of RAM.
pub fn kernel(cpus: u32, mem_size: u64) -> Vec<u8> {
    let base = u64::from(LOAD_ADDR + ELF32_KERNEL_CODE_OFFSET);
    // Data follows the code; every instruction referring to it has a fixed-size imm32, so a
    // first pass gives the code's length.
    let len = code(cpus, mem_size, 0).len() as u32;
    let mut image = code(cpus, mem_size, base as u32 + len);
    assert_eq!(image.len() as u32, len);
    for part in [HELLO, CPUS, APS_UP, &trampoline()] {
        image.extend_from_slice(part);
    }
    elf32_kernel(LOAD_ADDR, &image, 0)
}

fn code(cpus: u32, mem_size: u64, data: u32) -> Vec<u8> {
    let msg_hello = data;
    let msg_cpus = msg_hello + HELLO.len() as u32;
    let msg_ap = msg_cpus + CPUS.len() as u32;
    let tramp = msg_ap + APS_UP.len() as u32;
    let mut a = CodeAssembler::new(32).unwrap();
    let mut print = a.create_label();
    let mut fail = a.create_label();
    let mut wait_ap = a.create_label();
    let mut ap_ok = a.create_label();
    let tramp_code = trampoline();

    a.mov(esp, STACK_TOP).unwrap();
    a.mov(edi, FAIL_MAGIC).unwrap();
    a.cmp(eax, 0x2BAD_B002u32 as i32).unwrap();
    a.jne(fail).unwrap();
    a.mov(edi, FAIL_MEM).unwrap();
    let mem_upper = ((mem_size - 0x10_0000) / 1024) as i32;
    a.cmp(dword_ptr(ebx + 8), mem_upper).unwrap();
    a.jne(fail).unwrap();
    a.mov(esi, msg_hello).unwrap();
    a.call(print).unwrap();
    // fw_cfg: select FW_CFG_NB_CPUS, read the low byte, print it as a digit.
    a.mov(esi, msg_cpus).unwrap();
    a.call(print).unwrap();
    a.mov(dx, 0x510u32).unwrap();
    a.mov(ax, 5u32).unwrap();
    a.out(dx, ax).unwrap();
    a.mov(dx, 0x511u32).unwrap();
    a.in_(al, dx).unwrap();
    a.add(al, b'0' as i32).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    a.out(dx, al).unwrap();
    a.mov(al, b'\n' as i32).unwrap();
    a.out(dx, al).unwrap();
    if cpus > 1 {
        // Copy the trampoline below 1 MiB, enable the APIC, INIT + SIPI all others.
        a.mov(esi, tramp).unwrap();
        a.mov(edi, TRAMPOLINE).unwrap();
        a.mov(ecx, tramp_code.len() as u32).unwrap();
        a.cld().unwrap();
        a.rep().movsb().unwrap();
        a.mov(dword_ptr(AP_FLAGS), 0u32).unwrap();
        a.mov(dword_ptr(LAPIC + 0xF0), 0x1FFu32).unwrap();
        a.mov(dword_ptr(LAPIC + 0x310), 0u32).unwrap();
        a.mov(dword_ptr(LAPIC + 0x300), 0x000C_4500u32).unwrap(); // INIT, all excluding self
        a.mov(
            dword_ptr(LAPIC + 0x300),
            0x000C_4600u32 | (TRAMPOLINE >> 12),
        )
        .unwrap(); // SIPI
        a.mov(edi, FAIL_AP).unwrap();
        a.mov(ecx, 0x4000_0000u32).unwrap();
        a.set_label(&mut wait_ap).unwrap();
        a.cmp(byte_ptr(AP_FLAGS), (cpus - 1) as i32).unwrap();
        a.je(ap_ok).unwrap();
        a.pause().unwrap();
        a.dec(ecx).unwrap();
        a.jnz(wait_ap).unwrap();
        a.jmp(fail).unwrap();
        a.set_label(&mut ap_ok).unwrap();
        a.mov(esi, msg_ap).unwrap();
        a.call(print).unwrap();
    }
    exit(&mut a, PASS);
    a.set_label(&mut fail).unwrap();
    a.mov(eax, edi).unwrap();
    a.out(0xF4i32, eax).unwrap();
    a.hlt().unwrap();

    // print: ESI -> NUL-terminated string, to COM1.
    a.set_label(&mut print).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    let mut l = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut l).unwrap();
    a.mov(al, byte_ptr(esi)).unwrap();
    a.test(al, al).unwrap();
    a.jz(done).unwrap();
    a.out(dx, al).unwrap();
    a.inc(esi).unwrap();
    a.jmp(l).unwrap();
    a.set_label(&mut done).unwrap();
    a.ret().unwrap();

    a.assemble(u64::from(LOAD_ADDR + ELF32_KERNEL_CODE_OFFSET))
        .unwrap()
}
