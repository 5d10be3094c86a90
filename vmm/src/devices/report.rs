//! The report port: how guest-toolkit programs tell the host what they saw.
//!
//! A report is a tag and a 64-bit value. The guest writes the value's low half to
//! [`REPORT_LOW`], its high half to [`REPORT_HIGH`] (both latched per vCPU), then the tag to
//! [`REPORT_TAG`], which commits the report and clears the latch.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

use crate::io::{le_value, PortDevice};
use crate::layout::ports::{REPORT_HIGH, REPORT_LOW, REPORT_TAG};

/// One report from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Report {
    /// The vCPU that wrote it.
    pub vcpu: u32,
    /// What it is (see [`crate::guest::tag`]).
    pub tag: u32,
    /// The value.
    pub value: u64,
}

/// The device. Occupies [`REPORT_LOW`]..[`REPORT_TAG`] + 4.
#[derive(Debug)]
pub struct ReportPort {
    latch: Mutex<Vec<u64>>,
    tx: Sender<Report>,
}

impl ReportPort {
    /// A report port for `vcpus` vCPUs and the receiving end of its reports.
    pub fn new(vcpus: u32) -> (Self, Receiver<Report>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let latch = Mutex::new(vec![0; vcpus as usize]);
        (Self { latch, tx }, rx)
    }

    /// First port.
    pub const BASE: u16 = REPORT_LOW;
    /// Number of ports.
    pub const LEN: u16 = REPORT_TAG - REPORT_LOW + 4;
}

impl PortDevice for ReportPort {
    fn read(&self, _vcpu: u32, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, vcpu: u32, port: u16, data: &[u8]) {
        let v = u64::from(le_value(data));
        let mut latch = self.latch.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = latch.get_mut(vcpu as usize) else {
            return;
        };
        match port {
            REPORT_LOW => *slot = (*slot & !0xFFFF_FFFF) | v,
            REPORT_HIGH => *slot = (*slot & 0xFFFF_FFFF) | (v << 32),
            REPORT_TAG => {
                let value = std::mem::take(slot);
                // The receiver may be gone (test over): reports are then dropped.
                let _ = self.tx.send(Report {
                    vcpu,
                    tag: v as u32,
                    value,
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_halves_are_latched_per_vcpu_until_the_tag() {
        let (p, rx) = ReportPort::new(2);
        p.write(0, REPORT_LOW, &0x1111_2222u32.to_le_bytes());
        p.write(1, REPORT_LOW, &7u32.to_le_bytes());
        p.write(0, REPORT_HIGH, &0x3333_4444u32.to_le_bytes());
        p.write(0, REPORT_TAG, &5u32.to_le_bytes());
        p.write(1, REPORT_TAG, &6u32.to_le_bytes());
        p.write(1, REPORT_TAG, &6u32.to_le_bytes());
        p.write(9, REPORT_TAG, &6u32.to_le_bytes()); // unknown vCPU: ignored
        let got: Vec<Report> = rx.try_iter().collect();
        assert_eq!(
            got,
            vec![
                Report {
                    vcpu: 0,
                    tag: 5,
                    value: 0x3333_4444_1111_2222
                },
                Report {
                    vcpu: 1,
                    tag: 6,
                    value: 7
                },
                Report {
                    vcpu: 1,
                    tag: 6,
                    value: 0
                },
            ]
        );
    }
}
