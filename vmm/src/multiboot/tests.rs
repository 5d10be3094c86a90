use super::*;
use crate::memory;

fn mem() -> GuestMemory {
    memory::allocate(8 << 20).unwrap()
}

fn read_u32(m: &GuestMemory, gpa: u64) -> u32 {
    m.read_obj(GuestAddress(gpa)).unwrap()
}

#[test]
fn elf32_kernel_loads_with_entry_magic_and_info() {
    let m = mem();
    let image = elf32_kernel(0x20_0000, &[0xF4, 0x90], 0x100);
    let e = load(&m, &image, "kernel.elf -v").unwrap();
    assert_eq!(e.eax, BOOTLOADER_MAGIC);
    assert_eq!(e.ebx as u64, MBI_ADDR);
    assert_eq!(e.eip, 0x20_0000 + 0x6C);
    assert_eq!(
        m.read_obj::<[u8; 2]>(GuestAddress(u64::from(e.eip)))
            .unwrap(),
        [0xF4, 0x90]
    );
    let flags = read_u32(&m, MBI_ADDR);
    assert_ne!(flags & INFO_MEMORY, 0);
    assert_ne!(flags & INFO_CMDLINE, 0);
    assert_eq!(
        read_u32(&m, MBI_ADDR + 8),
        (8 << 10) - 1024,
        "mem_upper in KiB above 1 MiB"
    );
    let cmd = u64::from(read_u32(&m, MBI_ADDR + 16));
    let mut buf = [0u8; 14];
    m.read_slice(&mut buf, GuestAddress(cmd)).unwrap();
    assert_eq!(&buf, b"kernel.elf -v\0");
}

#[test]
fn bss_is_zeroed() {
    let m = mem();
    let image = elf32_kernel(0x20_0000, &[0x90; 4], 0x2000);
    let end = 0x20_0000 + image.len() as u64;
    m.write_slice(&[0xAA; 0x2000], GuestAddress(end)).unwrap();
    load(&m, &image, "k").unwrap();
    let mut bss = vec![0xFFu8; 0x2000];
    m.read_slice(&mut bss, GuestAddress(end)).unwrap();
    assert!(bss.iter().all(|&b| b == 0));
}

/// A hand-written ELF64 with a low-linked 32-bit entry, like kvm-unit-tests' x86_64 kernels.
fn elf64_kernel(paddr: u64, vaddr: u64, entry: u64, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x80];
    f[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f[16..18].copy_from_slice(&2u16.to_le_bytes());
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[24..32].copy_from_slice(&entry.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    f[ph + 8..ph + 16].copy_from_slice(&0x80u64.to_le_bytes()); // offset
    f[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
    f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
    let len = 12 + body.len() as u64;
    f[ph + 32..ph + 40].copy_from_slice(&len.to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&0u32.wrapping_sub(HEADER_MAGIC).to_le_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn elf64_kernel_loads_at_physical_addresses() {
    let m = mem();
    let image = elf64_kernel(0x40_0000, 0x40_0000, 0x40_000C, &[0xEB, 0xFE]);
    let e = load(&m, &image, "x").unwrap();
    assert_eq!(e.eip, 0x40_000C);
    assert_eq!(
        m.read_obj::<[u8; 2]>(GuestAddress(0x40_000C)).unwrap(),
        [0xEB, 0xFE]
    );
    // Virtual entry translated through the segment's physical address.
    let image = elf64_kernel(
        0x40_0000,
        0xFFFF_8000_0040_0000,
        0xFFFF_8000_0040_000C,
        &[0x90],
    );
    assert_eq!(load(&m, &image, "x").unwrap().eip, 0x40_000C);
}

#[test]
fn bad_images_are_refused_with_reasons() {
    let m = mem();
    let err = |img: &[u8]| load(&m, img, "k").unwrap_err().to_string();
    assert!(err(b"hello").contains("no multiboot"));
    // Segment below 1 MiB would overwrite the loader's structures.
    assert!(err(&elf32_kernel(0x8000, &[0x90], 0)).contains("outside"));
    // Segment beyond RAM.
    assert!(err(&elf32_kernel(0x7F_FF00, &[0x90; 64], 0x1000)).contains("raise --mem"));
    // Video mode requested.
    let mut img = elf32_kernel(0x20_0000, &[0x90], 0);
    img[0x64..0x68].copy_from_slice(&4u32.to_le_bytes());
    img[0x68..0x6C].copy_from_slice(&0u32.wrapping_sub(HEADER_MAGIC + 4).to_le_bytes());
    assert!(err(&img).contains("video"));
    // Program header table running past the end of the file.
    let mut img = elf32_kernel(0x20_0000, &[0x90], 0);
    let phoff = img.len() as u32 - 2;
    img[28..32].copy_from_slice(&phoff.to_le_bytes());
    assert!(err(&img).contains("truncated"), "{}", err(&img));
    assert!(load(
        &m,
        &elf32_kernel(0x20_0000, &[0x90], 0),
        &"x".repeat(CMDLINE_MAX)
    )
    .is_err());
}

#[test]
fn aout_kludge_uses_the_header_addresses() {
    let m = mem();
    // Header at file offset 0: header_addr = load_addr = 0x30_0000, no bss, entry after it.
    let mut img = Vec::new();
    let flags = HEADER_AOUT_KLUDGE;
    for v in [
        HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(HEADER_MAGIC + flags),
        0x30_0000,
        0x30_0000,
        0,
        0x30_1000,
        0x30_0020,
    ] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.resize(0x20, 0);
    img.extend_from_slice(&[0xF4]);
    m.write_slice(&[0xAA; 16], GuestAddress(0x30_0021)).unwrap();
    let e = load(&m, &img, "k").unwrap();
    assert_eq!(e.eip, 0x30_0020);
    assert_eq!(m.read_obj::<u8>(GuestAddress(0x30_0020)).unwrap(), 0xF4);
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(0x30_0021)).unwrap(),
        0,
        "bss zeroed"
    );
}
