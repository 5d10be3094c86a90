//! Host memory per VP (issue 16, "lean VPs"): at most 8 KiB per VP plus the messages actually
//! queued.
//!
//! A dedicated test binary, so that its global allocator counts only this test: every live
//! heap byte is counted, and the resident set (`/proc/self/statm`) is read alongside. The
//! partition is built with 1, 64 and 1024 VPs (userspace mode, default queue capacity); the
//! figures are printed (`cargo test -p synic --test vp_memory -- --nocapture`) and the test
//! fails above the bound: idle, with messages queued on every SINT of every VP (the bound plus
//! the queued messages and the queues' growth slack), and again after the queues drained.
//!
//! Then the hostile bounds (docs/bounds.md), with 1 and 64 VPs: every queue of every VP filled
//! to its capacity (one post more is refused) costs at most the bound plus the capacity's
//! worth of messages per SINT — a full queue's storage never grows past its capacity; and a
//! guest that fills its RAM and its overlay pages with non-zero bytes and moves its message
//! and event-flags pages around (onto each other, onto every other VP's pages, all VPs onto
//! one page) makes the host keep at most one page per overlay.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use synic::{
    HvMessage, MessageType, Mode, Partition, PartitionConfig, SintIndex, SystemReferenceClock,
    VpIndex, DEFAULT_QUEUE_CAPACITY,
};
use synic_msr::{index, Origin, Profile};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The bound of issue 16: host bytes per idle VP.
const BOUND: usize = 8 * 1024;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// `GlobalAlloc` contract; the counter is a statistic and never affects an allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (that is, by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Resident bytes of this process (`/proc/self/statm`, second field, in pages).
fn resident() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

type Mem = Arc<GuestMemoryMmap<()>>;

/// Message page of VP `n` (one page each, from 1 MiB).
fn simp(n: usize) -> u64 {
    0x10_0000 + 0x1000 * n as u64
}

struct Figures {
    heap: isize,
    rss: isize,
}

fn per_vp(before: (isize, isize), after: (isize, isize), vps: usize) -> Figures {
    Figures {
        heap: (after.0 - before.0) / vps as isize,
        rss: (after.1 - before.1) / vps as isize,
    }
}

fn message() -> HvMessage {
    HvMessage::new(MessageType(1), 0, &[0xA5; 240]).unwrap()
}

/// Builds a partition of `vps` VPs and measures it idle, loaded and drained.
fn measure(vps: usize) -> [Figures; 3] {
    let mem: Mem = Arc::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000 + 0x1000 * vps)]).unwrap(),
    );
    let clock = Arc::new(SystemReferenceClock::new());
    let raise = Arc::new(synic::testing::RecordingRaise::default());
    let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, vps as u32);
    assert_eq!(config.queue_capacity, DEFAULT_QUEUE_CAPACITY);

    let before = (live(), resident());
    let (partition, mut vp_list) = Partition::new(config, mem, raise.clone(), clock).unwrap();
    let idle = (live(), resident());

    // Every VP enables its SynIC and message page; every SINT gets `QUEUED` messages queued
    // behind one in its slot.
    const QUEUED: usize = 3;
    for (n, vp) in vp_list.iter_mut().enumerate() {
        for (msr, value) in [(index::SCONTROL, 1), (index::SIMP, simp(n) | 1)] {
            vp.wrmsr(msr, value, Origin::Guest).unwrap();
        }
    }
    for n in 0..vps {
        for sint in SintIndex::ALL {
            for _ in 0..=QUEUED {
                partition
                    .post_message(VpIndex(n as u32), sint, message())
                    .unwrap();
            }
        }
    }
    // The raise recorder grows with every delivery; its bytes are the test's, not the model's.
    drop(raise.take());
    let loaded = (live(), resident());
    let queued: u64 = (0..vps)
        .map(|n| {
            partition
                .counters(VpIndex(n as u32))
                .unwrap()
                .total()
                .queued
        })
        .sum();
    assert_eq!(queued as usize, vps * 16 * QUEUED);

    // The guest frees every slot and writes EOM until nothing is queued.
    for _ in 0..=QUEUED {
        for (n, vp) in vp_list.iter_mut().enumerate() {
            for sint in 0..16u64 {
                let slot = GuestAddress(simp(n) + 256 * sint);
                vm_memory::Bytes::write_obj(&**partition.memory(), 0u32, slot).unwrap();
            }
            vp.wrmsr(index::EOM, 0, Origin::Guest).unwrap();
        }
    }
    drop(raise.take());
    let drained = (live(), resident());
    let left: u64 = (0..vps)
        .map(|n| {
            partition
                .counters(VpIndex(n as u32))
                .unwrap()
                .total()
                .queued
        })
        .sum();
    assert_eq!(left, 0);
    drop(vp_list);
    drop(partition);
    [
        per_vp(before, idle, vps),
        per_vp(before, loaded, vps),
        per_vp(before, drained, vps),
    ]
}

/// Every SINT of every VP filled to the queue's capacity behind a busy slot; one post more
/// is refused. Heap bytes per VP then.
fn measure_full_queues(vps: usize) -> isize {
    let mem: Mem = Arc::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000 + 0x1000 * vps)]).unwrap(),
    );
    let raise = Arc::new(synic::testing::RecordingRaise::default());
    let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, vps as u32);
    let before = live();
    let (partition, mut vp_list) = Partition::new(
        config,
        mem,
        raise.clone(),
        Arc::new(SystemReferenceClock::new()),
    )
    .unwrap();
    for (n, vp) in vp_list.iter_mut().enumerate() {
        for (msr, value) in [(index::SCONTROL, 1), (index::SIMP, simp(n) | 1)] {
            vp.wrmsr(msr, value, Origin::Guest).unwrap();
        }
    }
    for n in 0..vps {
        for sint in SintIndex::ALL {
            // The slot, then the queue up to its capacity.
            for _ in 0..=DEFAULT_QUEUE_CAPACITY {
                partition
                    .post_message(VpIndex(n as u32), sint, message())
                    .unwrap();
            }
            let refused = partition
                .post_message(VpIndex(n as u32), sint, message())
                .unwrap_err();
            assert!(
                matches!(refused.error, synic::Error::QueueFull { capacity, .. } if capacity == DEFAULT_QUEUE_CAPACITY),
                "{:?}",
                refused.error
            );
        }
    }
    drop(raise.take());
    let full = live();
    let queued: u64 = (0..vps)
        .map(|n| {
            let t = partition.counters(VpIndex(n as u32)).unwrap().total();
            assert_eq!(t.rejected_full, 16);
            t.queued
        })
        .sum();
    assert_eq!(queued as usize, vps * 16 * DEFAULT_QUEUE_CAPACITY);
    drop(vp_list);
    drop(partition);
    (full - before) / vps as isize
}

/// A hostile guest's overlays: every VP's RAM and overlay pages full of non-zero bytes, its
/// message and event-flags pages moved onto each other, onto the next VP's pages, and all
/// VPs' onto one page, many times. Heap bytes per VP then (pages where they started).
fn measure_hostile_overlays(vps: usize) -> isize {
    // VP n's two pages at 1 MiB + 8 KiB n; one page shared by all after them.
    let own = |n: usize, k: u64| 0x10_0000 + 0x2000 * n as u64 + 0x1000 * k;
    let shared = own(vps, 0);
    let size = 0x10_0000 + 0x2000 * vps + 0x1000;
    let mem: Mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap());
    // The guest's RAM: no zero byte anywhere (a zero page would cost the host nothing).
    vm_memory::Bytes::write_slice(
        &*mem,
        &vec![0xA5; size - 0x10_0000],
        GuestAddress(0x10_0000),
    )
    .unwrap();
    let raise = Arc::new(synic::testing::RecordingRaise::default());
    let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, vps as u32);
    let before = live();
    let (partition, mut vp_list) = Partition::new(
        config,
        mem.clone(),
        raise.clone(),
        Arc::new(SystemReferenceClock::new()),
    )
    .unwrap();
    let set = |vp: &mut synic::Vp<Mem>, simp: u64, siefp: u64| {
        vp.wrmsr(index::SIMP, simp | 1, Origin::Guest).unwrap();
        vp.wrmsr(index::SIEFP, siefp | 1, Origin::Guest).unwrap();
    };
    for (n, vp) in vp_list.iter_mut().enumerate() {
        vp.wrmsr(index::SCONTROL, 1, Origin::Guest).unwrap();
        set(vp, own(n, 0), own(n, 1));
        // The overlays themselves get non-zero content too.
        for k in 0..2 {
            vm_memory::Bytes::write_slice(&*mem, &[0x5A; 4096], GuestAddress(own(n, k))).unwrap();
        }
    }
    for round in 0..20 {
        for (n, vp) in vp_list.iter_mut().enumerate() {
            let next = (n + 1) % vps;
            match round % 4 {
                0 => set(vp, own(n, 1), own(n, 0)),
                1 => set(vp, own(next, 0), own(next, 1)),
                2 => set(vp, shared, shared),
                _ => set(vp, own(n, 0), own(n, 1)),
            }
        }
    }
    drop(raise.take());
    let hostile = live();
    drop(vp_list);
    drop(partition);
    (hostile - before) / vps as isize
}

#[test]
fn host_bytes_per_vp_stay_under_8_kib_plus_queued_messages() {
    let message = std::mem::size_of::<HvMessage>() as isize;
    // What the queued messages themselves take per VP (16 SINTs x 3 messages), and the growth
    // slack a queue may add: it grows in steps of max(4, len / 4) messages, so a short queue
    // has room for at most 4.
    let queued = 16 * 3 * message;
    let slack = 16 * 4 * message;
    for vps in [1, 64, 1024] {
        let [idle, loaded, drained] = measure(vps);
        println!(
            "{vps:5} VPs: idle {:6} heap bytes/VP ({:6} resident); 48 messages queued {:6} \
             heap bytes/VP ({:6} resident); drained {:6} heap bytes/VP ({:6} resident)",
            idle.heap, idle.rss, loaded.heap, loaded.rss, drained.heap, drained.rss
        );
        assert!(
            idle.heap <= BOUND as isize,
            "{vps} VPs: {} bytes per idle VP, bound {BOUND}",
            idle.heap
        );
        assert!(
            loaded.heap <= BOUND as isize + queued + slack,
            "{vps} VPs: {} bytes per VP with 48 messages queued, bound {} + {queued} + {slack}",
            loaded.heap,
            BOUND
        );
        assert!(
            drained.heap <= BOUND as isize,
            "{vps} VPs: {} bytes per VP after the queues drained, bound {BOUND}",
            drained.heap
        );
    }
    // At the hostile bounds.
    let full_queues = 16 * DEFAULT_QUEUE_CAPACITY as isize * message;
    // Each of the two overlays keeps at most one page (and its chunk index) in the host.
    let overlays = 2 * (4096 + 512);
    for vps in [1, 64] {
        let full = measure_full_queues(vps);
        let hostile = measure_hostile_overlays(vps);
        println!(
            "{vps:5} VPs: every queue full ({DEFAULT_QUEUE_CAPACITY} messages) {full:7} heap \
             bytes/VP; hostile overlays {hostile:6} heap bytes/VP"
        );
        assert!(
            full <= BOUND as isize + full_queues,
            "{vps} VPs: {full} bytes per VP with every queue full, bound {BOUND} + {full_queues}"
        );
        assert!(
            hostile <= BOUND as isize + overlays,
            "{vps} VPs: {hostile} bytes per VP under hostile overlays, bound {BOUND} + {overlays}"
        );
    }
}
