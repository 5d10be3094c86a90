//! The port-I/O bus: devices claim port ranges; the vCPU loop dispatches IN/OUT exits.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A device on the port-I/O bus. Called on the vCPU thread that executed the instruction, so
/// state shared between vCPUs needs interior synchronisation.
pub trait PortDevice: Send + Sync {
    /// IN from `port` by vCPU `vcpu`: fill `data` (1, 2 or 4 bytes).
    fn read(&self, vcpu: u32, port: u16, data: &mut [u8]);
    /// OUT of `data` to `port` by vCPU `vcpu`.
    fn write(&self, vcpu: u32, port: u16, data: &[u8]);
}

struct Entry {
    start: u16,
    end: u32, // exclusive, so a range may end at 0x1_0000
    device: Arc<dyn PortDevice>,
}

/// Port ranges and their devices. Built before the vCPUs start, then shared read-only.
#[derive(Default)]
pub struct IoBus {
    entries: Vec<Entry>, // sorted by start, disjoint
}

impl fmt::Debug for IoBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| format!("{:#x}..{:#x}", e.start, e.end)),
            )
            .finish()
    }
}

impl IoBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` on ports `start..start + len`.
    pub fn insert(&mut self, start: u16, len: u16, device: Arc<dyn PortDevice>) -> Result<()> {
        let end = u32::from(start) + u32::from(len);
        let conflict = Error::PortConflict { start, end };
        if len == 0 || end > 0x1_0000 {
            return Err(conflict);
        }
        let at = self.entries.partition_point(|e| e.start < start);
        let overlaps_prev = at > 0 && self.entries[at - 1].end > u32::from(start);
        let overlaps_next = self
            .entries
            .get(at)
            .is_some_and(|e| u32::from(e.start) < end);
        if overlaps_prev || overlaps_next {
            return Err(conflict);
        }
        self.entries.insert(at, Entry { start, end, device });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<&Entry> {
        let at = self.entries.partition_point(|e| e.start <= port);
        let e = self.entries.get(at.checked_sub(1)?)?;
        (u32::from(port) < e.end).then_some(e)
    }

    /// Dispatches an IN. Returns false (and reads all ones, like an empty ISA bus) when no
    /// device claims the port.
    pub fn read(&self, vcpu: u32, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some(e) => {
                e.device.read(vcpu, port, data);
                true
            }
            None => {
                data.fill(0xFF);
                false
            }
        }
    }

    /// Dispatches an OUT. Returns false when no device claims the port (the write is dropped).
    pub fn write(&self, vcpu: u32, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some(e) => {
                e.device.write(vcpu, port, data);
                true
            }
            None => false,
        }
    }
}

/// Little-endian value of a 1-, 2- or 4-byte port access (longer data is truncated).
pub fn le_value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<(u32, u16, u32)>>);
    impl PortDevice for Log {
        fn read(&self, _vcpu: u32, port: u16, data: &mut [u8]) {
            data.fill(port as u8);
        }
        fn write(&self, vcpu: u32, port: u16, data: &[u8]) {
            self.0.lock().unwrap().push((vcpu, port, le_value(data)));
        }
    }

    #[test]
    fn dispatches_by_range_and_floats_unclaimed_ports() {
        let mut bus = IoBus::new();
        let a = Arc::new(Log::default());
        bus.insert(0x3F8, 8, a.clone()).unwrap();
        bus.insert(0xF4, 1, a.clone()).unwrap();
        assert!(bus.write(1, 0x3FF, &[7]));
        assert!(bus.write(0, 0xF4, &[1, 2]));
        assert!(!bus.write(0, 0x400, &[1]));
        assert!(!bus.write(0, 0xF5, &[1]));
        assert_eq!(*a.0.lock().unwrap(), vec![(1, 0x3FF, 7), (0, 0xF4, 0x201)]);
        let mut d = [0u8; 2];
        assert!(bus.read(0, 0x3F9, &mut d));
        assert_eq!(d, [0xF9, 0xF9]);
        assert!(!bus.read(0, 0x3F7, &mut d));
        assert_eq!(d, [0xFF, 0xFF]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = IoBus::new();
        let a: Arc<dyn PortDevice> = Arc::new(Log::default());
        bus.insert(0x10, 0x10, a.clone()).unwrap();
        assert!(bus.insert(0x1F, 1, a.clone()).is_err());
        assert!(bus.insert(0x08, 0x9, a.clone()).is_err());
        assert!(bus.insert(0x08, 0x8, a.clone()).is_ok());
        assert!(bus.insert(0x20, 1, a.clone()).is_ok());
        assert!(bus.insert(0xFFFF, 2, a.clone()).is_err());
        assert!(bus.insert(0xFFFF, 1, a.clone()).is_ok());
        assert!(bus.insert(0x30, 0, a).is_err());
    }
}
