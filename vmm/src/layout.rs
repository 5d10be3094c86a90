//! Where things are: the guest-physical memory map and the I/O ports this VMM decodes.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BIOS data area (left zero)
//! 0x0000_1000  boot GDT (null, code64 0x08, data 0x10, code32 0x18, TSS 0x20)
//! 0x0000_2000  IDT for raw 64-bit programs (256 x 16-byte gates)
//! 0x0000_3000  boot TSS (104 bytes; only so that TR is valid)
//! 0x0000_8000  multiboot info, memory map, loader name, command line (to 0x9000)
//! 0x0000_9000  PML4, 0xA000 PDPT, 0xB000..0xF000 four PDs: 0..4 GiB identity, 2 MiB pages
//! 0x0001_0000  free low memory (multiboot kernels put their SIPI trampolines here)
//! 0x0010_0000  raw programs: code (guest toolkit: see `guest::layout`)
//! ...          RAM ends at `mem_size` (at most 3 GiB; no RAM above the PCI hole)
//! 0xFEC0_0000  in-kernel IOAPIC
//! 0xFEE0_0000  in-kernel local APIC (xAPIC MMIO; reached through the identity map)
//! 0xFFFB_C000  KVM identity-map page (KVM_SET_IDENTITY_MAP_ADDR)
//! 0xFFFB_D000  KVM real-mode TSS, 3 pages (KVM_SET_TSS_ADDR)
//! ```

/// Boot GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// IDT used by raw 64-bit programs (the guest toolkit fills it).
pub const IDT_ADDR: u64 = 0x2000;
/// Size of a full 64-bit IDT: 256 gates of 16 bytes.
pub const IDT_SIZE: u64 = 256 * 16;
/// The TSS the boot TR points at.
pub const BOOT_TSS_ADDR: u64 = 0x3000;
/// Multiboot information structure; the loader's data runs to [`MBI_END`].
pub const MBI_ADDR: u64 = 0x8000;
/// End of the multiboot loader's data.
pub const MBI_END: u64 = 0x9000;
/// Top-level page table (PML4) of the identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// The one page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xA000;
/// First of the four page directories (one per GiB).
pub const PD_ADDR: u64 = 0xB000;
/// How much the boot page tables identity-map (2 MiB pages), the LAPIC included.
pub const IDENTITY_MAPPED: u64 = 4 << 30;
/// Start of the memory kernels and programs load into.
pub const HIGH_MEMORY: u64 = 0x10_0000;
/// End of conventional memory as reported to multiboot kernels (640 KiB).
pub const LOW_MEMORY_END: u64 = 0xA_0000;
/// Largest RAM size: everything stays below the 32-bit PCI/APIC hole.
pub const MAX_MEM_SIZE: u64 = 3 << 30;
/// Smallest RAM size (the loader structures and 1 MiB of room).
pub const MIN_MEM_SIZE: u64 = 2 << 20;
/// The in-kernel local APIC's MMIO base.
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;
/// KVM's identity-map page.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;
/// KVM's real-mode TSS (3 pages).
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;

/// I/O ports.
pub mod ports {
    /// isa-debug-exit: a write stops the VM with the value written.
    pub const DEBUG_EXIT: u16 = 0xF4;
    /// The hypercall trap: the hypercall page holds `out 0xEB, al; ret`. An 8-bit port so the
    /// instruction needs no register besides AL, which the hypercall ABI clobbers anyway (RAX
    /// returns the result); RCX, RDX and R8 reach the host intact.
    pub const HYPERCALL_TRAP: u16 = 0xEB;
    /// COM1 (16550 UART, output only).
    pub const COM1: u16 = 0x3F8;
    /// fw_cfg selector (16-bit write).
    pub const FW_CFG_SELECTOR: u16 = 0x510;
    /// fw_cfg data (8-bit read).
    pub const FW_CFG_DATA: u16 = 0x511;
    /// QEMU hyperv-testdev protocol (one 32-bit write per command).
    pub const HV_TESTDEV: u16 = 0x3000;
    /// Guest-to-host reports (guest toolkit): value low 32 bits.
    pub const REPORT_LOW: u16 = 0x3100;
    /// Reports: value high 32 bits.
    pub const REPORT_HIGH: u16 = 0x3104;
    /// Reports: a tag written here commits the report.
    pub const REPORT_TAG: u16 = 0x3108;
}
