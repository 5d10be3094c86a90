//! The crate's one error type.

use std::io;

use synic::{SintIndex, VpIndex};
use vmm_sys_util::errno;

use crate::{Gsi, IrqChip, Mode, Route};

/// Everything that can go wrong while routing interrupts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM's routing table is full: every GSI below its size is allocated, or the table holds
    /// as many entries as KVM accepts (irqchip pins sharing GSIs count one entry each).
    #[error("GSI routing table full: KVM allows {limit} routes (KVM_CAP_IRQ_ROUTING) and all are in use")]
    GsiExhausted {
        /// The table size KVM reports.
        limit: u32,
    },
    /// A fixed GSI beyond the kernel's routing table size.
    #[error("{gsi} is outside the routing table (KVM_CAP_IRQ_ROUTING reports {limit} GSIs)")]
    GsiOutOfRange {
        /// The GSI asked for.
        gsi: Gsi,
        /// The table size KVM reports.
        limit: u32,
    },
    /// A fixed GSI that is already allocated.
    #[error("{gsi} is already allocated")]
    GsiInUse {
        /// The GSI asked for.
        gsi: Gsi,
    },
    /// An operation on a GSI this table did not allocate.
    #[error("{gsi} is not allocated in this routing table")]
    GsiNotAllocated {
        /// The GSI named.
        gsi: Gsi,
    },
    /// KVM lets a GSI carry one pin per irqchip, or exactly one route of any other kind.
    #[error("{gsi} already routes to {existing}; KVM cannot also route it to {new}")]
    GsiConflict {
        /// The GSI named.
        gsi: Gsi,
        /// A route already on it.
        existing: Route,
        /// The route that cannot join it.
        new: Route,
    },
    /// An irqchip pin the chip does not have.
    #[error("{chip} has no pin {pin} (it has {})", chip.pins())]
    IrqchipPin {
        /// The chip.
        chip: IrqChip,
        /// The pin asked for.
        pin: u32,
    },
    /// An HV_SINT route for a VP whose SynIC is not yet active in KVM. KVM builds its
    /// SINT-to-GSI map (which routes acks to resamplefds) only for active SynICs, at commit
    /// time, so committing first would lose every ack of that VP.
    #[error("SynIC of {vp} is not active: enable KVM_CAP_HYPERV_SYNIC2 on its vCPU and call mark_synic_active before adding HV_SINT routes for it")]
    SynicNotActive {
        /// The VP.
        vp: VpIndex,
    },
    /// KVM refused HV_SINT routes because it has no in-kernel Hyper-V.
    #[error("KVM_SET_GSI_ROUTING refused the table ({source}): in-kernel Hyper-V SynIC is missing (KVM_CAP_HYPERV_SYNIC2 = 0), so this KVM cannot route HV_SINT entries; use userspace mode")]
    HypervSynicMissing {
        /// KVM's error (EINVAL).
        source: errno::Error,
    },
    /// KVM_SET_GSI_ROUTING failed for another reason.
    #[error("KVM_SET_GSI_ROUTING with {entries} entries failed: {source}")]
    Commit {
        /// Number of entries in the refused table.
        entries: usize,
        /// KVM's error.
        source: errno::Error,
    },
    /// KVM_IRQFD (assign) failed.
    #[error("registering an irqfd{} on {gsi} failed: {source}", if *.resample { " with a resamplefd" } else { "" })]
    RegisterIrqfd {
        /// The GSI.
        gsi: Gsi,
        /// Whether a resamplefd was asked for.
        resample: bool,
        /// KVM's error.
        source: errno::Error,
    },
    /// `KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC2)` on a vCPU failed: this KVM has no in-kernel
    /// Hyper-V SynIC (or refused it for this vCPU).
    #[error(
        "enabling KVM_CAP_HYPERV_SYNIC2 on the vCPU failed: {source} (no in-kernel Hyper-V SynIC)"
    )]
    EnableSynic2 {
        /// KVM's error.
        source: errno::Error,
    },
    /// KVM_IRQFD (deassign) failed.
    #[error("unregistering the irqfd on {gsi} failed: {source}")]
    UnregisterIrqfd {
        /// The GSI.
        gsi: Gsi,
        /// KVM's error.
        source: errno::Error,
    },
    /// eventfd(2), epoll or a thread could not be created.
    #[error("{what} failed: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The chosen mode needs something this KVM (or this VM's irqchip) does not offer.
    #[error("{mode} SINT delivery needs {capability}: {detail}")]
    MissingCapability {
        /// The mode asked for.
        mode: Mode,
        /// The missing capability, by KVM name.
        capability: &'static str,
        /// What exactly was found.
        detail: String,
    },
    /// A (VP, SINT) pair that already has a route.
    #[error("{vp} {sint} already has a route")]
    SintRouteExists {
        /// The VP.
        vp: VpIndex,
        /// The SINT.
        sint: SintIndex,
    },
    /// Userspace mode needs the VP's APIC id to address its MSI.
    #[error("no APIC id is known for {vp}; pass it in the VP-to-APIC map")]
    UnknownApicId {
        /// The VP.
        vp: VpIndex,
    },
    /// An MSI-X vector number beyond the table.
    #[error("MSI-X vector {vector} does not exist (the table has {count})")]
    MsixVector {
        /// The vector asked for.
        vector: u16,
        /// Number of vectors.
        count: u16,
    },
}

impl Error {
    pub(crate) fn os(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Os { what, source }
    }
}
