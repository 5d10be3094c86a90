//! Multi-thread stress: posting threads against one thread playing the guest.
//!
//! `SYNIC_STRESS_MESSAGES` (default 100 000) messages are posted by `SYNIC_STRESS_THREADS`
//! (default 4, at least 4) device threads to four SINTs of one VP, retrying on backpressure
//! with the message the model hands back. The guest thread takes interrupts, runs the TLFS ISR
//! with real atomics on guest memory (read, clear the type, fence, EOM if MessagePending), and
//! every `SYNIC_STRESS_MOVE_EVERY` messages moves its message page to another page, every other
//! time by disabling it first (an overlay: the slots go along, the old address shows its own
//! RAM again) and checks that the RAM at both addresses is what it was, so nothing wrote a page
//! while it was not in use. Kernel mode runs the same with acks arriving from a separate "resamplefd" thread.
//!
//! Checked: every message received exactly once (no loss, no duplicate), each producer's
//! messages to a SINT in order, counters consistent. A lost interrupt or message fails the run
//! by the guest thread's own count of idle turns in which the producers kept trying or were
//! done ([`STALL_TURNS`]), not by a wall-clock limit that a loaded machine could reach. Run with
//! `--nocapture` for the summary.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use synic::{
    HvMessage, MessageType, Mode, Partition, PartitionConfig, RaiseSint, SintIndex, SynicExit,
    SystemReferenceClock, Vp, VpIndex,
};
use synic_msr::{index, Origin, Profile};

use common::{guest_slot_type, guest_take_slot, new_memory, Space};

const SINTS: u32 = 4;
const PAGES: [u64; 2] = [0x1_0000, 0x2_0000];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Interrupts go to the guest thread as a bitmask of raised SINTs plus an unpark.
#[derive(Default)]
struct GuestApic {
    raised: AtomicU32,
    guest: OnceLock<Thread>,
}

impl RaiseSint for GuestApic {
    fn raise(&self, _vp: VpIndex, sint: SintIndex, _vector: u8, _auto_eoi: bool) {
        self.raised.fetch_or(1 << sint.get(), Ordering::SeqCst);
        if let Some(t) = self.guest.get() {
            t.unpark();
        }
    }
}

/// Payload: producer, sequence number per (producer, SINT), global id.
fn message(producer: u32, seq: u64, id: u64) -> HvMessage {
    let mut payload = [0u8; 20];
    payload[..4].copy_from_slice(&producer.to_le_bytes());
    payload[4..12].copy_from_slice(&seq.to_le_bytes());
    payload[12..].copy_from_slice(&id.to_le_bytes());
    HvMessage::new(MessageType(1), u64::from(producer), &payload).unwrap()
}

fn decode(bytes: &[u8; 256]) -> (u32, u64, u64) {
    let p = &bytes[16..];
    (
        u32::from_le_bytes(p[..4].try_into().unwrap()),
        u64::from_le_bytes(p[4..12].try_into().unwrap()),
        u64::from_le_bytes(p[12..20].try_into().unwrap()),
    )
}

#[derive(Debug, Default)]
struct Tally {
    received: u64,
    duplicated: u64,
    reordered: u64,
    foreign: u64,
    stale_writes: u64,
    eoms: u64,
    moves: u64,
}

/// What the other threads have done, for the guest thread's stall watchdog.
#[derive(Debug, Default)]
struct Progress {
    /// Post attempts by the producers (accepted or refused as full).
    attempts: AtomicU64,
    /// Producers that posted all their messages.
    producers_done: AtomicU32,
    /// Kernel mode: EOMs the guest sent to the resampler, and those it has carried out.
    acks_sent: AtomicU64,
    acks_done: AtomicU64,
    /// The guest gave up (a stall): producers stop retrying.
    abandoned: AtomicBool,
}

/// Idle turns of the guest (no interrupt for 10 ms) while the others could have made it
/// progress — producers kept trying, or all were done, with no ack in flight — after which
/// an interrupt or a message is declared lost. Counted in the guest's own turns, not wall
/// time: a guest thread that is not scheduled does not count, nor does a turn in which every
/// producer was descheduled.
const STALL_TURNS: u32 = 500;

struct Guest {
    mode: Mode,
    vp: Vp<Space>,
    mem: Space,
    apic: Arc<GuestApic>,
    acks: Option<mpsc::Sender<()>>,
    progress: Arc<Progress>,
    page: usize,
    seen: Vec<u64>,
    /// Next expected sequence number per (producer, SINT).
    next_seq: Vec<u64>,
    tally: Tally,
}

impl Guest {
    fn record(&mut self, bytes: &[u8; 256], sint: u32, producers: u32) {
        let (producer, seq, id) = decode(bytes);
        if u32::from_le_bytes(bytes[..4].try_into().unwrap()) != 1 || producer >= producers {
            self.tally.foreign += 1;
            return;
        }
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        if self.seen.get(word).is_none_or(|w| w & bit != 0) {
            self.tally.duplicated += 1;
            return;
        }
        self.seen[word] |= bit;
        let expected = &mut self.next_seq[(producer * SINTS + sint) as usize];
        if seq != *expected {
            self.tally.reordered += 1;
        }
        *expected = seq + 1;
        self.tally.received += 1;
    }

    fn eom(&mut self) {
        self.tally.eoms += 1;
        match self.mode {
            Mode::Userspace => {
                self.vp.wrmsr(index::EOM, 0, Origin::Guest).unwrap();
            }
            Mode::Kernel => {
                self.progress.acks_sent.fetch_add(1, Ordering::SeqCst);
                self.acks.as_ref().unwrap().send(()).unwrap()
            }
        }
    }

    /// Whether an idle turn counts towards a stall: the others could have made progress.
    /// `last_attempts` is the producers' attempt count at the previous idle turn.
    fn stalled_turn(&self, last_attempts: &mut u64, producers: u32) -> bool {
        let p = &self.progress;
        let attempts = p.attempts.load(Ordering::SeqCst);
        let tried = attempts != *last_attempts;
        *last_attempts = attempts;
        let acks_idle = p.acks_done.load(Ordering::SeqCst) == p.acks_sent.load(Ordering::SeqCst);
        let all_done = p.producers_done.load(Ordering::SeqCst) == producers;
        acks_idle && (tried || all_done)
    }

    /// Runs the ISR for one SINT of the page in use.
    fn isr(&mut self, page: u64, sint: u32, producers: u32) {
        let slot = page + 256 * u64::from(sint);
        if let Some((bytes, pending)) = guest_take_slot(&self.mem, slot) {
            self.record(&bytes, sint, producers);
            if pending {
                self.eom();
            }
        }
    }

    fn set_simp(&mut self, value: u64) {
        match self.mode {
            Mode::Userspace => {
                self.vp.wrmsr(index::SIMP, value, Origin::Guest).unwrap();
            }
            Mode::Kernel => self
                .vp
                .apply_synic_exit(SynicExit {
                    msr: index::SIMP,
                    control: 1,
                    evt_page: 0,
                    msg_page: value,
                })
                .unwrap(),
        }
    }

    /// Moves the message page: every other time straight to the other page, otherwise by
    /// disabling it (posts meanwhile queue or are refused as full), checking the RAM is back,
    /// and enabling it at the other page. It is an overlay page (TLFS "GPA Overlay Pages"): its
    /// slots go with it, messages and MessagePending included, and the old address shows the RAM
    /// it hid again — zero here, and still zero when the page comes back (nothing may write a
    /// page not in use).
    fn move_page(&mut self) {
        let old = PAGES[self.page];
        self.page ^= 1;
        let new = PAGES[self.page];
        if !self.page_is_zero(new) {
            self.tally.stale_writes += 1;
        }
        if self.tally.moves % 2 == 1 {
            self.set_simp(old);
            if !self.page_is_zero(old) {
                self.tally.stale_writes += 1;
            }
        }
        self.set_simp(new | 1);
        self.tally.moves += 1;
        if !self.page_is_zero(old) {
            self.tally.stale_writes += 1;
        }
    }

    fn page_is_zero(&self, page: u64) -> bool {
        let mut bytes = [0u8; 4096];
        vm_memory::Bytes::read_slice(&*self.mem, &mut bytes, vm_memory::GuestAddress(page))
            .unwrap();
        bytes.iter().all(|&b| b == 0)
    }
}

fn run(mode: Mode, total: u64) {
    let producers = env("SYNIC_STRESS_THREADS", 4).max(4) as u32;
    let move_every = env("SYNIC_STRESS_MOVE_EVERY", 5_000).max(1);
    let capacity = env("SYNIC_STRESS_CAPACITY", 16) as usize;
    let mem = new_memory();
    let apic = Arc::new(GuestApic::default());
    let config = PartitionConfig::new(mode, Profile::Kvm, 1).with_queue_capacity(capacity);
    let (partition, mut vps) = Partition::new(
        config,
        mem.clone(),
        apic.clone(),
        Arc::new(SystemReferenceClock::new()),
    )
    .unwrap();
    let vp = vps.pop().unwrap();

    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let resampler = (mode == Mode::Kernel).then(|| {
        let partition = Arc::clone(&partition);
        let progress = Arc::clone(&progress);
        thread::spawn(move || {
            // A guest EOM acks every SINT's resamplefd (KVM).
            while ack_rx.recv().is_ok() {
                for sint in 0..16u32 {
                    partition.ack(VpIndex(0), sint).unwrap();
                }
                progress.acks_done.fetch_add(1, Ordering::SeqCst);
            }
        })
    });
    let acks = (mode == Mode::Kernel).then_some(ack_tx);

    let full_retries = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let guest = {
        let apic = Arc::clone(&apic);
        let mem = mem.clone();
        let done = Arc::clone(&done);
        let progress = Arc::clone(&progress);
        thread::spawn(move || {
            let mut g = Guest {
                mode,
                vp,
                mem,
                apic,
                acks,
                progress,
                page: 0,
                seen: vec![0; total.div_ceil(64) as usize],
                next_seq: vec![0; (producers * SINTS) as usize],
                tally: Tally::default(),
            };
            match mode {
                Mode::Userspace => {
                    // Linux's order: SINTs unmasked before the page is enabled, since an
                    // interrupt raised while a SINT is masked is lost (TLFS).
                    for sint in 0..SINTS {
                        let v = 0x40 + u64::from(sint);
                        g.vp.wrmsr(index::SINT0 + sint, v, Origin::Guest).unwrap();
                    }
                    for (msr, value) in [(index::SIMP, PAGES[0] | 1), (index::SCONTROL, 1)] {
                        g.vp.wrmsr(msr, value, Origin::Guest).unwrap();
                    }
                }
                Mode::Kernel => g.set_simp(PAGES[0] | 1),
            }
            let mut last_received = 0;
            let (mut stalls, mut last_attempts) = (0u32, 0u64);
            while g.tally.received < total {
                let raised = g.apic.raised.swap(0, Ordering::SeqCst);
                if raised == 0 {
                    thread::park_timeout(Duration::from_millis(10));
                    if g.stalled_turn(&mut last_attempts, producers) {
                        stalls += 1;
                        if stalls >= STALL_TURNS {
                            g.progress.abandoned.store(true, Ordering::SeqCst);
                        }
                        assert!(
                            stalls < STALL_TURNS,
                            "{STALL_TURNS} idle turns, others trying (a lost interrupt?): {:?}, {:?}",
                            g.tally,
                            g.progress
                        );
                    }
                    continue;
                }
                stalls = 0;
                for sint in 0..SINTS {
                    if raised & (1 << sint) != 0 {
                        g.isr(PAGES[g.page], sint, producers);
                    }
                }
                if g.tally.received != last_received {
                    if g.tally.received / move_every != last_received / move_every {
                        g.move_page();
                    }
                    last_received = g.tally.received;
                }
            }
            done.store(true, Ordering::SeqCst);
            g.tally
        })
    };
    apic.guest.set(guest.thread().clone()).unwrap();
    guest.thread().unpark();

    let per = total / u64::from(producers);
    let posters: Vec<_> = (0..producers)
        .map(|p| {
            let partition = Arc::clone(&partition);
            let full_retries = Arc::clone(&full_retries);
            let progress = Arc::clone(&progress);
            let count = if p == producers - 1 {
                total - per * u64::from(producers - 1)
            } else {
                per
            };
            thread::spawn(move || {
                let mut seq = vec![0u64; SINTS as usize];
                for k in 0..count {
                    let sint = ((u64::from(p) + k) % u64::from(SINTS)) as u32;
                    let id = per * u64::from(p) + k;
                    let mut m = message(p, seq[sint as usize], id);
                    seq[sint as usize] += 1;
                    loop {
                        progress.attempts.fetch_add(1, Ordering::SeqCst);
                        match partition.post_message(VpIndex(0), sint, m) {
                            Ok(_) => break,
                            Err(e) => {
                                assert!(matches!(e.error, synic::Error::QueueFull { .. }), "{e}");
                                full_retries.fetch_add(1, Ordering::Relaxed);
                                if progress.abandoned.load(Ordering::SeqCst) {
                                    return;
                                }
                                m = e.message;
                                thread::yield_now();
                            }
                        }
                    }
                }
                progress.producers_done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    let tally = guest.join().unwrap();
    let elapsed = start.elapsed();
    if let Some(r) = resampler {
        // The guest thread owned the sender; it is gone, so the resampler ends.
        r.join().unwrap();
    }
    let counters = partition.counters(VpIndex(0)).unwrap();
    let t = counters.total();
    let lost = total - tally.received;
    eprintln!(
        "stress {mode:?}: {total} messages, {producers} producers, capacity {capacity}: \
         lost {lost}, duplicated {}, reordered {}, foreign {}, stale writes {}; \
         {:.2} s, {:.0} messages/s; queue-full retries {}, MessagePending sets {}, EOMs {}, \
         acks {} ({} spurious), page moves {}",
        tally.duplicated,
        tally.reordered,
        tally.foreign,
        tally.stale_writes,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        full_retries.load(Ordering::Relaxed),
        t.pending_sets,
        tally.eoms,
        t.acks,
        t.spurious_acks,
        tally.moves,
    );
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(
        (
            lost,
            tally.duplicated,
            tally.reordered,
            tally.foreign,
            tally.stale_writes
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!((t.posted, t.delivered, t.queued), (total, total, 0));
    assert_eq!(t.rejected_full, full_retries.load(Ordering::Relaxed));
}

#[test]
fn stress_userspace_posts_against_an_eom_guest() {
    run(Mode::Userspace, env("SYNIC_STRESS_MESSAGES", 100_000));
}

#[test]
fn stress_kernel_posts_against_resamplefd_acks() {
    run(Mode::Kernel, env("SYNIC_STRESS_MESSAGES", 100_000) / 4);
}

/// Busy-waits `n` short steps: sweeps the two threads' relative timing from round to round.
fn spin(n: u64) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// The TLFS handshake race, aimed at directly: the guest frees its slot (clear the type, then
/// read MessagePending) while a device posts the next message (see the slot busy, set
/// MessagePending, re-read the type). Whatever the interleaving, the second message must end
/// up in the slot or behind a MessagePending the guest saw — never queued behind a free slot.
#[test]
fn slot_release_racing_a_post_never_strands_a_message() {
    use std::sync::Barrier;

    let rounds = env("SYNIC_RACE_ROUNDS", 20_000);
    let mem = new_memory();
    let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 1);
    let (partition, mut vps) = Partition::new(
        config,
        mem.clone(),
        Arc::new(GuestApic::default()),
        Arc::new(SystemReferenceClock::new()),
    )
    .unwrap();
    let mut vp = vps.pop().unwrap();
    for (msr, value) in [
        (index::SINT0, 0x40),
        (index::SIMP, PAGES[0] | 1),
        (index::SCONTROL, 1),
    ] {
        vp.wrmsr(msr, value, Origin::Guest).unwrap();
    }
    let barrier = Arc::new(Barrier::new(2));
    let guest = {
        let barrier = Arc::clone(&barrier);
        let mem = mem.clone();
        thread::spawn(move || {
            let mut g = Guest {
                mode: Mode::Userspace,
                vp,
                mem,
                apic: Arc::new(GuestApic::default()),
                acks: None,
                progress: Arc::new(Progress::default()),
                page: 0,
                seen: vec![0; (2 * rounds).div_ceil(64) as usize],
                next_seq: vec![0; SINTS as usize],
                tally: Tally::default(),
            };
            for r in 0..rounds {
                barrier.wait(); // message A is in the slot
                spin(r * 7 % 256);
                g.isr(PAGES[0], 0, 1); // free it, racing the post of B
                barrier.wait(); // both done: the main thread checks
                barrier.wait(); // consume B
                g.isr(PAGES[0], 0, 1);
                barrier.wait();
            }
            g.tally
        })
    };
    let mut stranded = 0;
    for r in 0..rounds {
        partition
            .post_message(VpIndex(0), 0u32, message(0, 2 * r, 2 * r))
            .unwrap();
        barrier.wait();
        spin(r * 13 % 256);
        partition
            .post_message(VpIndex(0), 0u32, message(0, 2 * r + 1, 2 * r + 1))
            .unwrap();
        barrier.wait();
        let queued = partition.counters(VpIndex(0)).unwrap().sints[0].queued;
        let guest_view = guest_slot_type(&mem, PAGES[0]);
        if queued > 0 && guest_view == 0 {
            stranded += 1;
            // Unstick it so the rounds stay in step.
            partition.ack(VpIndex(0), 0u32).unwrap();
        }
        barrier.wait();
        barrier.wait();
    }
    let tally = guest.join().unwrap();
    eprintln!(
        "handshake race: {rounds} rounds, stranded {stranded}, {:?}",
        tally
    );
    assert_eq!(stranded, 0);
    assert_eq!(tally.received, 2 * rounds);
    assert_eq!((tally.duplicated, tally.reordered), (0, 0));
}

/// Event flags under contention: device threads signal random flags while the guest thread
/// takes the interrupts and clears the flags with atomic swaps, and every 50 sweeps moves its
/// event-flags page to the other of two pages (every other time by disabling it first; signals
/// refused meanwhile are retried). Every 0 -> 1 transition the model reports must be one
/// interrupt and exactly one flag the guest later clears, on whichever page the flags page is
/// then (an overlay carries its flags along); every other signal must have found its flag
/// already set; the page not in use holds its own RAM (zero).
#[test]
fn concurrent_event_flags_are_each_seen_once() {
    use std::sync::atomic::AtomicU64 as Word;

    const SIEFPS: [u64; 2] = [0x3_0000, 0x3_2000];
    const SIEFP: u64 = SIEFPS[0];
    let signals = env("SYNIC_STRESS_MESSAGES", 100_000);
    let mem = new_memory();
    let apic = Arc::new(GuestApic::default());
    let counted = Arc::new(CountingApic {
        inner: Arc::clone(&apic),
        raises: AtomicU64::new(0),
    });
    let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 1);
    let (partition, mut vps) = Partition::new(
        config,
        mem.clone(),
        counted.clone(),
        Arc::new(SystemReferenceClock::new()),
    )
    .unwrap();
    let mut vp = vps.pop().unwrap();
    for sint in 0..SINTS {
        vp.wrmsr(index::SINT0 + sint, 0x40 + u64::from(sint), Origin::Guest)
            .unwrap();
    }
    for (msr, value) in [(index::SIEFP, SIEFP | 1), (index::SCONTROL, 1)] {
        vp.wrmsr(msr, value, Origin::Guest).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    // The guest: on an interrupt for a SINT, swap each of its 32 flag words to 0 and count.
    let sweep = |mem: &Space, page: u64, sint: u32| -> u64 {
        let base = page + 256 * u64::from(sint);
        (0..32u64)
            .map(|w| {
                let word = common::with_guest_word(mem, base + 8 * w, |x: &Word| {
                    x.swap(0, Ordering::SeqCst)
                });
                u64::from(word.count_ones())
            })
            .sum()
    };
    let guest = {
        let (mem, apic, done) = (mem.clone(), Arc::clone(&apic), Arc::clone(&done));
        thread::spawn(move || {
            let (mut seen, mut sweeps, mut page, mut stale) = (0u64, 0u64, 0usize, 0u64);
            while !done.load(Ordering::SeqCst) {
                let raised = apic.raised.swap(0, Ordering::SeqCst);
                if raised == 0 {
                    thread::park_timeout(Duration::from_millis(1));
                    continue;
                }
                for sint in 0..SINTS {
                    if raised & (1 << sint) != 0 {
                        seen += sweep(&mem, SIEFPS[page], sint);
                    }
                }
                sweeps += 1;
                if sweeps % 50 == 0 {
                    let (old, new) = (SIEFPS[page], SIEFPS[page ^ 1]);
                    if sweeps % 100 == 0 {
                        vp.wrmsr(index::SIEFP, old, Origin::Guest).unwrap();
                    }
                    vp.wrmsr(index::SIEFP, new | 1, Origin::Guest).unwrap();
                    page ^= 1;
                    stale += (0..SINTS).map(|s| sweep(&mem, old, s)).sum::<u64>();
                }
            }
            // Whatever is still set had its interrupt raised too.
            let left = (0..SINTS)
                .map(|s| sweep(&mem, SIEFPS[page], s))
                .sum::<u64>();
            (seen + left, sweeps / 50, stale)
        })
    };
    apic.guest.set(guest.thread().clone()).unwrap();
    let per = signals / 4;
    let signallers: Vec<_> = (0..4u64)
        .map(|p| {
            let partition = Arc::clone(&partition);
            thread::spawn(move || {
                let (mut set, mut coalesced) = (0u64, 0u64);
                let mut x = p.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..per {
                    // xorshift: flags spread over 4 SINTs x 64 flags so some collide.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (sint, flag) = ((x % u64::from(SINTS)) as u32, ((x >> 8) % 64) as u32);
                    // Refused only while the guest has its page disabled: retry.
                    let outcome = loop {
                        match partition.signal_event(VpIndex(0), sint, flag) {
                            Err(synic::Error::EventFlagsPageDisabled { .. }) => thread::yield_now(),
                            other => break other.unwrap(),
                        }
                    };
                    match outcome {
                        synic::FlagOutcome::Set => set += 1,
                        synic::FlagOutcome::AlreadySet => coalesced += 1,
                    }
                }
                (set, coalesced)
            })
        })
        .collect();
    let (mut set, mut coalesced) = (0, 0);
    for s in signallers {
        let (a, b) = s.join().unwrap();
        set += a;
        coalesced += b;
    }
    done.store(true, Ordering::SeqCst);
    guest.thread().unpark();
    let (seen, moves, stale) = guest.join().unwrap();
    let t = partition.counters(VpIndex(0)).unwrap().total();
    eprintln!(
        "event flags: {} signals, {set} set, {coalesced} coalesced, guest cleared {seen}, \
         raises {}, page moves {moves}",
        4 * per,
        counted.raises.load(Ordering::SeqCst)
    );
    assert_eq!(stale, 0, "a flag was set on a page not in use");
    assert_eq!(set + coalesced, 4 * per);
    assert_eq!((t.flags_set, t.flags_coalesced), (set, coalesced));
    assert_eq!(
        seen, set,
        "each 0 -> 1 transition is cleared by the guest exactly once"
    );
    assert_eq!(counted.raises.load(Ordering::SeqCst), set);
}

/// Counts raises, then passes them on.
struct CountingApic {
    inner: Arc<GuestApic>,
    raises: AtomicU64,
}

impl RaiseSint for CountingApic {
    fn raise(&self, vp: VpIndex, sint: SintIndex, vector: u8, auto_eoi: bool) {
        self.raises.fetch_add(1, Ordering::SeqCst);
        self.inner.raise(vp, sint, vector, auto_eoi);
    }
}
