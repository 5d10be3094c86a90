//! The SINT routes of either mode behind one type.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::{Routing, SynicRoutingTable};
use synic::{RaiseSint, Sint, SintIndex, VpIndex};
use synic_routing::{
    Gsi, KernelSintRoutes, MsiRoute, RoutingBackend, SintCounters, UserSintRoutes,
};

/// The routes the partition raises SINTs through.
#[derive(Debug)]
pub(crate) enum SintRoutes {
    /// Userspace mode: MSI routes following the guest's SINT registers.
    User(Arc<UserSintRoutes<Routing>>),
    /// Kernel mode: HV_SINT routes; acks are the guest's EOM writes (no resamplefds).
    Kernel(Arc<KernelSintRoutes<Routing>>),
}

impl SintRoutes {
    /// The routes as the model's raise trait.
    pub fn raise(&self) -> Arc<dyn RaiseSint> {
        match self {
            SintRoutes::User(r) => Arc::clone(r) as Arc<dyn RaiseSint>,
            SintRoutes::Kernel(r) => Arc::new(KernelRaise(Arc::clone(r))),
        }
    }

    /// Adds routes for `pairs` (one commit).
    pub fn add(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<()> {
        match self {
            SintRoutes::User(r) => r.add(pairs),
            SintRoutes::Kernel(r) => r.add(pairs),
        }
        .map_err(Error::Routing)
    }

    /// Removes the routes of `pairs` (one commit).
    pub fn remove(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<()> {
        match self {
            SintRoutes::User(r) => r.remove(pairs),
            SintRoutes::Kernel(r) => r.remove(pairs),
        }
        .map_err(Error::Routing)
    }

    /// The GSI of a pair's route.
    pub fn gsi(&self, vp: VpIndex, sint: SintIndex) -> Option<Gsi> {
        match self {
            SintRoutes::User(r) => r.gsi(vp, sint),
            SintRoutes::Kernel(r) => r.gsi(vp, sint),
        }
    }

    /// What the routes have done so far.
    pub fn counters(&self) -> SintCounters {
        match self {
            SintRoutes::User(r) => r.counters(),
            SintRoutes::Kernel(r) => r.counters(),
        }
    }

    /// The VM's one routing table.
    pub fn table(&self) -> &Arc<SynicRoutingTable> {
        match self {
            SintRoutes::User(r) => r.table(),
            SintRoutes::Kernel(r) => r.table(),
        }
    }
}

/// Kernel mode's raise: SINTs through the HV_SINT routes (KVM applies the SINT register), and
/// a direct-mode synthetic timer's vector — the timers are the model's in kernel mode too — as
/// one `KVM_SIGNAL_MSI` to the VP's local APIC (VP index n runs on vCPU n, APIC id n).
struct KernelRaise(Arc<KernelSintRoutes<Routing>>);

impl RaiseSint for KernelRaise {
    fn raise(&self, vp: VpIndex, sint: SintIndex, vector: u8, auto_eoi: bool) {
        self.0.raise(vp, sint, vector, auto_eoi);
    }

    fn sint_changed(&self, vp: VpIndex, sint: SintIndex, value: Sint) {
        self.0.sint_changed(vp, sint, value);
    }

    fn raise_vector(&self, vp: VpIndex, vector: u8) {
        if vector < Sint::FIRST_VALID_VECTOR {
            return;
        }
        // Not delivered (a software-disabled APIC) is what the guest asked for; an error is
        // KVM's refusal of a well-formed MSI, which only a torn-down VM gives.
        let _ = self
            .0
            .table()
            .backend()
            .signal_msi(MsiRoute::fixed(vp.0, vector));
    }
}
