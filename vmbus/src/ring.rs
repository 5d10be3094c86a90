//! Channel ring buffers in guest memory, host side.
//!
//! A channel's ring-buffer GPADL holds two rings back to back: the guest's outbound ring
//! (guest writes, host reads: [`IncomingRing`]) in pages `0..k` and the guest's inbound ring
//! (host writes, guest reads: [`OutgoingRing`]) in pages `k..n`, `k` being OPENCHANNEL's
//! `downstream_ringbuffer_pageoffset`. Each ring is a header page (`struct hv_ring_buffer`)
//! and data pages that are contiguous for the guest but need not be for the host:
//!
//! | header offset | field | owner |
//! |---|---|---|
//! | 0 | `write_index` (bytes into the data) | writer |
//! | 4 | `read_index` | reader |
//! | 8 | `interrupt_mask` (1: the reader polls, do not signal) | reader |
//! | 12 | `pending_send_sz` (the writer waits for this much free space) | writer |
//! | 64 | `feature_bits` (bit 0: the pending_send_sz protocol is spoken) | each side its own |
//!
//! A packet is a 16-byte [`PacketDescriptor`] (`offset8`, `len8` in 8-byte units), its payload
//! padded to 8 bytes, and an 8-byte trailer (the writer's old write index in the upper half);
//! packets wrap around the end of the data area. One byte of the data area always stays free,
//! so `read == write` means empty.
//!
//! Everything the guest wrote is untrusted and may change while the host looks: indices are
//! loaded once per operation (acquire), checked (inside the data, 8-byte aligned), and the
//! descriptor is copied out once and checked before its payload is copied. A bad value is a
//! [`RingError`]; the caller closes the channel. Every access goes through a page of the
//! channel's GPADL, resolved in guest RAM for that access, so nothing outside the GPADL is
//! ever touched.
//!
//! Signalling (the rules Linux's `ring_buffer.c` follows on the guest side):
//! * a writer signals only when its packet made the ring non-empty (the reader's index equals
//!   the old write index) and the reader's `interrupt_mask` is clear, checked after publishing
//!   the write index with a full fence between;
//! * a reader that frees space signals only when the writer set `pending_send_sz` and the free
//!   space went from at most that to more than that.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions, VolatileSlice};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of a ring page.
pub const PAGE_SIZE: usize = 4096;
/// Size of a packet descriptor.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Size of the trailer after every packet.
pub const TRAILER_SIZE: usize = 8;
/// Largest packet the host copies out of a guest ring (descriptor included). The integration
/// services' largest message (KVP) is under 3 KiB.
pub const MAX_INCOMING_PACKET: usize = 64 * 1024;

const WRITE_INDEX: usize = 0;
const READ_INDEX: usize = 4;
const INTERRUPT_MASK: usize = 8;
const PENDING_SEND_SZ: usize = 12;
const FEATURE_BITS: usize = 64;
/// `feature_bits` bit 0: the side that owns this ring's writes (or reads) speaks the
/// pending_send_sz protocol.
const FEAT_PENDING_SEND_SZ: u32 = 1;

/// VM_PKT_DATA_INBAND: the payload is in the packet.
pub const PACKET_TYPE_DATA_INBAND: u16 = 6;
/// VM_PKT_COMP: a completion.
pub const PACKET_TYPE_COMPLETION: u16 = 11;
/// VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED.
pub const PACKET_FLAG_COMPLETION_REQUESTED: u16 = 1;

/// `struct vmpacket_descriptor` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct PacketDescriptor {
    /// `VM_PKT_*`.
    pub packet_type: u16,
    /// Where the payload starts, in 8-byte units from the descriptor.
    pub offset8: u16,
    /// The packet's length (descriptor, payload, padding; not the trailer) in 8-byte units.
    pub len8: u16,
    /// `VMBUS_DATA_PACKET_FLAG_*`.
    pub flags: u16,
    /// The sender's transaction id, echoed in the answer.
    pub trans_id: u64,
}

const _: () = assert!(size_of::<PacketDescriptor>() == DESCRIPTOR_SIZE);

/// A packet read from a guest ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// `VM_PKT_*`.
    pub packet_type: u16,
    /// Flags.
    pub flags: u16,
    /// Transaction id.
    pub trans_id: u64,
    /// The bytes from `offset8` to `len8` (payload and the writer's padding).
    pub payload: Vec<u8>,
}

/// Why a ring access failed: the guest's doing, or a ring page that stopped being RAM (or, for
/// [`RingError::TooLarge`], a host packet too big for the ring). The caller closes the channel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A ring page is not (or no longer) guest RAM.
    #[error("ring page {gpa:#x} is not guest RAM")]
    PageNotInRam {
        /// The page's address.
        gpa: u64,
    },
    /// The guest's index is outside the data area or not 8-byte aligned.
    #[error("{which} {value:#x} is not an 8-byte-aligned offset into the {size}-byte data area")]
    BadIndex {
        /// `write_index` or `read_index`.
        which: &'static str,
        /// The value read.
        value: u32,
        /// The data area's size.
        size: u32,
    },
    /// Less than a descriptor and trailer between the read and write indices.
    #[error("{avail} bytes in the ring: less than a packet")]
    Truncated {
        /// Bytes available.
        avail: u32,
    },
    /// The descriptor's length or offset is impossible.
    #[error("packet descriptor len8 {len8} offset8 {offset8} with {avail} bytes available")]
    BadDescriptor {
        /// `len8`.
        len8: u16,
        /// `offset8`.
        offset8: u16,
        /// Bytes available.
        avail: u32,
    },
    /// A ring too small or too large to use.
    #[error("a ring of {pages} pages (header included) cannot be used")]
    BadSize {
        /// Pages.
        pages: usize,
    },
    /// A host packet that cannot ever fit in this ring.
    #[error("a packet of {len} bytes cannot fit in a {size}-byte ring")]
    TooLarge {
        /// The packet's length with its trailer.
        len: usize,
        /// The ring's data size.
        size: u32,
    },
}

/// The pages of one ring: the header page, then the data pages, as guest physical addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingPages {
    header: u64,
    data: Vec<u64>,
}

impl RingPages {
    /// A ring on these page frame numbers (header first). Needs a header and at least one
    /// data page, and a data area whose size fits the 32-bit indices.
    pub fn new(pfns: &[u64]) -> Result<Self, RingError> {
        match pfns {
            [header, data @ ..] if !data.is_empty() && data.len() < (1 << 19) => Ok(Self {
                header: header << 12,
                data: data.iter().map(|p| p << 12).collect(),
            }),
            _ => Err(RingError::BadSize { pages: pfns.len() }),
        }
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> u32 {
        // Fewer than 2^19 pages: below 2^31 bytes.
        (self.data.len() * PAGE_SIZE) as u32
    }

    /// Guest physical address of the header page.
    pub fn header_gpa(&self) -> u64 {
        self.header
    }

    /// Guest physical addresses of every page, header first.
    pub fn gpas(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.header).chain(self.data.iter().copied())
    }
}

/// The one 4 KiB slice of guest RAM at `gpa`, or why not.
fn page<G: GuestMemory + ?Sized>(
    mem: &G,
    gpa: u64,
) -> Result<VolatileSlice<'_, vm_memory::bitmap::BS<'_, G::Bitmap>>, RingError> {
    let err = RingError::PageNotInRam { gpa };
    let mut slices = mem
        .get_slices(GuestAddress(gpa), PAGE_SIZE, Permissions::ReadWrite)
        .map_err(|_| err.clone())?;
    match slices.next() {
        Some(Ok(s)) if s.len() == PAGE_SIZE => Ok(s),
        _ => Err(err),
    }
}

/// Whether `gpa` starts a whole page of guest RAM (in one region).
pub fn check_page<G: GuestMemory + ?Sized>(mem: &G, gpa: u64) -> Result<(), RingError> {
    page(mem, gpa).map(|_| ())
}

fn load<G: GuestMemory + ?Sized>(
    mem: &G,
    gpa: u64,
    offset: usize,
    order: Ordering,
) -> Result<u32, RingError> {
    page(mem, gpa)?
        .load::<u32>(offset, order)
        .map_err(|_| RingError::PageNotInRam { gpa })
}

fn store<G: GuestMemory + ?Sized>(
    mem: &G,
    gpa: u64,
    offset: usize,
    value: u32,
    order: Ordering,
) -> Result<(), RingError> {
    page(mem, gpa)?
        .store(value, offset, order)
        .map_err(|_| RingError::PageNotInRam { gpa })
}

/// Calls `f(page, offset in page, range of buf)` for each piece of `len` bytes starting at
/// data offset `at`, wrapping at the end of the data area.
fn pieces(
    pages: &RingPages,
    at: u32,
    len: usize,
    mut f: impl FnMut(u64, usize, std::ops::Range<usize>) -> Result<(), RingError>,
) -> Result<(), RingError> {
    let size = pages.data_size() as usize;
    let mut off = at as usize % size;
    let mut done = 0;
    while done < len {
        let in_page = off % PAGE_SIZE;
        let n = (len - done).min(PAGE_SIZE - in_page);
        f(pages.data[off / PAGE_SIZE], in_page, done..done + n)?;
        done += n;
        off = (off + n) % size;
    }
    Ok(())
}

fn copy_out<G: GuestMemory + ?Sized>(
    mem: &G,
    pages: &RingPages,
    at: u32,
    buf: &mut [u8],
) -> Result<(), RingError> {
    let len = buf.len();
    pieces(pages, at, len, |gpa, off, r| {
        page(mem, gpa)?
            .read_slice(&mut buf[r], off)
            .map_err(|_| RingError::PageNotInRam { gpa })
    })
}

fn copy_in<G: GuestMemory + ?Sized>(
    mem: &G,
    pages: &RingPages,
    at: u32,
    buf: &[u8],
) -> Result<(), RingError> {
    pieces(pages, at, buf.len(), |gpa, off, r| {
        page(mem, gpa)?
            .write_slice(&buf[r], off)
            .map_err(|_| RingError::PageNotInRam { gpa })
    })
}

/// Checks an index the guest owns.
fn checked(which: &'static str, value: u32, size: u32) -> Result<u32, RingError> {
    if value >= size || !value.is_multiple_of(8) {
        Err(RingError::BadIndex { which, value, size })
    } else {
        Ok(value)
    }
}

/// Bytes from `from` to `to` going forward around a ring of `size` bytes.
fn distance(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

/// The host's end of the host-to-guest ring (the guest's inbound ring): the host writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingRing {
    pages: RingPages,
    /// The host's write index: the host owns it, and never trusts the value in guest memory.
    write: u32,
    /// Bytes (packet and trailer) the host waits for, when it set pending_send_sz.
    pending: Option<u32>,
}

/// What [`OutgoingRing::write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The packet is in the ring; `signal` says whether the guest must be signalled.
    Sent {
        /// The packet made the ring non-empty and the guest's interrupt_mask is clear.
        signal: bool,
    },
    /// Not enough room: pending_send_sz now asks the guest to signal when there is; write the
    /// packet again then.
    Full,
}

impl OutgoingRing {
    /// Takes over the ring: reads and checks the indices the guest initialised, and sets the
    /// host's feature bit (it will set pending_send_sz when the ring is full).
    pub fn open<G: GuestMemory + ?Sized>(mem: &G, pages: RingPages) -> Result<Self, RingError> {
        let size = pages.data_size();
        let h = pages.header;
        let write = checked(
            "write_index",
            load(mem, h, WRITE_INDEX, Ordering::Acquire)?,
            size,
        )?;
        checked(
            "read_index",
            load(mem, h, READ_INDEX, Ordering::Acquire)?,
            size,
        )?;
        store(mem, h, PENDING_SEND_SZ, 0, Ordering::Relaxed)?;
        store(
            mem,
            h,
            FEATURE_BITS,
            FEAT_PENDING_SEND_SZ,
            Ordering::Release,
        )?;
        Ok(Self {
            pages,
            write,
            pending: None,
        })
    }

    /// The pages.
    pub fn pages(&self) -> &RingPages {
        &self.pages
    }

    /// Whether a write found the ring full and waits for the guest.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// Bytes free for the writer (one byte always stays empty, so a packet needs more than
    /// its size).
    fn free<G: GuestMemory + ?Sized>(&self, mem: &G) -> Result<(u32, u32), RingError> {
        let size = self.pages.data_size();
        let read = checked(
            "read_index",
            load(mem, self.pages.header, READ_INDEX, Ordering::Acquire)?,
            size,
        )?;
        Ok((size - distance(read, self.write, size), read))
    }

    /// Writes one packet: descriptor, `payload` padded to 8 bytes, trailer.
    pub fn write<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        packet_type: u16,
        flags: u16,
        trans_id: u64,
        payload: &[u8],
    ) -> Result<Written, RingError> {
        let size = self.pages.data_size();
        let len = DESCRIPTOR_SIZE + payload.len().next_multiple_of(8);
        let total = len + TRAILER_SIZE;
        let len8 = u16::try_from(len / 8).ok();
        let (Some(len8), true) = (len8, total < size as usize) else {
            return Err(RingError::TooLarge { len: total, size });
        };
        let h = self.pages.header;
        let (free, _) = self.free(mem)?;
        if free as usize <= total {
            // Ask the guest for a signal once there is room, then look again: the guest may
            // have freed space before it could see the request.
            store(mem, h, PENDING_SEND_SZ, total as u32, Ordering::Relaxed)?;
            fence(Ordering::SeqCst);
            let (free, _) = self.free(mem)?;
            if free as usize <= total {
                self.pending = Some(total as u32);
                return Ok(Written::Full);
            }
        }
        if self.pending.take().is_some() {
            store(mem, h, PENDING_SEND_SZ, 0, Ordering::Relaxed)?;
        }
        let old = self.write;
        let desc = PacketDescriptor {
            packet_type,
            offset8: (DESCRIPTOR_SIZE / 8) as u16,
            len8,
            flags,
            trans_id,
        };
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(desc.as_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(len, 0);
        bytes.extend_from_slice(&(u64::from(old) << 32).to_le_bytes());
        copy_in(mem, &self.pages, old, &bytes)?;
        self.write = (old + total as u32) % size;
        // Release: the packet's bytes are visible before the index that covers them (the
        // guest loads write_index with acquire).
        store(mem, h, WRITE_INDEX, self.write, Ordering::Release)?;
        // Full fence between publishing the index and sampling the reader's state: the guest
        // stores read_index and then (after its own full barrier) looks at write_index, so one
        // of the two sides always sees the other's update.
        fence(Ordering::SeqCst);
        if load(mem, h, INTERRUPT_MASK, Ordering::Acquire)? != 0 {
            return Ok(Written::Sent { signal: false });
        }
        let read = load(mem, h, READ_INDEX, Ordering::Acquire)?;
        Ok(Written::Sent {
            signal: read == old,
        })
    }
}

/// The host's end of the guest-to-host ring (the guest's outbound ring): the host reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingRing {
    pages: RingPages,
    /// The read index the guest sees (published).
    read: u32,
    /// Where the next packet starts (not yet published).
    next: u32,
}

impl IncomingRing {
    /// Takes over the ring: reads and checks the indices the guest initialised.
    pub fn open<G: GuestMemory + ?Sized>(mem: &G, pages: RingPages) -> Result<Self, RingError> {
        let size = pages.data_size();
        let h = pages.header;
        checked(
            "write_index",
            load(mem, h, WRITE_INDEX, Ordering::Acquire)?,
            size,
        )?;
        let read = checked(
            "read_index",
            load(mem, h, READ_INDEX, Ordering::Acquire)?,
            size,
        )?;
        // The host reads with interrupts on.
        store(mem, h, INTERRUPT_MASK, 0, Ordering::Release)?;
        Ok(Self {
            pages,
            read,
            next: read,
        })
    }

    /// The pages.
    pub fn pages(&self) -> &RingPages {
        &self.pages
    }

    fn available<G: GuestMemory + ?Sized>(&self, mem: &G) -> Result<u32, RingError> {
        let size = self.pages.data_size();
        // Acquire: the guest stored the packet before the index (with a full barrier).
        let write = checked(
            "write_index",
            load(mem, self.pages.header, WRITE_INDEX, Ordering::Acquire)?,
            size,
        )?;
        Ok(distance(self.next, write, size))
    }

    /// Whether a packet waits beyond those already read.
    pub fn has_data<G: GuestMemory + ?Sized>(&self, mem: &G) -> Result<bool, RingError> {
        Ok(self.available(mem)? > 0)
    }

    /// The next packet, if any: copied out and checked. It is consumed for the guest only at
    /// [`commit`](Self::commit).
    pub fn next<G: GuestMemory + ?Sized>(&mut self, mem: &G) -> Result<Option<Packet>, RingError> {
        let avail = self.available(mem)?;
        if avail == 0 {
            return Ok(None);
        }
        if (avail as usize) < DESCRIPTOR_SIZE + TRAILER_SIZE {
            return Err(RingError::Truncated { avail });
        }
        // One copy of the descriptor; everything below is decided on the copy.
        let mut raw = [0u8; DESCRIPTOR_SIZE];
        copy_out(mem, &self.pages, self.next, &mut raw)?;
        let desc =
            PacketDescriptor::read_from_bytes(&raw).map_err(|_| RingError::Truncated { avail })?;
        let (len8, offset8) = (desc.len8, desc.offset8);
        let len = usize::from(len8) * 8;
        let offset = usize::from(offset8) * 8;
        if len < DESCRIPTOR_SIZE
            || offset < DESCRIPTOR_SIZE
            || offset > len
            || len + TRAILER_SIZE > avail as usize
            || len > MAX_INCOMING_PACKET
        {
            return Err(RingError::BadDescriptor {
                len8,
                offset8,
                avail,
            });
        }
        let mut payload = vec![0u8; len - offset];
        let size = self.pages.data_size();
        copy_out(
            mem,
            &self.pages,
            (self.next + offset as u32) % size,
            &mut payload,
        )?;
        self.next = (self.next + (len + TRAILER_SIZE) as u32) % size;
        Ok(Some(Packet {
            packet_type: desc.packet_type,
            flags: desc.flags,
            trans_id: desc.trans_id,
            payload,
        }))
    }

    /// Publishes the read index past every packet returned by [`next`](Self::next). Returns
    /// whether the guest must be signalled: it waits for `pending_send_sz` bytes and the free
    /// space went from at most that to more.
    pub fn commit<G: GuestMemory + ?Sized>(&mut self, mem: &G) -> Result<bool, RingError> {
        if self.next == self.read {
            return Ok(false);
        }
        let size = self.pages.data_size();
        let h = self.pages.header;
        let freed = distance(self.read, self.next, size);
        // Release: the packets were copied out before the guest may overwrite them.
        store(mem, h, READ_INDEX, self.next, Ordering::Release)?;
        self.read = self.next;
        // Full fence before sampling pending_send_sz: the guest sets it and then re-reads
        // read_index.
        fence(Ordering::SeqCst);
        if load(mem, h, FEATURE_BITS, Ordering::Relaxed)? & FEAT_PENDING_SEND_SZ == 0 {
            return Ok(false);
        }
        let pending = load(mem, h, PENDING_SEND_SZ, Ordering::Acquire)?;
        if pending == 0 {
            return Ok(false);
        }
        let write = checked(
            "write_index",
            load(mem, h, WRITE_INDEX, Ordering::Acquire)?,
            size,
        )?;
        let free_now = size - distance(self.read, write, size);
        let free_before = free_now.saturating_sub(freed);
        Ok(free_before <= pending && free_now > pending)
    }
}
