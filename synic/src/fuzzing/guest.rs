//! A simulated guest: a partition over real (mmap'd) guest memory with dirty tracking, a
//! recording raise and a fake clock, plus the guest-side accesses (slot reads, the TLFS ISR's
//! slot release, event-flag reads) that tests and the model checker make.
//!
//! Guest-side writes go through atomics on the mapping, which bypass the dirty bitmap: the
//! bitmap then records the host's writes only, so a checker can ask which pages the host
//! wrote.

use std::ops::Deref;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use synic_msr::{index, Origin, Profile};
use vm_memory::bitmap::{AtomicBitmap, BS};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    Permissions, VolatileMemory, VolatileSlice,
};
use zerocopy::FromBytes;

use crate::testing::RecordingRaise;
use crate::{
    FakeReferenceClock, HvMessage, MessageType, Mode, Partition, PartitionConfig, SintIndex, Vp,
    VpIndex,
};

/// Guest RAM with a dirty bitmap.
pub type Mem = GuestMemoryMmap<AtomicBitmap>;
/// The memory handle the partition holds.
pub type Space = Arc<Mem>;

/// Bytes of guest RAM [`new_memory`] maps at 0.
pub const RAM_SIZE: usize = 0x10_0000;

/// Message page of VP `vp` after [`Harness::enable`].
pub fn simp_gpa(vp: usize) -> u64 {
    0x1_0000 + vp as u64 * 0x2000
}

/// Event-flags page of VP `vp` after [`Harness::enable`].
pub fn siefp_gpa(vp: usize) -> u64 {
    0x1_1000 + vp as u64 * 0x2000
}

/// Vector of SINT `n` after [`Harness::enable`].
pub fn vector(sint: u8) -> u8 {
    0x30 + sint
}

/// SINT `n` (panics above 15).
pub fn sint(n: u8) -> SintIndex {
    SintIndex::ALL[usize::from(n)]
}

/// A message of type 1 whose payload is `id` (8 bytes, little endian).
pub fn msg(id: u64) -> HvMessage {
    HvMessage::new(MessageType(1), 0x77, &id.to_le_bytes()).unwrap()
}

/// The id carried by a message built with [`msg`].
pub fn id_of(m: &HvMessage) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&m.payload[..8]);
    u64::from_le_bytes(id)
}

/// [`RAM_SIZE`] bytes of guest RAM at 0.
pub fn new_memory() -> Space {
    Arc::new(Mem::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap())
}

/// A partition, its VPs and what they are connected to.
#[derive(Debug)]
pub struct Harness {
    /// The partition.
    pub partition: Arc<Partition<Space>>,
    /// Its VPs, in creation order.
    pub vps: Vec<Vp<Space>>,
    /// Every interrupt raised.
    pub raise: Arc<RecordingRaise>,
    /// Guest RAM.
    pub mem: Space,
    /// The reference clock.
    pub clock: Arc<FakeReferenceClock>,
}

impl Harness {
    /// A partition with `config` over fresh memory.
    pub fn with_config(config: PartitionConfig) -> Self {
        Self::with_memory(config, new_memory())
    }

    /// A partition with `config` over `mem`.
    pub fn with_memory(config: PartitionConfig, mem: Space) -> Self {
        let raise = Arc::new(RecordingRaise::default());
        let clock = Arc::new(FakeReferenceClock::new(0));
        let (partition, vps) =
            Partition::new(config, mem.clone(), raise.clone(), clock.clone()).unwrap();
        Self {
            partition,
            vps,
            raise,
            mem,
            clock,
        }
    }

    /// Userspace mode, `profile`, 2 VPs, queue capacity 4.
    pub fn new(profile: Profile) -> Self {
        Self::with_config(PartitionConfig::new(Mode::Userspace, profile, 2).with_queue_capacity(4))
    }

    /// TLFS userspace partition with VP 0 fully enabled.
    pub fn enabled() -> Self {
        let mut h = Self::new(Profile::Tlfs);
        h.enable(0);
        h
    }

    /// A guest WRMSR that must succeed.
    pub fn wrmsr(&mut self, vp: usize, msr: u32, value: u64) {
        self.vps[vp]
            .wrmsr(msr, value, Origin::Guest)
            .unwrap_or_else(|e| panic!("wrmsr {msr:#x} = {value:#x}: {e}"));
    }

    /// The guest of `vp` enables SCONTROL, both pages and every SINT (vector 0x30 + n).
    pub fn enable(&mut self, vp: usize) {
        self.wrmsr(vp, index::SCONTROL, 1);
        self.wrmsr(vp, index::SIMP, simp_gpa(vp) | 1);
        self.wrmsr(vp, index::SIEFP, siefp_gpa(vp) | 1);
        for n in 0..16u8 {
            self.wrmsr(vp, index::SINT0 + u32::from(n), u64::from(vector(n)));
        }
        self.raise.take();
    }

    /// Posts [`msg`]`(id)`, which must be accepted.
    pub fn post(&self, vp: u32, sint: u8, id: u64) -> crate::Posted {
        self.partition
            .post_message(VpIndex(vp), u32::from(sint), msg(id))
            .unwrap_or_else(|e| panic!("post {id}: {e}"))
    }

    /// The guest of `vp` writes EOM.
    pub fn eom(&mut self, vp: usize) {
        self.wrmsr(vp, index::EOM, 0);
    }

    /// The raw slot of `sint` in the message page at `page`.
    pub fn slot_at(&self, page: u64, sint: u8) -> HvMessage {
        let mut bytes = [0u8; 256];
        self.mem
            .read_slice(&mut bytes, GuestAddress(page + 256 * u64::from(sint)))
            .unwrap();
        HvMessage::read_from_bytes(&bytes).unwrap()
    }

    /// The raw slot of `sint` in the message page of `vp` after [`Harness::enable`].
    pub fn slot(&self, vp: usize, sint: u8) -> HvMessage {
        self.slot_at(simp_gpa(vp), sint)
    }

    /// The guest ISR's end: clear the type, full fence, read MessagePending (TLFS order).
    /// Returns whether MessagePending was set (the guest must then write EOM).
    pub fn guest_free_slot_at(&self, page: u64, sint: u8) -> bool {
        guest_free_slot(&self.mem, page + 256 * u64::from(sint))
    }

    /// [`guest_free_slot_at`](Self::guest_free_slot_at) on the page of [`Harness::enable`].
    pub fn guest_free_slot(&self, vp: usize, sint: u8) -> bool {
        self.guest_free_slot_at(simp_gpa(vp), sint)
    }

    /// A well-behaved ISR on one slot: read, free, EOM if pending. Returns the message id.
    pub fn isr(&mut self, vp: usize, sint: u8) -> Option<u64> {
        let m = self.slot(vp, sint);
        if m.header.message_type.is_none() {
            return None;
        }
        if self.guest_free_slot(vp, sint) {
            self.eom(vp);
        }
        Some(id_of(&m))
    }

    /// Whether flag `flag` of `sint` is set on the event-flags page of `vp`.
    pub fn flag_is_set(&self, vp: usize, sint: u8, flag: u32) -> bool {
        self.flag_is_set_at(siefp_gpa(vp), sint, flag)
    }

    /// Whether flag `flag` of `sint` is set in the event-flags page at `page`.
    pub fn flag_is_set_at(&self, page: u64, sint: u8, flag: u32) -> bool {
        let at = GuestAddress(page + 256 * u64::from(sint) + u64::from(flag / 8));
        let byte: u8 = self.mem.read_obj(at).unwrap();
        byte & (1 << (flag % 8)) != 0
    }

    /// The `raise` calls so far as `(vp, sint, vector, auto_eoi)`.
    pub fn raised(&self) -> Vec<(VpIndex, SintIndex, u8, bool)> {
        self.raise.raised()
    }

    /// The counters of one SINT.
    pub fn counters(&self, vp: u32, sint: u8) -> crate::SintCounters {
        self.partition.counters(VpIndex(vp)).unwrap().sints[usize::from(sint)]
    }
}

/// The guest-visible slice of `len` bytes at `gpa` (which must be RAM).
fn guest_slice(mem: &Mem, gpa: u64, len: usize) -> VolatileSlice<'_, BS<'_, AtomicBitmap>> {
    GuestMemory::get_slices(mem, GuestAddress(gpa), len, Permissions::ReadWrite)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

/// Runs `f` on a slot's `message_type` and flags byte as the guest sees them: atomics through
/// the mapping, bypassing the dirty bitmap (which tracks host writes only).
fn with_slot<R>(
    mem: &Mem,
    slot_gpa: u64,
    f: impl FnOnce(&AtomicU32, &AtomicU8, &VolatileSlice<'_, BS<'_, AtomicBitmap>>) -> R,
) -> R {
    let slice = guest_slice(mem, slot_gpa, 256);
    let ty = slice.get_atomic_ref::<AtomicU32>(0).unwrap();
    let flags = slice.get_atomic_ref::<AtomicU8>(5).unwrap();
    f(ty, flags, &slice)
}

/// Runs `f` on the naturally aligned guest word at `gpa`, as the guest's atomics see it.
pub fn with_guest_word<T: vm_memory::AtomicInteger, R>(
    mem: &Mem,
    gpa: u64,
    f: impl FnOnce(&T) -> R,
) -> R {
    let slice = guest_slice(mem, gpa, std::mem::size_of::<T>());
    f(slice.get_atomic_ref::<T>(0).unwrap())
}

/// A guest store of one byte (not a host write: the dirty bitmap is not touched).
pub fn guest_write_byte(mem: &Mem, gpa: u64, value: u8) {
    with_guest_word::<AtomicU8, _>(mem, gpa, |b| b.store(value, Ordering::SeqCst));
}

/// A guest store of `bytes` at `gpa`, 8-byte aligned and a multiple of 8 long (not a host
/// write: the dirty bitmap is not touched).
pub fn guest_write(mem: &Mem, gpa: u64, bytes: &[u8]) {
    let slice = guest_slice(mem, gpa, bytes.len());
    for (i, chunk) in bytes.chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = slice.get_atomic_ref::<AtomicU64>(i * 8).unwrap();
        w.store(u64::from_ne_bytes(word), Ordering::SeqCst);
    }
}

/// The end of a TLFS ISR: clear the type, full fence, read MessagePending (set: write EOM).
pub fn guest_free_slot(mem: &Mem, slot_gpa: u64) -> bool {
    with_slot(mem, slot_gpa, |ty, flags, _| {
        ty.store(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        flags.load(Ordering::SeqCst) & 1 != 0
    })
}

/// A TLFS ISR on one slot: if it holds a message, copy it out and free the slot. Returns the
/// bytes and MessagePending as read after freeing.
pub fn guest_take_slot(mem: &Mem, slot_gpa: u64) -> Option<([u8; 256], bool)> {
    with_slot(mem, slot_gpa, |ty, flags, slice| {
        if ty.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut bytes = [0u8; 256];
        slice.copy_to(&mut bytes[..]);
        ty.store(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Some((bytes, flags.load(Ordering::SeqCst) & 1 != 0))
    })
}

/// The slot's `message_type` as the guest reads it.
pub fn guest_slot_type(mem: &Mem, slot_gpa: u64) -> u32 {
    with_slot(mem, slot_gpa, |ty, _, _| ty.load(Ordering::SeqCst))
}

/// Guest pages the host wrote since the last [`clear_dirty`].
pub fn dirty_pages(mem: &Mem) -> Vec<u64> {
    let mut out = Vec::new();
    for region in mem.iter() {
        let bitmap: &AtomicBitmap = Deref::deref(region).bitmap();
        for page in (0..region.len()).step_by(0x1000) {
            if bitmap.is_addr_set(page as usize) {
                out.push(region.start_addr().0 + page);
            }
        }
    }
    out
}

/// Forgets which pages the host wrote.
pub fn clear_dirty(mem: &Mem) {
    for region in mem.iter() {
        let bitmap: &AtomicBitmap = Deref::deref(region).bitmap();
        bitmap.reset();
    }
}
