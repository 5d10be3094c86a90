//! Multiboot v1 loading: ELF32 or ELF64 kernels (or the a.out-kludge address fields), entered in
//! 32-bit protected mode with EAX = 0x2BADB002 and EBX -> the multiboot information.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::boot::ProtectedModeEntry;
use crate::elf;
use crate::error::{Error, Result};
use crate::layout::{HIGH_MEMORY, LOW_MEMORY_END, MBI_ADDR, MBI_END};
use crate::memory::GuestMemory;

/// Magic at the start of the kernel's multiboot header.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Value of EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// Header flag: the address fields are valid (a.out kludge).
pub const HEADER_AOUT_KLUDGE: u32 = 1 << 16;
const HEADER_SEARCH: usize = 8192;
/// Header flags this loader honours: 0 (page-align modules; there are none) and 1 (memory
/// information, always given).
const SUPPORTED_REQUIREMENTS: u32 = 0b11;

/// Info flag: mem_lower/mem_upper valid.
pub const INFO_MEMORY: u32 = 1 << 0;
/// Info flag: cmdline valid.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// Info flag: mods_count/mods_addr valid.
pub const INFO_MODS: u32 = 1 << 3;
/// Info flag: mmap_length/mmap_addr valid.
pub const INFO_MEM_MAP: u32 = 1 << 6;
/// Info flag: boot_loader_name valid.
pub const INFO_LOADER_NAME: u32 = 1 << 9;

const MMAP_ADDR: u64 = MBI_ADDR + 0x100;
const LOADER_NAME_ADDR: u64 = MBI_ADDR + 0x200;
const CMDLINE_ADDR: u64 = MBI_ADDR + 0x400;
/// Longest command line (with its NUL).
pub const CMDLINE_MAX: usize = (MBI_END - CMDLINE_ADDR) as usize;

/// The kernel's multiboot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the header.
    pub offset: usize,
    /// Flags.
    pub flags: u32,
    /// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr (a.out kludge).
    pub addrs: [u32; 5],
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Finds the multiboot header in the first 8 KiB.
pub fn find_header(image: &[u8]) -> Result<Header> {
    let limit = image.len().min(HEADER_SEARCH);
    for offset in (0..limit.saturating_sub(11)).step_by(4) {
        let (Some(magic), Some(flags), Some(sum)) = (
            u32_at(image, offset),
            u32_at(image, offset + 4),
            u32_at(image, offset + 8),
        ) else {
            break;
        };
        if magic != HEADER_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            continue;
        }
        let mut addrs = [0u32; 5];
        if flags & HEADER_AOUT_KLUDGE != 0 {
            for (i, a) in addrs.iter_mut().enumerate() {
                *a = u32_at(image, offset + 12 + 4 * i).ok_or_else(|| {
                    Error::Load("multiboot header address fields truncated".into())
                })?;
            }
        }
        return Ok(Header {
            offset,
            flags,
            addrs,
        });
    }
    Err(Error::Load(
        "no multiboot v1 header in the first 8 KiB".into(),
    ))
}

fn check_range(start: u64, len: u64, mem_size: u64, what: &str) -> Result<()> {
    let end = start
        .checked_add(len)
        .ok_or_else(|| Error::Load(format!("{what} overflows")))?;
    if start < HIGH_MEMORY || end > mem_size {
        return Err(Error::Load(format!(
            "{what} at {start:#x}..{end:#x} is outside {HIGH_MEMORY:#x}..{mem_size:#x} \
             (below 1 MiB is the loader's; above is not RAM: raise --mem)"
        )));
    }
    Ok(())
}

fn write(mem: &GuestMemory, gpa: u64, bytes: &[u8]) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(gpa))
        .map_err(|source| Error::GuestMemory {
            what: "kernel image",
            gpa,
            source,
        })
}

fn zero(mem: &GuestMemory, gpa: u64, len: u64) -> Result<()> {
    let chunk = [0u8; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(4096);
        write(mem, gpa + done, &chunk[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// Loads `image` into `mem` and writes the multiboot information with `cmdline`. Returns the
/// entry state for [`crate::Vm::boot_protected_mode`].
pub fn load(mem: &GuestMemory, image: &[u8], cmdline: &str) -> Result<ProtectedModeEntry> {
    let header = find_header(image)?;
    let unsupported = header.flags & 0xFFFF & !SUPPORTED_REQUIREMENTS;
    if unsupported != 0 {
        return Err(Error::Load(format!(
            "kernel requires multiboot features {unsupported:#x} this loader lacks (video mode)"
        )));
    }
    let mem_size = mem.last_addr().0 + 1;
    let entry = if header.flags & HEADER_AOUT_KLUDGE != 0 {
        load_aout_kludge(mem, image, &header, mem_size)?
    } else {
        let elf = elf::parse(image).map_err(Error::Load)?;
        for s in &elf.segments {
            check_range(s.paddr, s.memsz, mem_size, "segment")?;
            let data = &image[s.offset as usize..(s.offset + s.filesz) as usize];
            write(mem, s.paddr, data)?;
            zero(mem, s.paddr + s.filesz, s.memsz - s.filesz)?;
        }
        elf.physical_entry()
    };
    let eip = u32::try_from(entry).map_err(|_| {
        Error::Load(format!(
            "entry {entry:#x} is above 4 GiB: not a 32-bit entry"
        ))
    })?;
    write_info(mem, mem_size, cmdline)?;
    Ok(ProtectedModeEntry {
        eip,
        eax: BOOTLOADER_MAGIC,
        ebx: MBI_ADDR as u32,
    })
}

fn load_aout_kludge(mem: &GuestMemory, image: &[u8], h: &Header, mem_size: u64) -> Result<u64> {
    let [header_addr, load_addr, load_end, bss_end, entry] = h.addrs.map(u64::from);
    let bad = |m: &str| Error::Load(format!("multiboot address fields: {m}"));
    if load_addr > header_addr || header_addr - load_addr > h.offset as u64 {
        return Err(bad(
            "header_addr/load_addr do not match the header's file offset",
        ));
    }
    let file_start = h.offset as u64 - (header_addr - load_addr);
    let load_len = if load_end == 0 {
        image.len() as u64 - file_start
    } else {
        load_end
            .checked_sub(load_addr)
            .ok_or_else(|| bad("load_end_addr below load_addr"))?
    };
    if file_start + load_len > image.len() as u64 {
        return Err(bad("load range extends past the end of the file"));
    }
    let end = load_addr + load_len;
    let bss_len = if bss_end == 0 {
        0
    } else {
        bss_end
            .checked_sub(end)
            .ok_or_else(|| bad("bss_end_addr below load end"))?
    };
    check_range(load_addr, load_len + bss_len, mem_size, "image")?;
    write(
        mem,
        load_addr,
        &image[file_start as usize..(file_start + load_len) as usize],
    )?;
    zero(mem, end, bss_len)?;
    Ok(entry)
}

fn write_info(mem: &GuestMemory, mem_size: u64, cmdline: &str) -> Result<()> {
    let mut cmd = cmdline.as_bytes().to_vec();
    if cmd.contains(&0) || cmd.len() >= CMDLINE_MAX {
        return Err(Error::Load(format!(
            "command line must be under {CMDLINE_MAX} bytes without NULs"
        )));
    }
    cmd.push(0);
    write(mem, CMDLINE_ADDR, &cmd)?;
    write(mem, LOADER_NAME_ADDR, b"synic-vmm\0")?;
    // Memory map entries: size (of the rest, 20), base, length, type (1 = available RAM).
    let mut mmap = Vec::new();
    for (base, len) in [(0, LOW_MEMORY_END), (HIGH_MEMORY, mem_size - HIGH_MEMORY)] {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&1u32.to_le_bytes());
    }
    write(mem, MMAP_ADDR, &mmap)?;
    let mut info = [0u32; 22];
    info[0] = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_LOADER_NAME;
    info[1] = (LOW_MEMORY_END / 1024) as u32; // mem_lower, KiB
    info[2] = ((mem_size - HIGH_MEMORY) / 1024) as u32; // mem_upper, KiB above 1 MiB
    info[4] = CMDLINE_ADDR as u32;
    info[5] = 0; // mods_count
    info[6] = 0; // mods_addr
    info[11] = mmap.len() as u32; // mmap_length
    info[12] = MMAP_ADDR as u32; // mmap_addr
    info[16] = LOADER_NAME_ADDR as u32; // boot_loader_name
    let bytes: Vec<u8> = info.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(mem, MBI_ADDR, &bytes)
}

/// Where [`elf32_kernel`] puts the code, relative to the load address.
pub const ELF32_KERNEL_CODE_OFFSET: u32 = 0x60 + 12;

/// Builds a minimal multiboot ELF32 kernel: one segment at `load_addr` holding the ELF and
/// program headers, the multiboot header, then `code` (32-bit, assembled for address
/// `load_addr + ELF32_KERNEL_CODE_OFFSET` and entered at its first byte), followed by `bss`
/// zeroed bytes. For tests and demos.
pub fn elf32_kernel(load_addr: u32, code: &[u8], bss: u32) -> Vec<u8> {
    const CODE_OFFSET: u32 = ELF32_KERNEL_CODE_OFFSET;
    let file_len = CODE_OFFSET + code.len() as u32;
    let mut f = Vec::with_capacity(file_len as usize);
    let put16 = |f: &mut Vec<u8>, v: u16| f.extend_from_slice(&v.to_le_bytes());
    let put32 = |f: &mut Vec<u8>, v: u32| f.extend_from_slice(&v.to_le_bytes());
    f.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0"); // ELF32, LE, version 1
    put16(&mut f, 2); // e_type EXEC
    put16(&mut f, 3); // e_machine i386
    put32(&mut f, 1); // e_version
    put32(&mut f, load_addr + CODE_OFFSET); // e_entry
    put32(&mut f, 52); // e_phoff
    put32(&mut f, 0); // e_shoff
    put32(&mut f, 0); // e_flags
    put16(&mut f, 52); // e_ehsize
    put16(&mut f, 32); // e_phentsize
    put16(&mut f, 1); // e_phnum
    put16(&mut f, 40); // e_shentsize
    put16(&mut f, 0); // e_shnum
    put16(&mut f, 0); // e_shstrndx
                      // PT_LOAD
    for v in [
        1,
        0,
        load_addr,
        load_addr,
        file_len,
        file_len + bss,
        7,
        0x1000,
    ] {
        put32(&mut f, v);
    }
    f.resize(0x60, 0);
    put32(&mut f, HEADER_MAGIC);
    put32(&mut f, 0);
    put32(&mut f, 0u32.wrapping_sub(HEADER_MAGIC));
    f.extend_from_slice(code);
    f
}

#[cfg(test)]
mod tests;
