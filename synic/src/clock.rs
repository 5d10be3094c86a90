//! The partition reference clock behind `TIME_REF_COUNT`, the synthetic timers and the
//! reference TSC page.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Reference time units per second (100 ns).
pub const REFERENCE_HZ: u64 = 10_000_000;

/// How a reference time follows the guest's TSC: the TLFS reference TSC page formula,
/// reference time = ((TSC x `scale`) >> 64) + `offset`, in 100 ns units (the addition wraps,
/// as the guest's 64-bit arithmetic does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscParameters {
    /// TscScale: 100 ns units per TSC tick, as a 0.64 fixed-point fraction.
    pub scale: u64,
    /// TscOffset, in 100 ns units.
    pub offset: i64,
}

impl TscParameters {
    /// The scale for a TSC counting `tsc_hz` ticks per second: floor(10^7 x 2^64 / `tsc_hz`),
    /// with `offset`. `None` when the TSC is not faster than 10 MHz (the scale would not be a
    /// fraction: no TSC page).
    pub fn for_frequency(tsc_hz: u64, offset: i64) -> Option<Self> {
        if tsc_hz <= REFERENCE_HZ {
            return None;
        }
        let scale = (u128::from(REFERENCE_HZ) << 64) / u128::from(tsc_hz);
        Some(Self {
            scale: u64::try_from(scale).ok()?,
            offset,
        })
    }

    /// The reference time at guest TSC `tsc`: what a guest computes from the page.
    pub fn reference_time(&self, tsc: u64) -> u64 {
        let product = (u128::from(tsc) * u128::from(self.scale)) >> 64;
        // The product of two u64 shifted right by 64 fits in a u64.
        (product as u64).wrapping_add(self.offset as u64)
    }

    /// The same scale with `ticks` added to the offset (wrapping).
    pub fn shifted(self, ticks: u64) -> Self {
        Self {
            scale: self.scale,
            offset: (self.offset as u64).wrapping_add(ticks) as i64,
        }
    }
}

/// A monotonic clock in 100 ns units, 0 when the partition was created.
///
/// `TIME_REF_COUNT` reads it (plus the offset a restore installs); synthetic timers compare
/// their expiry times with it.
pub trait ReferenceClock: Send + Sync {
    /// Reference time now, in 100 ns units.
    fn now(&self) -> u64;

    /// `Some` when the clock is the guest's TSC: [`now`](Self::now) is exactly
    /// [`TscParameters::reference_time`] of the TSC every vCPU of the guest reads at that
    /// moment. The partition then offers a valid reference TSC page with these parameters
    /// (plus its own offset); `None` (the default) makes the page say "use the MSR" (sequence
    /// 0). May change over time (e.g. a TSC found unstable); the VMM then calls
    /// `Partition::refresh_reference_tsc_page`.
    fn tsc_parameters(&self) -> Option<TscParameters> {
        None
    }
}

/// The host's monotonic clock ([`Instant`]), counted from construction.
#[derive(Debug, Clone, Copy)]
pub struct SystemReferenceClock {
    start: Instant,
}

impl SystemReferenceClock {
    /// A clock reading 0 now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for SystemReferenceClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ReferenceClock for SystemReferenceClock {
    fn now(&self) -> u64 {
        // u64 of 100 ns units lasts 58 000 years; saturate rather than wrap beyond that.
        u64::try_from(self.start.elapsed().as_nanos() / 100).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct FakeReferenceClock {
    now: AtomicU64,
}

impl FakeReferenceClock {
    /// A clock reading `now`.
    pub fn new(now: u64) -> Self {
        Self {
            now: AtomicU64::new(now),
        }
    }

    /// Moves the clock forward by `ticks` (100 ns units).
    pub fn advance(&self, ticks: u64) {
        self.now.fetch_add(ticks, Ordering::SeqCst);
    }

    /// Sets the reading. Tests that need monotonicity do not move it backwards.
    pub fn set(&self, now: u64) {
        self.now.store(now, Ordering::SeqCst);
    }
}

impl ReferenceClock for FakeReferenceClock {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// A TSC that moves only when told to, seen through [`TscParameters`], for tests of the
/// reference TSC page: [`now`](ReferenceClock::now) is the parameters' reference time of the
/// TSC value set.
#[derive(Debug)]
pub struct FakeTscClock {
    tsc: AtomicU64,
    scale: u64,
    offset: AtomicU64,
    valid: AtomicBool,
}

impl FakeTscClock {
    /// A TSC of `tsc_hz` (more than 10 MHz) reading `tsc`, with TscOffset `offset`.
    pub fn new(tsc_hz: u64, tsc: u64, offset: i64) -> Option<Self> {
        let p = TscParameters::for_frequency(tsc_hz, offset)?;
        Some(Self {
            tsc: AtomicU64::new(tsc),
            scale: p.scale,
            offset: AtomicU64::new(offset as u64),
            valid: AtomicBool::new(true),
        })
    }

    /// The guest TSC now.
    pub fn tsc(&self) -> u64 {
        self.tsc.load(Ordering::SeqCst)
    }

    /// Sets the guest TSC.
    pub fn set_tsc(&self, tsc: u64) {
        self.tsc.store(tsc, Ordering::SeqCst);
    }

    /// Moves the guest TSC forward by `ticks`.
    pub fn advance_tsc(&self, ticks: u64) {
        self.tsc.fetch_add(ticks, Ordering::SeqCst);
    }

    /// Changes the offset (as a VMM does when the guest's TSC moved under it).
    pub fn set_offset(&self, offset: i64) {
        self.offset.store(offset as u64, Ordering::SeqCst);
    }

    /// Whether [`tsc_parameters`](ReferenceClock::tsc_parameters) answers (an unstable TSC
    /// says `false`); the reading continues either way.
    pub fn set_valid(&self, valid: bool) {
        self.valid.store(valid, Ordering::SeqCst);
    }

    fn parameters(&self) -> TscParameters {
        TscParameters {
            scale: self.scale,
            offset: self.offset.load(Ordering::SeqCst) as i64,
        }
    }
}

impl ReferenceClock for FakeTscClock {
    fn now(&self) -> u64 {
        self.parameters().reference_time(self.tsc())
    }

    fn tsc_parameters(&self) -> Option<TscParameters> {
        self.valid.load(Ordering::SeqCst).then(|| self.parameters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_starts_near_zero_and_is_monotonic() {
        let c = SystemReferenceClock::new();
        let a = c.now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = c.now();
        assert!(a < 10_000_000, "a fresh clock reads {a}");
        assert!(b >= a + 20_000, "2 ms is 20 000 ticks: {a} -> {b}");
    }

    #[test]
    fn tsc_scale_counts_100ns_per_second_of_ticks() {
        for hz in [
            10_000_001u64,
            1_000_000_000,
            2_600_000_000,
            3_999_999_000,
            u64::MAX,
        ] {
            let p = TscParameters::for_frequency(hz, 0).unwrap();
            // One second of ticks is 10^7 units, less at most one for the truncated scale.
            let second = p.reference_time(hz);
            assert!(
                (REFERENCE_HZ - 1..=REFERENCE_HZ).contains(&second),
                "{hz} Hz: {second}"
            );
        }
        assert_eq!(TscParameters::for_frequency(REFERENCE_HZ, 0), None);
        assert_eq!(TscParameters::for_frequency(0, 0), None);
        let p = TscParameters::for_frequency(2_000_000_000, -5).unwrap();
        assert_eq!(
            u128::from(p.scale),
            (1u128 << 64) / 200,
            "2 GHz: 1/200 per tick"
        );
        assert_eq!(p.reference_time(0), (-5i64) as u64, "the offset wraps");
        assert_eq!(p.shifted(5).reference_time(0), 0);
        assert_eq!(p.reference_time(u64::MAX), p.scale - 1 - 5);
    }

    #[test]
    fn fake_tsc_clock_is_its_parameters_applied_to_its_tsc() {
        let c = FakeTscClock::new(1_000_000_000, 0, 1000).unwrap();
        assert_eq!(c.now(), 1000);
        c.advance_tsc(1_000_000_000);
        assert!((10_000_999..=10_001_000).contains(&c.now()));
        let p = c.tsc_parameters().unwrap();
        assert_eq!(p.reference_time(c.tsc()), c.now());
        c.set_valid(false);
        assert_eq!(c.tsc_parameters(), None);
        assert_eq!(p.reference_time(c.tsc()), c.now(), "the reading goes on");
        c.set_offset(0);
        assert_eq!(c.now() + 1000, p.reference_time(c.tsc()));
        assert!(FakeTscClock::new(1000, 0, 0).is_none());
    }

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeReferenceClock::new(5);
        assert_eq!(c.now(), 5);
        c.advance(10);
        assert_eq!(c.now(), 15);
        c.set(100);
        assert_eq!(c.now(), 100);
    }
}
