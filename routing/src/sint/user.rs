//! Userspace mode: one MSI route per (VP, SINT) to the VP's local APIC.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use synic::{RaiseSint, Sint, SintIndex, VpIndex};

use super::{check_new_pairs, pairs, Counters, SintCounters};
use crate::{Error, Gsi, Irqfd, Mode, MsiRoute, Route, RoutingBackend, RoutingTable};

/// Userspace-mode SINT delivery: the VMM owns the SynIC, KVM owns the local APICs.
///
/// Per configured (VP, SINT): a GSI whose MSI route sends the SINT's vector (fixed, edge,
/// physical destination) to the VP's APIC id, and an irqfd that [`RaiseSint::raise`] writes.
/// [`RaiseSint::sint_changed`] keeps the route in step with the guest's SINT register: a new
/// vector is committed to KVM *before* the route is armed, and a masked or polling SINT (or
/// one with a vector below 16, which the local APIC would reject as illegal) is disarmed, so
/// no raise ever fires a stale route.
///
/// Acks come from the EOM path: the VMM's EOM handler calls the SynIC model directly; KVM
/// reports no EOI for MSI vectors.
///
/// Direct-mode synthetic timers ([`RaiseSint::raise_vector`]) need no route: their vector goes
/// to the VP's APIC id with one `KVM_SIGNAL_MSI`. The in-kernel LAPIC cannot do AutoEOI, so the VMM should
/// advertise "AutoEOI deprecated" (CPUID 0x4000_0004 EAX bit 9); `auto_eoi` is ignored here.
pub struct UserSintRoutes<B: RoutingBackend> {
    table: Arc<RoutingTable<B>>,
    apic_ids: RwLock<HashMap<VpIndex, u32>>,
    routes: RwLock<RouteMap<B>>,
    /// The last SINT value seen for every pair, routed or not, so a route added later starts
    /// from the guest's current register.
    values: Mutex<HashMap<(VpIndex, SintIndex), Sint>>,
    counters: Counters,
    last_error: Mutex<Option<Error>>,
    /// Serialises add, remove and set_apic_id (configuration, not the raise path).
    changes: Mutex<()>,
}

type RouteMap<B> = HashMap<(VpIndex, SintIndex), Arc<UserSint<B>>>;

struct UserSint<B: RoutingBackend> {
    irqfd: Irqfd<B>,
    /// True when a raise should fire: the guest's SINT is unmasked, not polling, its vector
    /// is valid and the committed route carries it.
    armed: AtomicBool,
    /// What the committed route says; route updates are serialised by this lock.
    route: Mutex<RouteState>,
}

struct RouteState {
    target: RouteTarget,
    /// False once removed: its GSI may already belong to someone else, so it must not be set.
    live: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct RouteTarget {
    apic_id: u32,
    vector: u8,
}

impl RouteTarget {
    fn route(self) -> Route {
        Route::Msi(MsiRoute::fixed(self.apic_id, self.vector))
    }
}

fn fires(value: Sint) -> bool {
    value.raises_interrupt() && value.vector() >= Sint::FIRST_VALID_VECTOR
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B: RoutingBackend> std::fmt::Debug for UserSintRoutes<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSintRoutes")
            .field("routes", &self.read().len())
            .field("counters", &self.counters())
            .finish()
    }
}

impl<B: RoutingBackend> UserSintRoutes<B> {
    /// Checks that the kernel can do userspace mode (routing table, irqfds on an in-kernel
    /// LAPIC) and takes the VMM's VP-index-to-APIC-id map.
    pub fn new(
        table: Arc<RoutingTable<B>>,
        apic_ids: impl IntoIterator<Item = (VpIndex, u32)>,
    ) -> Result<Self, Error> {
        table.capabilities().check(Mode::Userspace)?;
        Ok(Self {
            table,
            apic_ids: RwLock::new(apic_ids.into_iter().collect()),
            routes: RwLock::new(HashMap::new()),
            values: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            changes: Mutex::new(()),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, RouteMap<B>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RouteMap<B>> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn apic_id(&self, vp: VpIndex) -> Result<u32, Error> {
        let ids = self.apic_ids.read().unwrap_or_else(|p| p.into_inner());
        ids.get(&vp).copied().ok_or(Error::UnknownApicId { vp })
    }

    /// Adds a route for each (VP, SINT) pair, in one commit. Each starts from the last value
    /// [`RaiseSint::sint_changed`] reported for the pair (masked if none), so routes can be
    /// added before or after the guest programs its SINTs.
    pub fn add(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<(), Error> {
        let _changes = lock(&self.changes);
        check_new_pairs(pairs, |p| self.read().contains_key(p))?;
        // Held until the routes are in the map: a concurrent sint_changed either ran before
        // (its value is read here) or waits and then finds the route. Without this, a SINT
        // unmasked while the route was being built would stay disarmed.
        let known = lock(&self.values);
        let values: Vec<Sint> = pairs
            .iter()
            .map(|p| known.get(p).copied().unwrap_or(Sint::RESET))
            .collect();
        let targets = pairs
            .iter()
            .zip(&values)
            .map(|(&(vp, _), v)| {
                Ok(RouteTarget {
                    apic_id: self.apic_id(vp)?,
                    vector: v.vector(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let gsis: Vec<Gsi> = self
            .table
            .update(|tx| targets.iter().map(|t| tx.add(t.route())).collect())?;
        let irqfds = self.table.irqfds_or_release(&gsis, false)?;
        let mut routes = self.write();
        for (((pair, value), target), irqfd) in pairs.iter().zip(values).zip(targets).zip(irqfds) {
            routes.insert(
                *pair,
                Arc::new(UserSint {
                    irqfd,
                    armed: AtomicBool::new(fires(value)),
                    route: Mutex::new(RouteState { target, live: true }),
                }),
            );
        }
        Ok(())
    }

    /// Adds routes for `sints` on every VP in `vps` (one commit).
    pub fn add_vps(&self, vps: &[VpIndex], sints: &[SintIndex]) -> Result<(), Error> {
        self.add(&pairs(vps, sints))
    }

    /// Removes the routes of `pairs` that exist: irqfds unregistered, GSIs released in one
    /// commit.
    pub fn remove(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<(), Error> {
        let _changes = lock(&self.changes);
        let removed: Vec<_> = {
            let mut routes = self.write();
            pairs.iter().filter_map(|p| routes.remove(p)).collect()
        };
        let gsis: Vec<Gsi> = removed.iter().map(|r| r.irqfd.gsi()).collect();
        // A concurrent sint_changed may hold a clone of the Arc: once `live` is false it will
        // not touch the GSI, which is released (and may be reused) below. Raises cannot reach
        // a removed route; they find it through the map.
        for r in &removed {
            lock(&r.route).live = false;
        }
        drop(removed);
        self.table
            .update(|tx| gsis.iter().try_for_each(|&g| tx.release(g)))
    }

    /// Changes the APIC id of `vp` and re-targets its existing routes (one commit).
    pub fn set_apic_id(&self, vp: VpIndex, apic_id: u32) -> Result<(), Error> {
        let _changes = lock(&self.changes);
        self.apic_ids
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vp, apic_id);
        let mut mine: Vec<_> = self
            .read()
            .iter()
            .filter(|((v, _), _)| *v == vp)
            .map(|(_, r)| Arc::clone(r))
            .collect();
        // Lock the routes in one global order (by GSI), whatever the map's iteration order.
        mine.sort_by_key(|r| r.irqfd.gsi());
        let mut guards: Vec<_> = mine.iter().map(|r| lock(&r.route)).collect();
        self.table.update(|tx| {
            for (r, g) in mine.iter().zip(&guards).filter(|(_, g)| g.live) {
                let t = RouteTarget {
                    apic_id,
                    ..g.target
                };
                tx.set(r.irqfd.gsi(), t.route())?;
            }
            Ok(())
        })?;
        for g in &mut guards {
            g.target.apic_id = apic_id;
        }
        Ok(())
    }

    /// The GSI routing `sint` on `vp`, if configured.
    pub fn gsi(&self, vp: VpIndex, sint: SintIndex) -> Option<Gsi> {
        self.read().get(&(vp, sint)).map(|r| r.irqfd.gsi())
    }

    /// What has been raised, suppressed and refused so far.
    pub fn counters(&self) -> SintCounters {
        self.counters.snapshot()
    }

    /// The last route update KVM refused while following a SINT rewrite, taken out.
    pub fn take_error(&self) -> Option<Error> {
        lock(&self.last_error).take()
    }

    /// The table these routes live in.
    pub fn table(&self) -> &Arc<RoutingTable<B>> {
        &self.table
    }
}

impl<B: RoutingBackend> RaiseSint for UserSintRoutes<B> {
    /// Writes the pair's irqfd if the route is armed. The vector comes from the route, which
    /// follows [`RaiseSint::sint_changed`]; `vector` and `auto_eoi` are not used.
    fn raise(&self, vp: VpIndex, sint: SintIndex, _vector: u8, _auto_eoi: bool) {
        let routes = self.read();
        let Some(r) = routes.get(&(vp, sint)) else {
            Counters::bump(&self.counters.unrouted);
            return;
        };
        // Acquire pairs with the Release in sint_changed: once armed is seen, the route that
        // armed it is committed in KVM.
        if r.armed.load(Ordering::Acquire) {
            let _ = r.irqfd.trigger();
            Counters::bump(&self.counters.raised);
        } else {
            Counters::bump(&self.counters.suppressed);
        }
    }

    /// Sends `vector` to the VP's local APIC with `KVM_SIGNAL_MSI` (fixed, edge, physical
    /// destination): a direct-mode synthetic timer expired. Counted as raised; a vector below
    /// 16 (illegal for the APIC) as suppressed; a VP without an APIC id as unrouted; a refused
    /// ioctl as a route error ([`take_error`](Self::take_error)).
    fn raise_vector(&self, vp: VpIndex, vector: u8) {
        if vector < Sint::FIRST_VALID_VECTOR {
            Counters::bump(&self.counters.suppressed);
            return;
        }
        let Ok(apic_id) = self.apic_id(vp) else {
            Counters::bump(&self.counters.unrouted);
            return;
        };
        match self
            .table
            .backend()
            .signal_msi(MsiRoute::fixed(apic_id, vector))
        {
            Ok(_) => Counters::bump(&self.counters.raised),
            Err(e) => {
                Counters::bump(&self.counters.route_errors);
                *lock(&self.last_error) = Some(Error::Os {
                    what: "KVM_SIGNAL_MSI",
                    source: std::io::Error::from_raw_os_error(e.errno()),
                });
            }
        }
    }

    /// Follows a rewrite of the pair's SINT register. Calls for one pair are expected from one
    /// thread at a time (the VP's own, or the host while the VP is stopped).
    fn sint_changed(&self, vp: VpIndex, sint: SintIndex, value: Sint) {
        let route = {
            // Recording the value and looking up the route under one lock makes this atomic
            // with respect to `add`.
            let mut values = lock(&self.values);
            values.insert((vp, sint), value);
            self.read().get(&(vp, sint)).cloned()
        };
        let Some(r) = route else {
            return;
        };
        let mut state = lock(&r.route);
        if !state.live {
            return;
        }
        if !fires(value) {
            r.armed.store(false, Ordering::Release);
            return;
        }
        if state.target.vector != value.vector() {
            // Commit first, arm after: a raise that sees `armed` finds the new vector in KVM.
            // Until then an armed route keeps firing the old vector — a raise racing with the
            // guest's WRMSR may land on either side of it, and is never lost.
            let new = RouteTarget {
                vector: value.vector(),
                ..state.target
            };
            match self.table.set(r.irqfd.gsi(), new.route()) {
                Ok(()) => state.target = new,
                Err(e) => {
                    r.armed.store(false, Ordering::Release);
                    Counters::bump(&self.counters.route_errors);
                    *lock(&self.last_error) = Some(e);
                    return;
                }
            }
        }
        r.armed.store(true, Ordering::Release);
    }
}

impl<B: RoutingBackend> Drop for UserSintRoutes<B> {
    fn drop(&mut self) {
        let removed: Vec<_> = self.write().drain().map(|(_, r)| r).collect();
        let gsis: Vec<Gsi> = removed.iter().map(|r| r.irqfd.gsi()).collect();
        drop(removed);
        self.table.release_best_effort(gsis);
    }
}
