//! The traditional (non-DMA) fw_cfg interface, with the few items a test kernel asks for:
//! signature, interface id, RAM size and the CPU count.

use std::sync::Mutex;

use crate::io::PortDevice;
use crate::layout::ports::{FW_CFG_DATA, FW_CFG_SELECTOR};

/// FW_CFG_SIGNATURE: "QEMU".
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// FW_CFG_ID: interface revision (1 = traditional interface only).
pub const FW_CFG_ID: u16 = 0x01;
/// FW_CFG_RAM_SIZE (u64).
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// FW_CFG_NB_CPUS (u16).
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// FW_CFG_MAX_CPUS (u16).
pub const FW_CFG_MAX_CPUS: u16 = 0x0F;

#[derive(Debug, Default)]
struct Cursor {
    key: u16,
    offset: usize,
}

/// fw_cfg at 0x510 (selector) / 0x511 (data).
#[derive(Debug)]
pub struct FwCfg {
    cpus: u16,
    ram_size: u64,
    cursor: Mutex<Cursor>,
}

impl FwCfg {
    /// fw_cfg answering `cpus` CPUs and `ram_size` bytes of RAM.
    pub fn new(cpus: u16, ram_size: u64) -> Self {
        Self {
            cpus,
            ram_size,
            cursor: Mutex::new(Cursor::default()),
        }
    }

    fn item(&self, key: u16) -> Vec<u8> {
        match key {
            FW_CFG_SIGNATURE => b"QEMU".to_vec(),
            FW_CFG_ID => 1u32.to_le_bytes().to_vec(),
            FW_CFG_RAM_SIZE => self.ram_size.to_le_bytes().to_vec(),
            FW_CFG_NB_CPUS | FW_CFG_MAX_CPUS => self.cpus.to_le_bytes().to_vec(),
            _ => Vec::new(),
        }
    }
}

impl PortDevice for FwCfg {
    fn read(&self, _vcpu: u32, port: u16, data: &mut [u8]) {
        data.fill(0);
        if port != FW_CFG_DATA {
            return;
        }
        let mut c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let item = self.item(c.key);
        // Reads past the end of an item return 0, as QEMU's do.
        for b in data.iter_mut().take(1) {
            *b = item.get(c.offset).copied().unwrap_or(0);
            c.offset = c.offset.saturating_add(1);
        }
    }

    fn write(&self, _vcpu: u32, port: u16, data: &[u8]) {
        if port == FW_CFG_SELECTOR && data.len() >= 2 {
            let mut c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
            *c = Cursor {
                key: u16::from_le_bytes([data[0], data[1]]),
                offset: 0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_n(f: &FwCfg, key: u16, n: usize) -> Vec<u8> {
        f.write(0, FW_CFG_SELECTOR, &key.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                f.read(0, FW_CFG_DATA, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn answers_cpu_count_and_signature() {
        let f = FwCfg::new(3, 64 << 20);
        assert_eq!(read_n(&f, FW_CFG_SIGNATURE, 4), b"QEMU");
        // kvm-unit-tests reads 8 bytes of every item: the tail is zero.
        assert_eq!(read_n(&f, FW_CFG_NB_CPUS, 8), vec![3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_n(&f, FW_CFG_RAM_SIZE, 8), (64u64 << 20).to_le_bytes());
        assert_eq!(read_n(&f, 0x1234, 2), vec![0, 0]);
    }
}
