//! Stopping a running VM: why it stopped, the stop flag the vCPU loops poll, and the exit
//! counters progress reports read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::snapshot::VcpuSnapshot;

/// A parked vCPU's state, or why it could not be read (shared with every caller).
pub(crate) type CapturedVcpu = std::result::Result<VcpuSnapshot, Arc<crate::Error>>;

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote this value to isa-debug-exit (port 0xF4).
    DebugExit(u32),
    /// The wall-clock limit passed.
    Timeout,
    /// A vCPU shut down (triple fault).
    Shutdown {
        /// The vCPU.
        vcpu: u32,
        /// Its RIP after the shutdown (`KVM_GET_REGS`; 0 if that failed): where the last
        /// fault was raised, for a diagnosis.
        rip: u64,
        /// Its RSP then (a stack overflow shows here).
        rsp: u64,
    },
    /// A vCPU reported a KVM system event (reset, shutdown, crash).
    SystemEvent {
        /// The vCPU.
        vcpu: u32,
        /// `KVM_SYSTEM_EVENT_*`.
        kind: u32,
    },
    /// A vCPU hit an error the VMM cannot continue from.
    Error {
        /// The vCPU.
        vcpu: u32,
        /// What happened.
        message: String,
    },
    /// A KVM call on the vCPU's thread failed.
    Kvm {
        /// The vCPU.
        vcpu: u32,
        /// The call, e.g. `KVM_RUN`.
        op: &'static str,
        /// The error the kernel returned.
        source: vmm_sys_util::errno::Error,
    },
    /// The SynIC's exit handler could not handle an exit (a KVM call it made failed, or an
    /// exit of a kind it does not take).
    Synic {
        /// The vCPU.
        vcpu: u32,
        /// synic-kvm's error.
        error: SynicFailure,
    },
    /// The host asked the VM to stop.
    Requested,
}

/// synic-kvm's error in a [`StopReason`], shared so the reason stays cloneable. Two are equal
/// when they are the same failure (the same shared error).
#[derive(Clone, Debug)]
pub struct SynicFailure(pub Arc<synic_kvm::Error>);

impl PartialEq for SynicFailure {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SynicFailure {}

impl std::fmt::Display for SynicFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Shared by the vCPU threads, the devices and the owner of a running VM.
#[derive(Debug)]
pub struct VmControl {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    notify_tx: Sender<()>,
    notify_rx: Receiver<()>,
    exits: Box<[AtomicU64]>,
    /// A pause is wanted (read by the vCPU loops after every kick).
    pausing: AtomicBool,
    pause: Mutex<Pause>,
    pause_cv: Condvar,
}

#[derive(Debug, Default)]
struct Pause {
    /// vCPUs parked now.
    parked: u32,
    /// Each vCPU's state as it parked last (or why it could not be read).
    snapshots: Vec<Option<CapturedVcpu>>,
}

impl VmControl {
    /// Control for a VM of `vcpus` vCPUs.
    pub fn new(vcpus: u32) -> Self {
        let (notify_tx, notify_rx) = crossbeam_channel::bounded(1);
        Self {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            notify_tx,
            notify_rx,
            exits: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            pausing: AtomicBool::new(false),
            pause: Mutex::new(Pause {
                parked: 0,
                snapshots: vec![None; vcpus as usize],
            }),
            pause_cv: Condvar::new(),
        }
    }

    fn pause_state(&self) -> MutexGuard<'_, Pause> {
        self.pause.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the vCPUs should park (checked by a vCPU loop when a kick interrupted it).
    pub(crate) fn pause_requested(&self) -> bool {
        self.pausing.load(Ordering::SeqCst)
    }

    /// Asks the vCPUs to park at their next exit (the owner kicks them).
    pub(crate) fn request_pause(&self) {
        self.pausing.store(true, Ordering::SeqCst);
    }

    /// On a vCPU thread: records its state, then parks until the pause ends or the VM stops.
    pub(crate) fn park(&self, vcpu: u32, snapshot: CapturedVcpu) {
        let mut p = self.pause_state();
        if let Some(slot) = p.snapshots.get_mut(vcpu as usize) {
            *slot = Some(snapshot);
        }
        p.parked += 1;
        self.pause_cv.notify_all();
        while self.pause_requested() && !self.stopping() {
            p = self
                .pause_cv
                .wait_timeout(p, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        p.parked -= 1;
        self.pause_cv.notify_all();
    }

    /// Ends a pause: parked vCPUs run again (their snapshots are forgotten).
    pub(crate) fn resume(&self) {
        let mut p = self.pause_state();
        p.snapshots.iter_mut().for_each(|s| *s = None);
        self.pausing.store(false, Ordering::SeqCst);
        self.pause_cv.notify_all();
    }

    /// Every vCPU's state from the current pause, in vCPU order.
    pub(crate) fn snapshots(&self) -> crate::Result<Vec<VcpuSnapshot>> {
        let p = self.pause_state();
        (0u32..)
            .zip(&p.snapshots)
            .map(|(vcpu, s)| match s {
                Some(Ok(s)) => Ok(s.clone()),
                Some(Err(source)) => Err(crate::Error::Snapshot {
                    vcpu,
                    source: Arc::clone(source),
                }),
                None => Err(crate::Error::NotParked { vcpu }),
            })
            .collect()
    }

    /// Waits up to `timeout` for `count` vCPUs to be parked.
    pub(crate) fn wait_parked(&self, count: u32, timeout: Duration) -> bool {
        let p = self.pause_state();
        let (p, _) = self
            .pause_cv
            .wait_timeout_while(p, timeout, |p| p.parked < count)
            .unwrap_or_else(PoisonError::into_inner);
        p.parked >= count
    }

    /// Asks every vCPU to stop. The first reason given is the one reported.
    pub fn request_stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        // Set after the reason so whoever sees the flag finds the reason.
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.notify_tx.try_send(());
        drop(r);
        // Parked vCPUs wake up and leave.
        let _p = self.pause_state();
        self.pause_cv.notify_all();
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The reason given first, once a stop was requested.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for a stop request; true if one came.
    pub fn wait_stop(&self, timeout: Duration) -> bool {
        if self.stopping() {
            return true;
        }
        let _ = self.notify_rx.recv_timeout(timeout);
        self.stopping()
    }

    /// Counts one exit of `vcpu` to userspace.
    pub(crate) fn count_exit(&self, vcpu: u32) {
        if let Some(c) = self.exits.get(vcpu as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Exits to userspace so far, per vCPU.
    pub fn exits(&self) -> Vec<u64> {
        self.exits
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_reason_wins_and_wakes_the_waiter() {
        let c = VmControl::new(2);
        assert!(!c.wait_stop(Duration::from_millis(1)));
        c.request_stop(StopReason::DebugExit(3));
        c.request_stop(StopReason::Timeout);
        assert!(c.wait_stop(Duration::from_secs(5)));
        assert_eq!(c.reason(), Some(StopReason::DebugExit(3)));
        c.count_exit(1);
        c.count_exit(7); // out of range: ignored
        assert_eq!(c.exits(), vec![0, 1]);
    }
}
