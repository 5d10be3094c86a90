//! Bounded, atomic access to one SynIC page in guest memory.
//!
//! A [`Page`] is resolved from a guest physical address once per operation and covers exactly
//! 4096 bytes of one RAM region, so no access made through it can reach outside the page. Every
//! write marks the page dirty in the guest memory's bitmap (live migration depends on it): the
//! vm-memory `store`/`write_slice` calls do it themselves, the read-modify-write helpers here do
//! it explicitly because vm-memory's atomic references bypass the bitmap.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

use vm_memory::bitmap::{BitmapSlice, BS};
use vm_memory::{
    AtomicInteger, Bytes, GuestAddress, GuestMemory, Permissions, VolatileMemory, VolatileSlice,
};
use zerocopy::IntoBytes;

use crate::clock::TscParameters;
use crate::error::Error;
use crate::message::{
    flag_word, slot_offset, HvMessage, MessageFlags, FLAGS_OFFSET, MESSAGE_SIZE, PAGE_SIZE,
    TSC_OFFSET_OFFSET, TSC_SCALE_OFFSET, TSC_SEQUENCE_OFFSET, TYPE_OFFSET,
};
use crate::SintIndex;

/// One 4 KiB SynIC page (message page or event-flags page) in guest RAM.
pub(crate) struct Page<'a, B: BitmapSlice> {
    slice: VolatileSlice<'a, B>,
    gpa: u64,
}

/// Resolves the page at `gpa`. Fails when any of its 4096 bytes is outside guest RAM or the
/// page straddles two memory regions.
pub(crate) fn resolve<G: GuestMemory + ?Sized>(
    mem: &G,
    gpa: u64,
) -> Result<Page<'_, BS<'_, G::Bitmap>>, Error> {
    let not_ram = Error::PageNotInRam { gpa };
    let mut slices = mem
        .get_slices(GuestAddress(gpa), PAGE_SIZE, Permissions::ReadWrite)
        .map_err(|_| not_ram)?;
    match slices.next() {
        Some(Ok(slice)) if slice.len() == PAGE_SIZE => Ok(Page { slice, gpa }),
        _ => Err(not_ram),
    }
}

impl<B: BitmapSlice> Page<'_, B> {
    fn atomic<T: AtomicInteger>(&self, offset: usize) -> Result<&T, Error> {
        // Offsets come from a SintIndex (slot and flag offsets are < 4096 and naturally
        // aligned); an error here means the host mapping itself is misaligned.
        self.slice
            .get_atomic_ref::<T>(offset)
            .map_err(|_| Error::PageNotInRam { gpa: self.gpa })
    }

    fn mark_dirty(&self, offset: usize, len: usize) {
        self.slice.bitmap().mark_dirty(offset, len);
    }

    /// The `message_type` of `sint`'s slot.
    pub(crate) fn slot_type(&self, sint: SintIndex, order: Ordering) -> Result<u32, Error> {
        let ty = self.atomic::<AtomicU32>(slot_offset(sint) + TYPE_OFFSET)?;
        Ok(ty.load(order))
    }

    /// Sets MessagePending in `sint`'s slot with one atomic read-modify-write; returns whether
    /// it was set already. Sequentially consistent: the caller re-reads `message_type` next,
    /// and the guest clears `message_type` before reading the flags (a store-load pair on each
    /// side, so both need the full fence a locked instruction gives).
    pub(crate) fn set_pending(&self, sint: SintIndex) -> Result<bool, Error> {
        let offset = slot_offset(sint) + FLAGS_OFFSET;
        let flags = self.atomic::<AtomicU8>(offset)?;
        let before = flags.fetch_or(MessageFlags::PENDING, Ordering::SeqCst);
        let was_set = before & MessageFlags::PENDING != 0;
        // Setting a set bit leaves the page unchanged: nothing for migration to copy.
        if !was_set {
            self.mark_dirty(offset, 1);
        }
        Ok(was_set)
    }

    /// Writes `message` into `sint`'s slot: bytes 4..256 first, then `message_type` with a
    /// release store, so a guest that sees the type also sees every other byte.
    pub(crate) fn publish(&self, sint: SintIndex, message: &HvMessage) -> Result<(), Error> {
        let offset = slot_offset(sint);
        let bytes = message.as_bytes();
        let rest = TYPE_OFFSET + 4;
        let gpa = self.gpa;
        self.slice
            .write_slice(&bytes[rest..MESSAGE_SIZE], offset + rest)
            .map_err(|_| Error::PageNotInRam { gpa })?;
        self.slice
            .store(
                message.header.message_type.0,
                offset + TYPE_OFFSET,
                Ordering::Release,
            )
            .map_err(|_| Error::PageNotInRam { gpa })
    }

    /// Atomically sets event flag `flag` of `sint` (`flag < 2048`, checked by the caller);
    /// returns whether it was set already.
    pub(crate) fn set_flag(&self, sint: SintIndex, flag: u32) -> Result<bool, Error> {
        let (offset, bit) = flag_word(sint, flag);
        let word = self.atomic::<AtomicU64>(offset)?;
        // The guest clears flags with locked bit operations on machine words; one locked OR on
        // the same word is atomic with respect to them.
        let before = word.fetch_or(bit.to_le(), Ordering::SeqCst);
        let was_set = before & bit.to_le() != 0;
        if !was_set {
            self.mark_dirty(offset, 8);
        }
        Ok(was_set)
    }

    /// Rewrites the head of a reference TSC page the way a guest reading it concurrently
    /// expects (TLFS: it re-reads while TscSequence changes, and falls back to the MSR on 0):
    /// TscSequence := 0, then TscScale and TscOffset, then a new non-zero TscSequence with a
    /// release store. The new sequence is the one after `last` (the last one this host
    /// published), skipping 0 and 0xFFFF_FFFF (which KVM also avoids) and the value found in
    /// the page, so a reader that started before this rewrite always sees a change. `None`
    /// leaves the page invalid: sequence, scale and offset 0. Returns the sequence written.
    pub(crate) fn publish_tsc(
        &self,
        params: Option<TscParameters>,
        last: u32,
    ) -> Result<u32, Error> {
        let sequence = self.atomic::<AtomicU32>(TSC_SEQUENCE_OFFSET)?;
        let scale = self.atomic::<AtomicU64>(TSC_SCALE_OFFSET)?;
        let offset = self.atomic::<AtomicU64>(TSC_OFFSET_OFFSET)?;
        let found = u32::from_le(sequence.load(Ordering::Acquire));
        sequence.store(0, Ordering::Relaxed);
        // Seqlock writer: the 0 is visible before any of the new parameters.
        fence(Ordering::Release);
        let (s, o) = params.map_or((0, 0), |p| (p.scale, p.offset as u64));
        scale.store(s.to_le(), Ordering::Relaxed);
        offset.store(o.to_le(), Ordering::Relaxed);
        let next = match params {
            None => 0,
            Some(_) => {
                let after = |n: u32| match n.wrapping_add(1) {
                    0 | u32::MAX => 1,
                    n => n,
                };
                let next = after(last);
                if next == found {
                    after(next)
                } else {
                    next
                }
            }
        };
        sequence.store(next.to_le(), Ordering::Release);
        self.mark_dirty(TSC_SEQUENCE_OFFSET, TSC_OFFSET_OFFSET + 8);
        Ok(next)
    }

    /// Copies the whole page out (an overlay swap reads what the guest sees there).
    pub(crate) fn read_all(&self, out: &mut [u8; PAGE_SIZE]) -> Result<(), Error> {
        self.slice
            .read_slice(out, 0)
            .map_err(|_| Error::PageNotInRam { gpa: self.gpa })
    }

    /// Writes the whole page (an overlay swap puts an overlay's content or the RAM it hid
    /// back); marks it dirty.
    pub(crate) fn write_all(&self, bytes: &[u8; PAGE_SIZE]) -> Result<(), Error> {
        self.slice
            .write_slice(bytes, 0)
            .map_err(|_| Error::PageNotInRam { gpa: self.gpa })
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

    use super::*;
    use crate::message::MessageType;

    fn memory() -> GuestMemoryMmap<AtomicBitmap> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(0x10000), 0x800)])
            .unwrap()
    }

    fn dirty(mem: &GuestMemoryMmap<AtomicBitmap>, gpa: u64) -> bool {
        let (region, addr) = mem.to_region_addr(GuestAddress(gpa)).unwrap();
        region.bitmap().dirty_at(addr.0 as usize)
    }

    fn clean(mem: &GuestMemoryMmap<AtomicBitmap>) {
        for region in mem.iter() {
            let bitmap: &AtomicBitmap = std::ops::Deref::deref(region).bitmap();
            bitmap.reset();
        }
    }

    #[test]
    fn page_outside_ram_is_an_error() {
        let mem = memory();
        assert!(matches!(
            resolve(&mem, 0x8000),
            Err(Error::PageNotInRam { gpa: 0x8000 })
        ));
        // Only 2 KiB of RAM at 0x10000: a page there is not entirely RAM.
        assert!(resolve(&mem, 0x10000).is_err());
        assert!(resolve(&mem, !0xFFF).is_err());
        assert!(resolve(&mem, 0x3000).is_ok());
    }

    #[test]
    fn publish_writes_the_slot_and_marks_it_dirty() {
        let mem = memory();
        let page = resolve(&mem, 0x1000).unwrap();
        let sint = SintIndex::new(3).unwrap();
        let m = HvMessage::new(MessageType(7), 5, &[1, 2, 3]).unwrap();
        page.publish(sint, &m).unwrap();
        let mut bytes = [0u8; 256];
        mem.read_slice(&mut bytes, GuestAddress(0x1000 + 3 * 256))
            .unwrap();
        assert_eq!(bytes, m.as_bytes());
        assert!(dirty(&mem, 0x1000));
        assert!(!dirty(&mem, 0x2000));
        assert_eq!(page.slot_type(sint, Ordering::Acquire).unwrap(), 7);
    }

    #[test]
    fn set_pending_and_set_flag_report_the_previous_bit() {
        let mem = memory();
        let page = resolve(&mem, 0x2000).unwrap();
        let sint = SintIndex::new(15).unwrap();
        assert!(!page.set_pending(sint).unwrap());
        assert!(page.set_pending(sint).unwrap());
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x2000 + 15 * 256 + 5))
                .unwrap(),
            1
        );
        assert!(dirty(&mem, 0x2000));

        assert!(!page.set_flag(sint, 2047).unwrap());
        // A bit that was set already changes nothing: the page is not marked again.
        clean(&mem);
        assert!(page.set_flag(sint, 2047).unwrap());
        assert!(page.set_pending(sint).unwrap());
        assert!(!dirty(&mem, 0x2000));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2FFF)).unwrap(), 0x80);
        let mut all = [0u8; PAGE_SIZE];
        page.read_all(&mut all).unwrap();
        assert_eq!(all[PAGE_SIZE - 1], 0x80);
        page.write_all(&[0u8; PAGE_SIZE]).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2FFF)).unwrap(), 0);
    }
}
