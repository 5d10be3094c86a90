//! The shadow of KVM's GSI routing table: one owner for every route in the VM.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use synic::VpIndex;

use crate::route::default_irqchip_routes;
use crate::{Capabilities, Error, Gsi, GsiAllocator, Irqfd, Route, RoutingBackend};

/// What to do with the routes KVM installs when the irqchip is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultRoutes {
    /// Keep KVM's default PIC/IOAPIC routes (GSIs 0..=23) in every commit; allocation then
    /// starts at GSI 24.
    Keep,
    /// Drop them: the first commit leaves only the routes added through this table.
    Discard,
}

/// Counters describing the table, for tests, benchmarks and operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableStats {
    /// Successful and failed `KVM_SET_GSI_ROUTING` calls made by this table.
    pub commits: u64,
    /// Allocated GSIs.
    pub gsis_in_use: u32,
    /// The kernel's table size.
    pub limit: u32,
    /// True when the shadow holds changes KVM has not accepted yet (a best-effort release whose
    /// commit failed); the next commit carries them.
    pub dirty: bool,
}

/// The VM's one GSI routing table.
///
/// KVM has one routing table per VM and `KVM_SET_GSI_ROUTING` replaces all of it, so every
/// route — SINTs, device MSI/MSI-X, legacy irqchip pins — lives here and every change commits
/// the whole shadow. Changes are grouped in a [`Transaction`] ([`RoutingTable::update`]) and
/// committed with one ioctl; a transaction that fails (its closure errs or KVM refuses the
/// table) is rolled back, so the shadow always equals what KVM holds. Releasing a GSI commits
/// too: no stale entry stays in KVM where a reused GSI could still reach it.
///
/// Share it as `Arc<RoutingTable<B>>`; every method takes `&self`.
#[derive(Debug)]
pub struct RoutingTable<B: RoutingBackend> {
    backend: Arc<B>,
    caps: Capabilities,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    alloc: GsiAllocator,
    /// One non-empty list per allocated GSI.
    routes: BTreeMap<Gsi, Vec<Route>>,
    /// Total routes (entries KVM will get): KVM bounds the entry count by the same limit as
    /// the GSI numbers, and irqchip pins sharing a GSI make entries outnumber GSIs.
    entries: usize,
    synic_active: BTreeSet<VpIndex>,
    dirty: bool,
    commits: u64,
}

impl<B: RoutingBackend> RoutingTable<B> {
    /// A table over `backend`, probing its capabilities (create the irqchip first).
    pub fn new(backend: Arc<B>, defaults: DefaultRoutes) -> Self {
        let caps = backend.probe();
        let mut state = State {
            alloc: GsiAllocator::new(caps.routing_table_size),
            routes: BTreeMap::new(),
            entries: 0,
            synic_active: BTreeSet::new(),
            // KVM may hold default routes we do not track: the first commit replaces them.
            dirty: defaults == DefaultRoutes::Discard,
            commits: 0,
        };
        if defaults == DefaultRoutes::Keep {
            for (gsi, route) in default_irqchip_routes() {
                // Only a toy kernel's table is too small for all 40; keep what fits.
                if gsi.0 >= caps.routing_table_size
                    || state.entries >= caps.routing_table_size as usize
                {
                    continue;
                }
                if !state.alloc.is_allocated(gsi) {
                    // Cannot fail: in range and not yet allocated.
                    let _ = state.alloc.reserve(gsi);
                }
                state.routes.entry(gsi).or_default().push(route);
                state.entries += 1;
            }
        }
        Self {
            backend,
            caps,
            state: Mutex::new(state),
        }
    }

    /// A table that owns only the GSIs of `range`, for a VM whose routing table another
    /// component owns (a VMM's interrupt manager): every commit hands exactly this table's
    /// entries, all inside `range`, to the backend — typically a [`crate::VmRouting`] that
    /// gives them to that owner to merge into its own table. No default irqchip routes (they
    /// are the owner's). `range` is clipped to the kernel's table size.
    pub fn in_range(backend: Arc<B>, range: core::ops::Range<u32>) -> Self {
        let caps = backend.probe();
        let state = State {
            alloc: GsiAllocator::in_range(caps.routing_table_size, range),
            routes: BTreeMap::new(),
            entries: 0,
            synic_active: BTreeSet::new(),
            dirty: false,
            commits: 0,
        };
        Self {
            backend,
            caps,
            state: Mutex::new(state),
        }
    }

    /// The GSIs this table allocates from.
    pub fn gsi_range(&self) -> core::ops::Range<u32> {
        self.lock().alloc.range()
    }

    /// What the kernel can do (probed at creation).
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The backend, for registering irqfds on this table's GSIs.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the shadow half-updated in a way that
        // matters more than losing the table: transactions roll back on unwind below.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a transaction and commits its changes with one `KVM_SET_GSI_ROUTING`.
    /// If `f` fails or KVM refuses the table, every change `f` made is undone and the error
    /// returned. Nothing is committed when nothing changed.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut state = self.lock();
        let mut tx = Transaction {
            state: &mut state,
            undo: Vec::new(),
        };
        let value = match f(&mut tx) {
            Ok(v) => v,
            Err(e) => {
                tx.rollback();
                return Err(e);
            }
        };
        if !tx.undo.is_empty() || tx.state.dirty {
            if let Err(e) = commit(&*self.backend, &self.caps, tx.state) {
                tx.rollback();
                return Err(e);
            }
        }
        tx.undo.clear();
        Ok(value)
    }

    /// Adds `route` on the lowest free GSI and commits.
    pub fn add(&self, route: Route) -> Result<Gsi, Error> {
        self.update(|tx| tx.add(route))
    }

    /// Adds `route` on exactly `gsi` and commits (see [`Transaction::add_at`]).
    pub fn add_at(&self, gsi: Gsi, route: Route) -> Result<(), Error> {
        self.update(|tx| tx.add_at(gsi, route))
    }

    /// Replaces the routes of `gsi` by `route` and commits.
    pub fn set(&self, gsi: Gsi, route: Route) -> Result<(), Error> {
        self.update(|tx| tx.set(gsi, route))
    }

    /// Frees `gsi` and commits, so KVM forgets its route before the GSI can be reused.
    pub fn release(&self, gsi: Gsi) -> Result<(), Error> {
        self.update(|tx| tx.release(gsi))
    }

    /// Frees `gsis` (those still allocated) and tries one commit; for drop paths that cannot
    /// report errors. If KVM refuses, the shadow stays without them and is marked dirty, so
    /// the next commit removes them from KVM. Returns whether the commit succeeded.
    pub fn release_best_effort(&self, gsis: impl IntoIterator<Item = Gsi>) -> bool {
        let mut state = self.lock();
        let mut changed = false;
        for gsi in gsis {
            if let Some(old) = state.routes.remove(&gsi) {
                state.entries -= old.len();
                let _ = state.alloc.release(gsi);
                changed = true;
            }
        }
        if !changed && !state.dirty {
            return true;
        }
        state.dirty = true;
        commit(&*self.backend, &self.caps, &mut state).is_ok()
    }

    /// Commits the whole shadow now, even if nothing changed (after a VP index changed, which
    /// KVM's SINT-to-GSI map only picks up at a commit, or to retry a failed best-effort release).
    pub fn commit(&self) -> Result<(), Error> {
        let mut state = self.lock();
        commit(&*self.backend, &self.caps, &mut state)
    }

    /// Records that `vp`'s SynIC is active in KVM (after [`crate::enable_synic2`] on its vCPU).
    /// HV_SINT routes for a VP are refused until then: KVM maps SINTs to GSIs for acks only
    /// for active SynICs, and only at commit time.
    pub fn mark_synic_active(&self, vp: VpIndex) {
        self.lock().synic_active.insert(vp);
    }

    /// The routes on `gsi` (empty when it is not allocated).
    pub fn routes(&self, gsi: Gsi) -> Vec<Route> {
        self.lock().routes.get(&gsi).cloned().unwrap_or_default()
    }

    /// Every route, in GSI order: exactly what the last successful commit sent (unless dirty).
    pub fn snapshot(&self) -> Vec<(Gsi, Route)> {
        let state = self.lock();
        state
            .routes
            .iter()
            .flat_map(|(g, rs)| rs.iter().map(move |r| (*g, *r)))
            .collect()
    }

    /// Counters: commits made, GSIs in use, the limit, whether a commit is owed.
    pub fn stats(&self) -> TableStats {
        let state = self.lock();
        TableStats {
            commits: state.commits,
            gsis_in_use: state.alloc.in_use(),
            limit: state.alloc.limit(),
            dirty: state.dirty,
        }
    }

    /// Registers a new irqfd (with a resamplefd if `resample`) on `gsi`, which must be
    /// allocated here. Dropping the [`Irqfd`] unregisters it.
    pub fn irqfd(&self, gsi: Gsi, resample: bool) -> Result<Irqfd<B>, Error> {
        if !self.lock().alloc.is_allocated(gsi) {
            return Err(Error::GsiNotAllocated { gsi });
        }
        Irqfd::new(Arc::clone(&self.backend), gsi, resample)
    }
}

impl<B: RoutingBackend> RoutingTable<B> {
    /// Registers one new irqfd per GSI; if any registration fails, drops those made and
    /// releases all of `gsis` (they were allocated for these irqfds).
    pub(crate) fn irqfds_or_release(
        &self,
        gsis: &[Gsi],
        resample: bool,
    ) -> Result<Vec<Irqfd<B>>, Error> {
        let made: Result<Vec<_>, Error> = gsis
            .iter()
            .map(|&gsi| Irqfd::new(Arc::clone(&self.backend), gsi, resample))
            .collect();
        if made.is_err() {
            self.release_best_effort(gsis.iter().copied());
        }
        made
    }
}

fn commit<B: RoutingBackend>(
    backend: &B,
    caps: &Capabilities,
    state: &mut State,
) -> Result<(), Error> {
    let mut hv_sint = false;
    let entries: Vec<_> = state
        .routes
        .iter()
        .flat_map(|(g, rs)| rs.iter().map(move |r| (g, r)))
        .map(|(g, r)| {
            hv_sint |= matches!(r, Route::HvSint { .. });
            r.encode(*g)
        })
        .collect();
    state.commits += 1;
    match backend.set_gsi_routing(&entries) {
        Ok(()) => {
            state.dirty = false;
            Ok(())
        }
        Err(source) if source.errno() == libc::EINVAL && hv_sint && !caps.hyperv_synic2 => {
            Err(Error::HypervSynicMissing { source })
        }
        Err(source) => Err(Error::Commit {
            entries: entries.len(),
            source,
        }),
    }
}

/// A group of changes to the table, committed together by [`RoutingTable::update`].
#[derive(Debug)]
pub struct Transaction<'a> {
    state: &'a mut State,
    undo: Vec<Undo>,
}

#[derive(Debug)]
enum Undo {
    /// The GSI was free before: free it again.
    Allocated(Gsi),
    /// A route was appended to an allocated GSI: pop it.
    Appended(Gsi),
    /// The GSI held these routes before.
    Replaced(Gsi, Vec<Route>),
    /// The GSI was released holding these routes.
    Released(Gsi, Vec<Route>),
}

impl Transaction<'_> {
    fn check(&self, route: &Route) -> Result<(), Error> {
        route.validate()?;
        if let Route::HvSint { vp, .. } = *route {
            if !self.state.synic_active.contains(&vp) {
                return Err(Error::SynicNotActive { vp });
            }
        }
        Ok(())
    }

    /// Refuses one more entry when KVM's table is full.
    fn room(&self) -> Result<(), Error> {
        let limit = self.state.alloc.limit();
        if self.state.entries >= limit as usize {
            return Err(Error::GsiExhausted { limit });
        }
        Ok(())
    }

    /// Puts `route` on the lowest free GSI.
    pub fn add(&mut self, route: Route) -> Result<Gsi, Error> {
        self.check(&route)?;
        self.room()?;
        let gsi = self.state.alloc.allocate()?;
        self.state.routes.insert(gsi, vec![route]);
        self.state.entries += 1;
        self.undo.push(Undo::Allocated(gsi));
        Ok(gsi)
    }

    /// Puts `route` on exactly `gsi`. An allocated GSI accepts it only where KVM would: one
    /// pin of each irqchip may share a GSI (the legacy PIC + IOAPIC pair); any other route
    /// owns its GSI alone.
    pub fn add_at(&mut self, gsi: Gsi, route: Route) -> Result<(), Error> {
        self.check(&route)?;
        self.room()?;
        if let Some(existing) = self.state.routes.get_mut(&gsi) {
            let clash = existing.iter().find(|e| match (e, &route) {
                (Route::Irqchip { chip: a, .. }, Route::Irqchip { chip: b, .. }) => a == b,
                _ => true,
            });
            if let Some(e) = clash {
                return Err(Error::GsiConflict {
                    gsi,
                    existing: *e,
                    new: route,
                });
            }
            existing.push(route);
            self.undo.push(Undo::Appended(gsi));
        } else {
            self.state.alloc.reserve(gsi)?;
            self.state.routes.insert(gsi, vec![route]);
            self.undo.push(Undo::Allocated(gsi));
        }
        self.state.entries += 1;
        Ok(())
    }

    /// Replaces whatever `gsi` routes to by `route` (an MSI message rewritten, a SINT vector
    /// changed). Setting the same route again changes nothing and commits nothing.
    pub fn set(&mut self, gsi: Gsi, route: Route) -> Result<(), Error> {
        self.check(&route)?;
        let Some(existing) = self.state.routes.get_mut(&gsi) else {
            return Err(Error::GsiNotAllocated { gsi });
        };
        if existing.len() == 1 && existing[0] == route {
            return Ok(());
        }
        let old = std::mem::replace(existing, vec![route]);
        self.state.entries = self.state.entries + 1 - old.len();
        self.undo.push(Undo::Replaced(gsi, old));
        Ok(())
    }

    /// Frees `gsi` and drops its routes.
    pub fn release(&mut self, gsi: Gsi) -> Result<(), Error> {
        let Some(old) = self.state.routes.remove(&gsi) else {
            return Err(Error::GsiNotAllocated { gsi });
        };
        self.state.entries -= old.len();
        // Cannot fail: every GSI with routes is allocated.
        let _ = self.state.alloc.release(gsi);
        self.undo.push(Undo::Released(gsi, old));
        Ok(())
    }

    /// The routes on `gsi` as this transaction sees them.
    pub fn routes(&self, gsi: Gsi) -> &[Route] {
        self.state.routes.get(&gsi).map_or(&[], Vec::as_slice)
    }

    /// The kernel's table size.
    pub fn limit(&self) -> u32 {
        self.state.alloc.limit()
    }

    /// GSIs allocated, counting this transaction's changes.
    pub fn in_use(&self) -> u32 {
        self.state.alloc.in_use()
    }

    fn rollback(&mut self) {
        while let Some(u) = self.undo.pop() {
            // The inverse operations cannot fail: they restore a state that existed.
            match u {
                Undo::Allocated(gsi) => {
                    self.state.routes.remove(&gsi);
                    self.state.entries -= 1;
                    let _ = self.state.alloc.release(gsi);
                }
                Undo::Appended(gsi) => {
                    if let Some(rs) = self.state.routes.get_mut(&gsi) {
                        rs.pop();
                        self.state.entries -= 1;
                    }
                }
                Undo::Replaced(gsi, old) => {
                    self.state.entries = self.state.entries + old.len() - 1;
                    self.state.routes.insert(gsi, old);
                }
                Undo::Released(gsi, old) => {
                    let _ = self.state.alloc.reserve(gsi);
                    self.state.entries += old.len();
                    self.state.routes.insert(gsi, old);
                }
            }
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        // Reached with a non-empty log only when `f` panicked: leave the shadow as it was.
        self.rollback();
    }
}
