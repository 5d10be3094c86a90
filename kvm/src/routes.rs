//! The SINT routes of either mode behind one type, and kernel mode's ack pump.

use std::sync::{Arc, Weak};

use crossbeam_channel::Receiver;
use synic::{Partition, RaiseSint, Sint, SintIndex, VpIndex};
use synic_routing::{
    Gsi, KernelSintRoutes, MsiRoute, RoutingBackend, SintCounters, UserSintRoutes,
};
use vm_memory::GuestAddressSpace;

use crate::error::{Error, Result};
use crate::{Routing, SynicRoutingTable};

/// The routes the partition raises SINTs through.
#[derive(Debug)]
pub(crate) enum SintRoutes {
    /// Userspace mode: MSI routes following the guest's SINT registers.
    User(Arc<UserSintRoutes<Routing>>),
    /// Kernel mode: HV_SINT routes with resamplefds.
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

/// Kernel mode: hands resamplefd acks from the routing layer's ack thread to
/// [`synic::Partition::ack`].
///
/// The partition holds the routes (its raise trait) and the routes hold the ack sink, so the
/// sink cannot own the partition: it is a channel, and this thread holds only a `Weak`. When
/// the last owner drops the partition the routes go with it, the channel closes and the
/// thread ends. (A closure sink holding the `Weak` could end up dropping the partition — and
/// with it the routes, which join the ack thread — on the ack thread itself.)
pub(crate) fn spawn_ack_pump<M>(
    acks: Receiver<(VpIndex, SintIndex)>,
    partition: Weak<Partition<M>>,
) -> Result<()>
where
    M: GuestAddressSpace + Send + Sync + 'static,
{
    std::thread::Builder::new()
        .name("synic-acks".into())
        .spawn(move || {
            for (vp, sint) in acks {
                let Some(p) = partition.upgrade() else {
                    return;
                };
                // Acks are hints (KVM acks every SINT on EOM); an error here is a VP index or
                // a page the guest moved out of RAM, counted by the model.
                let _ = p.ack(vp, sint);
            }
        })
        .map(|_| ())
        .map_err(|source| Error::Thread {
            what: "SynIC ack",
            source,
        })
}
