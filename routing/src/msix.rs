//! A device's MSI-X vectors: one GSI, MSI route and irqfd each, with mask and pending bits.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Gsi, Irqfd, MsiRoute, Route, RoutingBackend, RoutingTable};

/// The largest MSI-X table the PCI spec allows.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Bytes per MSI-X table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Vector Control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;

/// MSI-X for one device, losing nothing and duplicating nothing.
///
/// Each vector owns a GSI with an MSI route and an irqfd (the device, or a vhost backend,
/// writes its eventfd). A vector is masked when its Vector Control mask bit or the function's
/// mask-all bit is set; then its irqfd is detached from KVM, so a device write only counts up
/// the eventfd — that count *is* the pending bit. Unmasking folds the count into the pending
/// bit, commits the vector's message if the guest changed it while masked (all vectors
/// unmasked by one function-mask clear share one commit), re-attaches the irqfd with the
/// counter drained, and fires exactly once if anything was pending.
///
/// Vectors start masked (PCI reset state). Methods that change state take `&mut self`: the
/// device's config/MMIO path owns this; device threads fire through [`MsixVectors::trigger`]
/// or the eventfd, which need no lock.
#[derive(Debug)]
pub struct MsixVectors<B: RoutingBackend> {
    table: Arc<RoutingTable<B>>,
    vectors: Vec<Vector<B>>,
    function_mask: bool,
    devid: Option<u32>,
}

#[derive(Debug)]
struct Vector<B: RoutingBackend> {
    irqfd: Irqfd<B>,
    /// The message as the guest programmed it.
    message: MsiRoute,
    /// The message the committed route carries.
    routed: MsiRoute,
    /// Vector Control mask bit.
    masked: bool,
    /// The device fired while the vector was masked and the guest has not had the interrupt.
    pending: bool,
}

impl<B: RoutingBackend> MsixVectors<B> {
    /// `count` vectors (1..=2048), all masked, with their GSIs allocated and routed in one
    /// commit. `devid` is passed to KVM with every route (needed on arm64, ignored on x86).
    pub fn new(table: Arc<RoutingTable<B>>, count: u16, devid: Option<u32>) -> Result<Self, Error> {
        if count == 0 || count > MSIX_MAX_VECTORS {
            return Err(Error::MsixVector {
                vector: count,
                count: MSIX_MAX_VECTORS,
            });
        }
        let message = MsiRoute {
            devid,
            ..MsiRoute::default()
        };
        let gsis: Vec<Gsi> =
            table.update(|tx| (0..count).map(|_| tx.add(Route::Msi(message))).collect())?;
        let mut vectors = Vec::with_capacity(gsis.len());
        for &gsi in &gsis {
            match Irqfd::detached(Arc::clone(table.backend()), gsi, false) {
                Ok(irqfd) => vectors.push(Vector {
                    irqfd,
                    message,
                    routed: message,
                    masked: true,
                    pending: false,
                }),
                Err(e) => {
                    table.release_best_effort(gsis);
                    return Err(e);
                }
            }
        }
        Ok(Self {
            table,
            vectors,
            function_mask: false,
            devid,
        })
    }

    /// Number of vectors.
    pub fn count(&self) -> u16 {
        // At most MSIX_MAX_VECTORS by construction.
        self.vectors.len() as u16
    }

    fn index(&self, vector: u16) -> Result<usize, Error> {
        if usize::from(vector) < self.vectors.len() {
            Ok(usize::from(vector))
        } else {
            Err(Error::MsixVector {
                vector,
                count: self.count(),
            })
        }
    }

    fn effectively_masked(&self, i: usize) -> bool {
        self.function_mask || self.vectors[i].masked
    }

    /// Fires `vector` (writes its eventfd): delivered now if unmasked, else pending.
    pub fn trigger(&self, vector: u16) -> Result<(), Error> {
        let i = self.index(vector)?;
        self.vectors[i]
            .irqfd
            .trigger()
            .map_err(Error::os("eventfd write"))
    }

    /// The eventfd of `vector`, for a device thread or vhost backend to write.
    pub fn eventfd(&self, vector: u16) -> Result<&EventFd, Error> {
        Ok(self.vectors[self.index(vector)?].irqfd.event())
    }

    /// The GSI of `vector`.
    pub fn gsi(&self, vector: u16) -> Result<Gsi, Error> {
        Ok(self.vectors[self.index(vector)?].irqfd.gsi())
    }

    /// The message programmed for `vector`.
    pub fn message(&self, vector: u16) -> Result<MsiRoute, Error> {
        Ok(self.vectors[self.index(vector)?].message)
    }

    /// The vector's own mask bit.
    pub fn is_masked(&self, vector: u16) -> Result<bool, Error> {
        Ok(self.vectors[self.index(vector)?].masked)
    }

    /// The function's mask-all bit.
    pub fn function_masked(&self) -> bool {
        self.function_mask
    }

    /// The pending bit: the device fired while the vector was masked. Always false for an
    /// unmasked vector (its interrupts went to the guest).
    pub fn is_pending(&mut self, vector: u16) -> Result<bool, Error> {
        let i = self.index(vector)?;
        if self.effectively_masked(i) {
            let v = &mut self.vectors[i];
            v.pending |= v.irqfd.take_count() > 0;
            Ok(v.pending)
        } else {
            Ok(false)
        }
    }

    /// Programs `vector`'s message. A masked vector's route is updated at unmask (one commit
    /// for many vectors); an unmasked one's right away.
    pub fn set_message(&mut self, vector: u16, address: u64, data: u32) -> Result<(), Error> {
        let i = self.index(vector)?;
        self.vectors[i].message = MsiRoute {
            address,
            data,
            devid: self.devid,
        };
        if !self.effectively_masked(i) {
            self.sync_routes(&[i])?;
        }
        Ok(())
    }

    /// Sets or clears `vector`'s mask bit.
    pub fn set_masked(&mut self, vector: u16, masked: bool) -> Result<(), Error> {
        let i = self.index(vector)?;
        if self.vectors[i].masked == masked {
            return Ok(());
        }
        if self.function_mask {
            // Still masked by the function: only the bit changes.
            self.vectors[i].masked = masked;
            return Ok(());
        }
        if masked {
            self.vectors[i].irqfd.detach()?;
            self.vectors[i].masked = true;
            Ok(())
        } else {
            self.unmask(&[i])?;
            self.vectors[i].masked = false;
            Ok(())
        }
    }

    /// Sets or clears the function's mask-all bit.
    pub fn set_function_mask(&mut self, masked: bool) -> Result<(), Error> {
        if self.function_mask == masked {
            return Ok(());
        }
        let open: Vec<usize> = (0..self.vectors.len())
            .filter(|&i| !self.vectors[i].masked)
            .collect();
        if masked {
            for &i in &open {
                self.vectors[i].irqfd.detach()?;
            }
        } else {
            self.unmask(&open)?;
        }
        self.function_mask = masked;
        Ok(())
    }

    /// Commits the routes of `idx` whose message differs from what KVM has, in one commit.
    fn sync_routes(&mut self, idx: &[usize]) -> Result<(), Error> {
        let stale: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| self.vectors[i].message != self.vectors[i].routed)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let vectors = &self.vectors;
        self.table.update(|tx| {
            stale.iter().try_for_each(|&i| {
                let v = &vectors[i];
                tx.set(v.irqfd.gsi(), Route::Msi(v.message))
            })
        })?;
        for i in stale {
            self.vectors[i].routed = self.vectors[i].message;
        }
        Ok(())
    }

    /// Masked -> unmasked for `idx`: fold the eventfd count into pending, bring routes up to
    /// date, attach with the counter drained (so KVM does not inject on attach), then fire
    /// once for each vector that was pending.
    fn unmask(&mut self, idx: &[usize]) -> Result<(), Error> {
        for &i in idx {
            let v = &mut self.vectors[i];
            v.pending |= v.irqfd.take_count() > 0;
        }
        self.sync_routes(idx)?;
        for (n, &i) in idx.iter().enumerate() {
            if let Err(e) = self.vectors[i].irqfd.attach() {
                // Leave every vector of this call masked, as the caller's state still says.
                for &j in &idx[..n] {
                    let _ = self.vectors[j].irqfd.detach();
                }
                return Err(e);
            }
        }
        for &i in idx {
            let v = &mut self.vectors[i];
            if v.pending {
                v.irqfd.trigger().map_err(Error::os("eventfd write"))?;
                v.pending = false;
            }
        }
        Ok(())
    }

    /// Guest write to the MSI-X table BAR region at `offset`. Only aligned 4- and 8-byte
    /// accesses inside the table do anything; anything else is ignored, as the PCI spec
    /// leaves it undefined. Errors are KVM's refusals, not the guest's.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let Some((vector, dword)) = self.locate(offset, data.len()) else {
            return Ok(());
        };
        for (k, chunk) in data.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let i = usize::from(vector);
            let m = self.vectors[i].message;
            match dword + k {
                0 => self.set_message(
                    vector,
                    (m.address & !0xFFFF_FFFF) | u64::from(value),
                    m.data,
                )?,
                1 => self.set_message(
                    vector,
                    (m.address & 0xFFFF_FFFF) | u64::from(value) << 32,
                    m.data,
                )?,
                2 => self.set_message(vector, m.address, value)?,
                _ => self.set_masked(vector, value & VECTOR_MASKED != 0)?,
            }
        }
        Ok(())
    }

    /// Guest read of the MSI-X table at `offset`; bytes outside the table or from malformed
    /// accesses read as zero.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((vector, dword)) = self.locate(offset, data.len()) else {
            return;
        };
        let v = &self.vectors[usize::from(vector)];
        let entry = [
            v.message.address as u32, // low half by design
            (v.message.address >> 32) as u32,
            v.message.data,
            u32::from(v.masked),
        ];
        for (k, chunk) in data.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&entry[dword + k].to_le_bytes());
        }
    }

    /// Guest read of the Pending Bit Array at `offset` (bit n = vector n); aligned 4- or
    /// 8-byte reads, anything else reads as zero.
    pub fn pba_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if !(len == 4 || len == 8) || !offset.is_multiple_of(len) {
            return;
        }
        let count = u64::from(self.count());
        // Vector number of bit 0 of the first byte; offsets past the table read as zero.
        let first = match offset.checked_mul(8) {
            Some(first) if first < count => first,
            _ => return,
        };
        for (byte, out) in data.iter_mut().enumerate() {
            for bit in 0..8 {
                let n = first + byte as u64 * 8 + bit;
                if n >= count {
                    return;
                }
                // n < count <= 2048, so it fits.
                if self.is_pending(n as u16).unwrap_or(false) {
                    *out |= 1 << bit;
                }
            }
        }
    }

    /// (vector, first dword within its entry) of an aligned 4/8-byte access inside the table.
    fn locate(&self, offset: u64, len: usize) -> Option<(u16, usize)> {
        let len = len as u64;
        if !(len == 4 || len == 8) || !offset.is_multiple_of(len) {
            return None;
        }
        let vector = u16::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        if vector >= self.count() {
            return None;
        }
        Some((vector, ((offset % MSIX_ENTRY_SIZE) / 4) as usize))
    }
}

impl<B: RoutingBackend> Drop for MsixVectors<B> {
    fn drop(&mut self) {
        let gsis: Vec<Gsi> = self.vectors.iter().map(|v| v.irqfd.gsi()).collect();
        // Irqfds unregister as they drop, before their GSIs are released.
        self.vectors.clear();
        self.table.release_best_effort(gsis);
    }
}
