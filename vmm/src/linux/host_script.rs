//! What `synic-vmm linux` asks of the guest's integration services while it runs: heartbeats
//! back to back, KVP values, a time sample, and an orderly shutdown. Runs on its own thread
//! with a [`VmbusHandle`]; every call has a timeout, and the thread stops early when the VM
//! stops.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use synic_vmbus::ic::Negotiated;
use synic_vmbus::{HeartbeatReply, IcKind, KvpPool, RequestError, TimeSample, VmbusHandle};

/// The steps, in the order they run (the KVP reads first: they wait for the guest's daemon,
/// so the heartbeats run on a guest that finished setting up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostScript {
    /// Keys of the guest's intrinsic KVP items to read (`FullyQualifiedDomainName` is its
    /// host name).
    pub kvp: Vec<String>,
    /// Heartbeats to exchange back to back once the heartbeat service is ready.
    pub heartbeats: u32,
    /// Send a time sample.
    pub time_sample: bool,
    /// Ask the guest to shut down this long after the steps above (and the shutdown
    /// service being ready).
    pub shutdown_after: Option<Duration>,
}

impl HostScript {
    /// Whether there is anything to do.
    pub fn is_empty(&self) -> bool {
        self.heartbeats == 0
            && self.kvp.is_empty()
            && !self.time_sample
            && self.shutdown_after.is_none()
    }
}

/// How long a service may take to open and negotiate (the KVP service waits for the guest's
/// daemon).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout of one call once the service is ready.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of a KVP call (the guest's daemon answers; Linux gives it 30 s).
pub const KVP_TIMEOUT: Duration = Duration::from_secs(35);

/// The heartbeats' outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeats {
    /// Asked for.
    pub asked: u32,
    /// Answered correctly.
    pub answered: u32,
    /// The first failure, if any.
    pub first_error: Option<RequestError>,
    /// Round trips of the answered ones, in order.
    pub round_trips: Vec<Duration>,
}

impl Heartbeats {
    /// The `p`-th percentile (0..=100) of the round trips (nearest rank).
    pub fn percentile(&self, p: u32) -> Option<Duration> {
        let mut v = self.round_trips.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = (u64::from(p.min(100)) * v.len() as u64)
            .div_ceil(100)
            .max(1) as usize;
        v.get(rank - 1).copied()
    }
}

/// What the script did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptReport {
    /// Negotiated versions of the services it waited for.
    pub ready: Vec<(IcKind, Result<Negotiated, RequestError>)>,
    /// The heartbeats.
    pub heartbeats: Heartbeats,
    /// KVP keys and what the guest answered.
    pub kvp: Vec<(String, Result<Option<String>, RequestError>)>,
    /// The time sample.
    pub time: Option<Result<TimeSample, RequestError>>,
    /// When the shutdown was asked for (since `start`), and the guest's answer.
    pub shutdown: Option<(Duration, Result<(), RequestError>)>,
    /// The VM stopped before the script finished.
    pub cut_short: bool,
}

fn ready(h: &VmbusHandle, kind: IcKind, report: &mut ScriptReport, stopped: &Receiver<()>) -> bool {
    // Short waits, so a VM that stopped ends the script quickly.
    let deadline = Instant::now() + READY_TIMEOUT;
    let result = loop {
        match h.wait_ready(kind, Duration::from_millis(500)) {
            Err(RequestError::Timeout) if Instant::now() < deadline => {
                if is_disconnected(stopped) {
                    report.cut_short = true;
                    break Err(RequestError::Stopped);
                }
            }
            r => break r,
        }
    };
    let ok = result.is_ok();
    report.ready.push((kind, result));
    ok
}

fn is_disconnected(rx: &Receiver<()>) -> bool {
    matches!(
        rx.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}

/// Runs `script` against the guest; `start` is the VM's start, `stopped` disconnects when
/// the VM stops.
pub fn run(
    h: &VmbusHandle,
    script: &HostScript,
    start: Instant,
    stopped: &Receiver<()>,
) -> ScriptReport {
    let mut report = ScriptReport::default();
    if !script.kvp.is_empty() && ready(h, IcKind::Kvp, &mut report, stopped) {
        for key in &script.kvp {
            let v = h.kvp_get(KvpPool::Auto, key, KVP_TIMEOUT);
            report.kvp.push((key.clone(), v));
        }
    }
    if script.heartbeats > 0 && ready(h, IcKind::Heartbeat, &mut report, stopped) {
        let hb = &mut report.heartbeats;
        hb.asked = script.heartbeats;
        hb.round_trips.reserve(script.heartbeats as usize);
        for _ in 0..script.heartbeats {
            match h.heartbeat(CALL_TIMEOUT) {
                Ok(HeartbeatReply { round_trip, .. }) => {
                    hb.answered += 1;
                    hb.round_trips.push(round_trip);
                }
                Err(e) => {
                    hb.first_error.get_or_insert(e);
                    if is_disconnected(stopped) {
                        report.cut_short = true;
                        break;
                    }
                }
            }
        }
    }
    if script.time_sample && ready(h, IcKind::TimeSync, &mut report, stopped) {
        report.time = Some(h.time_sample(CALL_TIMEOUT));
    }
    if let Some(after) = script.shutdown_after {
        if ready(h, IcKind::Shutdown, &mut report, stopped) {
            match stopped.recv_timeout(after) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let at = start.elapsed();
                    let r = h.shutdown("synic-vmm linux --shutdown-after", CALL_TIMEOUT);
                    report.shutdown = Some((at, r));
                }
                _ => report.cut_short = true,
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let hb = Heartbeats {
            round_trips: (1..=100).rev().map(Duration::from_micros).collect(),
            ..Heartbeats::default()
        };
        assert_eq!(hb.percentile(50), Some(Duration::from_micros(50)));
        assert_eq!(hb.percentile(99), Some(Duration::from_micros(99)));
        assert_eq!(hb.percentile(100), Some(Duration::from_micros(100)));
        assert_eq!(hb.percentile(0), Some(Duration::from_micros(1)));
        assert_eq!(Heartbeats::default().percentile(50), None);
    }
}
