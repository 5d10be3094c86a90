//! The hook synthetic timers plug into: register changes from the vCPU threads, and the
//! SynIC's start, pause and resume (for a timer thread).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use synic::{Partition, TimerPoll, VpIndex};
use synic_msr::StimerIndex;
use vm_memory::GuestAddressSpace;

use crate::error::Result;

/// What a timer thread drives: the partition's timer schedule. [`Partition`] implements it.
pub trait TimerSource: Send + Sync {
    /// Delivers every expiry that is due and says when the next one is.
    fn poll_timers(&self) -> TimerPoll;
    /// The partition reference time now (100 ns units).
    fn reference_time(&self) -> u64;
}

impl<M: GuestAddressSpace + Send + Sync> TimerSource for Partition<M> {
    fn poll_timers(&self) -> TimerPoll {
        Partition::poll_timers(self)
    }

    fn reference_time(&self) -> u64 {
        Partition::reference_time(self)
    }
}

/// Where the VMM's synthetic-timer layer connects.
///
/// * [`stimer_changed`](Self::stimer_changed): the guest wrote `STIMERn_CONFIG` or
///   `STIMERn_COUNT` (the model returned `VmmAction::StimerChanged`). Called on that vCPU's
///   thread: wake the timer thread, do not block.
/// * [`start`](Self::start) / [`stop`](Self::stop): the SynIC was built or resumed / paused or
///   dropped. A timer thread keeps the [`TimerSource`] until stopped.
/// * [`restored`](Self::restored): after a restore (every timer may have changed).
pub trait StimerHook: Send + Sync {
    /// A timer register of `vp` changed.
    fn stimer_changed(&self, vp: VpIndex, timer: StimerIndex);

    /// The SynIC was restored: re-arm from the partition. The default does nothing.
    fn restored(&self) {}

    /// Starts serving `timers` (at build and resume). The default does nothing.
    fn start(&self, timers: Arc<dyn TimerSource>) -> Result<()> {
        let _ = timers;
        Ok(())
    }

    /// Stops serving (at pause and drop): no expiry may be delivered after this returns. The
    /// default does nothing.
    fn stop(&self) {}
}

/// A hook without a timer thread: changes are only counted. For a VMM that serves the timers
/// itself (calling [`crate::VmSynic::partition`]`.poll_timers()`), or that advertises none.
#[derive(Debug, Default)]
pub struct NoStimers {
    changes: AtomicU64,
}

impl NoStimers {
    /// Timer register changes seen.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

impl StimerHook for NoStimers {
    fn stimer_changed(&self, _vp: VpIndex, _timer: StimerIndex) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }
}
