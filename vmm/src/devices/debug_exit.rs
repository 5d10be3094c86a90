//! isa-debug-exit: a write stops the VM with the value written.

use std::sync::Arc;

use crate::control::{StopReason, VmControl};
use crate::io::{le_value, PortDevice};

/// The exit device. QEMU makes the process exit with `(value << 1) | 1`; this device reports
/// the raw value ([`StopReason::DebugExit`]) and [`DebugExit::qemu_status`] maps it.
#[derive(Debug)]
pub struct DebugExit {
    control: Arc<VmControl>,
}

impl DebugExit {
    /// A device stopping the VM through `control`.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }

    /// The process exit status QEMU would give for `value` (kvm-unit-tests reads 1 as pass).
    pub fn qemu_status(value: u32) -> i32 {
        ((value << 1) | 1) as u8 as i32
    }
}

impl PortDevice for DebugExit {
    fn read(&self, _vcpu: u32, _port: u16, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write(&self, _vcpu: u32, _port: u16, data: &[u8]) {
        self.control
            .request_stop(StopReason::DebugExit(le_value(data)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_stops_with_the_value() {
        let c = Arc::new(VmControl::new(1));
        DebugExit::new(c.clone()).write(0, 0xF4, &[3, 0, 0, 0]);
        assert_eq!(c.reason(), Some(StopReason::DebugExit(3)));
        assert_eq!(DebugExit::qemu_status(0), 1);
        assert_eq!(DebugExit::qemu_status(3), 7);
        assert_eq!(DebugExit::qemu_status(0x80), 1);
    }
}
