//! Per-VP Hyper-V SynIC models (under construction: see the README status table).
//!
//! The model never calls KVM: interrupts leave through [`RaiseSint`], which `synic-routing`
//! implements for KVM (HV_SINT routes in kernel mode, MSI routes in userspace mode) and tests
//! implement with a recorder.

#![deny(missing_docs)]

pub use synic_msr::{Sint, SintIndex, VpIndex};

/// Where SINT interrupts leave the model.
///
/// Called from whichever thread delivered a message or set a flag (a vCPU thread or a device
/// thread), so implementations must be cheap and must not call back into the model.
pub trait RaiseSint: Send + Sync {
    /// Raises `sint` on `vp` as an edge interrupt with `vector`. `auto_eoi` tells an APIC
    /// owner to EOI on delivery (the guest will not EOI). In kernel mode the kernel reads the
    /// vector from its own copy of the SINT register and these two values are informative.
    fn raise(&self, vp: VpIndex, sint: SintIndex, vector: u8, auto_eoi: bool);

    /// The guest (or the host) rewrote `SINTn` on `vp`. Userspace-mode routes keep their MSI
    /// vector in step with it. The default does nothing.
    fn sint_changed(&self, vp: VpIndex, sint: SintIndex, value: Sint) {
        let _ = (vp, sint, value);
    }
}
