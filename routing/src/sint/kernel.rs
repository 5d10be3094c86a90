//! Kernel mode: HV_SINT routes and irqfds; acks either from resamplefds fanned in to one ack
//! thread, or (no resamplefds, no thread) from EOM writes the VMM takes to userspace.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use synic::{RaiseSint, SintIndex, VpIndex};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{check_new_pairs, pairs, Counters, SintAck, SintCounters};
use crate::backend::new_eventfd;
use crate::{Error, Gsi, Irqfd, Mode, Route, RoutingBackend, RoutingTable};

/// epoll token of the stop eventfd; route tokens are `vp << 8 | sint`, which never reach it.
const STOP: u64 = u64::MAX;

fn token(vp: VpIndex, sint: SintIndex) -> u64 {
    u64::from(vp.0) << 8 | u64::from(sint.get())
}

fn untoken(t: u64) -> Option<(VpIndex, SintIndex)> {
    let vp = u32::try_from(t >> 8).ok()?;
    Some((VpIndex(vp), SintIndex::new((t & 0xFF) as u32)?))
}

/// Kernel-mode SINT delivery (`KVM_CAP_HYPERV_SYNIC2`).
///
/// Per configured (VP, SINT): a GSI with an HV_SINT route and an irqfd that
/// [`RaiseSint::raise`] writes. Acks come one of two ways:
/// * [`new`](Self::new): a resamplefd per pair, which KVM signals when the guest acknowledges
///   the SINT (EOI of its vector, or EOM). One thread blocks in `epoll_wait` over every
///   resamplefd and passes each signal to the [`SintAck`] sink: no polling, one thread for the
///   whole VM, but two thread wake-ups per acknowledged interrupt.
/// * [`eom_acked`](Self::eom_acked): no resamplefds and no thread. The VMM takes the guest's
///   EOM writes to userspace (an MSR filter on `HV_X64_MSR_EOM`) and gives them to the model on
///   the vCPU's own thread, as in userspace mode. Only EOM acks (the TLFS's: a guest that
///   found MessagePending set writes EOM); EOIs are not seen. Works with a split irqchip.
///
/// Ordering: KVM maps SINTs to GSIs (for acks) only for vCPUs whose SynIC is already active,
/// and only when a table is committed. So enable SYNIC2 on every vCPU ([`crate::enable_synic2`]),
/// mark each VP active ([`RoutingTable::mark_synic_active`]), then [`KernelSintRoutes::add`];
/// the table refuses HV_SINT routes for VPs not marked active. If the VMM later changes a
/// VP_INDEX, call [`RoutingTable::commit`] so KVM rebuilds the map.
pub struct KernelSintRoutes<B: RoutingBackend> {
    table: Arc<RoutingTable<B>>,
    shared: Arc<Shared<B>>,
    /// The resamplefd ack thread ([`KernelSintRoutes::new`] only).
    thread: Option<JoinHandle<()>>,
    /// Serialises add and remove (configuration, not the raise path).
    changes: Mutex<()>,
}

type RouteMap<B> = HashMap<(VpIndex, SintIndex), Irqfd<B>>;

struct Shared<B: RoutingBackend> {
    routes: RwLock<RouteMap<B>>,
    /// The resamplefd ack path; `None`: no resamplefds ([`KernelSintRoutes::eom_acked`]).
    acks: Option<AckPath>,
    counters: Counters,
}

/// What only resamplefd acks need: the epoll set the ack thread waits on, its stop eventfd,
/// and where the acks go.
struct AckPath {
    epoll: Epoll,
    stop: EventFd,
    sink: Box<dyn SintAck>,
}

impl<B: RoutingBackend> Shared<B> {
    fn read(&self) -> RwLockReadGuard<'_, RouteMap<B>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RouteMap<B>> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl<B: RoutingBackend> std::fmt::Debug for KernelSintRoutes<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelSintRoutes")
            .field("routes", &self.shared.read().len())
            .field("counters", &self.counters())
            .finish()
    }
}

impl<B: RoutingBackend> KernelSintRoutes<B> {
    /// Checks that the kernel can do kernel mode (SYNIC2 and resample irqfds, which need the
    /// full in-kernel irqchip) and starts the ack thread feeding `sink`.
    pub fn new(table: Arc<RoutingTable<B>>, sink: impl SintAck) -> Result<Self, Error> {
        table.capabilities().check(Mode::Kernel)?;
        let epoll = Epoll::new().map_err(Error::os("epoll_create1"))?;
        let stop = new_eventfd()?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP),
            )
            .map_err(Error::os("epoll_ctl"))?;
        let shared = Arc::new(Shared {
            routes: RwLock::new(HashMap::new()),
            acks: Some(AckPath {
                epoll,
                stop,
                sink: Box::new(sink),
            }),
            counters: Counters::default(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("sint-acks".into())
                .spawn(move || ack_loop(&shared))
                .map_err(Error::os("spawning the ack thread"))?
        };
        Ok(Self {
            table,
            shared,
            thread: Some(thread),
            changes: Mutex::new(()),
        })
    }

    /// Checks that the kernel can do kernel mode (SYNIC2 and irqfds) for routes without
    /// resamplefds: the VMM passes the guest's EOM writes to the model itself. No thread.
    pub fn eom_acked(table: Arc<RoutingTable<B>>) -> Result<Self, Error> {
        table.capabilities().check_eom_acked()?;
        Ok(Self {
            table,
            shared: Arc::new(Shared {
                routes: RwLock::new(HashMap::new()),
                acks: None,
                counters: Counters::default(),
            }),
            thread: None,
            changes: Mutex::new(()),
        })
    }

    /// Whether acks come from resamplefds ([`new`](Self::new)) rather than from the VMM's EOM
    /// writes ([`eom_acked`](Self::eom_acked)).
    pub fn resamples(&self) -> bool {
        self.shared.acks.is_some()
    }

    /// Adds a route for each (VP, SINT) pair: all GSIs and HV_SINT entries in one commit, then
    /// an irqfd per pair (with a resamplefd unless [`eom_acked`](Self::eom_acked)). On error
    /// nothing is added.
    pub fn add(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<(), Error> {
        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        check_new_pairs(pairs, |p| self.shared.read().contains_key(p))?;
        let gsis: Vec<Gsi> = self.table.update(|tx| {
            pairs
                .iter()
                .map(|&(vp, sint)| tx.add(Route::HvSint { vp, sint }))
                .collect()
        })?;
        // The route is committed before the irqfd exists, so no raise can hit an empty GSI.
        let irqfds = self.table.irqfds_or_release(&gsis, self.resamples())?;
        let mut routes = self.shared.write();
        let mut added = Vec::with_capacity(pairs.len());
        for (&pair, irqfd) in pairs.iter().zip(irqfds) {
            // Into the map before epoll: the ack thread must find a route for every event,
            // or level-triggered epoll would report the undrained fd again and again.
            routes.insert(pair, irqfd);
            added.push(pair);
            let rfd = routes[&pair].resample().map(AsRawFd::as_raw_fd);
            let watched = rfd.zip(self.shared.acks.as_ref()).map(|(fd, acks)| {
                acks.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token(pair.0, pair.1)),
                )
            });
            if let Some(Err(e)) = watched {
                drop(routes);
                let _ = self.remove_locked(&added);
                return Err(Error::os("epoll_ctl")(e));
            }
        }
        Ok(())
    }

    /// Adds routes for `sints` on every VP in `vps` (one commit).
    pub fn add_vps(&self, vps: &[VpIndex], sints: &[SintIndex]) -> Result<(), Error> {
        self.add(&pairs(vps, sints))
    }

    /// Removes the routes of `pairs` that exist: stops watching their resamplefds, unregisters
    /// their irqfds, then releases their GSIs in one commit.
    pub fn remove(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<(), Error> {
        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_locked(pairs)
    }

    fn remove_locked(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<(), Error> {
        let mut removed = Vec::new();
        {
            let mut routes = self.shared.write();
            for pair in pairs {
                if let Some(irqfd) = routes.remove(pair) {
                    if let (Some(r), Some(acks)) = (irqfd.resample(), &self.shared.acks) {
                        let _ = acks.epoll.ctl(
                            ControlOperation::Delete,
                            r.as_raw_fd(),
                            EpollEvent::default(),
                        );
                    }
                    removed.push(irqfd);
                }
            }
        }
        let gsis: Vec<Gsi> = removed.iter().map(Irqfd::gsi).collect();
        // Unregister before the GSI can be reused by anyone else.
        drop(removed);
        self.table
            .update(|tx| gsis.iter().try_for_each(|&g| tx.release(g)))
    }

    /// The GSI routing `sint` on `vp`, if configured.
    pub fn gsi(&self, vp: VpIndex, sint: SintIndex) -> Option<Gsi> {
        self.shared.read().get(&(vp, sint)).map(Irqfd::gsi)
    }

    /// What has been raised and acknowledged so far.
    pub fn counters(&self) -> SintCounters {
        self.shared.counters.snapshot()
    }

    /// The table these routes live in.
    pub fn table(&self) -> &Arc<RoutingTable<B>> {
        &self.table
    }
}

impl<B: RoutingBackend> RaiseSint for KernelSintRoutes<B> {
    /// Writes the (VP, SINT)'s irqfd. KVM injects the vector from its own copy of the SINT
    /// register and drops the interrupt if the SINT is masked, so `vector` and `auto_eoi` are
    /// not needed here.
    fn raise(&self, vp: VpIndex, sint: SintIndex, _vector: u8, _auto_eoi: bool) {
        let routes = self.shared.read();
        match routes.get(&(vp, sint)) {
            Some(irqfd) => {
                // Fails only if the counter would overflow u64: the interrupt is pending anyway.
                let _ = irqfd.trigger();
                Counters::bump(&self.shared.counters.raised);
            }
            None => Counters::bump(&self.shared.counters.unrouted),
        }
    }
}

impl<B: RoutingBackend> Drop for KernelSintRoutes<B> {
    fn drop(&mut self) {
        if let Some(acks) = &self.shared.acks {
            let _ = acks.stop.write(1);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let removed: Vec<Irqfd<B>> = self.shared.write().drain().map(|(_, i)| i).collect();
        let gsis: Vec<Gsi> = removed.iter().map(Irqfd::gsi).collect();
        drop(removed);
        self.table.release_best_effort(gsis);
    }
}

fn ack_loop<B: RoutingBackend>(shared: &Shared<B>) {
    let Some(path) = &shared.acks else {
        return;
    };
    let mut events = vec![EpollEvent::default(); 64];
    let mut acks = Vec::new();
    loop {
        let n = match path.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Only EBADF/EINVAL/EFAULT: the epoll fd is ours and valid, so this is unreachable.
            Err(_) => return,
        };
        {
            let routes = shared.read();
            for event in &events[..n] {
                if event.data() == STOP {
                    return;
                }
                let Some(pair) = untoken(event.data()) else {
                    continue;
                };
                let drained = routes
                    .get(&pair)
                    .and_then(Irqfd::resample)
                    .is_some_and(|r| r.read().is_ok());
                if drained {
                    acks.push(pair);
                }
            }
        }
        // Outside the lock: the sink may call back into the model and from there into raise.
        for (vp, sint) in acks.drain(..) {
            Counters::bump(&shared.counters.acks);
            path.sink.ack(vp, sint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_collide_with_stop() {
        for vp in [0, 1, 4095, u32::MAX] {
            for sint in SintIndex::ALL {
                let t = token(VpIndex(vp), sint);
                assert_ne!(t, STOP);
                assert_eq!(untoken(t), Some((VpIndex(vp), sint)));
            }
        }
        assert_eq!(untoken(STOP), None);
    }
}
