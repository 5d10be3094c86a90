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
//! the recording [`fake::FakeKvm`]. A VMM that already owns `KVM_SET_GSI_ROUTING` keeps it:
//! [`RoutingTable::in_range`] over a [`VmRouting::delegated`] backend gives its
//! [`GsiRoutingOwner`] this table's routes to merge into its own. See `docs/routing.md` for the design and ordering rules.
//!
//! ```
//! use std::sync::Arc;
//! use synic::{RaiseSint, Sint, SintIndex, VpIndex};
//! use synic_routing::fake::{FakeConfig, FakeKvm};
//! use synic_routing::{DefaultRoutes, Mode, MsiRoute, Route, RoutingTable, UserSintRoutes};
//!
//! // A VMM passes `Arc<VmFd>` (after KVM_CREATE_IRQCHIP); tests pass the fake.
//! let kvm = Arc::new(FakeKvm::new(FakeConfig::default()));
//! let table = Arc::new(RoutingTable::new(kvm.clone(), DefaultRoutes::Keep));
//! table.capabilities().check(Mode::Userspace).unwrap();
//!
//! // Userspace-mode SINT routes: VP 0 has APIC id 0; one route for SINT2.
//! let sints = UserSintRoutes::new(table.clone(), [(VpIndex(0), 0)]).unwrap();
//! let sint2 = SintIndex::new(2).unwrap();
//! sints.add(&[(VpIndex(0), sint2)]).unwrap();
//! // The model reports the guest's SINT2 write, then raises it.
//! sints.sint_changed(VpIndex(0), sint2, Sint::new(0x40, false, false));
//! sints.raise(VpIndex(0), sint2, 0x40, false);
//! let injected = kvm.deliver();
//! assert_eq!(injected[0].routes, vec![Route::Msi(MsiRoute::fixed(0, 0x40))]);
//!
//! // A device shares the same table: its route lands on the next free GSI.
//! let gsi = table.add(Route::Msi(MsiRoute::fixed(0, 0x51))).unwrap();
//! let irqfd = table.irqfd(gsi, false).unwrap();
//! irqfd.trigger().unwrap();
//! assert_eq!(kvm.deliver()[0].gsi, gsi);
//! ```

#![deny(missing_docs)]

mod backend;
mod error;
pub mod fake;
mod gsi;
mod irqfd;
mod msix;
pub mod ops;
mod route;
mod shared;
mod sint;
mod table;

pub use backend::{enable_synic2, Capabilities, Mode, RoutingBackend};
pub use error::Error;
pub use gsi::{Gsi, GsiAllocator};
pub use irqfd::Irqfd;
pub use msix::{MsixVectors, MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS};
pub use route::{default_irqchip_routes, IrqChip, MsiRoute, Route, MSI_ADDRESS_BASE};
pub use shared::{GsiRoutingOwner, VmRouting};
pub use sint::{KernelSintRoutes, SintAck, SintCounters, UserSintRoutes};
pub use table::{DefaultRoutes, RoutingTable, TableStats, Transaction};
