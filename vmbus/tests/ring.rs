//! Ring buffers against a model: the host's writer with Linux's reader (the guest's inbound
//! ring) and Linux's writer with the host's reader (the guest's outbound ring), on rings of
//! one to three scattered data pages so packets wrap around often. Every packet arrives once,
//! in order, intact; "full" and every signal decision are what the model predicts. Then
//! hostile rings: bad indices and descriptors are errors, and no host access ever touches
//! memory outside the ring's pages.

use std::collections::VecDeque;

use proptest::prelude::*;
use synic_vmbus::ring::{
    IncomingRing, OutgoingRing, RingError, RingPages, Written, DESCRIPTOR_SIZE,
    MAX_INCOMING_PACKET, PACKET_TYPE_DATA_INBAND, PAGE_SIZE, TRAILER_SIZE,
};
use synic_vmbus::sim::GuestRing;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;

const RAM: usize = 64 * PAGE_SIZE;

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
}

/// A header page and `data` scattered, unsorted data pages.
fn ring_pfns(data: usize) -> Vec<u64> {
    let mut v = vec![40u64];
    v.extend([21u64, 13, 33].iter().take(data));
    v
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// Bytes a packet with `len` bytes of payload takes in the ring, trailer included.
fn footprint(len: usize) -> u32 {
    (DESCRIPTOR_SIZE + len.next_multiple_of(8) + TRAILER_SIZE) as u32
}

#[derive(Clone, Debug)]
enum Op {
    /// The writer writes a packet of this many payload bytes.
    Write(usize),
    /// The reader reads (and releases) up to this many packets.
    Read(usize),
    /// The guest sets its inbound ring's interrupt_mask (host-to-guest direction) or asks
    /// for this much room in its outbound ring (guest-to-host direction).
    Knob(u16),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            5 => (0usize..3000).prop_map(Op::Write),
            3 => (1usize..5).prop_map(Op::Read),
            1 => any::<u16>().prop_map(Op::Knob),
        ],
        1..150,
    )
}

/// The model of one ring: packets in flight and the bytes they take.
struct Model {
    size: u32,
    queue: VecDeque<(u64, Vec<u8>)>,
    used: u32,
    /// What the waiting writer asked for (pending_send_sz), if anything.
    pending: Option<u32>,
    wrapped: bool,
    write_at: u32,
}

impl Model {
    fn new(size: u32) -> Self {
        Self {
            size,
            queue: VecDeque::new(),
            used: 0,
            pending: None,
            wrapped: false,
            write_at: 0,
        }
    }

    fn free(&self) -> u32 {
        self.size - self.used
    }

    /// Room for a packet: more than its footprint (one byte always stays free).
    fn fits(&self, len: usize) -> bool {
        self.free() > footprint(len)
    }

    fn push(&mut self, trans: u64, p: Vec<u8>) {
        let f = footprint(p.len());
        self.wrapped |= self.write_at + f > self.size;
        self.write_at = (self.write_at + f) % self.size;
        self.used += f;
        self.queue.push_back((trans, p));
    }

    /// Releases the oldest packet; returns it and whether a waiting writer must be
    /// signalled.
    fn pop(&mut self) -> Option<(u64, Vec<u8>)> {
        let (t, p) = self.queue.pop_front()?;
        self.used -= footprint(p.len());
        Some((t, p))
    }

    fn crossed(&self, free_before: u32) -> bool {
        self.pending
            .is_some_and(|want| free_before <= want && self.free() > want)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The host writes, Linux's algorithm reads (the guest's inbound ring).
    #[test]
    fn host_to_guest_ring_matches_the_model(data in 1usize..=3, ops in ops()) {
        let mem = memory();
        let pfns = ring_pfns(data);
        let mut guest = GuestRing::init(&mem, &pfns);
        let mut host = OutgoingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
        let mut model = Model::new((data * PAGE_SIZE) as u32);
        let mut mask = false;
        let mut trans = 0u64;
        let mut delivered = 0u64;
        for op in ops {
            match op {
                Op::Write(len) => {
                    trans += 1;
                    let p = payload(len, trans as u8);
                    let was_empty = model.queue.is_empty();
                    let fits = model.fits(len);
                    let w = host.write(&mem, PACKET_TYPE_DATA_INBAND, 0, trans, &p).unwrap();
                    if fits {
                        prop_assert_eq!(w, Written::Sent { signal: was_empty && !mask });
                        model.pending = None;
                        model.push(trans, p);
                    } else {
                        prop_assert_eq!(w, Written::Full);
                        prop_assert!(host.is_waiting());
                        model.pending = Some(footprint(len));
                    }
                }
                Op::Read(n) => {
                    for _ in 0..n {
                        let free_before = model.free();
                        let Some((t, p)) = model.pop() else {
                            prop_assert!(guest.read(&mem).is_none());
                            break;
                        };
                        let got = guest.read(&mem).expect("a packet the model has");
                        prop_assert_eq!(got.descriptor.trans_id, t);
                        prop_assert_eq!(&got.payload[..p.len()], &p[..]);
                        prop_assert!(got.payload[p.len()..].iter().all(|&b| b == 0));
                        prop_assert_eq!(guest.close(&mem), model.crossed(free_before));
                        delivered += 1;
                    }
                }
                Op::Knob(k) => {
                    mask = k % 2 == 1;
                    guest.set_interrupt_mask(&mem, mask);
                }
            }
        }
        // Whatever is left is still there, in order.
        while let Some((t, p)) = model.pop() {
            let got = guest.read(&mem).expect("left in the ring");
            prop_assert_eq!(got.descriptor.trans_id, t);
            prop_assert_eq!(&got.payload[..p.len()], &p[..]);
            delivered += 1;
        }
        prop_assert!(guest.read(&mem).is_none());
        let _ = delivered;
    }

    /// Linux's algorithm writes, the host reads (the guest's outbound ring).
    #[test]
    fn guest_to_host_ring_matches_the_model(data in 1usize..=3, ops in ops()) {
        let mem = memory();
        let pfns = ring_pfns(data);
        let guest = GuestRing::init(&mem, &pfns);
        let mut host = IncomingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
        let mut model = Model::new((data * PAGE_SIZE) as u32);
        let mut trans = 0u64;
        for op in ops {
            match op {
                Op::Write(len) => {
                    trans += 1;
                    let p = payload(len, trans as u8);
                    let was_empty = model.queue.is_empty();
                    let r = guest.write(&mem, PACKET_TYPE_DATA_INBAND, trans, &p);
                    if model.fits(len) {
                        prop_assert_eq!(r, Ok(was_empty));
                        model.push(trans, p);
                    } else {
                        prop_assert_eq!(r, Err(()));
                    }
                }
                Op::Read(n) => {
                    let free_before = model.free();
                    for _ in 0..n {
                        match model.pop() {
                            Some((t, p)) => {
                                let got = host.next(&mem).unwrap().expect("a packet");
                                prop_assert_eq!(got.trans_id, t);
                                prop_assert_eq!(&got.payload[..p.len()], &p[..]);
                            }
                            None => prop_assert_eq!(host.next(&mem).unwrap(), None),
                        }
                    }
                    prop_assert_eq!(host.commit(&mem).unwrap(), model.crossed(free_before));
                    prop_assert_eq!(host.has_data(&mem).unwrap(), !model.queue.is_empty());
                }
                Op::Knob(k) => {
                    // The guest waits for this much room (0: not waiting).
                    let want = u32::from(k) % (model.size + 1);
                    mem.write_obj(want, GuestAddress((pfns[0] << 12) + 12)).unwrap();
                    model.pending = (want != 0).then_some(want);
                }
            }
        }
    }
}

#[test]
fn packets_wrap_around_the_end_of_the_data() {
    // One data page, 700-byte packets: the third starts near the end and wraps.
    let mem = memory();
    let pfns = ring_pfns(1);
    let mut guest = GuestRing::init(&mem, &pfns);
    let mut host = OutgoingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
    let mut model = Model::new(PAGE_SIZE as u32);
    for i in 0..40u64 {
        let p = payload(700 + i as usize, i as u8);
        assert!(matches!(
            host.write(&mem, PACKET_TYPE_DATA_INBAND, 0, i, &p).unwrap(),
            Written::Sent { .. }
        ));
        model.push(i, p.clone());
        let got = guest.read(&mem).unwrap();
        guest.close(&mem);
        model.pop();
        assert_eq!(&got.payload[..p.len()], &p[..], "packet {i}");
    }
    assert!(model.wrapped);
}

/// Ring header fields (offsets into the header page).
const WRITE_INDEX: u64 = 0;
const READ_INDEX: u64 = 4;

fn set(mem: &Mem, pfns: &[u64], off: u64, v: u32) {
    mem.write_obj(v, GuestAddress((pfns[0] << 12) + off))
        .unwrap();
}

#[test]
fn hostile_indices_are_errors() {
    let mem = memory();
    let pfns = ring_pfns(2);
    let size = 2 * PAGE_SIZE as u32;
    GuestRing::init(&mem, &pfns);
    for bad in [size, size + 8, u32::MAX, 4] {
        set(&mem, &pfns, READ_INDEX, bad);
        assert!(
            matches!(
                OutgoingRing::open(&mem, RingPages::new(&pfns).unwrap()),
                Err(RingError::BadIndex { .. })
            ),
            "{bad}"
        );
    }
    set(&mem, &pfns, READ_INDEX, 0);
    let mut out = OutgoingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
    set(&mem, &pfns, READ_INDEX, 12);
    assert!(matches!(
        out.write(&mem, 6, 0, 1, b"x"),
        Err(RingError::BadIndex {
            which: "read_index",
            value: 12,
            ..
        })
    ));
    set(&mem, &pfns, READ_INDEX, 0);
    let mut inc = IncomingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
    set(&mem, &pfns, WRITE_INDEX, size);
    assert!(matches!(
        inc.next(&mem),
        Err(RingError::BadIndex {
            which: "write_index",
            ..
        })
    ));
    set(&mem, &pfns, WRITE_INDEX, 16);
    assert!(matches!(
        inc.next(&mem),
        Err(RingError::Truncated { avail: 16 })
    ));
}

#[test]
fn hostile_descriptors_are_errors() {
    let mem = memory();
    let pfns = ring_pfns(1);
    let data = pfns[1] << 12;
    for (len8, offset8, what) in [
        (1u16, 2u16, "shorter than a descriptor"),
        (4, 1, "payload inside the descriptor"),
        (4, 5, "payload past the packet"),
        (200, 2, "longer than what was written"),
        (u16::MAX, 2, "longer than the ring"),
    ] {
        GuestRing::init(&mem, &pfns);
        // A 64-byte packet, then its descriptor rewritten.
        let g = GuestRing::init(&mem, &pfns);
        g.write(&mem, 6, 1, &[7; 40]).unwrap();
        mem.write_obj(offset8, GuestAddress(data + 2)).unwrap();
        mem.write_obj(len8, GuestAddress(data + 4)).unwrap();
        let mut inc = IncomingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
        assert!(
            matches!(inc.next(&mem), Err(RingError::BadDescriptor { .. })),
            "{what}"
        );
    }
}

#[test]
fn incoming_packets_are_bounded_at_max_incoming_packet() {
    // A ring with room for more than the bound: 20 data pages (80 KiB).
    let mem = memory();
    let pfns: Vec<u64> = (1..=21).collect();
    // The largest packet taken: descriptor and payload exactly MAX_INCOMING_PACKET bytes.
    let at_bound = MAX_INCOMING_PACKET - DESCRIPTOR_SIZE;
    let g = GuestRing::init(&mem, &pfns);
    assert_eq!(g.write(&mem, 6, 1, &payload(at_bound, 3)), Ok(true));
    let mut inc = IncomingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
    let p = inc.next(&mem).unwrap().expect("the packet at the bound");
    assert_eq!(p.payload, payload(at_bound, 3));
    // Eight bytes more: refused before the host copies anything.
    let g = GuestRing::init(&mem, &pfns);
    assert_eq!(g.write(&mem, 6, 2, &payload(at_bound + 8, 4)), Ok(true));
    let mut inc = IncomingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
    assert!(matches!(
        inc.next(&mem),
        Err(RingError::BadDescriptor { len8, .. }) if usize::from(len8) * 8 == MAX_INCOMING_PACKET + 8
    ));
}

#[test]
fn ring_pages_outside_ram_are_errors() {
    let mem = memory();
    let outside = (RAM / PAGE_SIZE) as u64 + 5;
    assert!(matches!(
        IncomingRing::open(&mem, RingPages::new(&[outside, 1]).unwrap()),
        Err(RingError::PageNotInRam { .. })
    ));
    let pfns = [40, outside];
    GuestRing::init(&mem, &[40, 41]);
    let mut out = OutgoingRing::open(&mem, RingPages::new(&pfns).unwrap()).unwrap();
    assert!(matches!(
        out.write(&mem, 6, 0, 1, b"data"),
        Err(RingError::PageNotInRam { .. })
    ));
    assert!(RingPages::new(&[1]).is_err(), "a ring needs a data page");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the guest puts in the ring's header and data, the host's reads, commits and
    /// writes return (an error at worst) and never change a byte outside the ring's pages.
    #[test]
    fn hostile_rings_never_touch_memory_outside_their_pages(
        data in 1usize..=2,
        header in prop::collection::vec(any::<u32>(), 17),
        garbage in prop::collection::vec(any::<u8>(), 0..512),
        at in 0usize..PAGE_SIZE,
        writes in prop::collection::vec(0usize..5000, 0..6),
    ) {
        let mem = memory();
        let pfns = ring_pfns(data);
        // Everything outside the ring is a known pattern.
        let pattern: Vec<u8> = (0..RAM).map(|i| (i * 7 + 3) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(0)).unwrap();
        for (i, w) in header.iter().enumerate() {
            mem.write_obj(*w, GuestAddress((pfns[0] << 12) + 4 * i as u64)).unwrap();
        }
        let n = garbage.len().min(PAGE_SIZE - at);
        mem.write_slice(&garbage[..n], GuestAddress((pfns[1] << 12) + at as u64)).unwrap();
        let pages = RingPages::new(&pfns).unwrap();
        if let Ok(mut inc) = IncomingRing::open(&mem, pages.clone()) {
            for _ in 0..8 {
                match inc.next(&mem) {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            let _ = inc.commit(&mem);
        }
        if let Ok(mut out) = OutgoingRing::open(&mem, pages) {
            for len in writes {
                let _ = out.write(&mem, 6, 0, 9, &vec![0xAB; len]);
            }
        }
        let mut now = vec![0u8; RAM];
        mem.read_slice(&mut now, GuestAddress(0)).unwrap();
        for (page, chunk) in now.chunks(PAGE_SIZE).enumerate() {
            if !pfns.contains(&(page as u64)) {
                prop_assert!(
                    chunk == &pattern[page * PAGE_SIZE..(page + 1) * PAGE_SIZE],
                    "page {} changed", page
                );
            }
        }
    }
}
