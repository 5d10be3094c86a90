//! What the demo collects to explain a failure: the guest's anomaly log (see
//! [`super::guest::anomaly`]), the host's duplicate replies, and a kernel trace stopped the
//! moment either side sees something wrong.
//!
//! The trace: with `SYNIC_DEMO_TRACING` set to a tracefs directory (`/sys/kernel/tracing`, or
//! an instance under it), the first anomaly that breaks something (a duplicate, a refused or
//! status-less hypercall) writes `0` to its `tracing_on`, so the ring buffer ends where the
//! failure happened instead of being overwritten by the rest of the run. Whoever enabled the
//! tracepoints reads the buffer afterwards (`ci/kvm-lab/in-lab.sh` does, for a failed demo).

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress};

use super::guest::{anomaly, stat, STATS_OFFSET, VCPU_AREA};
use crate::guest::layout;
use crate::io::{le_value, PortDevice};
use crate::memory::GuestMemory;

/// The environment variable naming the tracefs directory whose `tracing_on` the first anomaly
/// clears.
pub const TRACING_ENV: &str = "SYNIC_DEMO_TRACING";

/// Anomalies seen while the demo runs, from the guest (its [`super::guest::ANOMALY_PORT`]) and
/// the host (duplicate replies).
#[derive(Debug)]
pub(crate) struct Anomalies {
    tracing: Option<PathBuf>,
    /// Guest signals per vCPU.
    signals: Box<[AtomicU64]>,
    /// The first anomaly, and whether stopping the trace worked.
    first: Mutex<Option<String>>,
}

impl Anomalies {
    /// For `vcpus` vCPUs; the trace directory comes from [`TRACING_ENV`].
    pub fn new(vcpus: u32) -> Self {
        Self {
            tracing: std::env::var_os(TRACING_ENV)
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            signals: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            first: Mutex::new(None),
        }
    }

    /// Something went wrong: the first call stops the trace and remembers `what`.
    pub fn seen(&self, what: fmt::Arguments<'_>) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_some() {
            return;
        }
        let trace = match &self.tracing {
            None => String::new(),
            Some(dir) => match std::fs::write(dir.join("tracing_on"), "0") {
                Ok(()) => format!("; kernel trace stopped ({})", dir.display()),
                Err(e) => format!("; stopping the kernel trace failed: {e}"),
            },
        };
        *first = Some(format!("{what}{trace}"));
    }

    /// The first anomaly, if there was one.
    pub fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Guest signals from vCPU `vcpu`.
    pub fn signals(&self, vcpu: u32) -> u64 {
        self.signals
            .get(vcpu as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The guest side of [`Anomalies`]: one port, a 32-bit write of the anomaly's kind. Every
/// kind but [`anomaly::NESTED`] (ignored by the guest) stops the trace.
#[derive(Debug)]
pub(crate) struct AnomalyPort(pub std::sync::Arc<Anomalies>);

impl PortDevice for AnomalyPort {
    fn read(&self, _vcpu: u32, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, vcpu: u32, _port: u16, data: &[u8]) {
        if let Some(c) = self.0.signals.get(vcpu as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let kind = u64::from(le_value(data));
        // A made-up interrupt the guest ignored breaks nothing: the trace stays on for a
        // failure that may follow.
        if kind != anomaly::NESTED {
            self.0.seen(format_args!(
                "vCPU {vcpu}: the guest saw {}",
                kind_name(kind)
            ));
        }
    }
}

fn kind_name(kind: u64) -> &'static str {
    match kind {
        anomaly::DUPLICATE => "a message it had seen before",
        anomaly::REPLY_STATUS => "HvPostMessage refused",
        anomaly::EVENT_STATUS => "HvSignalEvent refused",
        anomaly::NESTED => "an interrupt inside its ISR",
        anomaly::RETRY => "INSUFFICIENT_BUFFERS",
        _ => "an anomaly of an unknown kind",
    }
}

/// One record of the guest's anomaly log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestAnomaly {
    /// What it is ([`anomaly`] kinds).
    pub kind: u64,
    /// Message sequence number, event flag, or (nested interrupt) the vector.
    pub seq: u64,
    /// The status returned, the slot header read, or (nested interrupt) the interrupted RSP.
    pub rax: u64,
    /// The RIP this ISR interrupted.
    pub rip: u64,
    /// The RFLAGS this ISR interrupted.
    pub rflags: u64,
    /// The message slot's header when the record was written.
    pub slot: u64,
    /// Message interrupts taken so far.
    pub message_irqs: u64,
    /// Event interrupts taken so far.
    pub event_irqs: u64,
}

impl fmt::Display for GuestAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = match self.kind {
            anomaly::DUPLICATE => format!(
                "message {} seen again (header read {:#x})",
                self.seq, self.rax
            ),
            anomaly::REPLY_STATUS | anomaly::EVENT_STATUS | anomaly::RETRY => {
                let what = if self.kind == anomaly::EVENT_STATUS {
                    "HvSignalEvent for flag"
                } else {
                    "HvPostMessage for message"
                };
                let status = if self.rax == super::guest::NO_STATUS {
                    "no status written (RAX as loaded)".to_string()
                } else {
                    format!("status {:#x} (RAX {:#x})", self.rax & 0xFFFF, self.rax)
                };
                format!("{what} {}: {status}", self.seq)
            }
            anomaly::NESTED => format!(
                "vector {:#x} delivered inside the running ISR (interrupted RSP {:#x}): made up \
                 by the platform, ignored",
                self.seq, self.rax
            ),
            _ => format!("kind {} seq {} rax {:#x}", self.kind, self.seq, self.rax),
        };
        write!(
            f,
            "{detail}; interrupted RIP {:#x} RFLAGS {:#x} (IF {}); slot header now {:#x}; \
             interrupts so far: {} message, {} event",
            self.rip,
            self.rflags,
            (self.rflags >> 9) & 1,
            self.slot,
            self.message_irqs,
            self.event_irqs
        )
    }
}

/// The guest's counters of vCPU `vcpu` ([`stat`], in order).
pub(crate) fn guest_counters(memory: &GuestMemory, vcpu: u32) -> [u64; stat::COUNT] {
    let base = layout::FREE_PAGES + u64::from(vcpu) * VCPU_AREA + STATS_OFFSET;
    let mut out = [0u64; stat::COUNT];
    for (i, v) in (0u64..).zip(out.iter_mut()) {
        *v = memory.read_obj(GuestAddress(base + 8 * i)).unwrap_or(0);
    }
    out
}

/// The records of vCPU `vcpu`'s anomaly log (`count` = its [`stat::ANOMALIES`]).
pub(crate) fn guest_anomalies(memory: &GuestMemory, vcpu: u32, count: u64) -> Vec<GuestAnomaly> {
    let base = layout::FREE_PAGES + u64::from(vcpu) * VCPU_AREA + STATS_OFFSET + anomaly::RECORDS;
    (0..count.min(anomaly::CAPACITY))
        .map(|i| {
            let at = base + i * anomaly::RECORD_SIZE;
            let f = |n: u64| memory.read_obj(GuestAddress(at + 8 * n)).unwrap_or(0);
            GuestAnomaly {
                kind: f(0),
                seq: f(1),
                rax: f(2),
                rip: f(3),
                rflags: f(4),
                slot: f(5),
                message_irqs: f(6),
                event_irqs: f(7),
            }
        })
        .collect()
}
