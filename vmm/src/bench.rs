//! `synic-vmm bench`: round trips between the host and a real guest, measured in one run.
//!
//! One vCPU; every round trip is driven from the exit handler that ends the previous one
//! (the vCPU thread), so no cross-thread wake-up is in any of them:
//!
//! | kind | one round trip |
//! |---|---|
//! | floor | irqfd -> MSI route -> guest ISR (EOI) -> port-I/O exit -> next irqfd |
//! | message | `post_message` -> slot -> SINT route -> ISR reads the slot, clears the type (EOM if MessagePending) -> port-I/O exit -> next post |
//! | event | `signal_event` -> flag -> SINT route -> ISR takes the flags (`xchg`) -> port-I/O exit -> next signal |
//! | message + HvPostMessage | `post_message` -> ISR reads, frees the slot -> HvPostMessage exit -> the connection posts the next |
//!
//! The kinds run interleaved in rounds (drift hits them alike), after a warm-up. The ratio to
//! the floor is what the SynIC adds on top of the cheapest interrupt-and-exit a VMM can do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use iced_x86::code_asm::*;
use synic::hypercall::{HvStatus, MessageConnection, PostMessage};
use synic::{HvMessage, MessageType, SintIndex, VpIndex};
use synic_msr::Profile;
use synic_routing::{MsiRoute, Route};

use crate::demo::Latency;
use crate::devices::{DebugExit, ReportPort};
use crate::error::{Error, Result};
use crate::guest::synic::{apic_eoi, call_hypercall_page, count_irq, release_slot};
use crate::guest::{layout, tag, GuestBuilder, GuestProgram, SynicSetup};
use crate::io::PortDevice;
use crate::layout::ports;
use crate::synic_vm::{SynicVmBuilder, VmSynic};
use synic_kvm::{ModeRequest, SynicMode};

/// The port the bench ISRs write to end a round trip.
pub const BENCH_PORT: u16 = 0x3200;
const FLOOR_VECTOR: u8 = 0x60;
const MSG_SINT: u8 = 2;
const MSG_VECTOR: u8 = 0x50;
const EVT_SINT: u8 = 3;
const EVT_VECTOR: u8 = 0x51;
const HC_SINT: u8 = 4;
const HC_VECTOR: u8 = 0x52;
const CONNECTION: u32 = 0x42;
const INPUT: u64 = layout::FREE_PAGES + 0x2000;

/// What one kind of round trip does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// irqfd -> MSI -> ISR -> port exit: no SynIC.
    Floor,
    /// post_message -> ISR slot read/free -> port exit.
    Message,
    /// signal_event -> ISR flag take -> port exit.
    Event,
    /// post_message -> ISR -> HvPostMessage exit.
    MessageHypercall,
}

impl Kind {
    /// The vector of the guest ISR that ends this kind's round trip.
    fn vector(self) -> u8 {
        match self {
            Kind::Floor => FLOOR_VECTOR,
            Kind::Message => MSG_VECTOR,
            Kind::Event => EVT_VECTOR,
            Kind::MessageHypercall => HC_VECTOR,
        }
    }

    /// All kinds, floor first.
    pub const ALL: [Kind; 4] = [
        Kind::Floor,
        Kind::Message,
        Kind::Event,
        Kind::MessageHypercall,
    ];

    /// The table's row label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Floor => "raw floor: irqfd -> MSI -> ISR -> port exit",
            Kind::Message => "SynIC message: post -> ISR slot/EOM -> exit",
            Kind::Event => "SynIC event: flag -> ISR xchg -> exit",
            Kind::MessageHypercall => "SynIC message + HvPostMessage reply",
        }
    }
}

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// SynIC mode.
    pub mode: ModeRequest,
    /// Profile.
    pub profile: Profile,
    /// Round trips per kind per round.
    pub iterations: u64,
    /// Rounds (each runs every kind once).
    pub rounds: u32,
    /// Unmeasured round trips per kind before the first round.
    pub warmup: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            mode: ModeRequest::Auto,
            profile: Profile::Tlfs,
            iterations: 5_000,
            rounds: 3,
            warmup: 500,
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    /// The kind.
    pub kind: Kind,
    /// Median and p99 of one round trip.
    pub latency: Latency,
    /// Round trips per second (all measured ones over the time they took).
    pub ops_per_sec: f64,
    /// Median over the floor's median.
    pub ratio: f64,
    /// Interrupts the guest's ISR for this kind counted in the whole run (warm-up and
    /// measured): one per round trip, so a round trip that ended without the guest, or an
    /// interrupt lost or doubled, shows here.
    pub guest_interrupts: u64,
}

/// The benchmark's result.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// The mode measured.
    pub mode: SynicMode,
    /// One row per kind, floor first.
    pub rows: Vec<Row>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mode: {:?}; one vCPU; medians over all rounds",
            self.mode
        )?;
        writeln!(
            f,
            "{:<46} {:>10} {:>10} {:>10} {:>9}",
            "round trip", "median", "p99", "ops/s", "vs floor"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<46} {:>7.1} us {:>7.1} us {:>10.0} {:>8.2}x",
                r.kind.label(),
                r.latency.p50.as_secs_f64() * 1e6,
                r.latency.p99.as_secs_f64() * 1e6,
                r.ops_per_sec,
                r.ratio
            )?;
        }
        Ok(())
    }
}

/// The same workload measured in both modes (`synic-vmm bench --mode both`): each mode's
/// table, then kernel mode's medians over userspace mode's, row by row.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeComparison {
    /// Userspace mode.
    pub userspace: BenchReport,
    /// Kernel mode.
    pub kernel: BenchReport,
}

impl ModeComparison {
    /// Kernel-mode median over userspace-mode median, per kind (floor first).
    pub fn ratios(&self) -> Vec<(Kind, f64)> {
        self.userspace
            .rows
            .iter()
            .filter_map(|u| {
                let k = self.kernel.rows.iter().find(|k| k.kind == u.kind)?;
                let user = u.latency.p50.as_secs_f64().max(1e-12);
                Some((u.kind, k.latency.p50.as_secs_f64() / user))
            })
            .collect()
    }
}

impl std::fmt::Display for ModeComparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.userspace)?;
        writeln!(f, "{}", self.kernel)?;
        writeln!(
            f,
            "kernel vs userspace mode, same workload, same run (median ratio; < 1 = kernel faster)"
        )?;
        writeln!(
            f,
            "{:<46} {:>10} {:>10} {:>9}",
            "round trip", "userspace", "kernel", "k / u"
        )?;
        for (kind, ratio) in self.ratios() {
            let median = |r: &BenchReport| {
                r.rows
                    .iter()
                    .find(|row| row.kind == kind)
                    .map_or(0.0, |row| row.latency.p50.as_secs_f64() * 1e6)
            };
            writeln!(
                f,
                "{:<46} {:>7.1} us {:>7.1} us {:>8.2}x",
                kind.label(),
                median(&self.userspace),
                median(&self.kernel),
                ratio
            )?;
        }
        Ok(())
    }
}

/// Runs the benchmark in userspace mode, then in kernel mode, with `config`'s counts.
pub fn compare_modes(config: &BenchConfig) -> Result<ModeComparison> {
    let userspace = run(&BenchConfig {
        mode: ModeRequest::Userspace,
        ..*config
    })?;
    let kernel = run(&BenchConfig {
        mode: ModeRequest::Kernel,
        ..*config
    })?;
    Ok(ModeComparison { userspace, kernel })
}

/// Fires the next round trip of the kind being measured (on the vCPU thread).
type Fire = Box<dyn Fn(u64) -> bool + Send + Sync>;

struct Run {
    kind: Kind,
    remaining: u64,
    started: Instant,
    samples: Vec<Duration>,
    done: Sender<(Kind, Vec<Duration>)>,
}

/// The round-trip engine: the port device and the hypercall connection both end a round trip
/// here, which starts the next one.
struct Engine {
    run: Mutex<Option<Run>>,
    fire: Mutex<Vec<(Kind, Fire)>>,
    seq: std::sync::atomic::AtomicU64,
    failed: AtomicBool,
}

impl Engine {
    fn fire(&self, kind: Kind) -> bool {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let fire = self.fire.lock().unwrap_or_else(PoisonError::into_inner);
        let ok = fire
            .iter()
            .find(|(k, _)| *k == kind)
            .is_some_and(|(_, f)| f(seq));
        if !ok {
            self.failed.store(true, Ordering::Relaxed);
        }
        ok
    }

    /// A round trip of `kind` ended now.
    fn ended(&self, kind: Kind) {
        let now = Instant::now();
        let next = {
            let mut run = self.run.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(r) = run.as_mut().filter(|r| r.kind == kind) else {
                return;
            };
            r.samples.push(now - r.started);
            r.remaining -= 1;
            if r.remaining == 0 {
                let r = run.take().map(|r| (r.kind, r.samples, r.done));
                if let Some((k, samples, done)) = r {
                    let _ = done.send((k, samples));
                }
                false
            } else {
                r.started = Instant::now();
                true
            }
        };
        if next {
            self.fire(kind);
        }
    }

    /// Runs `n` round trips of `kind`; their durations.
    fn measure(&self, kind: Kind, n: u64) -> Result<Vec<Duration>> {
        let (tx, rx): (_, Receiver<(Kind, Vec<Duration>)>) = crossbeam_channel::bounded(1);
        *self.run.lock().unwrap_or_else(PoisonError::into_inner) = Some(Run {
            kind,
            remaining: n,
            started: Instant::now(),
            samples: Vec::with_capacity(n as usize),
            done: tx,
        });
        if !self.fire(kind) {
            return Err(Error::Config(format!(
                "{kind:?}: the first round trip failed"
            )));
        }
        // Generous: a lost interrupt fails the bench instead of hanging it.
        let limit = Duration::from_secs(30) + Duration::from_micros(500) * n as u32;
        match rx.recv_timeout(limit) {
            Ok((_, samples)) if !self.failed.load(Ordering::Relaxed) => Ok(samples),
            Ok(_) => Err(Error::Config(format!("{kind:?}: a post or signal failed"))),
            Err(_) => Err(Error::Config(format!(
                "{kind:?}: round trips stopped (a lost interrupt?) within {limit:?}"
            ))),
        }
    }
}

struct BenchPort(Arc<Engine>);

impl PortDevice for BenchPort {
    fn read(&self, _vcpu: u32, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, _vcpu: u32, _port: u16, data: &[u8]) {
        let kind = match data.first() {
            Some(0) => Kind::Floor,
            Some(1) => Kind::Message,
            Some(2) => Kind::Event,
            _ => return,
        };
        self.0.ended(kind);
    }
}

struct Echo(Arc<Engine>);

impl MessageConnection for Echo {
    fn post(&self, _caller: VpIndex, _message: &PostMessage) -> HvStatus {
        self.0.ended(Kind::MessageHypercall);
        HvStatus::Success
    }
}

fn e(err: IcedError) -> Error {
    Error::Asm(err)
}

/// `out BENCH_PORT, kind` (clobbers RAX, RDX).
fn end_round_trip(a: &mut CodeAssembler, kind: u8) -> Result<()> {
    a.mov(dx, u32::from(BENCH_PORT)).map_err(e)?;
    a.mov(al, u32::from(kind)).map_err(e)?;
    a.out(dx, al).map_err(e)
}

fn isr(
    g: &mut GuestBuilder,
    vector: u8,
    body: impl FnOnce(&mut CodeAssembler) -> Result<()>,
) -> Result<()> {
    let a = g.asm();
    let mut label = a.create_label();
    a.set_label(&mut label).map_err(e)?;
    for r in [rax, rbx, rcx, rdx, r8, r11] {
        a.push(r).map_err(e)?;
    }
    count_irq(a, vector)?;
    body(a)?;
    for r in [r11, r8, rdx, rcx, rbx, rax] {
        a.pop(r).map_err(e)?;
    }
    a.iretq().map_err(e)?;
    g.gate(vector, label)
}

fn program(setup: &SynicSetup) -> Result<GuestProgram> {
    let mut g = GuestBuilder::new()?;
    g.lapic_enable()?;
    g.enable_hypercall_page(layout::HYPERCALL_PAGE)?;
    g.synic_enable(setup)?;
    // The HvPostMessage input never changes: write it once.
    let a = g.asm();
    a.mov(rbx, INPUT).map_err(e)?;
    a.mov(dword_ptr(rbx), CONNECTION).map_err(e)?;
    a.mov(dword_ptr(rbx + 4), 0u32).map_err(e)?;
    a.mov(dword_ptr(rbx + 8), 1u32).map_err(e)?;
    a.mov(dword_ptr(rbx + 12), 8u32).map_err(e)?;
    g.report(tag::USER, 0)?;
    let mut sleep = g.asm().create_label();
    g.asm().set_label(&mut sleep).map_err(e)?;
    g.asm().sti().map_err(e)?;
    g.asm().hlt().map_err(e)?;
    g.asm().jmp(sleep).map_err(e)?;
    isr(&mut g, FLOOR_VECTOR, |a| {
        apic_eoi(a)?;
        end_round_trip(a, 0)
    })?;
    let msg_slot = setup.slot(MSG_SINT);
    isr(&mut g, MSG_VECTOR, |a| {
        a.mov(rbx, msg_slot).map_err(e)?;
        a.mov(r8, qword_ptr(rbx + 16)).map_err(e)?; // read the payload
        release_slot(a, rbx)?;
        apic_eoi(a)?;
        end_round_trip(a, 1)
    })?;
    let flags = setup.flags(EVT_SINT);
    isr(&mut g, EVT_VECTOR, |a| {
        a.mov(rbx, flags).map_err(e)?;
        a.xor(eax, eax).map_err(e)?;
        a.xchg(qword_ptr(rbx), rax).map_err(e)?;
        apic_eoi(a)?;
        end_round_trip(a, 2)
    })?;
    let hc_slot = setup.slot(HC_SINT);
    isr(&mut g, HC_VECTOR, |a| {
        a.mov(rbx, hc_slot).map_err(e)?;
        a.mov(r8, qword_ptr(rbx + 16)).map_err(e)?;
        a.mov(rax, INPUT).map_err(e)?;
        a.mov(qword_ptr(rax + 16), r8).map_err(e)?;
        release_slot(a, rbx)?;
        apic_eoi(a)?;
        a.mov(ecx, 0x5Cu32).map_err(e)?; // HvPostMessage
        a.mov(rdx, INPUT).map_err(e)?;
        a.xor(r8d, r8d).map_err(e)?;
        call_hypercall_page(a, layout::HYPERCALL_PAGE)
    })?;
    g.build()
}

fn message(seq: u64) -> Option<HvMessage> {
    HvMessage::new(MessageType(1), 0, &seq.to_le_bytes()).ok()
}

fn fire_table(
    synic: &Arc<VmSynic>,
    floor: synic_routing::Irqfd<synic_kvm::Routing>,
) -> Vec<(Kind, Fire)> {
    let p = Arc::clone(synic.partition());
    let post = move |sint: u8| -> Fire {
        let p = Arc::clone(&p);
        Box::new(move |seq| {
            message(seq).is_some_and(|m| p.post_message(VpIndex(0), u32::from(sint), m).is_ok())
        })
    };
    let p = Arc::clone(synic.partition());
    vec![
        (
            Kind::Floor,
            Box::new(move |_| floor.trigger().is_ok()) as Fire,
        ),
        (Kind::Message, post(MSG_SINT)),
        (
            Kind::Event,
            Box::new(move |_| p.signal_event(VpIndex(0), u32::from(EVT_SINT), 0).is_ok()),
        ),
        (Kind::MessageHypercall, post(HC_SINT)),
    ]
}

/// Runs the benchmark.
pub fn run(config: &BenchConfig) -> Result<BenchReport> {
    let sints: Vec<SintIndex> = [MSG_SINT, EVT_SINT, HC_SINT]
        .iter()
        .map(|&s| SintIndex::ALL[usize::from(s)])
        .collect();
    let mut vm = SynicVmBuilder::new()
        .mode(config.mode)
        .profile(config.profile)
        .routed_sints(&sints)
        .testdev(false)
        .build()?;
    let synic = Arc::clone(vm.synic());
    let setup = SynicSetup {
        simp: layout::FREE_PAGES,
        siefp: layout::FREE_PAGES + 0x1000,
        sints: vec![
            (MSG_SINT, MSG_VECTOR),
            (EVT_SINT, EVT_VECTOR),
            (HC_SINT, HC_VECTOR),
        ],
    };
    let engine = Arc::new(Engine {
        run: Mutex::new(None),
        fire: Mutex::new(Vec::new()),
        seq: std::sync::atomic::AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });
    // The floor's route lives on the VM's one routing table, like any device's.
    let table = synic.routing_table();
    let gsi = table.add(Route::Msi(MsiRoute::fixed(0, FLOOR_VECTOR)))?;
    let floor = table.irqfd(gsi, false)?;
    *engine.fire.lock().unwrap_or_else(PoisonError::into_inner) = fire_table(&synic, floor);
    synic.add_message_connection(CONNECTION, Arc::new(Echo(Arc::clone(&engine))))?;
    let (report_port, reports) = ReportPort::new(1);
    let control = Arc::clone(vm.vm().control());
    vm.vm_mut()
        .add_device(ReportPort::BASE, ReportPort::LEN, Arc::new(report_port))?;
    vm.vm_mut()
        .add_device(ports::DEBUG_EXIT, 1, Arc::new(DebugExit::new(control)))?;
    vm.vm_mut()
        .add_device(BENCH_PORT, 1, Arc::new(BenchPort(Arc::clone(&engine))))?;
    program(&setup)?.load(vm.vm_mut())?;
    let mode = vm.mode();
    let running = vm.start()?;
    match reports.recv_timeout(Duration::from_secs(10)) {
        Ok(r) if r.tag == tag::USER => {}
        other => {
            return Err(Error::Config(format!(
                "the bench guest did not get ready: {other:?}"
            )))
        }
    }
    for kind in Kind::ALL {
        engine.measure(kind, config.warmup.max(1))?;
    }
    let mut samples: Vec<(Kind, Vec<Duration>, Duration)> = Kind::ALL
        .iter()
        .map(|&k| (k, Vec::new(), Duration::ZERO))
        .collect();
    for _ in 0..config.rounds {
        for (kind, all, total) in samples.iter_mut() {
            let s = engine.measure(*kind, config.iterations.max(1))?;
            *total += s.iter().sum::<Duration>();
            all.extend(s);
        }
    }
    drop(running.stop());
    // Keep the engine (and with it the floor irqfd) alive until the vCPU stopped.
    engine
        .fire
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    let rows: Vec<(Kind, Latency, f64)> = samples
        .into_iter()
        .map(|(k, s, total)| {
            let n = s.len() as f64;
            (k, Latency::of(s), n / total.as_secs_f64().max(1e-9))
        })
        .collect();
    // The vCPU stopped: its ISRs' counters (the toolkit's per-vector counters in vCPU 0's
    // data page) are final.
    let counted = |kind: Kind| -> Result<u64> {
        use vm_memory::Bytes;
        let at = layout::percpu(0) + layout::IRQ_COUNTERS + 8 * u64::from(kind.vector());
        synic
            .memory()
            .read_obj(vm_memory::GuestAddress(at))
            .map_err(|source| Error::GuestMemory {
                what: "bench interrupt counter",
                gpa: at,
                source,
            })
    };
    let floor = rows[0].1.p50.as_secs_f64().max(1e-12);
    Ok(BenchReport {
        mode,
        rows: rows
            .into_iter()
            .map(|(kind, latency, ops_per_sec)| {
                Ok(Row {
                    kind,
                    latency,
                    ops_per_sec,
                    ratio: latency.p50.as_secs_f64() / floor,
                    guest_interrupts: counted(kind)?,
                })
            })
            .collect::<Result<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mode: SynicMode, medians_us: [u64; 4]) -> BenchReport {
        BenchReport {
            mode,
            rows: Kind::ALL
                .iter()
                .zip(medians_us)
                .map(|(&kind, us)| Row {
                    kind,
                    latency: Latency {
                        samples: 1,
                        p50: Duration::from_micros(us),
                        p99: Duration::from_micros(us),
                    },
                    ops_per_sec: 1e6 / us as f64,
                    ratio: us as f64 / medians_us[0] as f64,
                    guest_interrupts: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn mode_comparison_divides_kernel_medians_by_userspace_ones() {
        let c = ModeComparison {
            userspace: report(SynicMode::Userspace, [40, 44, 42, 52]),
            kernel: report(SynicMode::Kernel, [20, 33, 21, 13]),
        };
        let ratios = c.ratios();
        assert_eq!(
            ratios.iter().map(|r| r.0).collect::<Vec<_>>(),
            Kind::ALL.to_vec()
        );
        let want = [0.5, 0.75, 0.5, 0.25];
        for ((_, got), want) in ratios.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
        let text = c.to_string();
        assert!(text.contains("mode: Userspace") && text.contains("mode: Kernel"));
        assert!(text.contains("0.25x"), "{text}");
    }
}
