//! CPU state at entry: the boot GDT, the identity-mapped page tables, and the registers for a
//! raw 64-bit program (long mode) or a multiboot kernel (32-bit protected mode, paging off).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::layout::{
    BOOT_TSS_ADDR, GDT_ADDR, IDENTITY_MAPPED, IDT_ADDR, IDT_SIZE, PDPT_ADDR, PD_ADDR, PML4_ADDR,
};
use crate::memory::GuestMemory;

/// 64-bit code segment selector.
pub const CODE64_SELECTOR: u16 = 0x08;
/// Flat data segment selector.
pub const DATA_SELECTOR: u16 = 0x10;
/// 32-bit code segment selector.
pub const CODE32_SELECTOR: u16 = 0x18;
/// Boot TSS selector.
pub const TSS_SELECTOR: u16 = 0x20;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_PWT: u64 = 1 << 3;
const PTE_PCD: u64 = 1 << 4;
const PTE_HUGE: u64 = 1 << 7;

/// The boot GDT: null, code64, data, code32, and a 16-byte TSS descriptor.
fn gdt_entries() -> [u64; 6] {
    let tss_limit = 0x67u64;
    let tss_base = BOOT_TSS_ADDR;
    // Available 64-bit TSS (type 9); KVM marks it busy when it loads TR.
    let tss_low = (tss_limit & 0xFFFF)
        | ((tss_base & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((tss_limit >> 16) & 0xF) << 48)
        | (((tss_base >> 24) & 0xFF) << 56);
    let tss_high = tss_base >> 32;
    [
        0,
        0x00AF_9B00_0000_FFFF, // code64: P, DPL0, exec/read, L, G
        0x00CF_9300_0000_FFFF, // data: P, DPL0, read/write, D/B, G
        0x00CF_9B00_0000_FFFF, // code32: P, DPL0, exec/read, D/B, G
        tss_low,
        tss_high,
    ]
}

/// Writes the boot GDT at [`GDT_ADDR`].
pub fn write_gdt(mem: &GuestMemory) -> Result<()> {
    for (i, entry) in (0u64..).zip(gdt_entries()) {
        write(mem, GDT_ADDR + i * 8, entry)?;
    }
    Ok(())
}

/// Writes page tables that identity-map 0..4 GiB with 2 MiB pages (the 1 GiB page size does
/// not work on every host). The top GiB (APIC, IOAPIC) is mapped uncached.
pub fn write_identity_map(mem: &GuestMemory) -> Result<()> {
    write(mem, PML4_ADDR, PDPT_ADDR | PTE_PRESENT | PTE_WRITE)?;
    let gibs = IDENTITY_MAPPED >> 30;
    for gib in 0..gibs {
        let pd = PD_ADDR + gib * 0x1000;
        write(mem, PDPT_ADDR + gib * 8, pd | PTE_PRESENT | PTE_WRITE)?;
        let cache = if gib == gibs - 1 {
            PTE_PCD | PTE_PWT
        } else {
            0
        };
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            write(
                mem,
                pd + i * 8,
                addr | PTE_PRESENT | PTE_WRITE | PTE_HUGE | cache,
            )?;
        }
    }
    Ok(())
}

fn write(mem: &GuestMemory, gpa: u64, value: u64) -> Result<()> {
    mem.write_obj(value, GuestAddress(gpa))
        .map_err(|source| Error::GuestMemory {
            what: "boot structure",
            gpa,
            source,
        })
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn common_sregs(sregs: &mut kvm_sregs, code: kvm_segment) {
    let data = segment(DATA_SELECTOR, 0x3, false);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: BOOT_TSS_ADDR,
        limit: 0x67,
        selector: TSS_SELECTOR,
        type_: 0xB, // busy TSS, as VM entry requires
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = u16::try_from(gdt_entries().len() * 8 - 1).unwrap_or(u16::MAX);
}

/// Entry state of a raw 64-bit program: long mode, identity map, boot GDT, the IDT at
/// [`IDT_ADDR`], interrupts off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongModeEntry {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RDI (the guest toolkit passes the vCPU index here).
    pub rdi: u64,
}

impl LongModeEntry {
    /// Applies the entry state to `sregs` (read from the vCPU first) and returns the registers.
    pub fn apply(&self, sregs: &mut kvm_sregs) -> kvm_regs {
        common_sregs(sregs, segment(CODE64_SELECTOR, 0xB, true));
        sregs.idt.base = IDT_ADDR;
        sregs.idt.limit = u16::try_from(IDT_SIZE - 1).unwrap_or(u16::MAX);
        sregs.cr3 = PML4_ADDR;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
        kvm_regs {
            rip: self.rip,
            rsp: self.rsp,
            rdi: self.rdi,
            rflags: 0x2,
            ..Default::default()
        }
    }
}

/// Entry state of a multiboot v1 kernel: 32-bit protected mode, flat segments, paging off,
/// EAX = the boot-loader magic, EBX = the multiboot information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtectedModeEntry {
    /// EIP.
    pub eip: u32,
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
}

impl ProtectedModeEntry {
    /// Applies the entry state to `sregs` and returns the registers.
    pub fn apply(&self, sregs: &mut kvm_sregs) -> kvm_regs {
        common_sregs(sregs, segment(CODE32_SELECTOR, 0xB, false));
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr0 = CR0_PE | CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
        kvm_regs {
            rip: u64::from(self.eip),
            rax: u64::from(self.eax),
            rbx: u64::from(self.ebx),
            rflags: 0x2,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn identity_map_covers_the_lapic_with_2mib_pages() {
        let mem = memory::allocate(4 << 20).unwrap();
        write_identity_map(&mem).unwrap();
        // Walk the tables for the LAPIC address like the MMU would.
        let va = crate::layout::LAPIC_ADDR;
        let read = |gpa: u64| mem.read_obj::<u64>(GuestAddress(gpa)).unwrap();
        let pml4e = read(PML4_ADDR + ((va >> 39) & 511) * 8);
        let pdpte = read((pml4e & !0xFFF) + ((va >> 30) & 511) * 8);
        let pde = read((pdpte & !0xFFF) + ((va >> 21) & 511) * 8);
        assert_ne!(pde & PTE_HUGE, 0);
        assert_eq!((pde & !0x1F_FFFF) + (va & 0x1F_FFFF), va);
        assert_ne!(pde & PTE_PCD, 0, "MMIO is mapped uncached");
        let low = read(PD_ADDR + 8);
        assert_eq!(low & !0xFFF, 2 << 20);
        assert_eq!(low & PTE_PCD, 0);
    }

    #[test]
    fn gdt_tss_descriptor_points_at_the_boot_tss() {
        let e = gdt_entries();
        let base = ((e[4] >> 16) & 0xFF_FFFF) | (((e[4] >> 56) & 0xFF) << 24) | (e[5] << 32);
        assert_eq!(base, BOOT_TSS_ADDR);
        assert_eq!(e[4] & 0xFFFF, 0x67);
        assert_eq!(usize::from(TSS_SELECTOR) / 8, 4);
    }
}
