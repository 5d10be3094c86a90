//! The Linux x86 64-bit boot protocol: a bzImage loaded with rust-vmm's linux-loader, the zero
//! page (`boot_params`) with its e820 map, the command line and the initrd, and the CPU state at
//! the 64-bit entry point.
//!
//! Memory map (guest physical):
//!
//! ```text
//! 0x0000_1000  boot GDT: code64 at 0x10 and data at 0x18 as the boot protocol asks (the
//!              toolkit's entries 0x08 and TSS 0x20 stay)
//! 0x0000_3000  boot TSS
//! 0x0000_7000  zero page (boot_params)
//! 0x0000_9000  identity-mapped page tables (0..4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_FC00  e820 reserved (where a BIOS keeps its EBDA) up to 0xA_0000
//! 0x000E_0000  ACPI tables (RSDP first), e820 reserved up to 1 MiB
//! 0x0010_0000  the kernel's protected-mode part (bzImage payload), then free RAM
//! ...          initrd at the top of RAM, 2 MiB aligned
//! ```

use std::io::Cursor;

use kvm_bindings::kvm_regs;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::LinuxError;
use crate::boot::{self, LongModeEntry};
use crate::layout::{GDT_ADDR, HIGH_MEMORY};
use crate::memory::GuestMemory;

/// Where the zero page (`struct boot_params`) goes; RSI points here at entry.
pub const ZERO_PAGE: u64 = 0x7000;
/// Where the command line goes.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Start of the reserved range below 640 KiB (a BIOS's EBDA).
pub const EBDA_START: u64 = 0x9_FC00;
/// Start of the reserved BIOS area, where the ACPI tables live.
pub const BIOS_AREA_START: u64 = 0xE_0000;
/// The boot protocol's code selector (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// The boot protocol's data selector (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xAA55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xFF;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Boot protocol 2.12 introduced `xloadflags`.
const MIN_PROTOCOL: u16 = 0x020C;
/// The 64-bit entry point is this far into the protected-mode part.
const ENTRY_64_OFFSET: u64 = 0x200;
const INITRD_ALIGN: u64 = 2 << 20;

/// What was loaded and where the kernel starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Boot protocol version of the image (e.g. 0x020F).
    pub protocol: u16,
    /// The 64-bit entry point.
    pub entry: u64,
    /// End of the loaded protected-mode part.
    pub kernel_end: u64,
    /// The initrd's guest-physical range, if any.
    pub initrd: Option<(u64, u64)>,
}

/// The e820 map of a VM with `mem_size` bytes of RAM at 0.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, e820_kind: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type: e820_kind,
    };
    vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, 0xA_0000, E820_RESERVED),
        entry(BIOS_AREA_START, HIGH_MEMORY, E820_RESERVED),
        entry(HIGH_MEMORY, mem_size, E820_RAM),
    ]
}

fn write(mem: &GuestMemory, what: &'static str, gpa: u64, data: &[u8]) -> Result<(), LinuxError> {
    mem.write_slice(data, GuestAddress(gpa))
        .map_err(|source| LinuxError::GuestMemory { what, gpa, source })
}

/// Loads `kernel` (a bzImage), `initrd` and `cmdline` into `mem` and writes the zero page with
/// the e820 map and `rsdp` (the ACPI root pointer, boot protocol 2.14+).
pub fn load(
    mem: &GuestMemory,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    rsdp: u64,
) -> Result<LoadedKernel, LinuxError> {
    let mem_size = mem.last_addr().0 + 1;
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(HIGH_MEMORY)),
        &mut Cursor::new(kernel),
        Some(GuestAddress(HIGH_MEMORY)),
    )
    .map_err(LinuxError::KernelImage)?;
    let mut hdr = loaded
        .setup_header
        .ok_or_else(|| LinuxError::Kernel("no setup header".into()))?;
    let protocol = hdr.version;
    if protocol < MIN_PROTOCOL || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::Kernel(format!(
            "boot protocol {protocol:#x} without a 64-bit entry point (need 2.12+ and \
             XLF_KERNEL_64)"
        )));
    }

    // The command line, NUL-terminated, within the kernel's limit.
    let max_cmdline = usize::try_from(hdr.cmdline_size)
        .unwrap_or(usize::MAX)
        .min(4095);
    if cmdline.len() > max_cmdline || cmdline.contains('\0') {
        return Err(LinuxError::Cmdline(format!(
            "{} bytes; this kernel takes at most {max_cmdline} and no NUL",
            cmdline.len()
        )));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    write(mem, "command line", CMDLINE_ADDR, &bytes)?;

    // The initrd at the top of RAM (below the kernel's limit), clear of the kernel.
    let initrd_range = match initrd {
        Some(image) => {
            let len = image.len() as u64;
            let limit = (u64::from(hdr.initrd_addr_max) + 1).min(mem_size);
            let start = limit
                .checked_sub(len)
                .map(|s| s & !(INITRD_ALIGN - 1))
                .filter(|&s| s >= loaded.kernel_end)
                .ok_or_else(|| {
                    LinuxError::Memory(format!(
                        "initrd of {len} bytes does not fit between the kernel (ends at {:#x}) \
                         and {limit:#x}",
                        loaded.kernel_end
                    ))
                })?;
            write(mem, "initrd", start, image)?;
            Some((start, len))
        }
        None => None,
    };

    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = bytes.len() as u32;
    if let Some((start, len)) = initrd_range {
        hdr.ramdisk_image = start as u32;
        hdr.ramdisk_size = len as u32;
    }
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    let map = e820_map(mem_size);
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(LinuxError::BootParams)?;

    Ok(LoadedKernel {
        protocol,
        entry: loaded.kernel_load.0 + ENTRY_64_OFFSET,
        kernel_end: loaded.kernel_end,
        initrd: initrd_range,
    })
}

/// Writes the boot GDT (with the protocol's `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18) and the
/// identity map, and returns the registers and system registers of the BSP at the 64-bit entry:
/// long mode, paging on, interrupts off, RSI = the zero page.
pub fn entry_state(
    mem: &GuestMemory,
    loaded: &LoadedKernel,
    sregs: &mut kvm_bindings::kvm_sregs,
) -> Result<kvm_regs, LinuxError> {
    boot::write_gdt(mem)?;
    boot::write_identity_map(mem)?;
    // Entries 2 and 3 become the protocol's flat 64-bit code and data segments.
    let code64: u64 = 0x00AF_9B00_0000_FFFF;
    let data: u64 = 0x00CF_9300_0000_FFFF;
    write(
        mem,
        "GDT",
        GDT_ADDR + u64::from(BOOT_CS),
        &code64.to_le_bytes(),
    )?;
    write(
        mem,
        "GDT",
        GDT_ADDR + u64::from(BOOT_DS),
        &data.to_le_bytes(),
    )?;
    let mut regs = LongModeEntry {
        rip: loaded.entry,
        rsp: 0,
        rdi: 0,
    }
    .apply(sregs);
    sregs.cs.selector = BOOT_CS;
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        s.selector = BOOT_DS;
    }
    // No IDT until the kernel loads its own (interrupts are off).
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    regs.rsi = ZERO_PAGE;
    Ok(regs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_leaves_the_bios_holes_reserved() {
        let map = e820_map(256 << 20);
        let find = |a: u64| {
            map.iter()
                .find(|e| e.addr <= a && a < e.addr + e.size)
                .copied()
        };
        assert_eq!({ find(0x1000).unwrap().r#type }, E820_RAM);
        assert_eq!({ find(0x9_FC00).unwrap().r#type }, E820_RESERVED);
        assert!(find(0xB_8000).is_none(), "VGA hole is not in the map");
        assert_eq!({ find(BIOS_AREA_START).unwrap().r#type }, E820_RESERVED);
        let high = find(HIGH_MEMORY).unwrap();
        assert_eq!(
            ({ high.r#type }, { high.addr + high.size }),
            (E820_RAM, 256 << 20)
        );
    }

    #[test]
    fn non_bzimage_is_refused_with_a_reason() {
        let mem = crate::memory::allocate(32 << 20).unwrap();
        let err = load(&mem, &[0u8; 4096], None, "console=ttyS0", 0).unwrap_err();
        // The loader's own error, kept as its type.
        assert!(matches!(err, LinuxError::KernelImage(_)), "{err}");
    }

    /// A minimal image with just a setup header: protocol 2.15, 64-bit entry, 1 setup sector.
    fn fake_bzimage(xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512 + 4096];
        img[0x1F1] = 1; // setup_sects
        img[0x1FE..0x200].copy_from_slice(&KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes()); // initrd_addr_max
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23C].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
        img[1024..1028].copy_from_slice(b"KERN");
        img
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_e820_and_rsdp() {
        let mem = crate::memory::allocate(64 << 20).unwrap();
        let initrd = vec![0x5Au8; 5000];
        let k = load(
            &mem,
            &fake_bzimage(XLF_KERNEL_64),
            Some(&initrd),
            "console=ttyS0",
            0xE_0000,
        )
        .unwrap();
        assert_eq!(k.entry, HIGH_MEMORY + 0x200);
        let (start, len) = k.initrd.unwrap();
        assert_eq!((start % INITRD_ALIGN, len), (0, 5000));
        assert!(start + len <= 64 << 20);
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        assert_eq!({ params.acpi_rsdp_addr }, 0xE_0000);
        assert_eq!({ params.hdr.ramdisk_image }, start as u32);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ params.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!(params.e820_entries, 4);
        let mut cmd = [0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
        let mut kern = [0u8; 4];
        mem.read_slice(&mut kern, GuestAddress(HIGH_MEMORY))
            .unwrap();
        assert_eq!(&kern, b"KERN", "the protected-mode part loads at 1 MiB");
    }

    #[test]
    fn kernel_without_64_bit_entry_is_refused() {
        let mem = crate::memory::allocate(64 << 20).unwrap();
        let err = load(&mem, &fake_bzimage(0), None, "", 0).unwrap_err();
        assert!(err.to_string().contains("64-bit entry"), "{err}");
    }

    #[test]
    fn too_long_cmdline_is_refused() {
        let mem = crate::memory::allocate(64 << 20).unwrap();
        let long = "x".repeat(3000);
        let err = load(&mem, &fake_bzimage(XLF_KERNEL_64), None, &long, 0).unwrap_err();
        assert!(matches!(err, LinuxError::Cmdline(_)), "{err}");
    }

    #[test]
    fn entry_state_follows_the_64_bit_boot_protocol() {
        let mem = crate::memory::allocate(64 << 20).unwrap();
        let k = load(&mem, &fake_bzimage(XLF_KERNEL_64), None, "", 0).unwrap();
        let mut sregs = kvm_bindings::kvm_sregs::default();
        let regs = entry_state(&mem, &k, &mut sregs).unwrap();
        assert_eq!(
            (regs.rip, regs.rsi, regs.rflags & 0x200),
            (k.entry, ZERO_PAGE, 0)
        );
        assert_eq!(
            (sregs.cs.selector, sregs.ds.selector, sregs.ss.selector),
            (0x10, 0x18, 0x18)
        );
        assert_eq!(sregs.cs.l, 1);
        assert_ne!(sregs.cr0 & (1 << 31), 0, "paging on");
        let gdt: [u64; 4] = mem.read_obj(GuestAddress(GDT_ADDR)).unwrap();
        assert_eq!(gdt[2] >> 40 & 0xFF, 0x9B, "0x10 is executable code");
        assert_eq!(gdt[3] >> 40 & 0xFF, 0x93, "0x18 is writable data");
    }
}
