//! No drift: a periodic timer's n-th expiry is due at exactly start + n x period, over
//! thousands of periods, whatever the lateness of the timer thread and the guest.
//!
//! A simulated timer thread polls at each deadline plus a random lateness (sometimes several
//! periods: a host stall); a simulated guest takes each expiry message after a random delay
//! (sometimes several periods: a guest that keeps its slot busy) and EOMs when MessagePending
//! is set. `SYNIC_PROPTEST_CASES` scales the number of cases (default 24).

use proptest::prelude::*;
use synic::{TimerMessagePayload, VpIndex, MAX_CATCH_UP_PERIODS};
use synic_msr::StimerConfig;

use crate::common::*;
use crate::message_config;

/// A tiny deterministic generator (the seed comes from proptest).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0..n
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// A delay: usually under a quarter period, one time in `rare` up to `stall` periods.
    fn delay(&mut self, period: u64, rare: u64, stall: u64) -> u64 {
        if self.below(rare) == 0 {
            self.below(stall * period + 1)
        } else {
            self.below(period / 4 + 1)
        }
    }
}

fn cases() -> u32 {
    std::env::var("SYNIC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

/// What the guest received.
struct Run {
    start: u64,
    period: u64,
    /// Expiry messages in arrival order.
    got: Vec<TimerMessagePayload>,
    /// The reference time at the end, after the guest drained every expiry.
    end: u64,
    skipped: u64,
}

/// Runs one message-mode periodic timer for `periods` periods.
fn run(period: u64, lazy: bool, timer: u32, sint: u8, periods: u64, seed: u64) -> Run {
    let mut rng = Rng(seed | 1);
    let mut h = Harness::enabled();
    let start = 1 + rng.below(1_000_000);
    h.clock.set(start);
    h.start_timer(0, timer, message_config(true, lazy, sint), period);
    let end = start + periods * period;
    let mut now = start;
    let mut got = Vec::new();
    let mut guest_at: Option<u64> = None;
    let take = |h: &mut Harness, got: &mut Vec<TimerMessagePayload>| {
        if let Some((p, _eom)) = h.take(0, sint) {
            got.push(p.expect("only timer messages on this SINT"));
        }
    };
    while now < end {
        if guest_at.is_none() && h.timer_in_slot(0, sint).is_some() {
            guest_at = Some(now + rng.delay(period, 30, 4));
        }
        let wake = h.partition.next_timer_deadline().expect("counting") + rng.delay(period, 50, 3);
        match guest_at {
            Some(g) if g <= wake => {
                now = g;
                h.clock.set(now);
                take(&mut h, &mut got);
                guest_at = None;
            }
            _ => {
                now = wake;
                h.poll_at(now);
            }
        }
    }
    // A last poll, then the guest drains what is left; EOMs bring the rest of a backlog.
    h.poll_at(now);
    while h.timer_in_slot(0, sint).is_some() {
        take(&mut h, &mut got);
    }
    let skipped = h.timer_counters(0, timer as usize).skipped;
    Run {
        start,
        period,
        got,
        end: now,
        skipped,
    }
}

impl Run {
    /// The period number of an expiry, checking that it lies exactly on the schedule.
    fn n(&self, p: &TimerMessagePayload) -> u64 {
        let since = p.expiration_time - self.start;
        assert_eq!(since % self.period, 0, "expiry {p:?} is off the schedule");
        since / self.period
    }

    fn due_by(&self, t: u64) -> u64 {
        (t - self.start) / self.period
    }
}

fn check_non_lazy(r: &Run) {
    for (i, p) in r.got.iter().enumerate() {
        assert_eq!(r.n(p), i as u64 + 1, "expiry {i} reports period {}", r.n(p));
        assert!(
            p.delivery_time >= p.expiration_time,
            "{p:?} delivered early"
        );
    }
    assert_eq!(r.skipped, 0);
    assert_eq!(r.got.len() as u64, r.due_by(r.end), "every period reported");
}

fn check_lazy(r: &Run) {
    let mut last = 0;
    for p in &r.got {
        let n = r.n(p);
        assert!(n > last, "lazy expiries go forward");
        // The lazy rule: what is delivered is the latest period due at delivery time.
        assert_eq!(n, r.due_by(p.delivery_time), "{p:?} is not the latest");
        last = n;
    }
    assert_eq!(last, r.due_by(r.end), "the latest period was reported");
    assert_eq!(
        r.got.len() as u64 + r.skipped,
        last,
        "each period reported or skipped"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn periodic_timer_has_zero_drift_over_1500_periods(
        period in prop_oneof![1u64..=50, 1_000u64..=200_000],
        lazy: bool,
        timer in 0u32..4,
        sint in 1u8..16,
        seed: u64,
    ) {
        let r = run(period, lazy, timer, sint, 1_500, seed);
        if lazy { check_lazy(&r) } else { check_non_lazy(&r) }
        let least = if lazy { 300 } else { 1_500 };
        prop_assert!(r.got.len() >= least, "{} expiries", r.got.len());
    }

    #[test]
    fn direct_timer_raises_once_per_period_after_catching_up(
        period in 100u64..=100_000,
        lazy: bool,
        seed: u64,
    ) {
        let mut rng = Rng(seed | 1);
        let mut h = Harness::enabled();
        let cfg = StimerConfig::new_direct(true, true, 0x77).0 | if lazy { StimerConfig::LAZY } else { 0 };
        h.start_timer(0, 0, cfg, period);
        let mut now = 0;
        // 1 000 periods with a late timer thread, then 200 polls on time.
        while now < 1_000 * period {
            now = h.partition.next_timer_deadline().unwrap() + rng.delay(period, 40, 5);
            h.poll_at(now);
        }
        for _ in 0..200 {
            now = h.partition.next_timer_deadline().unwrap();
            h.poll_at(now);
        }
        let raises = h.raise.vectors().len() as u64;
        let c = h.timer_counters(0, 0);
        let due = now / period;
        prop_assert_eq!(c.signalled, raises);
        prop_assert_eq!(raises + c.skipped, due);
        if !lazy {
            prop_assert_eq!(raises, due, "a non-lazy direct timer catches up every period");
        }
        prop_assert!(h.raise.vectors().iter().all(|&v| v == (VpIndex(0), 0x77)));
    }
}

#[test]
fn one_ms_timer_over_100k_periods_reports_every_expiry_exactly_on_schedule() {
    let r = run(10_000, false, 0, 2, 100_000, 0x5EED);
    check_non_lazy(&r);
    let worst = r
        .got
        .iter()
        .map(|p| p.delivery_time - p.expiration_time)
        .max()
        .unwrap();
    assert_eq!(r.got.len(), 100_000);
    // Lateness delays a signal but never moves the schedule: the last expiry is due at
    // exactly start + 100 000 ms although signals were up to `worst` late.
    assert_eq!(
        r.got.last().unwrap().expiration_time,
        r.start + 100_000 * 10_000
    );
    assert!(worst > 0);
}

#[test]
fn a_stall_longer_than_the_catch_up_limit_skips_the_oldest_periods() {
    let mut h = Harness::enabled();
    h.post(0, 2, 1); // the guest keeps its slot busy
    h.start_timer(0, 0, message_config(true, false, 2), 10);
    let periods = MAX_CATCH_UP_PERIODS + 250;
    h.poll_at(periods * 10);
    h.take(0, 2);
    let mut got = Vec::new();
    while let Some((Some(p), _)) = h.take(0, 2) {
        got.push(p.expiration_time / 10);
    }
    let want: Vec<u64> = (251..=periods).collect();
    assert_eq!(got, want);
    assert_eq!(h.timer_counters(0, 0).skipped, 250);
}
