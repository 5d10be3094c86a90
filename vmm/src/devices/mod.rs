//! Port-I/O devices: COM1, isa-debug-exit, fw_cfg, QEMU's hyperv-testdev protocol, and the
//! report port the guest toolkit writes to.

pub mod debug_exit;
pub mod fw_cfg;
pub mod hv_testdev;
pub mod report;
pub mod serial;

pub use debug_exit::DebugExit;
pub use fw_cfg::FwCfg;
pub use hv_testdev::HvTestDev;
pub use report::{Report, ReportPort};
pub use serial::{Serial, SharedBuffer};
