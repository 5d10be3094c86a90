//! Synthetic timers (STIMER0-3) delivered through the SynIC, userspace mode.
//!
//! Each VP's four timers live in its shared state (`VpShared`) behind one timer mutex, because
//! two threads touch them: the vCPU thread (STIMER MSR writes re-arm a timer; EOM and page
//! changes retry a waiting expiry) and the VMM's one timer thread, which calls
//! [`Partition::poll_timers`] when the earliest deadline comes and sleeps until
//! [`TimerPoll::next_deadline`]. No thread per timer, no clock inside: the partition's
//! [`ReferenceClock`](crate::ReferenceClock) says what time it is, so a fake clock makes every
//! test deterministic.
//!
//! An expiry in message mode is an `HVMSG_TIMER_EXPIRED` message written straight into
//! SINTx's slot when the slot is free. It is not put in the SINT's message queue: it waits in
//! the timer (one per timer at a time), so its delivery time is the time it really reached the
//! slot and the lazy/non-lazy rules decide, at that moment, which expiry it reports. While it
//! waits, the SINT's state marks it (`SintState::timer_waiting`): the busy slot has
//! MessagePending set, any message delivered on that SINT carries MessagePending, and the
//! guest's EOM (or an ack, a page enable, a SynIC enable, a restore) retries it. Nothing is
//! dropped because the slot is busy. Direct mode raises `ApicVector` through
//! [`RaiseSint::raise_vector`](crate::RaiseSint::raise_vector) instead.
//!
//! Kernel mode: KVM's in-kernel SynIC owns the STIMER registers and runs the timers itself;
//! nothing here is armed.

use synic_msr::index::STIMER_COUNT;
use synic_msr::{Msr, Origin, StimerIndex};
use vm_memory::GuestAddressSpace;

use crate::delivery::{write_slot, Interrupt, SlotStep};
use crate::error::{Error, MsrError};
use crate::message::TimerMessagePayload;
use crate::partition::Partition;
use crate::shared::VpShared;
use crate::stimer::{Stimer, StimerCounters};
use crate::vp::{MsrWrite, VmmAction, Vp};
use crate::{SintIndex, VpIndex};

/// One VP's four timers (under the VP's timer mutex).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    pub(crate) stimers: [Stimer; STIMER_COUNT],
}

impl Timers {
    fn deadline(&self, now: u64) -> u64 {
        self.stimers
            .iter()
            .map(|t| t.deadline(now))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// What one [`Partition::poll_timers`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerPoll {
    /// The reference time the poll serviced the timers at.
    pub now: u64,
    /// The earliest reference time at which a timer needs servicing again; `None` when no
    /// timer is counting. Sleep until then, or until a `VmmAction::StimerChanged` says a
    /// deadline may have moved earlier.
    pub next_deadline: Option<u64>,
    /// Expiries signalled by this poll (messages written, vectors raised).
    pub signalled: u64,
}

/// An interrupt a timer service owes once its locks are released.
#[derive(Clone, Copy, Debug)]
enum Raise {
    Sint(SintIndex, Interrupt),
    Vector(u8),
}

/// At most one raise per timer per service.
type Raises = [Option<Raise>; STIMER_COUNT];

impl<M: GuestAddressSpace> Partition<M> {
    /// Services every timer that is due, on every VP, at the current reference time, and says
    /// when to come back. This is the timer thread's loop body: one thread serves all timers
    /// of the partition. Cheap when nothing is due (one atomic load per VP).
    pub fn poll_timers(&self) -> TimerPoll {
        let now = self.reference_time();
        let mut signalled = 0;
        let mut next = u64::MAX;
        for slot in 0..self.config().vp_count as usize {
            let shared = self.vp_at(slot);
            if shared.timer_deadline() <= now {
                signalled += self.service_timers_at(shared, now);
            }
            next = next.min(shared.timer_deadline());
        }
        TimerPoll {
            now,
            next_deadline: (next != u64::MAX).then_some(next),
            signalled,
        }
    }

    /// The earliest reference time at which any timer needs servicing (`None`: no timer is
    /// counting).
    pub fn next_timer_deadline(&self) -> Option<u64> {
        let next = (0..self.config().vp_count as usize)
            .map(|slot| self.vp_at(slot).timer_deadline())
            .min()
            .unwrap_or(u64::MAX);
        (next != u64::MAX).then_some(next)
    }

    /// Statistics of the four timers of `vp`.
    pub fn stimer_counters(&self, vp: VpIndex) -> Result<[StimerCounters; STIMER_COUNT], Error> {
        let timers = self.shared(vp)?.lock_timers();
        Ok(timers.stimers.map(|t| t.counters))
    }

    /// Services every timer of one VP now: signals what is due, retries what waits for its
    /// slot. Called by redelivery triggers (EOM, ack, page and SynIC enable, restore).
    pub(crate) fn service_timers(&self, shared: &VpShared) -> u64 {
        self.service_timers_at(shared, self.reference_time())
    }

    fn service_timers_at(&self, shared: &VpShared, now: u64) -> u64 {
        let mut raises = Raises::default();
        let signalled = {
            let mut timers = shared.lock_timers();
            self.service_locked(shared, &mut timers, now, &mut raises)
        };
        self.raise_timers(shared, raises);
        signalled
    }

    /// Services all four timers with the timer lock held, then publishes the next deadline.
    fn service_locked(
        &self,
        shared: &VpShared,
        timers: &mut std::sync::MutexGuard<'_, Timers>,
        now: u64,
        raises: &mut Raises,
    ) -> u64 {
        let mut signalled = 0;
        for t in StimerIndex::ALL {
            let timer = &mut timers.stimers[t.as_usize()];
            if let Some(raise) = self.service_one(shared, timer, t, now) {
                signalled += 1;
                raises[t.as_usize()] = raise;
            }
        }
        let deadline = timers.deadline(now);
        shared.set_timer_deadline(timers, deadline);
        signalled
    }

    /// Signals timer `t`'s due expiry, if any. `Some(raise)` when it was signalled (the raise
    /// is `None` for a masked or polling SINT: the message is in the slot, the interrupt lost).
    fn service_one(
        &self,
        shared: &VpShared,
        timer: &mut Stimer,
        t: StimerIndex,
        now: u64,
    ) -> Option<Option<Raise>> {
        let Some(due) = timer.due(now) else {
            stop_waiting(shared, timer, t);
            return None;
        };
        if timer.config.direct_mode() {
            timer.signalled(due, now);
            return Some(Some(Raise::Vector(timer.config.apic_vector())));
        }
        // SINTx is a 4-bit field.
        let sint = SintIndex::ALL[usize::from(timer.config.sintx() & 0xF)];
        if timer.waiting_on != Some(sint) {
            stop_waiting(shared, timer, t);
        }
        let bit = 1u8 << t.get();
        let mut st = shared.lock(sint);
        // Marked before the attempt: from here on, whatever fills this slot carries
        // MessagePending, so the guest will EOM and the expiry gets retried.
        st.timer_waiting |= bit;
        timer.waiting_on = Some(sint);
        let more = due.more || !st.queue.is_empty() || st.timer_waiting & !bit != 0;
        let message = TimerMessagePayload {
            timer_index: u32::from(t.get()),
            reserved: 0,
            expiration_time: due.expiration,
            delivery_time: now,
        }
        .message();
        let regs = shared.page_regs(&st);
        let mem = self.memory.memory();
        match write_slot(&*mem, self.policy, regs, sint, &mut st, &message, more) {
            Ok(SlotStep::Written) => {
                timer.signalled(due, now);
                if !due.more {
                    st.timer_waiting &= !bit;
                    timer.waiting_on = None;
                }
                Some(self.policy.interrupt(st.sint).map(|i| Raise::Sint(sint, i)))
            }
            // Busy, held (SynIC or SIMP disabled) or the page is outside RAM: the expiry
            // waits; a redelivery trigger or the next period retries it.
            Ok(SlotStep::Busy | SlotStep::Held) | Err(_) => {
                timer.counters.deferred += 1;
                None
            }
        }
    }

    /// Raises what a service owed, after every lock is released.
    fn raise_timers(&self, shared: &VpShared, raises: Raises) {
        for raise in raises.into_iter().flatten() {
            match raise {
                Raise::Sint(sint, i) => {
                    self.raise.raise(shared.index(), sint, i.vector, i.auto_eoi)
                }
                Raise::Vector(vector) => self.raise.raise_vector(shared.index(), vector),
            }
        }
    }
}

/// Clears timer `t`'s waiting mark on the SINT it waited for (timer lock held).
fn stop_waiting(shared: &VpShared, timer: &mut Stimer, t: StimerIndex) {
    if let Some(sint) = timer.waiting_on.take() {
        shared.lock(sint).timer_waiting &= !(1u8 << t.get());
    }
}

impl<M: GuestAddressSpace> Vp<M> {
    /// Userspace mode: a STIMERn_CONFIG or STIMERn_COUNT write. The register model decides
    /// the new values (TLFS or KVM rules); then the timer is re-armed from them at the current
    /// reference time, cancelling any expiry not yet signalled (as KVM does on every write; the
    /// TLFS leaves rewriting an enabled timer undefined). A one-shot timer whose COUNT is
    /// already past expires at once, before this returns.
    pub(crate) fn write_stimer(
        &mut self,
        msr: Msr,
        timer: StimerIndex,
        value: u64,
        origin: Origin,
    ) -> Result<MsrWrite, MsrError> {
        let partition = std::sync::Arc::clone(&self.partition);
        let shared = partition.vp_at(self.slot);
        let mut raises = Raises::default();
        let outcome = {
            let mut timers = shared.lock_timers();
            let t = &mut timers.stimers[timer.as_usize()];
            // A one-shot that expired cleared its Enable in the shared copy only.
            self.regs.set_stimer_enabled(timer, t.config.enabled());
            let outcome = self.regs.write(msr, value, origin)?;
            stop_waiting(shared, t, timer);
            let now = partition.reference_time();
            t.arm(
                self.regs.stimer_config(timer),
                self.regs.stimer_count(timer),
                now,
            );
            partition.service_locked(shared, &mut timers, now, &mut raises);
            outcome
        };
        partition.raise_timers(shared, raises);
        Ok(MsrWrite {
            outcome,
            action: Some(VmmAction::StimerChanged(timer)),
        })
    }

    /// `value` read from STIMERn_CONFIG with the Enable bit as the timer sees it (a one-shot
    /// that expired has cleared it); other registers unchanged.
    pub(crate) fn fold_stimer_enable(&self, msr: Msr, value: u64) -> u64 {
        match msr {
            Msr::StimerConfig(t) => {
                let enabled = self.shared().lock_timers().stimers[t.as_usize()]
                    .config
                    .enabled();
                synic_msr::StimerConfig(value).with_enabled(enabled).0
            }
            _ => value,
        }
    }

    /// Stops every timer (VP reset). Takes the timer lock, then SINT locks one at a time.
    pub(crate) fn disarm_timers(&self) {
        let shared = self.shared();
        let mut timers = shared.lock_timers();
        for t in StimerIndex::ALL {
            let timer = &mut timers.stimers[t.as_usize()];
            stop_waiting(shared, timer, t);
            timer.disarm();
        }
        shared.set_timer_deadline(&timers, u64::MAX);
    }
}
