//! The hook synthetic timers plug into: register changes from the vCPU threads, and the VM's
//! start and stop (for a timer thread).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use synic_msr::StimerIndex;

use super::host::AttachedSynic;
use super::SynicVp;

/// Where the VMM's synthetic-timer layer connects.
///
/// * [`stimer_changed`](Self::stimer_changed): the guest wrote `STIMERn_CONFIG` or
///   `STIMERn_COUNT` (userspace mode; the model returned `VmmAction::StimerChanged`). Called on
///   that vCPU's thread with its VP locked: wake the timer thread, do not block.
/// * [`vm_started`](Self::vm_started) / [`vm_stopped`](Self::vm_stopped): start and stop a
///   timer thread; it may keep the `Arc<AttachedSynic>` (partition for expiry messages,
///   [`AttachedSynic::with_vp`] for a VP) until stopped.
/// * [`restored`](Self::restored): after [`AttachedSynic::restore`], per VP.
pub trait StimerHook: Send + Sync {
    /// A timer register of `vp` changed.
    fn stimer_changed(&self, vp: &mut SynicVp, timer: StimerIndex);

    /// `vp` was restored: re-arm from its registers. The default reports every timer changed.
    fn restored(&self, vp: &mut SynicVp) {
        for timer in StimerIndex::ALL {
            self.stimer_changed(vp, timer);
        }
    }

    /// The vCPUs started.
    fn vm_started(&self, synic: &Arc<AttachedSynic>) {
        let _ = synic;
    }

    /// The vCPUs stopped (the running VM was waited for or dropped).
    fn vm_stopped(&self) {}
}

/// The default hook: no timer thread; changes are only counted.
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
    fn stimer_changed(&self, _vp: &mut SynicVp, _timer: StimerIndex) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }
}
