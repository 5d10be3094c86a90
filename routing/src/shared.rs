//! Sharing a VM's GSI routing table with a VMM that already owns it.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so a VM can have only one component that
//! commits it. A VMM with its own interrupt manager (Cloud Hypervisor's, say) keeps that role:
//! the SynIC's routes live in a GSI range reserved for them ([`crate::RoutingTable::in_range`]),
//! and every time they change the whole set of them goes to the VMM's [`GsiRoutingOwner`],
//! which merges it into its own table and commits both together. Irqfds, resamplefds and
//! `KVM_SIGNAL_MSI` need no table and go to KVM directly.
//!
//! [`VmRouting`] is the backend for either arrangement: [`VmRouting::direct`] commits to KVM
//! itself (this crate's table is the VM's one table), [`VmRouting::delegated`] hands commits to
//! the owner.

use std::fmt;
use std::sync::Arc;

use kvm_bindings::kvm_irq_routing_entry;
use vmm_sys_util::errno;
use vmm_sys_util::eventfd::EventFd;

use crate::{Capabilities, Gsi, MsiRoute, RoutingBackend};

/// The component that owns a VM's `KVM_SET_GSI_ROUTING`, taking routes from a table that
/// lives in a GSI range it reserved for it.
pub trait GsiRoutingOwner: Send + Sync + 'static {
    /// `entries` is now the complete set of the delegating table's routes (every one on a GSI
    /// of its reserved range; it replaces the set given last time). Commit the VM's whole
    /// table — the owner's own routes plus these — with one `KVM_SET_GSI_ROUTING` before
    /// returning, and return KVM's error if it refused. On an error the delegating table rolls
    /// its change back, and the owner must keep (or restore) the previous set.
    fn commit_delegated(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), errno::Error>;
}

/// How a routing table reaches KVM: committing the VM's table itself, or through the VMM's
/// [`GsiRoutingOwner`].
pub struct VmRouting<B: RoutingBackend> {
    kvm: Arc<B>,
    owner: Option<Arc<dyn GsiRoutingOwner>>,
}

impl<B: RoutingBackend> fmt::Debug for VmRouting<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmRouting")
            .field("delegated", &self.owner.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: RoutingBackend> VmRouting<B> {
    /// This table is the VM's one table: commits go to KVM.
    pub fn direct(kvm: Arc<B>) -> Self {
        Self { kvm, owner: None }
    }

    /// The VM's table belongs to `owner`: commits go to it.
    pub fn delegated(kvm: Arc<B>, owner: Arc<dyn GsiRoutingOwner>) -> Self {
        Self {
            kvm,
            owner: Some(owner),
        }
    }

    /// KVM itself (irqfds, MSIs, and anything else the VM fd offers).
    pub fn kvm(&self) -> &Arc<B> {
        &self.kvm
    }

    /// Whether commits go to an owner.
    pub fn is_delegated(&self) -> bool {
        self.owner.is_some()
    }
}

impl<B: RoutingBackend> RoutingBackend for VmRouting<B> {
    fn probe(&self) -> Capabilities {
        self.kvm.probe()
    }

    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), errno::Error> {
        match &self.owner {
            Some(owner) => owner.commit_delegated(entries),
            None => self.kvm.set_gsi_routing(entries),
        }
    }

    fn register_irqfd(
        &self,
        fd: &EventFd,
        gsi: Gsi,
        resample: Option<&EventFd>,
    ) -> Result<(), errno::Error> {
        self.kvm.register_irqfd(fd, gsi, resample)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: Gsi) -> Result<(), errno::Error> {
        self.kvm.unregister_irqfd(fd, gsi)
    }

    fn signal_msi(&self, msi: MsiRoute) -> Result<bool, errno::Error> {
        self.kvm.signal_msi(msi)
    }
}
