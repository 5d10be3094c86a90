//! The VM's one synthetic-timer thread (userspace mode).
//!
//! The SynIC model keeps every timer's schedule in its partition and exposes the next
//! deadline; it never sleeps or spawns. [`TimerThread`] is the other half: one thread for the
//! whole VM that calls [`synic::Partition::poll_timers`] when the earliest deadline comes and
//! sleeps until the next one. The vCPU threads wake it when a STIMER write may have moved a
//! deadline earlier ([`StimerHook::stimer_changed`]); an expiry that waits for a busy slot
//! needs no wake-up (the guest's EOM delivers it on the vCPU's own thread).
//!
//! [`crate::VmSynicBuilder`] installs one by default in userspace mode. Kernel mode does not
//! need it: KVM runs its in-kernel timers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use synic::VpIndex;
use synic_msr::StimerIndex;

use crate::error::{Error, Result};
use crate::stimer_hook::{StimerHook, TimerSource};

/// What the timer thread has done (monotonic counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerThreadStats {
    /// Polls of the partition's timers.
    pub polls: u64,
    /// Wake-ups requested by timer register writes and restores.
    pub kicks: u64,
    /// Expiries the polls signalled (expiries delivered by an EOM are not counted here).
    pub signalled: u64,
    /// The largest delay seen between a poll's target deadline and the poll itself
    /// (100 ns units): how late the thread woke up.
    pub max_wake_lateness: u64,
}

#[derive(Debug, Default)]
struct Wake {
    kicked: bool,
    stop: bool,
}

#[derive(Debug, Default)]
struct Inner {
    wake: Mutex<Wake>,
    cv: Condvar,
    polls: AtomicU64,
    kicks: AtomicU64,
    signalled: AtomicU64,
    max_wake_lateness: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Wake> {
        self.wake.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One thread serving every synthetic timer of a VM. Use it as the VM's [`StimerHook`]: it
/// starts with the SynIC, is woken by timer register writes, and stops when the SynIC is
/// paused or dropped (or this is dropped).
#[derive(Debug, Default)]
pub struct TimerThread {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl TimerThread {
    /// A timer thread, not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts serving `timers` (stopping a thread already running first).
    pub fn start(&self, timers: Arc<dyn TimerSource>) -> Result<()> {
        self.stop();
        *self.inner.lock() = Wake::default();
        let inner = Arc::clone(&self.inner);
        let handle = std::thread::Builder::new()
            .name("synic-timers".into())
            .spawn(move || run(&inner, &*timers))
            .map_err(|source| Error::Thread {
                what: "synthetic timer",
                source,
            })?;
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok(())
    }

    /// Makes the thread poll again now (a deadline may have moved earlier). Cheap; never
    /// blocks for long: safe on a vCPU thread.
    pub fn kick(&self) {
        self.inner.kicks.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().kicked = true;
        self.inner.cv.notify_one();
    }

    /// Stops the thread and waits for it.
    pub fn stop(&self) {
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            self.inner.lock().stop = true;
            self.inner.cv.notify_one();
            // A panic in the thread has nothing left to clean up.
            let _ = handle.join();
        }
    }

    /// What the thread has done so far.
    pub fn stats(&self) -> TimerThreadStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TimerThreadStats {
            polls: get(&self.inner.polls),
            kicks: get(&self.inner.kicks),
            signalled: get(&self.inner.signalled),
            max_wake_lateness: get(&self.inner.max_wake_lateness),
        }
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks the kernel for 1 ns timer slack on this thread (the default 50 us would make every
/// expiry up to 50 us late; the schedule itself cannot drift either way).
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument and changes only the calling
    // thread's timer slack; no memory is passed.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

fn run(inner: &Inner, partition: &dyn TimerSource) {
    tighten_timer_slack();
    let mut target: Option<u64> = None;
    let mut wake = inner.lock();
    loop {
        if wake.stop {
            return;
        }
        wake.kicked = false;
        drop(wake);
        let poll = partition.poll_timers();
        inner.polls.fetch_add(1, Ordering::Relaxed);
        inner.signalled.fetch_add(poll.signalled, Ordering::Relaxed);
        if let Some(t) = target.take().filter(|&t| t <= poll.now) {
            inner
                .max_wake_lateness
                .fetch_max(poll.now - t, Ordering::Relaxed);
        }
        wake = inner.lock();
        if wake.stop || wake.kicked {
            continue;
        }
        wake = match poll.next_deadline {
            Some(deadline) => {
                target = Some(deadline);
                let ticks = deadline.saturating_sub(partition.reference_time());
                let timeout = Duration::from_nanos(ticks.saturating_mul(100));
                inner
                    .cv
                    .wait_timeout(wake, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => inner.cv.wait(wake).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

impl StimerHook for TimerThread {
    fn stimer_changed(&self, _vp: VpIndex, _timer: StimerIndex) {
        // The model has re-armed the timer already; only the sleep may be too long now.
        self.kick();
    }

    fn restored(&self) {
        self.kick();
    }

    fn start(&self, timers: Arc<dyn TimerSource>) -> Result<()> {
        TimerThread::start(self, timers)
    }

    fn stop(&self) {
        TimerThread::stop(self);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use synic::testing::RecordingRaise;
    use synic::{Mode, Partition, PartitionConfig, SystemReferenceClock};
    use synic_msr::{index, Origin, Profile, StimerConfig};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;

    #[test]
    fn one_thread_serves_a_periodic_timer_and_wakes_for_an_earlier_deadline() {
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        let raise = Arc::new(RecordingRaise::default());
        let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 1);
        let clock = Arc::new(SystemReferenceClock::new());
        let (partition, mut vps) = Partition::new(config, mem, raise.clone(), clock).unwrap();
        let vp = &mut vps[0];
        let timers = TimerThread::new();
        timers
            .start(Arc::clone(&partition) as Arc<dyn TimerSource>)
            .unwrap();

        // Direct mode (no slot to free): a 1 ms periodic timer raises about once per ms.
        vp.wrmsr(index::STIMER0_COUNT, 10_000, Origin::Guest)
            .unwrap();
        vp.wrmsr(
            index::STIMER0_CONFIG,
            StimerConfig::new_direct(true, true, 0x40).0,
            Origin::Guest,
        )
        .unwrap();
        timers.kick();
        let start = Instant::now();
        while raise.vectors().len() < 50 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            raise.vectors().len() >= 50,
            "{} raises",
            raise.vectors().len()
        );

        // A one-shot 10 s away, then moved to 1 ms away: the kick makes the thread see it.
        vp.wrmsr(index::STIMER0_CONFIG, 0, Origin::Guest).unwrap();
        let now = partition.reference_time();
        vp.wrmsr(index::STIMER0_COUNT + 2, now + 100_000_000, Origin::Guest)
            .unwrap();
        vp.wrmsr(
            index::STIMER0_CONFIG + 2,
            StimerConfig::new_direct(true, false, 0x41).0,
            Origin::Guest,
        )
        .unwrap();
        timers.kick();
        std::thread::sleep(Duration::from_millis(20));
        let n = raise.vectors().len();
        let now = partition.reference_time();
        vp.wrmsr(index::STIMER0_COUNT + 2, now + 10_000, Origin::Guest)
            .unwrap();
        timers.kick();
        let start = Instant::now();
        while raise.vectors().len() == n && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(raise.vectors().last(), Some(&(synic::VpIndex(0), 0x41)));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "woken by the kick, not in 10 s"
        );
        let stats = timers.stats();
        assert!(stats.polls >= 50 && stats.kicks == 3, "{stats:?}");
        timers.stop();
        let polls = timers.stats().polls;
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(timers.stats().polls, polls, "stopped");
    }
}
