//! Operation sequences on a routing table, for property tests and fuzz targets.
//!
//! [`Op`] is one API call; [`Op::decode_all`] turns arbitrary bytes into a list of them (what
//! a fuzz target feeds); [`OpChecker`] applies each to a [`RoutingTable`] over a [`FakeKvm`]
//! and to a plain reference model, and reports the first divergence: a different result, a
//! shadow that differs from the model, or a kernel table that differs from the shadow after a
//! successful commit. A divergence is a bug in the table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use synic::{SintIndex, VpIndex};

use crate::fake::{FakeConfig, FakeIrqchip, FakeKvm};
use crate::{DefaultRoutes, Error, Gsi, IrqChip, MsiRoute, Route, RoutingTable, Transaction};

/// One call on a routing table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`RoutingTable::add`].
    Add(Route),
    /// [`RoutingTable::add_at`].
    AddAt(Gsi, Route),
    /// [`RoutingTable::set`] on the allocated GSI number `pick % in_use` (GSI `pick` when none).
    Set {
        /// Selects the GSI.
        pick: u16,
        /// The new route.
        route: Route,
    },
    /// [`RoutingTable::release`] on the GSI `pick` selects (as for `Set`).
    Release {
        /// Selects the GSI.
        pick: u16,
    },
    /// [`RoutingTable::release`] on a raw GSI number, allocated or not.
    ReleaseRaw(Gsi),
    /// [`RoutingTable::release_best_effort`] on the GSI `pick` selects.
    ReleaseBestEffort {
        /// Selects the GSI.
        pick: u16,
    },
    /// A [`RoutingTable::update`] running `ops` (each an `Add`, `AddAt`, `Set`, `Release` or
    /// `ReleaseRaw`); `abort` makes the closure fail at the end, which must undo everything.
    Batch {
        /// The grouped calls.
        ops: Vec<Op>,
        /// Fail the transaction after running them.
        abort: bool,
    },
    /// [`RoutingTable::commit`].
    Commit,
    /// Make the fake kernel refuse the next commit (ENOMEM).
    FailNextCommit,
    /// [`RoutingTable::mark_synic_active`].
    MarkSynicActive(VpIndex),
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    fn route(&mut self) -> Option<Route> {
        Some(match self.u8()? % 3 {
            0 => Route::HvSint {
                vp: VpIndex(u32::from(self.u8()? % 8)),
                sint: SintIndex::new(u32::from(self.u8()? % 16))?,
            },
            1 => {
                let devid = self.u8()?;
                Route::Msi(MsiRoute {
                    address: 0xFEE0_0000 | u64::from(self.u8()?) << 12,
                    data: u32::from(self.u8()?),
                    devid: (devid & 1 != 0).then_some(u32::from(devid >> 1)),
                })
            }
            _ => {
                let chip = match self.u8()? % 3 {
                    0 => IrqChip::PicMaster,
                    1 => IrqChip::PicSlave,
                    _ => IrqChip::Ioapic,
                };
                // Up to 31 so that invalid pins occur too.
                Route::Irqchip {
                    chip,
                    pin: u32::from(self.u8()? % 32),
                }
            }
        })
    }

    fn gsi(&mut self) -> Option<Gsi> {
        // Mostly small numbers, sometimes beyond any table.
        Some(Gsi(u32::from(self.u16()?) % 4200))
    }

    fn op(&mut self, nested: bool) -> Option<Op> {
        let code = self.u8()? % if nested { 5 } else { 10 };
        Some(match code {
            0 => Op::Add(self.route()?),
            1 => Op::AddAt(self.gsi()?, self.route()?),
            2 => Op::Set {
                pick: self.u16()?,
                route: self.route()?,
            },
            3 => Op::Release { pick: self.u16()? },
            4 => Op::ReleaseRaw(self.gsi()?),
            5 => Op::ReleaseBestEffort { pick: self.u16()? },
            6 => {
                let n = self.u8()? % 8;
                let abort = self.u8()? & 1 != 0;
                let ops = (0..n).map_while(|_| self.op(true)).collect();
                Op::Batch { ops, abort }
            }
            7 => Op::Commit,
            8 => Op::FailNextCommit,
            _ => Op::MarkSynicActive(VpIndex(self.u32()? % 8)),
        })
    }
}

impl Op {
    /// Decodes as many operations as `bytes` holds (any bytes decode to something).
    pub fn decode_all(bytes: &[u8]) -> Vec<Op> {
        let mut r = Reader(bytes);
        std::iter::from_fn(|| r.op(false)).collect()
    }
}

/// A change with its GSI resolved against the state it will meet.
#[derive(Clone, Copy, Debug)]
enum Step {
    Add(Route),
    AddAt(Gsi, Route),
    Set(Gsi, Route),
    Release(Gsi),
}

impl Step {
    fn run(self, tx: &mut Transaction<'_>) -> Result<Option<Gsi>, Error> {
        match self {
            Step::Add(r) => tx.add(r).map(Some),
            Step::AddAt(g, r) => tx.add_at(g, r).map(|()| None),
            Step::Set(g, r) => tx.set(g, r).map(|()| None),
            Step::Release(g) => tx.release(g).map(|()| None),
        }
    }
}

/// The reference model: a map from GSI to routes, written as plainly as possible.
#[derive(Clone, Debug, Default)]
struct Model {
    limit: u32,
    routes: BTreeMap<Gsi, Vec<Route>>,
    active: BTreeSet<VpIndex>,
    hyperv: bool,
    dirty: bool,
    fail_next: bool,
    /// A step of the current transaction changed the routes.
    changed: bool,
}

/// The error kinds the model predicts (enough to tell the table's answers apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exhausted,
    OutOfRange,
    NotAllocated,
    Conflict,
    Pin,
    NotActive,
    HvMissing,
    Commit,
    Aborted,
    Other,
}

fn kind(e: &Error) -> Kind {
    match e {
        Error::GsiExhausted { .. } => Kind::Exhausted,
        Error::GsiOutOfRange { .. } => Kind::OutOfRange,
        Error::GsiNotAllocated { .. } => Kind::NotAllocated,
        Error::GsiConflict { .. } => Kind::Conflict,
        Error::IrqchipPin { .. } => Kind::Pin,
        Error::SynicNotActive { .. } => Kind::NotActive,
        Error::HypervSynicMissing { .. } => Kind::HvMissing,
        Error::Commit { .. } => Kind::Commit,
        Error::MsixVector { vector: ABORT, .. } => Kind::Aborted,
        _ => Kind::Other,
    }
}

/// An aborted batch fails with this otherwise impossible MSI-X vector number.
const ABORT: u16 = 0xABBA;

impl Model {
    fn check(&self, r: &Route) -> Result<(), Kind> {
        if r.validate().is_err() {
            return Err(Kind::Pin);
        }
        match r {
            Route::HvSint { vp, .. } if !self.active.contains(vp) => Err(Kind::NotActive),
            _ => Ok(()),
        }
    }

    fn room(&self) -> Result<(), Kind> {
        let entries: usize = self.routes.values().map(Vec::len).sum();
        if entries >= self.limit as usize {
            return Err(Kind::Exhausted);
        }
        Ok(())
    }

    /// The allocated GSI `pick` selects: number `pick % count` in order, or GSI `pick` itself
    /// when nothing is allocated.
    fn pick(&self, pick: u16) -> Gsi {
        let n = self.routes.len();
        match n {
            0 => Gsi(u32::from(pick)),
            _ => *self
                .routes
                .keys()
                .nth(usize::from(pick) % n)
                .unwrap_or(&Gsi(0)),
        }
    }

    fn resolve(&self, op: &Op) -> Option<Step> {
        Some(match op {
            Op::Add(r) => Step::Add(*r),
            Op::AddAt(g, r) => Step::AddAt(*g, *r),
            Op::Set { pick, route } => Step::Set(self.pick(*pick), *route),
            Op::Release { pick } => Step::Release(self.pick(*pick)),
            Op::ReleaseRaw(g) => Step::Release(*g),
            _ => return None,
        })
    }

    fn change(&mut self, step: Step) -> Result<Option<Gsi>, Kind> {
        match step {
            Step::Add(r) => {
                self.check(&r)?;
                self.room()?;
                let gsi = (0..self.limit)
                    .map(Gsi)
                    .find(|g| !self.routes.contains_key(g))
                    .ok_or(Kind::Exhausted)?;
                self.routes.insert(gsi, vec![r]);
                self.changed = true;
                Ok(Some(gsi))
            }
            Step::AddAt(gsi, r) => {
                self.check(&r)?;
                self.room()?;
                match self.routes.get_mut(&gsi) {
                    Some(rs) => {
                        let shares = rs.iter().all(|e| match (e, &r) {
                            (Route::Irqchip { chip: a, .. }, Route::Irqchip { chip: b, .. }) => {
                                a != b
                            }
                            _ => false,
                        });
                        if !shares {
                            return Err(Kind::Conflict);
                        }
                        rs.push(r);
                    }
                    None if gsi.0 >= self.limit => return Err(Kind::OutOfRange),
                    None => {
                        self.routes.insert(gsi, vec![r]);
                    }
                }
                self.changed = true;
                Ok(None)
            }
            Step::Set(gsi, r) => {
                self.check(&r)?;
                let rs = self.routes.get_mut(&gsi).ok_or(Kind::NotAllocated)?;
                if *rs != [r] {
                    *rs = vec![r];
                    self.changed = true;
                }
                Ok(None)
            }
            Step::Release(gsi) => {
                self.routes.remove(&gsi).ok_or(Kind::NotAllocated)?;
                self.changed = true;
                Ok(None)
            }
        }
    }

    /// What a commit of this state does in the fake kernel.
    fn commit(&mut self) -> Result<(), Kind> {
        if std::mem::take(&mut self.fail_next) {
            return Err(Kind::Commit);
        }
        let hv = self
            .routes
            .values()
            .flatten()
            .any(|r| matches!(r, Route::HvSint { .. }));
        if hv && !self.hyperv {
            return Err(Kind::HvMissing);
        }
        self.dirty = false;
        Ok(())
    }

    /// A whole `update`: the steps, then a commit if any step changed something (even if a
    /// later one undid it) or a commit is owed; any failure restores the routes.
    fn transaction(&mut self, steps: &[Step], abort: bool) -> Result<Vec<Option<Gsi>>, Kind> {
        let before = self.routes.clone();
        self.changed = false;
        let result = steps
            .iter()
            .map(|s| self.change(*s))
            .collect::<Result<Vec<_>, Kind>>()
            .and_then(|v| if abort { Err(Kind::Aborted) } else { Ok(v) });
        let outcome = match result {
            Ok(v) if self.changed || self.dirty => self.commit().map(|()| v),
            other => other,
        };
        if outcome.is_err() {
            self.routes = before;
        }
        outcome
    }

    fn flat(&self) -> Vec<(Gsi, Route)> {
        self.routes
            .iter()
            .flat_map(|(g, rs)| rs.iter().map(move |r| (*g, *r)))
            .collect()
    }
}

type Outcome = Result<Vec<Option<Gsi>>, Kind>;

/// Runs [`Op`]s against a table over the fake kernel and a reference model in lock step.
#[derive(Debug)]
pub struct OpChecker {
    fake: Arc<FakeKvm>,
    table: RoutingTable<FakeKvm>,
    model: Model,
    /// The table the fake kernel holds: the model's routes at the last successful commit.
    kernel: Option<Vec<(Gsi, Route)>>,
}

impl OpChecker {
    /// A checker for a kernel with `routing_table_size` GSIs and (or not) in-kernel Hyper-V.
    pub fn new(routing_table_size: u32, hyperv_synic2: bool, defaults: DefaultRoutes) -> Self {
        let fake = Arc::new(FakeKvm::new(FakeConfig {
            routing_table_size,
            hyperv_synic2,
            irqchip: FakeIrqchip::Full,
        }));
        fake.record_calls(false);
        let table = RoutingTable::new(Arc::clone(&fake), defaults);
        let mut model = Model {
            limit: routing_table_size,
            hyperv: hyperv_synic2,
            dirty: defaults == DefaultRoutes::Discard,
            ..Model::default()
        };
        // KVM's defaults, as far as they fit (the table decides; the model takes its word).
        for (gsi, route) in table.snapshot() {
            model.routes.entry(gsi).or_default().push(route);
        }
        Self {
            fake,
            table,
            model,
            kernel: None,
        }
    }

    /// The table under test.
    pub fn table(&self) -> &RoutingTable<FakeKvm> {
        &self.table
    }

    /// The fake kernel under the table.
    pub fn fake(&self) -> &FakeKvm {
        &self.fake
    }

    /// Applies `op` to table and model; `Err` describes the first divergence.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        let calls = self.fake.set_routing_calls();
        let (expected, actual) = self.run(op);
        if expected != actual {
            return Err(format!(
                "{op:?}: model says {expected:?}, table says {actual:?}"
            ));
        }
        let shadow = self.table.snapshot();
        if shadow != self.model.flat() {
            return Err(format!(
                "{op:?}: shadow {shadow:?} != model {:?}",
                self.model.flat()
            ));
        }
        if self.table.stats().dirty != self.model.dirty {
            return Err(format!(
                "{op:?}: table dirty = {}",
                self.table.stats().dirty
            ));
        }
        if self.fake.set_routing_calls() != calls && !self.model.dirty && expected.is_ok() {
            self.kernel = Some(shadow.clone());
        }
        if let Some(kernel) = &self.kernel {
            let committed = self.fake.committed();
            if committed != *kernel {
                return Err(format!(
                    "{op:?}: kernel holds {committed:?}, expected {kernel:?}"
                ));
            }
            if !self.model.dirty && shadow != *kernel {
                return Err(format!(
                    "{op:?}: clean shadow {shadow:?} != kernel {kernel:?}"
                ));
            }
        }
        Ok(())
    }

    fn run(&mut self, op: &Op) -> (Outcome, Outcome) {
        let no_op = || (Ok(vec![]), Ok(vec![]));
        match op {
            Op::Batch { ops, abort } => {
                // Resolve each pick against the state the step will meet, as the table will.
                let mut scratch = self.model.clone();
                let steps: Vec<Step> = ops
                    .iter()
                    .filter_map(|o| {
                        let s = scratch.resolve(o)?;
                        let _ = scratch.change(s);
                        Some(s)
                    })
                    .collect();
                let expected = self.model.transaction(&steps, *abort);
                let actual = self.table.update(|tx| {
                    let v = steps
                        .iter()
                        .map(|s| s.run(tx))
                        .collect::<Result<Vec<_>, _>>()?;
                    if *abort {
                        Err(Error::MsixVector {
                            vector: ABORT,
                            count: 0,
                        })
                    } else {
                        Ok(v)
                    }
                });
                (expected, actual.map_err(|e| kind(&e)))
            }
            Op::ReleaseBestEffort { pick } => {
                let gsi = self.model.pick(*pick);
                let had = self.model.routes.remove(&gsi).is_some();
                let expected = if had || self.model.dirty {
                    self.model.dirty = true;
                    self.model
                        .commit()
                        .map(|()| vec![])
                        .map_err(|_| Kind::Commit)
                } else {
                    Ok(vec![])
                };
                let actual = match self.table.release_best_effort([gsi]) {
                    true => Ok(vec![]),
                    false => Err(Kind::Commit),
                };
                (expected, actual)
            }
            Op::Commit => {
                let expected = self.model.commit().map(|()| vec![]);
                let actual = self.table.commit().map(|()| vec![]).map_err(|e| kind(&e));
                (expected, actual)
            }
            Op::FailNextCommit => {
                self.model.fail_next = true;
                self.fake.fail_next_commit(libc::ENOMEM);
                no_op()
            }
            Op::MarkSynicActive(vp) => {
                self.model.active.insert(*vp);
                self.table.mark_synic_active(*vp);
                no_op()
            }
            single => match self.model.resolve(single) {
                Some(step) => {
                    let expected = self.model.transaction(&[step], false);
                    let actual = self.table.update(|tx| step.run(tx)).map(|g| vec![g]);
                    (expected, actual.map_err(|e| kind(&e)))
                }
                None => no_op(),
            },
        }
    }
}
