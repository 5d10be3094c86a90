//! Delivery costs: post to a free slot, post behind a busy slot, signal a new and an already
//! set event flag — plus the floor an irqfd-backed raise adds (an eventfd write).
//!
//! Guest memory is mmap'd with a dirty bitmap, as a VMM doing live migration would have it.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use synic::{
    HvMessage, MessageType, Mode, Partition, PartitionConfig, Posted, RaiseSint, SintIndex,
    SystemReferenceClock, Vp, VpIndex,
};
use synic_msr::{index, Origin, Profile};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Mem = Arc<GuestMemoryMmap<AtomicBitmap>>;

const SIMP: u64 = 0x5000;
const SIEFP: u64 = 0x6000;

/// A raise that only counts (the model's own cost).
#[derive(Default)]
struct CountRaise(AtomicU64);

impl RaiseSint for CountRaise {
    fn raise(&self, _: VpIndex, _: SintIndex, _: u8, _: bool) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A raise that writes an eventfd, as an irqfd-backed route does.
struct EventFdRaise(EventFd);

impl RaiseSint for EventFdRaise {
    fn raise(&self, _: VpIndex, _: SintIndex, _: u8, _: bool) {
        let _ = self.0.write(1);
    }
}

fn setup(raise: Arc<dyn RaiseSint>, capacity: usize) -> (Arc<Partition<Mem>>, Vp<Mem>, Mem) {
    let mem: Mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
    let config =
        PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 1).with_queue_capacity(capacity);
    let clock = Arc::new(SystemReferenceClock::new());
    let (partition, mut vps) = Partition::new(config, mem.clone(), raise, clock).unwrap();
    let mut vp = vps.pop().unwrap();
    enable(&mut vp);
    (partition, vp, mem)
}

fn enable(vp: &mut Vp<Mem>) {
    for (msr, value) in [
        (index::SINT0, 0x40),
        (index::SINT0 + 1, 0x41),
        (index::SIMP, SIMP | 1),
        (index::SIEFP, SIEFP | 1),
        (index::SCONTROL, 1),
    ] {
        vp.wrmsr(msr, value, Origin::Guest).unwrap();
    }
}

fn message() -> HvMessage {
    HvMessage::new(MessageType(1), 7, &[0x5A; 64]).unwrap()
}

fn free_slot(mem: &Mem) {
    mem.store(0u32, GuestAddress(SIMP), Ordering::Release)
        .unwrap();
}

fn post_free_slot(c: &mut BenchmarkGroup<'_, WallTime>, name: &str, raise: Arc<dyn RaiseSint>) {
    let (partition, _vp, mem) = setup(raise, 64);
    let m = message();
    c.bench_function(name, |b| {
        b.iter(|| {
            let r = partition.post_message(VpIndex(0), SintIndex::ALL[0], black_box(m));
            debug_assert_eq!(r, Ok(Posted::Delivered));
            // The guest frees the slot again (one 4-byte store).
            free_slot(&mem);
        })
    });
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("synic");
    g.throughput(Throughput::Elements(1));
    let c = &mut g;

    post_free_slot(c, "post/free_slot", Arc::new(CountRaise::default()));
    post_free_slot(
        c,
        "post/free_slot+eventfd_raise",
        Arc::new(EventFdRaise(EventFd::new(EFD_NONBLOCK).unwrap())),
    );

    // Behind a busy slot: every post queues (slot busy, MessagePending already set). Batches
    // of `BATCH` posts are timed; the queue is emptied between batches, untimed.
    const BATCH: usize = 4096;
    let (partition, mut vp, _mem) = setup(Arc::new(CountRaise::default()), BATCH);
    let m = message();
    c.bench_function("post/busy_slot", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(BATCH as u64 - 1);
                partition.post_message(VpIndex(0), 0u32, m).unwrap();
                let start = Instant::now();
                for _ in 0..n {
                    let r = partition.post_message(VpIndex(0), 0u32, black_box(m));
                    debug_assert_eq!(r, Ok(Posted::Queued));
                }
                total += start.elapsed();
                done += n;
                vp.reset();
                enable(&mut vp);
            }
            total
        })
    });

    // New flags: each signal turns a flag from 0 to 1 (and raises); the page is cleared
    // between sweeps of all 16 x 2048 flags, untimed.
    let (partition, _vp, mem) = setup(Arc::new(CountRaise::default()), 64);
    c.bench_function("signal/new_flag", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let n = (iters - done).min(2048);
                let start = Instant::now();
                for flag in 0..n as u32 {
                    black_box(partition.signal_event(VpIndex(0), 0u32, flag).unwrap());
                }
                total += start.elapsed();
                done += n;
                mem.write_slice(&[0u8; 256], GuestAddress(SIEFP)).unwrap();
            }
            total
        })
    });

    partition.signal_event(VpIndex(0), 1u32, 5).unwrap();
    c.bench_function("signal/already_set", |b| {
        b.iter(|| {
            black_box(
                partition
                    .signal_event(VpIndex(0), 1u32, black_box(5))
                    .unwrap(),
            )
        })
    });

    // The floor under an irqfd-backed raise: one eventfd write.
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    c.bench_function("floor/eventfd_write", |b| {
        b.iter(|| efd.write(black_box(1)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = delivery;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(delivery);
