//! One synthetic timer's schedule (TLFS "Synthetic Timers", "Periodic Timers"): when it is
//! due, which expiry it reports next, and how missed periods are caught up. Pure arithmetic
//! over reference times (100 ns units); writing the message or raising the vector is the
//! caller's (`timers`).
//!
//! No drift: a periodic timer keeps the reference time it was started at and counts periods
//! from it, so its n-th expiry is due at exactly `start + n x period`, however late each
//! delivery was. Lateness delays a signal; it never moves the schedule.

use synic_msr::StimerConfig;

use crate::SintIndex;

/// A non-lazy periodic timer reports at most this many missed periods one by one; when more
/// are outstanding, the oldest are skipped (TLFS: "if a significant number of timer signals
/// have been missed, ... some timer expiration signals might be skipped completely").
pub const MAX_CATCH_UP_PERIODS: u64 = 1000;

/// The saved schedule of one timer (the registers travel as MSRs). Plain data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StimerState {
    /// The timer is counting: enabled with a non-zero COUNT when last (re)armed, and (one-shot)
    /// its expiry is not yet signalled. A one-shot that is due but waits for its slot is armed.
    pub armed: bool,
    /// Periodic: the reference time the timer was enabled at; expiry n (n >= 1) is due at
    /// `start + n x COUNT`.
    pub start: u64,
    /// Periodic: the number of expiries since `start` already signalled or skipped.
    pub reported: u64,
    /// Periodic direct-mode timers: when the vector was last raised (spaces catch-up raises).
    pub last_raise: u64,
}

/// What one timer has done so far (host statistics, not saved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StimerCounters {
    /// Expiries signalled: expiry messages written into the slot, or direct-mode vectors raised.
    pub signalled: u64,
    /// Periods never reported: merged by a lazy timer, or beyond [`MAX_CATCH_UP_PERIODS`].
    pub skipped: u64,
    /// Attempts that found the slot busy, the SynIC or message page disabled, or the page
    /// outside RAM: the expiry waited (it was not dropped).
    pub deferred: u64,
    /// The largest delay seen between an expiry's due time and its signal (100 ns units).
    pub max_lateness: u64,
}

/// An expiry to signal now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Due {
    /// The expiration time reported (one-shot: COUNT; periodic: `start + n x period`).
    pub(crate) expiration: u64,
    /// Periodic: the expiry's number n since `start` (one-shot: 1).
    n: u64,
    /// More expiries are outstanding after this one (a non-lazy timer catching up).
    pub(crate) more: bool,
}

/// One timer as the timer layer keeps it: a copy of its registers, its schedule, statistics.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stimer {
    /// `STIMERn_CONFIG` as last armed; Enable is cleared here when a one-shot expiry was
    /// signalled (the VP folds it into its register file).
    pub(crate) config: StimerConfig,
    /// `STIMERn_COUNT` as last armed.
    pub(crate) count: u64,
    pub(crate) state: StimerState,
    pub(crate) counters: StimerCounters,
    /// Message mode: the SINT whose slot an expiry of this timer waits for.
    pub(crate) waiting_on: Option<SintIndex>,
}

impl Stimer {
    /// (Re)arms from the registers at `now`, as every accepted CONFIG or COUNT write does:
    /// any expiry not yet signalled is cancelled, and a periodic timer's first period starts
    /// now. Enabled with COUNT = 0 does not count (TLFS: a zero count stops the timer).
    pub(crate) fn arm(&mut self, config: StimerConfig, count: u64, now: u64) {
        self.config = config;
        self.count = count;
        self.state = StimerState {
            armed: config.enabled() && count != 0,
            start: now,
            reported: 0,
            last_raise: now,
        };
    }

    /// Installs a saved schedule with the registers it belongs to.
    pub(crate) fn restore(&mut self, config: StimerConfig, count: u64, state: StimerState) {
        self.config = config;
        self.count = count;
        self.state = state;
    }

    /// Stops the timer (reset).
    pub(crate) fn disarm(&mut self) {
        self.arm(StimerConfig(0), 0, 0);
    }

    fn period(&self) -> Option<u64> {
        (self.state.armed && self.config.periodic()).then_some(self.count)
    }

    /// Periodic: how many expiries are due by `now`.
    fn due_count(&self, period: u64, now: u64) -> u64 {
        now.saturating_sub(self.state.start) / period
    }

    /// Periodic: when expiry `n` is due; `None` beyond the end of time.
    fn due_time(&self, period: u64, n: u64) -> Option<u64> {
        n.checked_mul(period)?.checked_add(self.state.start)
    }

    /// The least spacing between two raises of a non-lazy direct-mode timer catching up: half
    /// a period, so a backlog drains at twice the timer's rate (TLFS "period modulation").
    fn catch_up_spacing(period: u64) -> u64 {
        (period / 2).max(1)
    }

    fn catching_up_direct(&self) -> bool {
        self.config.direct_mode() && !self.config.lazy()
    }

    /// The expiry to signal at `now`, if any.
    ///
    /// One-shot: COUNT is an absolute time; due once the reference time reaches it.
    /// Periodic: with missed periods outstanding, a **lazy** timer reports only the latest
    /// (earlier ones are skipped: TLFS "the timer signal is skipped entirely"), a **non-lazy**
    /// timer reports the oldest not yet reported, one expiry per signal, keeping at most
    /// [`MAX_CATCH_UP_PERIODS`] outstanding.
    pub(crate) fn due(&self, now: u64) -> Option<Due> {
        if !self.state.armed {
            return None;
        }
        let Some(period) = self.period() else {
            return (self.count <= now).then_some(Due {
                expiration: self.count,
                n: 1,
                more: false,
            });
        };
        let due = self.due_count(period, now);
        if due <= self.state.reported {
            return None;
        }
        let n = if self.config.lazy() {
            due
        } else {
            (self.state.reported + 1).max(due.saturating_sub(MAX_CATCH_UP_PERIODS - 1))
        };
        if self.catching_up_direct()
            && self.state.reported > 0
            && now
                < self
                    .state
                    .last_raise
                    .saturating_add(Self::catch_up_spacing(period))
        {
            return None;
        }
        Some(Due {
            expiration: self.due_time(period, n)?,
            n,
            more: due > n,
        })
    }

    /// Records that `due` was signalled at `now`. A one-shot timer disables itself (TLFS).
    pub(crate) fn signalled(&mut self, due: Due, now: u64) {
        let periodic = self.period().is_some();
        let c = &mut self.counters;
        c.signalled += 1;
        c.max_lateness = c.max_lateness.max(now.saturating_sub(due.expiration));
        if periodic {
            c.skipped += due.n.saturating_sub(self.state.reported.saturating_add(1));
            self.state.reported = due.n;
            self.state.last_raise = now;
        } else {
            self.state.armed = false;
            self.config = self.config.with_enabled(false);
        }
    }

    /// When the timer layer must look at this timer again after servicing it at `now`
    /// (`u64::MAX`: only an MSR write, an EOM or another redelivery trigger can change it).
    ///
    /// A one-shot expiry waiting for its slot has no deadline (EOM retries it); a periodic
    /// timer's deadline is its next period even while an expiry waits, so a slot the guest
    /// freed without EOM is still found.
    pub(crate) fn deadline(&self, now: u64) -> u64 {
        if !self.state.armed {
            return u64::MAX;
        }
        let Some(period) = self.period() else {
            return if self.count > now {
                self.count
            } else {
                u64::MAX
            };
        };
        let due = self.due_count(period, now);
        let next = self
            .due_time(period, due.saturating_add(1))
            .unwrap_or(u64::MAX);
        if self.catching_up_direct() && due > self.state.reported {
            let paced = self
                .state
                .last_raise
                .saturating_add(Self::catch_up_spacing(period));
            next.min(paced.max(now))
        } else {
            next
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn periodic(period: u64, lazy: bool, direct: bool, start: u64) -> Stimer {
        let config = if direct {
            StimerConfig::new_direct(true, true, 0x50).0 | if lazy { StimerConfig::LAZY } else { 0 }
        } else {
            StimerConfig::new(true, true, lazy, false, 2).0
        };
        let mut t = Stimer::default();
        t.arm(StimerConfig(config), period, start);
        t
    }

    /// Signals everything due at `now` (as if the slot were always free).
    fn drain(t: &mut Stimer, now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(d) = t.due(now) {
            out.push(d.expiration);
            t.signalled(d, now);
        }
        out
    }

    #[test]
    fn periodic_expiries_are_due_at_start_plus_n_periods() {
        let mut t = periodic(100, false, false, 1_000);
        assert_eq!(t.deadline(1_000), 1_100);
        assert_eq!(t.due(1_099), None);
        // Serviced late each time: the schedule does not move.
        let mut got = Vec::new();
        for n in 1..=2_000u64 {
            let now = 1_000 + n * 100 + (n * 37) % 90;
            got.extend(drain(&mut t, now));
            assert_eq!(t.deadline(now), 1_000 + (n + 1) * 100);
        }
        let want: Vec<u64> = (1..=2_000).map(|n| 1_000 + n * 100).collect();
        assert_eq!(got, want);
        assert_eq!(t.counters.skipped, 0);
        assert_eq!(t.counters.max_lateness, 89);
    }

    #[test]
    fn non_lazy_timer_reports_every_missed_period_oldest_first() {
        let mut t = periodic(100, false, false, 0);
        let d = t.due(450).unwrap();
        assert_eq!((d.expiration, d.more), (100, true));
        assert_eq!(drain(&mut t, 450), vec![100, 200, 300, 400]);
        assert_eq!(t.counters.skipped, 0);
        assert_eq!(t.deadline(450), 500);
    }

    #[test]
    fn lazy_timer_reports_only_the_latest_missed_period() {
        let mut t = periodic(100, true, false, 0);
        let d = t.due(450).unwrap();
        assert_eq!((d.expiration, d.more), (400, false));
        assert_eq!(drain(&mut t, 450), vec![400]);
        assert_eq!(t.counters.skipped, 3);
        assert_eq!(drain(&mut t, 520), vec![500]);
    }

    #[test]
    fn non_lazy_backlog_is_capped() {
        let mut t = periodic(10, false, false, 0);
        let now = 10 * (MAX_CATCH_UP_PERIODS + 500) + 5;
        let got = drain(&mut t, now);
        assert_eq!(got.len() as u64, MAX_CATCH_UP_PERIODS);
        assert_eq!(got[0], 10 * 501);
        assert_eq!(t.counters.skipped, 500);
    }

    #[test]
    fn direct_non_lazy_catch_up_is_spaced_half_a_period() {
        let mut t = periodic(100, false, true, 0);
        // Three periods missed: one raise now, then one every 50 until caught up.
        assert_eq!(drain(&mut t, 310), vec![100]);
        assert_eq!(t.deadline(310), 360);
        assert!(drain(&mut t, 359).is_empty());
        assert_eq!(drain(&mut t, 360), vec![200]);
        assert_eq!(drain(&mut t, 410), vec![300]);
        assert_eq!(t.deadline(410), 460);
        assert_eq!(drain(&mut t, 460), vec![400]);
        assert_eq!(t.deadline(460), 500);
        assert_eq!(t.counters.skipped, 0);
    }

    #[test]
    fn one_shot_is_due_at_its_absolute_count_and_then_disarms() {
        let mut t = Stimer::default();
        t.arm(StimerConfig::new(true, false, false, false, 3), 500, 100);
        assert_eq!(t.deadline(100), 500);
        assert_eq!(t.due(499), None);
        let d = t.due(700).unwrap();
        assert_eq!(d.expiration, 500);
        t.signalled(d, 700);
        assert!(!t.state.armed);
        assert!(!t.config.enabled());
        assert_eq!(t.deadline(700), u64::MAX);
        // In the past when armed: due at once.
        t.arm(StimerConfig::new(true, false, false, false, 3), 50, 100);
        assert_eq!(t.due(100).map(|d| d.expiration), Some(50));
    }

    #[test]
    fn zero_count_or_disabled_never_counts() {
        let mut t = Stimer::default();
        t.arm(StimerConfig::new(true, true, false, false, 1), 0, 5);
        assert_eq!((t.due(u64::MAX), t.deadline(0)), (None, u64::MAX));
        t.arm(StimerConfig::new(false, true, false, false, 1), 10, 5);
        assert_eq!((t.due(u64::MAX), t.deadline(0)), (None, u64::MAX));
    }

    #[test]
    fn schedule_arithmetic_saturates_at_the_end_of_time() {
        let mut t = periodic(u64::MAX / 2, false, false, u64::MAX / 2);
        assert_eq!(t.deadline(u64::MAX / 2), u64::MAX - 1);
        assert_eq!(drain(&mut t, u64::MAX), vec![u64::MAX - 1]);
        assert_eq!(t.deadline(u64::MAX), u64::MAX);
        // Hostile restored state: nothing panics.
        t.state.reported = u64::MAX;
        t.state.last_raise = u64::MAX;
        assert_eq!(t.due(u64::MAX), None);
        let _ = t.deadline(0);
    }
}
