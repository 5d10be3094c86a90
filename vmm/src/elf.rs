//! Just enough ELF (32- and 64-bit, little-endian x86) to find loadable segments and the entry.

/// One PT_LOAD segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub paddr: u64,
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// A parsed executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Elf {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

fn field(b: &[u8], at: usize, len: usize) -> Result<u64, String> {
    let s = b
        .get(at..at + len)
        .ok_or_else(|| format!("ELF truncated: needs bytes {at:#x}..{:#x}", at + len))?;
    let mut v = [0u8; 8];
    v[..len].copy_from_slice(s);
    Ok(u64::from_le_bytes(v))
}

/// Whether `image` starts with the ELF magic.
pub(crate) fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// Parses an ELF32 (i386) or ELF64 (x86-64) executable.
pub(crate) fn parse(image: &[u8]) -> Result<Elf, String> {
    if !is_elf(image) {
        return Err("not an ELF file".into());
    }
    let class64 = match image.get(4) {
        Some(1) => false,
        Some(2) => true,
        other => return Err(format!("unknown ELF class {other:?}")),
    };
    if image.get(5) != Some(&1) {
        return Err("ELF is not little-endian".into());
    }
    let e_type = field(image, 16, 2)? as u16;
    let machine = field(image, 18, 2)? as u16;
    if e_type != ET_EXEC {
        return Err(format!("ELF type {e_type} is not an executable"));
    }
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(format!("ELF machine {machine} is not x86"));
    }
    // (entry, phoff, phentsize, phnum) offsets and widths per class.
    let (entry, phoff, phentsize, phnum) = if class64 {
        (
            field(image, 24, 8)?,
            field(image, 32, 8)?,
            field(image, 54, 2)?,
            field(image, 56, 2)?,
        )
    } else {
        (
            field(image, 24, 4)?,
            field(image, 28, 4)?,
            field(image, 42, 2)?,
            field(image, 44, 2)?,
        )
    };
    let min_entsize = if class64 { 56 } else { 32 };
    if phentsize < min_entsize {
        return Err(format!(
            "program header size {phentsize} is below {min_entsize}"
        ));
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or("program header offset overflows")?;
        if field(image, at, 4)? as u32 != PT_LOAD {
            continue;
        }
        let seg = if class64 {
            Segment {
                offset: field(image, at + 8, 8)?,
                vaddr: field(image, at + 16, 8)?,
                paddr: field(image, at + 24, 8)?,
                filesz: field(image, at + 32, 8)?,
                memsz: field(image, at + 40, 8)?,
            }
        } else {
            Segment {
                offset: field(image, at + 4, 4)?,
                vaddr: field(image, at + 8, 4)?,
                paddr: field(image, at + 12, 4)?,
                filesz: field(image, at + 16, 4)?,
                memsz: field(image, at + 20, 4)?,
            }
        };
        if seg.filesz > seg.memsz {
            return Err(format!(
                "segment {i}: file size {:#x} exceeds memory size {:#x}",
                seg.filesz, seg.memsz
            ));
        }
        let end = seg
            .offset
            .checked_add(seg.filesz)
            .ok_or("segment offset overflows")?;
        if end > image.len() as u64 {
            return Err(format!("segment {i} extends past the end of the file"));
        }
        if seg.memsz > 0 {
            segments.push(seg);
        }
    }
    if segments.is_empty() {
        return Err("no loadable segments".into());
    }
    Ok(Elf { entry, segments })
}

impl Elf {
    /// The entry point as a physical address (translated through the segment holding it when
    /// virtual and physical addresses differ).
    pub(crate) fn physical_entry(&self) -> u64 {
        self.segments
            .iter()
            .find(|s| self.entry >= s.vaddr && self.entry - s.vaddr < s.memsz)
            .map_or(self.entry, |s| s.paddr + (self.entry - s.vaddr))
    }
}
