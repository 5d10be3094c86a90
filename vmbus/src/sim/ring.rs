//! Linux's ring-buffer algorithms, guest side (`drivers/hv/ring_buffer.c` as described in
//! `docs/vmbus.md`), over the same pages the host uses: the guest writes its outbound ring and
//! reads its inbound ring, and decides when to signal the host by the same rules.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use zerocopy::{FromBytes, IntoBytes};

use crate::ring::{PacketDescriptor, DESCRIPTOR_SIZE, PAGE_SIZE, TRAILER_SIZE};

/// One ring as the guest sees it: a header page and data pages (contiguous in the guest's
/// virtual mapping, any guest physical pages here).
#[derive(Clone, Debug)]
pub struct GuestRing {
    header: u64,
    data: Vec<u64>,
    /// The reader's private index (packets read, not yet released).
    priv_read: u32,
}

/// A packet the guest read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPacket {
    /// The descriptor, as copied (len8 and offset8 made consistent, as Linux does).
    pub descriptor: PacketDescriptor,
    /// The bytes from `offset8` to `len8`.
    pub payload: Vec<u8>,
}

impl GuestRing {
    /// `hv_ringbuffer_init`: both indices 0, interrupts on, the pending-send-size feature on.
    pub fn init<M: GuestMemoryBackend>(mem: &M, pfns: &[u64]) -> Self {
        let header = pfns[0] << 12;
        mem.write_slice(&[0u8; PAGE_SIZE], GuestAddress(header))
            .expect("ring header in RAM");
        mem.write_obj(1u32, GuestAddress(header + 64))
            .expect("ring header in RAM");
        Self {
            header,
            data: pfns[1..].iter().map(|p| p << 12).collect(),
            priv_read: 0,
        }
    }

    /// Bytes of data.
    pub fn size(&self) -> u32 {
        (self.data.len() * PAGE_SIZE) as u32
    }

    fn load<M: GuestMemoryBackend>(&self, mem: &M, offset: u64, order: Ordering) -> u32 {
        mem.load(GuestAddress(self.header + offset), order)
            .expect("ring header in RAM")
    }

    fn store<M: GuestMemoryBackend>(&self, mem: &M, offset: u64, value: u32, order: Ordering) {
        mem.store(value, GuestAddress(self.header + offset), order)
            .expect("ring header in RAM");
    }

    fn copy(&self, mem: &impl GuestMemoryBackend, at: u32, buf: &mut [u8], write: bool) {
        let size = self.size() as usize;
        let mut off = at as usize % size;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(PAGE_SIZE - off % PAGE_SIZE);
            let gpa = GuestAddress(self.data[off / PAGE_SIZE] + (off % PAGE_SIZE) as u64);
            if write {
                mem.write_slice(&buf[done..done + n], gpa)
                    .expect("ring page");
            } else {
                mem.read_slice(&mut buf[done..done + n], gpa)
                    .expect("ring page");
            }
            done += n;
            off = (off + n) % size;
        }
    }

    /// Sets or clears the reader's `interrupt_mask` (Linux's batched reading).
    pub fn set_interrupt_mask<M: GuestMemoryBackend>(&self, mem: &M, mask: bool) {
        self.store(mem, 8, u32::from(mask), Ordering::SeqCst);
    }

    /// `hv_ringbuffer_write` and `hv_signal_on_write`: `Err(())` when the ring has no room
    /// (only room for the packet counts as full), else whether to signal the host.
    #[allow(clippy::result_unit_err)]
    pub fn write<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        packet_type: u16,
        trans_id: u64,
        payload: &[u8],
    ) -> Result<bool, ()> {
        let len = DESCRIPTOR_SIZE + payload.len().next_multiple_of(8);
        let total = len + TRAILER_SIZE;
        let size = self.size();
        let read = self.load(mem, 4, Ordering::Acquire);
        let write = self.load(mem, 0, Ordering::Relaxed);
        // A header someone scribbled on: this guest stops writing.
        if read >= size || write >= size || !write.is_multiple_of(8) {
            return Err(());
        }
        let avail = if write >= read {
            size - (write - read)
        } else {
            read - write
        };
        if avail as usize <= total {
            return Err(());
        }
        let desc = PacketDescriptor {
            packet_type,
            offset8: 2,
            len8: (len / 8) as u16,
            flags: 0,
            trans_id,
        };
        let mut bytes = desc.as_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes.resize(len, 0);
        bytes.extend_from_slice(&(u64::from(write) << 32).to_le_bytes());
        self.copy(mem, write, &mut bytes, true);
        fence(Ordering::SeqCst);
        self.store(mem, 0, (write + total as u32) % size, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.load(mem, 8, Ordering::Acquire) != 0 {
            return Ok(false);
        }
        Ok(self.load(mem, 4, Ordering::Acquire) == write)
    }

    /// `hv_pkt_iter_first` / `__hv_pkt_iter_next`: the next packet past the private read
    /// index (not released to the writer until [`close`](Self::close)).
    pub fn read<M: GuestMemoryBackend>(&mut self, mem: &M) -> Option<GuestPacket> {
        let size = self.size();
        let write = self.load(mem, 0, Ordering::Acquire);
        if write >= size {
            return None;
        }
        let avail = if write >= self.priv_read {
            write - self.priv_read
        } else {
            size - self.priv_read + write
        };
        if (avail as usize) < DESCRIPTOR_SIZE {
            return None;
        }
        let mut raw = [0u8; DESCRIPTOR_SIZE];
        self.copy(mem, self.priv_read, &mut raw, false);
        let mut desc = PacketDescriptor::read_from_bytes(&raw).ok()?;
        // Linux clamps what the host claims to what is there.
        let mut len = usize::from(desc.len8) * 8;
        if len < DESCRIPTOR_SIZE || len > avail as usize {
            len = avail as usize;
        }
        let mut offset = usize::from(desc.offset8) * 8;
        if offset < DESCRIPTOR_SIZE || offset > len {
            offset = DESCRIPTOR_SIZE;
        }
        desc.len8 = (len / 8) as u16;
        desc.offset8 = (offset / 8) as u16;
        let mut payload = vec![0u8; len - offset];
        self.copy(mem, self.priv_read + offset as u32, &mut payload, false);
        self.priv_read = (self.priv_read + (len + TRAILER_SIZE) as u32) % size;
        Some(GuestPacket {
            descriptor: desc,
            payload,
        })
    }

    /// `hv_pkt_iter_close`: releases what was read; returns whether to signal the host (it
    /// waits for `pending_send_sz` bytes and the free space just crossed it).
    pub fn close<M: GuestMemoryBackend>(&mut self, mem: &M) -> bool {
        let size = self.size();
        fence(Ordering::SeqCst);
        let start = self.load(mem, 4, Ordering::Relaxed) % size;
        self.store(mem, 4, self.priv_read, Ordering::Release);
        if self.load(mem, 64, Ordering::Relaxed) & 1 == 0 {
            return false;
        }
        fence(Ordering::SeqCst);
        let pending = self.load(mem, 12, Ordering::Acquire);
        if pending == 0 {
            return false;
        }
        let write = self.load(mem, 0, Ordering::Acquire) % size;
        let read = self.priv_read;
        let free_now = if write >= read {
            size - (write - read)
        } else {
            read - write
        };
        let bytes_read = if self.priv_read >= start {
            self.priv_read - start
        } else {
            size - start + self.priv_read
        };
        if free_now.wrapping_sub(bytes_read) > pending {
            return false;
        }
        free_now > pending
    }
}
