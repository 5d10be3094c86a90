//! SINT delivery: "raise SINT n on VP v" turned into a guest interrupt, in either mode.
//!
//! Both [`KernelSintRoutes`] and [`UserSintRoutes`] implement [`synic::RaiseSint`], so the
//! SynIC model is handed one `Arc<dyn RaiseSint>` and never learns which mode runs.

mod kernel;
mod user;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use synic::{SintIndex, VpIndex};

pub use kernel::KernelSintRoutes;
pub use user::UserSintRoutes;

use crate::Error;

/// Where kernel-mode acknowledgements go: connect it to the SynIC model's ack entry point
/// (which retries delivery of queued messages for that SINT).
///
/// Called from the ack thread, never with a routing lock held, so it may call back into the
/// model and from there into [`synic::RaiseSint::raise`]. Expect spurious acks: KVM signals
/// every SINT on an EOM and all SINTs sharing a vector on an EOI.
pub trait SintAck: Send + Sync + 'static {
    /// The guest acknowledged `sint` on `vp` (EOI of its vector, or EOM).
    fn ack(&self, vp: VpIndex, sint: SintIndex);
}

impl<F: Fn(VpIndex, SintIndex) + Send + Sync + 'static> SintAck for F {
    fn ack(&self, vp: VpIndex, sint: SintIndex) {
        self(vp, sint)
    }
}

impl SintAck for crossbeam_channel::Sender<(VpIndex, SintIndex)> {
    fn ack(&self, vp: VpIndex, sint: SintIndex) {
        // A closed channel means the consumer is gone: nothing is left to retry.
        let _ = self.send((vp, sint));
    }
}

/// What SINT routing has done so far (monotonic counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SintCounters {
    /// Raises that wrote an irqfd, and (userspace mode) direct-mode timer vectors sent with
    /// `KVM_SIGNAL_MSI`.
    pub raised: u64,
    /// Raises for a (VP, SINT) without a route: a configuration error in the VMM.
    pub unrouted: u64,
    /// Raises not fired because the SINT is masked, polling, or has a vector below 16
    /// (userspace mode only; in kernel mode the kernel checks its own copy).
    pub suppressed: u64,
    /// Acks passed to the sink (kernel mode).
    pub acks: u64,
    /// Route updates KVM refused while following a SINT rewrite (userspace mode); the SINT
    /// stays silent until a later rewrite succeeds.
    pub route_errors: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    raised: AtomicU64,
    unrouted: AtomicU64,
    suppressed: AtomicU64,
    acks: AtomicU64,
    route_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> SintCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SintCounters {
            raised: get(&self.raised),
            unrouted: get(&self.unrouted),
            suppressed: get(&self.suppressed),
            acks: get(&self.acks),
            route_errors: get(&self.route_errors),
        }
    }
}

/// Every (VP, SINT) pair of `vps` x `sints`.
pub(crate) fn pairs(vps: &[VpIndex], sints: &[SintIndex]) -> Vec<(VpIndex, SintIndex)> {
    vps.iter()
        .flat_map(|&vp| sints.iter().map(move |&s| (vp, s)))
        .collect()
}

/// Refuses a list that names a pair twice or a pair `exists` already knows.
pub(crate) fn check_new_pairs(
    pairs: &[(VpIndex, SintIndex)],
    exists: impl Fn(&(VpIndex, SintIndex)) -> bool,
) -> Result<(), Error> {
    let mut seen = HashSet::with_capacity(pairs.len());
    for &(vp, sint) in pairs {
        if !seen.insert((vp, sint)) || exists(&(vp, sint)) {
            return Err(Error::SintRouteExists { vp, sint });
        }
    }
    Ok(())
}
