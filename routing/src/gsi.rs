//! GSI numbers and the allocator that hands out the lowest free one.

use core::fmt;

use crate::Error;

/// A global system interrupt number: the index of an entry in KVM's routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gsi(pub u32);

impl fmt::Display for Gsi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GSI {}", self.0)
    }
}

/// Hands out GSIs `0..limit`, always the lowest free one, where `limit` is the routing table
/// size KVM reports (`KVM_CAP_IRQ_ROUTING`; KVM refuses any entry with `gsi >= limit`), or only
/// those of a narrower range ([`GsiAllocator::in_range`]).
///
/// A bitmap plus a "nothing below this is free" hint: allocation is amortised O(1) when GSIs
/// are taken in order, and a release moves the hint back so the lowest free GSI is reused first.
#[derive(Clone, Debug)]
pub struct GsiAllocator {
    /// First GSI this allocator hands out.
    first: u32,
    /// One past the last one.
    limit: u32,
    used: Vec<u64>,
    in_use: u32,
    /// Every GSI of `first..hint` is in use.
    hint: u32,
}

impl GsiAllocator {
    /// An allocator for GSIs `0..limit`, all free.
    pub fn new(limit: u32) -> Self {
        Self::in_range(limit, 0..limit)
    }

    /// An allocator for the GSIs of `range` only, of a kernel table of `table_size` GSIs: the
    /// others belong to someone else (see [`crate::RoutingTable::in_range`]) and are never
    /// handed out or reserved here. `range` is clipped to `0..table_size`.
    pub fn in_range(table_size: u32, range: core::ops::Range<u32>) -> Self {
        let limit = range.end.min(table_size);
        let first = range.start.min(limit);
        let mut used = vec![0u64; limit.div_ceil(64) as usize];
        // The GSIs below the range look taken to the search (they are not counted in use).
        for gsi in 0..first {
            used[(gsi / 64) as usize] |= 1 << (gsi % 64);
        }
        Self {
            first,
            limit,
            used,
            in_use: 0,
            hint: first,
        }
    }

    /// One past the highest GSI this allocator manages (the kernel's table size, unless built
    /// for a narrower range).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The GSIs this allocator manages.
    pub fn range(&self) -> core::ops::Range<u32> {
        self.first..self.limit
    }

    /// How many GSIs are allocated.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// True when `gsi` is allocated.
    pub fn is_allocated(&self, gsi: Gsi) -> bool {
        self.range().contains(&gsi.0) && self.used[(gsi.0 / 64) as usize] & (1 << (gsi.0 % 64)) != 0
    }

    /// The lowest free GSI, now allocated; [`Error::GsiExhausted`] names the limit when every
    /// GSI is taken.
    pub fn allocate(&mut self) -> Result<Gsi, Error> {
        let mut word = (self.hint / 64) as usize;
        while word < self.used.len() {
            let free = !self.used[word];
            if free != 0 {
                let gsi = word as u32 * 64 + free.trailing_zeros();
                if gsi >= self.limit {
                    break;
                }
                self.used[word] |= 1 << (gsi % 64);
                self.in_use += 1;
                self.hint = gsi + 1;
                return Ok(Gsi(gsi));
            }
            word += 1;
        }
        self.hint = self.limit;
        Err(Error::GsiExhausted { limit: self.limit })
    }

    /// Allocates exactly `gsi` (for routes that must sit at a fixed number, such as the legacy
    /// PIC/IOAPIC pins). Fails if it is out of range or already allocated.
    pub fn reserve(&mut self, gsi: Gsi) -> Result<(), Error> {
        if !self.range().contains(&gsi.0) {
            return Err(Error::GsiOutOfRange {
                gsi,
                limit: self.limit,
            });
        }
        if self.is_allocated(gsi) {
            return Err(Error::GsiInUse { gsi });
        }
        self.used[(gsi.0 / 64) as usize] |= 1 << (gsi.0 % 64);
        self.in_use += 1;
        Ok(())
    }

    /// Frees `gsi`; it becomes the next one handed out if it is now the lowest free.
    pub fn release(&mut self, gsi: Gsi) -> Result<(), Error> {
        if !self.is_allocated(gsi) {
            return Err(Error::GsiNotAllocated { gsi });
        }
        self.used[(gsi.0 / 64) as usize] &= !(1 << (gsi.0 % 64));
        self.in_use -= 1;
        self.hint = self.hint.min(gsi.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_reuses_released() {
        let mut a = GsiAllocator::new(130);
        for n in 0..130 {
            assert_eq!(a.allocate().unwrap(), Gsi(n));
        }
        a.release(Gsi(70)).unwrap();
        a.release(Gsi(3)).unwrap();
        assert_eq!(a.allocate().unwrap(), Gsi(3));
        assert_eq!(a.allocate().unwrap(), Gsi(70));
        assert_eq!(a.in_use(), 130);
    }

    #[test]
    fn exhaustion_names_the_limit() {
        let mut a = GsiAllocator::new(65);
        for _ in 0..65 {
            a.allocate().unwrap();
        }
        let err = a.allocate().unwrap_err();
        assert!(matches!(err, Error::GsiExhausted { limit: 65 }));
        assert!(err.to_string().contains("65"), "{err}");
    }

    #[test]
    fn reserve_skips_fixed_gsis_and_refuses_duplicates() {
        let mut a = GsiAllocator::new(8);
        a.reserve(Gsi(0)).unwrap();
        a.reserve(Gsi(2)).unwrap();
        assert!(matches!(a.reserve(Gsi(2)), Err(Error::GsiInUse { .. })));
        assert!(matches!(
            a.reserve(Gsi(8)),
            Err(Error::GsiOutOfRange { limit: 8, .. })
        ));
        assert_eq!(a.allocate().unwrap(), Gsi(1));
        assert_eq!(a.allocate().unwrap(), Gsi(3));
    }

    #[test]
    fn release_of_free_gsi_is_an_error() {
        let mut a = GsiAllocator::new(4);
        assert!(matches!(
            a.release(Gsi(1)),
            Err(Error::GsiNotAllocated { .. })
        ));
        assert!(matches!(
            a.release(Gsi(99)),
            Err(Error::GsiNotAllocated { .. })
        ));
    }

    #[test]
    fn a_range_allocator_stays_inside_its_range() {
        let mut a = GsiAllocator::in_range(4096, 1000..1003);
        assert_eq!(a.range(), 1000..1003);
        assert_eq!(a.allocate().unwrap(), Gsi(1000));
        assert!(matches!(
            a.reserve(Gsi(5)),
            Err(Error::GsiOutOfRange { .. })
        ));
        assert!(!a.is_allocated(Gsi(5)));
        a.reserve(Gsi(1002)).unwrap();
        assert_eq!(a.allocate().unwrap(), Gsi(1001));
        assert!(matches!(a.allocate(), Err(Error::GsiExhausted { .. })));
        a.release(Gsi(1001)).unwrap();
        assert_eq!(a.allocate().unwrap(), Gsi(1001));
        assert_eq!(a.in_use(), 3);
        // Clipped to the kernel's table.
        assert_eq!(GsiAllocator::in_range(64, 60..100).range(), 60..64);
    }

    #[test]
    fn zero_sized_table_is_immediately_exhausted() {
        let mut a = GsiAllocator::new(0);
        assert!(matches!(
            a.allocate(),
            Err(Error::GsiExhausted { limit: 0 })
        ));
    }
}
