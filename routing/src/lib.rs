//! The VM's one KVM GSI routing table, and SynIC interrupt delivery on top of it.
//!
//! KVM keeps one routing table per VM and `KVM_SET_GSI_ROUTING` replaces all of it, so SINT
//! routes and every device's MSI/MSI-X routes live in one shadow [`RoutingTable`] with one
//! owner, committed in batches. On top of it:
//!
//! * [`Irqfd`]: an eventfd registered on a GSI (optionally with a resamplefd), unregistered
//!   on drop.
//! * [`KernelSintRoutes`]: kernel mode — one HV_SINT route, irqfd and resamplefd per
//!   configured (VP, SINT); resamplefd signals reach a [`SintAck`] sink from one epoll thread.
//! * [`UserSintRoutes`]: userspace mode — one MSI route per (VP, SINT) to the VP's local APIC,
//!   kept in step with the guest's SINT register.
//! * [`MsixVectors`]: a device's MSI-X vectors with mask and pending bits, losing nothing.
//!
//! KVM is reached only through [`RoutingBackend`], implemented by `kvm_ioctls::VmFd` and by
//! the recording [`fake::FakeKvm`]. See `docs/routing.md` for the design and ordering rules.

#![deny(missing_docs)]

mod backend;
mod error;
pub mod fake;
mod gsi;
mod irqfd;
mod msix;
pub mod ops;
mod route;
mod sint;
mod table;

pub use backend::{enable_synic2, Capabilities, Mode, RoutingBackend};
pub use error::Error;
pub use gsi::{Gsi, GsiAllocator};
pub use irqfd::Irqfd;
pub use msix::{MsixVectors, MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS};
pub use route::{default_irqchip_routes, IrqChip, MsiRoute, Route, MSI_ADDRESS_BASE};
pub use sint::{KernelSintRoutes, SintAck, SintCounters, UserSintRoutes};
pub use table::{DefaultRoutes, RoutingTable, TableStats, Transaction};
