//! The demo (`synic-vmm` with no arguments): a real guest on every vCPU exchanging messages and
//! events with the host in both directions through the SynIC, every one checked by sequence
//! number on both sides.
//!
//! * host -> guest messages: a device thread per vCPU calls `post_message` (SINT2); the guest's
//!   ISR reads the slot, frees it (EOM when MessagePending is set), checks the sequence number;
//! * guest -> host messages: the ISR answers each with HvPostMessage (a host connection);
//! * host -> guest events: the device thread sets event flags (SINT3, flag `seq % 64`); the ISR
//!   takes them with one `xchg` and checks their order;
//! * guest -> host events: the ISR answers each with HvSignalEvent (flag `seq % 64`).
//!
//! First a latency phase (one message, then one event, in flight at a time: round trips), then
//! a pipelined phase (windows of messages and events in flight: throughput). The host checks
//! the replies as they come; the guest's own checks are read from its memory after the run.

mod device;
mod diag;
pub mod guest;

use std::sync::Arc;
use std::time::{Duration, Instant};

use synic_msr::Profile;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::{DebugExit, ReportPort};
use crate::error::{Error, Result};
use crate::guest::{layout, tag};
use crate::layout::ports;
use crate::synic_vm::SynicVmBuilder;
use device::{Device, DeviceResult, Plan, Progress};
use diag::{guest_anomalies, guest_counters, Anomalies, AnomalyPort};
pub use diag::{GuestAnomaly, TRACING_ENV};
use guest::{stat, EVT_CONNECTION, EVT_SINT, MSG_CONNECTION, MSG_SINT, VCPU_AREA};
use synic_kvm::{HostEventConnection, HostMessageConnection};
use synic_kvm::{ModeRequest, SynicMode};

/// What the demo runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoConfig {
    /// SynIC mode.
    pub mode: ModeRequest,
    /// Register and delivery semantics.
    pub profile: Profile,
    /// vCPUs, each with its own device thread.
    pub vcpus: u32,
    /// Host -> guest messages per vCPU (each answered by one guest -> host message).
    pub messages: u64,
    /// Host -> guest events per vCPU (each answered by one guest -> host event).
    pub events: u64,
    /// Round trips measured one at a time (messages, then events), per vCPU.
    pub latency_samples: u64,
    /// Messages in flight per vCPU in the pipelined phase.
    pub message_window: u64,
    /// Events in flight per vCPU in the pipelined phase (at most 63).
    pub event_window: u64,
    /// Capacity of each SINT's message queue.
    pub queue_capacity: usize,
    /// Wall-clock limit for the whole exchange.
    pub timeout: Duration,
    /// A fault the host injects, to prove the checks catch it (tests only; `None` normally).
    pub fault: Option<Fault>,
}

/// A fault the demo's host side can inject into its own traffic, so tests can show that the
/// sequence checks are not vacuous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every vCPU's device counts message `seq` as sent without posting it (a loss).
    SkipMessage(u64),
    /// Every vCPU's device posts message `seq` twice (a duplicate).
    DuplicateMessage(u64),
    /// Every vCPU's guest enters its message ISR again, with the frame an interrupt delivery
    /// pushes, inside its n-th message interrupt (from 1), after reading the slot's type and
    /// before its payload:
    /// the interrupt the lab's emulator once made up there (docs/kernel-mode-lab.md). The
    /// guest must ignore it; nothing may be lost or duplicated.
    PhantomInterrupt(u64),
}

impl Default for DemoConfig {
    /// 2 vCPUs x (15 000 messages + 15 000 events) each way: 120 000 exchanged.
    fn default() -> Self {
        Self {
            mode: ModeRequest::Auto,
            profile: Profile::Tlfs,
            vcpus: 2,
            messages: 15_000,
            events: 15_000,
            latency_samples: 2_000,
            message_window: 16,
            event_window: 32,
            queue_capacity: 64,
            timeout: Duration::from_secs(90),
            fault: None,
        }
    }
}

/// Median and 99th percentile of a set of round trips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Round trips measured.
    pub samples: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl Latency {
    /// The percentiles of `samples`.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(i).copied().unwrap_or_default()
        };
        Self {
            samples: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Counts per direction and kind (all vCPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Distinct host -> guest messages the guests received.
    pub host_to_guest_messages: u64,
    /// Distinct guest -> host messages the host received.
    pub guest_to_host_messages: u64,
    /// Host -> guest events the guests consumed.
    pub host_to_guest_events: u64,
    /// Guest -> host events the host received.
    pub guest_to_host_events: u64,
}

impl Traffic {
    /// Everything exchanged.
    pub fn total(&self) -> u64 {
        self.host_to_guest_messages
            + self.guest_to_host_messages
            + self.host_to_guest_events
            + self.guest_to_host_events
    }
}

/// Message duplicates by the side that saw them (all vCPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Duplicates {
    /// Messages the guest's ISR found a second time (each is answered, so the host sees its
    /// reply twice too).
    pub guest_seen: u64,
    /// Replies the host got twice beyond those: the guest made the HvPostMessage call once
    /// (or retried a call the host had taken).
    pub host_seen: u64,
    /// Replies the host got beyond the guest's HvPostMessage calls that returned SUCCESS.
    pub host_beyond_guest_successes: u64,
}

/// The result of a demo run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoReport {
    /// The mode that ran.
    pub mode: SynicMode,
    /// The profile.
    pub profile: Profile,
    /// vCPUs.
    pub vcpus: u32,
    /// What was exchanged.
    pub traffic: Traffic,
    /// What the run should have exchanged.
    pub expected: Traffic,
    /// The whole exchange, latency phase included.
    pub elapsed: Duration,
    /// Messages and events exchanged in the pipelined phase, and how long it took.
    pub pipelined: (u64, u64, Duration),
    /// Message round trips (post -> ISR -> HvPostMessage back), one in flight.
    pub message_latency: Latency,
    /// Event round trips (flag -> ISR -> HvSignalEvent back), one in flight.
    pub event_latency: Latency,
    /// Sequence numbers never seen (both sides, all four streams).
    pub lost: u64,
    /// Sequence numbers seen twice, and event flags set again before being consumed.
    pub duplicated: u64,
    /// Sequence numbers not in order.
    pub out_of_order: u64,
    /// Anything else wrong: malformed messages, hypercalls refused, a device error.
    pub failures: Vec<String>,
    /// When anything went wrong (or the guest logged an anomaly): per vCPU, which side saw
    /// the duplicates, the guest's anomaly log, and where the slot, the queues and the
    /// counters stood at the end.
    pub diagnosis: Vec<String>,
    /// Every record of the guests' anomaly logs, by vCPU.
    pub anomalies: Vec<(u32, GuestAnomaly)>,
    /// Duplicates by who saw them first: the guest's ISR found a message again
    /// (guest-seen), or the host got a reply the guest sent once (host-seen).
    pub duplicates: Duplicates,
    /// Hypercalls the guest retried after INSUFFICIENT_BUFFERS.
    pub retries: u64,
    /// Interrupts that found nothing (coalesced or early), harmless.
    pub spurious: u64,
    /// Interrupts delivered while one of the guest's ISRs ran with IF clear: made up by the
    /// platform (the lab's emulator does it), ignored by the guest, harmless since then.
    pub phantom_interrupts: u64,
    /// Exits to userspace (all vCPUs).
    pub exits: u64,
    /// EOMs the guests wrote (userspace mode: each is an exit).
    pub eoms: u64,
    /// Acks the routing layer passed to the model (resamplefd signals; 0 since kernel mode's
    /// acks became EOM exits, counted in [`eoms`](Self::eoms) in both modes).
    pub acks: u64,
}

impl DemoReport {
    /// Nothing lost, duplicated or reordered, no failure, everything exchanged.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.failures.is_empty()
            && self.traffic == self.expected
    }

    /// The line the demo's verdict is read from.
    pub fn verification(&self) -> String {
        format!(
            "verification: lost {}, duplicated {}, out of order {}",
            self.lost, self.duplicated, self.out_of_order
        )
    }
}

fn mode_name(m: SynicMode) -> &'static str {
    match m {
        SynicMode::Kernel => "kernel (KVM in-kernel SynIC)",
        SynicMode::Userspace => "userspace (SynIC MSRs exit to the VMM)",
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.traffic;
        writeln!(
            f,
            "mode {}, profile {:?}, {} vCPUs",
            mode_name(self.mode),
            self.profile,
            self.vcpus
        )?;
        writeln!(
            f,
            "host -> guest messages  {:>8}  (post_message, guest ISR, EOM)",
            t.host_to_guest_messages
        )?;
        writeln!(
            f,
            "guest -> host messages  {:>8}  (HvPostMessage)",
            t.guest_to_host_messages
        )?;
        writeln!(
            f,
            "host -> guest events    {:>8}  (event flags)",
            t.host_to_guest_events
        )?;
        writeln!(
            f,
            "guest -> host events    {:>8}  (HvSignalEvent)",
            t.guest_to_host_events
        )?;
        let acks = match self.acks {
            0 => format!("{} EOM exits", self.eoms),
            n => format!("{} EOM exits, {n} resamplefd acks", self.eoms),
        };
        writeln!(
            f,
            "total                   {:>8}  in {:.2} s ({} exits to userspace, {acks})",
            t.total(),
            self.elapsed.as_secs_f64(),
            self.exits,
        )?;
        let (msgs, evts, d) = self.pipelined;
        let secs = d.as_secs_f64();
        if secs > 0.0 {
            writeln!(
                f,
                "throughput (pipelined): {:.0} messages/s, {:.0} events/s, {:.0} total/s",
                msgs as f64 / secs,
                evts as f64 / secs,
                (msgs + evts) as f64 / secs
            )?;
        } else {
            writeln!(f, "throughput (pipelined): not reached")?;
        }
        for (what, l) in [
            ("message", &self.message_latency),
            ("event", &self.event_latency),
        ] {
            writeln!(
                f,
                "{what} round trip (one in flight, {} samples): p50 {:.1} us, p99 {:.1} us",
                l.samples,
                us(l.p50),
                us(l.p99)
            )?;
        }
        if self.phantom_interrupts != 0 {
            writeln!(
                f,
                "platform: {} interrupts delivered inside a running ISR with IF clear (made up \
                 by the platform; the guest ignored them)",
                self.phantom_interrupts
            )?;
        }
        for failure in &self.failures {
            writeln!(f, "FAILURE: {failure}")?;
        }
        for line in &self.diagnosis {
            writeln!(f, "DIAGNOSIS: {line}")?;
        }
        write!(f, "{}", self.verification())
    }
}

/// Where a vCPU's exchange stood when it did not finish: the model's counters of both SINTs,
/// the message slot's header and the event-flag word in guest memory, the guest's interrupt
/// counts and its retry/spurious counts.
fn stall_state(
    memory: &crate::memory::GuestMemory,
    synic: &crate::synic_vm::VmSynic,
    vcpu: u32,
    guest: &[u64; stat::COUNT],
) -> String {
    let base = layout::FREE_PAGES + u64::from(vcpu) * VCPU_AREA;
    let read = |gpa: u64| {
        memory
            .read_obj::<u64>(GuestAddress(gpa))
            .unwrap_or(u64::MAX)
    };
    let slot = read(base + guest::SIMP_OFFSET + 256 * u64::from(MSG_SINT));
    let flags = read(base + guest::SIEFP_OFFSET + 256 * u64::from(EVT_SINT));
    let irqs = |vector: u8| read(layout::percpu(vcpu) + 8 * u64::from(vector));
    let counters = synic.partition().counters(synic::VpIndex(vcpu)).ok();
    let sint = |n: u8| counters.map(|c| c.sints[usize::from(n)]);
    let gs = |s: u64| guest[(s / 8) as usize];
    format!(
        "vCPU {vcpu} at the end: message SINT {:?}; slot type {:#x} flags {:#x}; event SINT \
         {:?}; flag word {flags:#x}; guest interrupts: {} message, {} event; guest retries {}, \
         spurious {}, nested {}, no status {}; HvPostMessage calls {} (ok {}), HvSignalEvent \
         calls {} (ok {})",
        sint(MSG_SINT),
        slot & 0xFFFF_FFFF,
        (slot >> 40) & 0xFF,
        sint(EVT_SINT),
        irqs(guest::MSG_VECTOR),
        irqs(guest::EVT_VECTOR),
        gs(stat::RETRIES),
        gs(stat::SPURIOUS),
        gs(stat::NESTED),
        gs(stat::NO_STATUS),
        gs(stat::MSG_CALLS),
        gs(stat::MSG_OK),
        gs(stat::EVT_CALLS),
        gs(stat::EVT_OK),
    )
}

/// Runs the demo. `progress(line)` is called about every `interval` while it runs.
pub fn run(
    config: &DemoConfig,
    interval: Duration,
    mut progress: impl FnMut(String),
) -> Result<DemoReport> {
    let c = *config;
    if c.event_window == 0 || c.event_window >= guest::EVENT_FLAGS || c.message_window == 0 {
        return Err(Error::Config(
            "windows must be at least 1, the event window below 64".into(),
        ));
    }
    let phantom_at = match c.fault {
        Some(Fault::PhantomInterrupt(n)) => Some(n),
        _ => None,
    };
    let program = guest::program(c.messages, phantom_at)?;
    let mut vm = SynicVmBuilder::new()
        .vcpus(c.vcpus)
        .mode(c.mode)
        .profile(c.profile)
        .queue_capacity(c.queue_capacity)
        .routed_sints(&[
            synic::SintIndex::ALL[usize::from(MSG_SINT)],
            synic::SintIndex::ALL[usize::from(EVT_SINT)],
        ])
        .testdev(false)
        .build()?;
    let synic = Arc::clone(vm.synic());
    let (report_port, reports) = ReportPort::new(c.vcpus);
    let control = Arc::clone(vm.vm().control());
    vm.vm_mut()
        .add_device(ReportPort::BASE, ReportPort::LEN, Arc::new(report_port))?;
    vm.vm_mut()
        .add_device(ports::DEBUG_EXIT, 1, Arc::new(DebugExit::new(control)))?;
    let anomalies = Arc::new(Anomalies::new(c.vcpus));
    vm.vm_mut().add_device(
        guest::ANOMALY_PORT,
        4,
        Arc::new(AnomalyPort(Arc::clone(&anomalies))),
    )?;
    let mut channels = Vec::new();
    for v in 0..c.vcpus {
        let (m, mrx) = HostMessageConnection::new(4096);
        let (e, erx) = HostEventConnection::new(EVT_CONNECTION + v, 4096);
        synic.add_message_connection(MSG_CONNECTION + v, m)?;
        synic.add_event_connection(EVT_CONNECTION + v, e)?;
        channels.push((mrx, erx));
    }
    program.load(vm.vm_mut())?;
    let mode = vm.mode();
    let running = vm.start()?;

    // Every vCPU reports once its SynIC is on.
    let mut ready = 0;
    let ready_by = Instant::now() + Duration::from_secs(10);
    while ready < c.vcpus {
        let left = ready_by.saturating_duration_since(Instant::now());
        match reports.recv_timeout(left) {
            Ok(r) if r.tag == tag::USER => ready += 1,
            Ok(r) if r.tag == tag::EXCEPTION || r.tag == tag::GP => {
                return Err(Error::Config(format!(
                    "guest vCPU {} faulted during setup (report {:#x}: {:#x})",
                    r.vcpu, r.tag, r.value
                )))
            }
            Ok(_) => {}
            Err(_) => {
                return Err(Error::Config(
                    "guest did not enable its SynIC within 10 s".into(),
                ))
            }
        }
    }

    let epoch = Instant::now();
    let deadline = epoch + c.timeout;
    let counter = Arc::new(Progress::default());
    let plan = Plan {
        messages: c.messages,
        events: c.events,
        latency_samples: c.latency_samples,
        message_window: c.message_window,
        event_window: c.event_window,
        fault: c.fault,
    };
    let mut threads = Vec::new();
    for (v, (mrx, erx)) in (0u32..).zip(channels) {
        let dev = Device {
            partition: Arc::clone(synic.partition()),
            vp: synic::VpIndex(v),
            plan,
            messages: mrx,
            events: erx,
            epoch,
            deadline,
            progress: Arc::clone(&counter),
            anomalies: Arc::clone(&anomalies),
        };
        let t = std::thread::Builder::new()
            .name(format!("demo-device{v}"))
            .spawn(move || dev.run())
            .map_err(|source| Error::Thread {
                what: "demo device",
                source,
            })?;
        threads.push(t);
    }
    let expected_total = 4 * u64::from(c.vcpus) * c.messages.max(c.events);
    let mut next_progress = epoch + interval;
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if running.control().stopping() {
            // A guest fault stopped the VM: nothing more will arrive.
            counter
                .abort
                .store(true, std::sync::atomic::Ordering::Relaxed);
            break;
        }
        if Instant::now() >= next_progress {
            next_progress += interval;
            progress(format!(
                "{:5.1} s: {} of {} exchanged",
                epoch.elapsed().as_secs_f64(),
                counter.exchanged.load(std::sync::atomic::Ordering::Relaxed),
                expected_total
            ));
        }
    }
    let stopped_early = running.control().reason();
    let results: Vec<DeviceResult> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    let elapsed = epoch.elapsed();
    let memory = Arc::clone(synic.memory());
    let outcome = running.stop();
    let exits = outcome
        .stats
        .iter()
        .map(|s| s.io + s.msr + s.hypercalls + s.hyperv + s.mmio)
        .sum();

    let mut report = DemoReport {
        mode,
        profile: c.profile,
        vcpus: c.vcpus,
        traffic: Traffic::default(),
        expected: Traffic {
            host_to_guest_messages: c.messages * u64::from(c.vcpus),
            guest_to_host_messages: c.messages * u64::from(c.vcpus),
            host_to_guest_events: c.events * u64::from(c.vcpus),
            guest_to_host_events: c.events * u64::from(c.vcpus),
        },
        elapsed,
        pipelined: (0, 0, Duration::ZERO),
        message_latency: Latency::default(),
        event_latency: Latency::default(),
        lost: 0,
        duplicated: 0,
        out_of_order: 0,
        failures: Vec::new(),
        diagnosis: Vec::new(),
        anomalies: Vec::new(),
        duplicates: Duplicates::default(),
        retries: 0,
        spurious: 0,
        phantom_interrupts: 0,
        exits,
        eoms: 0,
        acks: 0,
    };
    if let Some(reason) = stopped_early {
        report
            .failures
            .push(format!("the VM stopped during the exchange: {reason:?}"));
    }
    let mut message_latency = Vec::new();
    let mut event_latency = Vec::new();
    let mut window: Option<(Instant, Instant)> = None;
    for (v, d) in (0u32..).zip(&results) {
        let g = guest_counters(&memory, v);
        let gs = |s: u64| g[(s / 8) as usize];
        let t = &mut report.traffic;
        t.host_to_guest_messages += gs(stat::MSG_RECEIVED);
        t.guest_to_host_messages += d.replies;
        t.host_to_guest_events += gs(stat::EVT_RECEIVED);
        t.guest_to_host_events += d.event_replies;
        let guest_replies = (gs(stat::MSG_RECEIVED) + gs(stat::MSG_DUPLICATED))
            .saturating_sub(gs(stat::REPLY_FAILED));
        let guest_event_replies = gs(stat::EVT_RECEIVED).saturating_sub(gs(stat::EVT_REPLY_FAILED));
        report.lost += d.messages_sent.saturating_sub(gs(stat::MSG_RECEIVED))
            + guest_replies.saturating_sub(d.replies + d.reply_duplicated + d.reply_bad)
            + d.events_sent.saturating_sub(gs(stat::EVT_RECEIVED))
            + guest_event_replies.saturating_sub(d.event_replies);
        report.duplicated += gs(stat::MSG_DUPLICATED) + d.reply_duplicated + d.events_coalesced;
        report.out_of_order += gs(stat::MSG_OUT_OF_ORDER)
            + gs(stat::EVT_OUT_OF_ORDER)
            + d.reply_out_of_order
            + d.event_reply_out_of_order;
        for (what, n) in [
            (
                "malformed host messages seen by the guest",
                gs(stat::MSG_BAD),
            ),
            ("HvPostMessage replies refused", gs(stat::REPLY_FAILED)),
            ("HvSignalEvent replies refused", gs(stat::EVT_REPLY_FAILED)),
            ("malformed guest replies seen by the host", d.reply_bad),
        ] {
            if n != 0 {
                report.failures.push(format!("vCPU {v}: {n} {what}"));
            }
        }
        if let Some(e) = &d.error {
            report.failures.push(format!("vCPU {v}: {e}"));
        }
        let records = guest_anomalies(&memory, v, gs(stat::ANOMALIES));
        let guest_seen = gs(stat::MSG_DUPLICATED);
        let host_seen = d.reply_duplicated.saturating_sub(guest_seen);
        let beyond = d.replies_in.saturating_sub(gs(stat::MSG_OK));
        report.duplicates.guest_seen += guest_seen;
        report.duplicates.host_seen += host_seen;
        report.duplicates.host_beyond_guest_successes += beyond;
        let troubled = d.error.is_some()
            || d.reply_duplicated != 0
            || d.reply_bad != 0
            || beyond != 0
            || gs(stat::ANOMALIES) != 0
            || gs(stat::MSG_DUPLICATED) != 0
            || gs(stat::REPLY_FAILED) != 0
            || gs(stat::EVT_REPLY_FAILED) != 0;
        if troubled {
            let dup_seqs: Vec<String> = records
                .iter()
                .filter(|r| r.kind == guest::anomaly::DUPLICATE)
                .map(|r| r.seq.to_string())
                .collect();
            let host_dups: Vec<String> = d
                .duplicate_replies
                .iter()
                .map(|(seq, at)| format!("{seq} (after {at} replies)"))
                .collect();
            report.diagnosis.push(format!(
                "vCPU {v}: duplicated messages: guest-seen {guest_seen} [{}], host-seen \
                 {host_seen}; the host got {} replies ({} distinct, duplicates [{}]) for {} \
                 HvPostMessage calls the guest saw succeed ({} made, {} refused, {} with no \
                 status written); {} anomaly signals",
                dup_seqs.join(", "),
                d.replies_in,
                d.replies,
                host_dups.join(", "),
                gs(stat::MSG_OK),
                gs(stat::MSG_CALLS),
                gs(stat::REPLY_FAILED),
                gs(stat::NO_STATUS),
                anomalies.signals(v),
            ));
            for r in &records {
                report
                    .diagnosis
                    .push(format!("vCPU {v}: guest anomaly: {r}"));
            }
            report.diagnosis.push(stall_state(&memory, &synic, v, &g));
        }
        report.anomalies.extend(records.into_iter().map(|r| (v, r)));
        report.retries += gs(stat::RETRIES);
        report.phantom_interrupts += gs(stat::NESTED);
        report.spurious += gs(stat::SPURIOUS);
        if let Ok(counters) = synic.partition().counters(synic::VpIndex(v)) {
            report.eoms += counters.eoms;
            report.acks += counters.total().acks;
        }
        message_latency.extend_from_slice(&d.message_latency);
        event_latency.extend_from_slice(&d.event_latency);
        if let Some((s, e)) = d.pipelined {
            window = Some(match window {
                None => (s, e),
                Some((ws, we)) => (ws.min(s), we.max(e)),
            });
        }
    }
    if let Some(first) = anomalies.first() {
        report.diagnosis.push(format!("first anomaly: {first}"));
    }
    let lat_m = c.latency_samples.min(c.messages) * u64::from(c.vcpus);
    let lat_e = c.latency_samples.min(c.events) * u64::from(c.vcpus);
    report.pipelined = (
        2 * (report.expected.host_to_guest_messages - lat_m),
        2 * (report.expected.host_to_guest_events - lat_e),
        window.map_or(Duration::ZERO, |(s, e)| e - s),
    );
    report.message_latency = Latency::of(message_latency);
    report.event_latency = Latency::of(event_latency);
    Ok(report)
}
