//! QEMU's hyperv-testdev on the I/O bus: synic-kvm's [`TestDev`] behind a port.

use std::sync::Arc;

use synic_kvm::testdev::TestDev;

use crate::io::PortDevice;
use crate::synic_vm::SynicMemory;

/// The test device at its port (one 32-bit write per command; reads return 0).
#[derive(Debug)]
pub struct HvTestDev(pub Arc<TestDev<SynicMemory>>);

impl PortDevice for HvTestDev {
    fn read(&self, _vcpu: u32, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, _vcpu: u32, _port: u16, data: &[u8]) {
        self.0.write(data);
    }
}
