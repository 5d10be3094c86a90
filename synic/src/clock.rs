//! The partition reference clock behind `TIME_REF_COUNT` (and, later, synthetic timers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A monotonic clock in 100 ns units, 0 when the partition was created.
///
/// `TIME_REF_COUNT` reads it (plus the offset a restore installs); synthetic timers compare
/// their expiry times with it.
pub trait ReferenceClock: Send + Sync {
    /// Reference time now, in 100 ns units.
    fn now(&self) -> u64;
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
    fn fake_clock_moves_only_when_told() {
        let c = FakeReferenceClock::new(5);
        assert_eq!(c.now(), 5);
        c.advance(10);
        assert_eq!(c.now(), 15);
        c.set(100);
        assert_eq!(c.now(), 100);
    }
}
