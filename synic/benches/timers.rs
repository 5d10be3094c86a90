//! Synthetic timer costs: one expiry delivered by the timer thread's poll (message and direct
//! mode), an expiry that waited for a busy slot and is delivered by the guest's EOM, a poll
//! with nothing due, and how many expiries one VP's four timers can take per second — next to
//! the floors in the same run: a plain post into a free slot and an eventfd write.
//!
//! The clock is the real one (`SystemReferenceClock`, as a VMM runs it). A lazy periodic
//! timer with a period of one tick (100 ns) is due at every poll and reports one expiry per
//! poll, so each iteration is exactly one expiry.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use synic::{
    HvMessage, MessageType, Mode, Partition, PartitionConfig, RaiseSint, SintIndex,
    SystemReferenceClock, Vp, VpIndex,
};
use synic_msr::{index, Origin, Profile, StimerConfig};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Mem = Arc<GuestMemoryMmap<AtomicBitmap>>;

const SIMP: u64 = 0x5000;

/// Counts raises (the model's own cost).
#[derive(Default)]
struct CountRaise(AtomicU64);

impl RaiseSint for CountRaise {
    fn raise(&self, _: VpIndex, _: SintIndex, _: u8, _: bool) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn raise_vector(&self, _: VpIndex, _: u8) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes an eventfd per raise, as an irqfd-backed route does.
struct EventFdRaise(EventFd);

impl RaiseSint for EventFdRaise {
    fn raise(&self, _: VpIndex, _: SintIndex, _: u8, _: bool) {
        let _ = self.0.write(1);
    }
}

fn setup(raise: Arc<dyn RaiseSint>) -> (Arc<Partition<Mem>>, Vp<Mem>, Mem) {
    let mem: Mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
    let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 1);
    let clock = Arc::new(SystemReferenceClock::new());
    let (partition, mut vps) = Partition::new(config, mem.clone(), raise, clock).unwrap();
    let mut vp = vps.pop().unwrap();
    for sint in 0..4 {
        vp.wrmsr(index::SINT0 + sint, 0x40 + u64::from(sint), Origin::Guest)
            .unwrap();
    }
    vp.wrmsr(index::SIMP, SIMP | 1, Origin::Guest).unwrap();
    vp.wrmsr(index::SCONTROL, 1, Origin::Guest).unwrap();
    (partition, vp, mem)
}

/// Timer `t`: lazy, periodic, one tick, `mode_bits` (message mode to SINT t, or direct).
fn start(vp: &mut Vp<Mem>, t: u32, config: u64) {
    vp.wrmsr(index::STIMER0_COUNT + 2 * t, 1, Origin::Guest)
        .unwrap();
    vp.wrmsr(index::STIMER0_CONFIG + 2 * t, config, Origin::Guest)
        .unwrap();
}

fn lazy_message(sint: u8) -> u64 {
    StimerConfig::new(true, true, true, false, sint).0
}

/// The guest frees slot `sint` (one 4-byte store).
fn free_slot(mem: &Mem, sint: u64) {
    mem.store(0u32, GuestAddress(SIMP + 256 * sint), Ordering::Release)
        .unwrap();
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("stimer");
    g.throughput(Throughput::Elements(1));

    for (name, raise) in [
        (
            "expiry/message",
            Arc::new(CountRaise::default()) as Arc<dyn RaiseSint>,
        ),
        (
            "expiry/message+eventfd_raise",
            Arc::new(EventFdRaise(EventFd::new(EFD_NONBLOCK).unwrap())),
        ),
    ] {
        let (partition, mut vp, mem) = setup(raise);
        start(&mut vp, 0, lazy_message(1));
        g.bench_function(name, |b| {
            b.iter(|| {
                let poll = partition.poll_timers();
                debug_assert_eq!(poll.signalled, 1);
                free_slot(&mem, 1);
                black_box(poll)
            })
        });
    }

    let (partition, mut vp, _mem) = setup(Arc::new(CountRaise::default()));
    start(
        &mut vp,
        0,
        StimerConfig::new_direct(true, true, 0x50).0 | StimerConfig::LAZY,
    );
    g.bench_function("expiry/direct", |b| {
        b.iter(|| black_box(partition.poll_timers()))
    });

    // The slot is busy when the expiry comes due; the guest frees it and writes EOM, whose
    // handling delivers the expiry. Includes the EOM write's own path (every SINT retried).
    let (partition, mut vp, mem) = setup(Arc::new(CountRaise::default()));
    start(&mut vp, 0, lazy_message(1));
    g.bench_function("expiry/after_busy_slot_via_eom", |b| {
        b.iter(|| {
            // The previous expiry is still in the slot: this poll finds it busy.
            black_box(partition.poll_timers());
            free_slot(&mem, 1);
            vp.wrmsr(index::EOM, 0, Origin::Guest).unwrap();
        })
    });

    // Nothing due: the idle cost of waking the timer thread.
    let (partition, mut vp, _mem) = setup(Arc::new(CountRaise::default()));
    vp.wrmsr(index::STIMER0_COUNT, 10_000_000, Origin::Guest)
        .unwrap();
    vp.wrmsr(index::STIMER0_CONFIG, lazy_message(1), Origin::Guest)
        .unwrap();
    g.bench_function("poll/nothing_due", |b| {
        b.iter(|| black_box(partition.poll_timers()))
    });

    // Throughput of one VP: four timers, each on its own SINT, all due at every poll.
    let (partition, mut vp, mem) = setup(Arc::new(CountRaise::default()));
    for t in 0..4 {
        start(&mut vp, t, lazy_message(t as u8));
    }
    g.throughput(Throughput::Elements(4));
    g.bench_function("vp/four_timers_per_poll", |b| {
        b.iter(|| {
            let poll = partition.poll_timers();
            debug_assert_eq!(poll.signalled, 4);
            for s in 0..4 {
                free_slot(&mem, s);
            }
            black_box(poll)
        })
    });
    g.throughput(Throughput::Elements(1));

    // Floors in the same run.
    let (partition, _vp, mem) = setup(Arc::new(CountRaise::default()));
    let m = HvMessage::new(MessageType(1), 7, &[0x5A; 24]).unwrap();
    g.bench_function("floor/post_free_slot", |b| {
        b.iter(|| {
            partition
                .post_message(VpIndex(0), 1u32, black_box(m))
                .unwrap();
            free_slot(&mem, 1);
        })
    });
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    g.bench_function("floor/eventfd_write", |b| {
        b.iter(|| efd.write(black_box(1)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = timers;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(timers);
