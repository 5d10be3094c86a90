//! The part of a VP that device threads touch: page registers, SINT queues, counters.
//!
//! Locking rule (see docs/synic-design.md): each (VP, SINT) has one small mutex, held for one
//! queue operation and at most one slot write or flag update. The page registers (SCONTROL,
//! SIMP, SIEFP) are written only while holding all 16 SINT locks of the VP and read while
//! holding any one of them, so a page move or disable cannot overlap a slot write to the old
//! page, and the atomics below need no ordering of their own (the mutexes provide it).
//!
//! The VP's synthetic timers live here too, behind one timer mutex per VP: the timer thread
//! services them while the vCPU thread owns its `Vp`. Lock order: the timer mutex before any
//! SINT lock, never the other way round.

use std::array;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use synic_msr::index::SINT_COUNT;

use crate::counters::VpCounters;
use crate::delivery::{PageRegs, SintState};
use crate::overlay::PagePlacements;
use crate::timers::Timers;
use crate::{SintIndex, VpIndex};

/// Device-thread-visible state of one VP.
#[derive(Debug)]
pub(crate) struct VpShared {
    index: AtomicU32,
    scontrol: AtomicU64,
    simp: AtomicU64,
    siefp: AtomicU64,
    /// Where the enabled pages are (`PagePlacements`); written under all 16 SINT locks (by
    /// the VP's own page changes and by any thread that uncovers one of its pages), read under
    /// one.
    placements: AtomicU8,
    sints: [Mutex<SintState>; SINT_COUNT],
    eoms: AtomicU64,
    timers: Mutex<Timers>,
    /// The earliest reference time at which a timer of this VP needs servicing (`u64::MAX`:
    /// none). Written under the timer mutex, read without it by the timer thread's poll.
    timer_deadline: AtomicU64,
}

/// All 16 SINT locks of one VP, taken in SINT order (the only place more than one is held, so
/// the order cannot deadlock).
pub(crate) struct AllSints<'a> {
    pub(crate) guards: [MutexGuard<'a, SintState>; SINT_COUNT],
}

impl VpShared {
    pub(crate) fn new(index: u32, capacity: usize, regs: PageRegs) -> Self {
        Self {
            index: AtomicU32::new(index),
            scontrol: AtomicU64::new(regs.scontrol),
            simp: AtomicU64::new(regs.simp),
            siefp: AtomicU64::new(regs.siefp),
            placements: AtomicU8::new(regs.placements.0),
            sints: array::from_fn(|_| Mutex::new(SintState::new(capacity))),
            eoms: AtomicU64::new(0),
            timers: Mutex::new(Timers::default()),
            timer_deadline: AtomicU64::new(u64::MAX),
        }
    }

    /// Locks the VP's timers; take it before any SINT lock. Poisoning is recovered as for the
    /// SINT locks.
    pub(crate) fn lock_timers(&self) -> MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The earliest time a timer needs servicing (`u64::MAX`: none).
    pub(crate) fn timer_deadline(&self) -> u64 {
        self.timer_deadline.load(Ordering::Acquire)
    }

    /// Publishes the timers' next deadline; requires the timer lock (the guard is the proof).
    pub(crate) fn set_timer_deadline(&self, _held: &MutexGuard<'_, Timers>, deadline: u64) {
        self.timer_deadline.store(deadline, Ordering::Release);
    }

    /// The VP index (changed only by a host write of VP_INDEX).
    pub(crate) fn index(&self) -> VpIndex {
        VpIndex(self.index.load(Ordering::Acquire))
    }

    pub(crate) fn set_index(&self, index: u32) {
        self.index.store(index, Ordering::Release);
    }

    /// Locks one SINT. A poisoned lock (a panic elsewhere while holding it) is still usable:
    /// every critical section leaves the state consistent before anything can panic.
    pub(crate) fn lock(&self, sint: SintIndex) -> MutexGuard<'_, SintState> {
        self.sints[sint.as_usize()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_all(&self) -> AllSints<'_> {
        AllSints {
            guards: array::from_fn(|i| self.lock(SintIndex::ALL[i])),
        }
    }

    /// The page registers, read under one SINT lock (the guard is the proof).
    pub(crate) fn page_regs(&self, _held: &MutexGuard<'_, SintState>) -> PageRegs {
        self.load_regs()
    }

    /// The page registers, read under all SINT locks.
    pub(crate) fn page_regs_all(&self, _held: &AllSints<'_>) -> PageRegs {
        self.load_regs()
    }

    fn load_regs(&self) -> PageRegs {
        PageRegs {
            scontrol: self.scontrol.load(Ordering::Relaxed),
            simp: self.simp.load(Ordering::Relaxed),
            siefp: self.siefp.load(Ordering::Relaxed),
            placements: PagePlacements(self.placements.load(Ordering::Relaxed)),
        }
    }

    /// Replaces the page registers (not their placements); requires all SINT locks.
    pub(crate) fn set_page_regs(&self, _held: &AllSints<'_>, regs: PageRegs) {
        self.scontrol.store(regs.scontrol, Ordering::Relaxed);
        self.simp.store(regs.simp, Ordering::Relaxed);
        self.siefp.store(regs.siefp, Ordering::Relaxed);
    }

    /// Replaces the pages' placements; requires all SINT locks.
    pub(crate) fn set_placements(&self, _held: &AllSints<'_>, placements: PagePlacements) {
        self.placements.store(placements.0, Ordering::Relaxed);
    }

    pub(crate) fn count_eom(&self) {
        self.eoms.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the counters, one SINT lock at a time.
    pub(crate) fn counters(&self) -> VpCounters {
        let mut c = VpCounters {
            eoms: self.eoms.load(Ordering::Relaxed),
            ..VpCounters::default()
        };
        for sint in SintIndex::ALL {
            let st = self.lock(sint);
            c.sints[sint.as_usize()] = st.counters;
            c.sints[sint.as_usize()].queued = st.queue.len() as u64;
        }
        c
    }
}
