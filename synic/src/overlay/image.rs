//! A page the host keeps for an overlay: sparse, only its non-zero 256-byte chunks stored.

use std::fmt;

use crate::message::PAGE_SIZE;

/// Bytes per chunk of a [`PageImage`]: one message slot, or one SINT's event flags.
const CHUNK: usize = 256;

/// A 4 KiB page kept by the host: only its non-zero 256-byte chunks are stored.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct PageImage {
    /// Bit `i`: chunk `i` is stored (non-zero).
    present: u16,
    /// The stored chunks, in chunk order.
    chunks: Box<[[u8; CHUNK]]>,
}

impl fmt::Debug for PageImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageImage({:#06x})", self.present)
    }
}

impl PageImage {
    /// The image of `bytes`.
    pub(super) fn of(bytes: &[u8; PAGE_SIZE]) -> Self {
        let mut present = 0u16;
        let mut chunks = Vec::new();
        for (i, chunk) in bytes.chunks_exact(CHUNK).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                present |= 1 << i;
            }
        }
        if present != 0 {
            chunks.reserve_exact(present.count_ones() as usize);
            for (i, chunk) in bytes.chunks_exact(CHUNK).enumerate() {
                if present & (1 << i) != 0 {
                    let mut c = [0u8; CHUNK];
                    c.copy_from_slice(chunk);
                    chunks.push(c);
                }
            }
        }
        Self {
            present,
            chunks: chunks.into_boxed_slice(),
        }
    }

    /// Writes the page into `out`.
    pub(super) fn expand(&self, out: &mut [u8; PAGE_SIZE]) {
        let mut stored = self.chunks.iter();
        for (i, chunk) in out.chunks_exact_mut(CHUNK).enumerate() {
            let next = if self.present & (1 << i) != 0 {
                stored.next()
            } else {
                None
            };
            match next {
                Some(c) => chunk.copy_from_slice(c),
                None => chunk.fill(0),
            }
        }
    }

    pub(super) fn is_zero(&self) -> bool {
        self.present == 0
    }

    /// Host bytes this image holds on the heap.
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// The saved form: 4096 bytes, or nothing for an all-zero page.
    pub(super) fn to_saved(&self) -> Vec<u8> {
        if self.is_zero() {
            return Vec::new();
        }
        let mut page = [0u8; PAGE_SIZE];
        self.expand(&mut page);
        page.to_vec()
    }

    /// Reads a saved form back; `None` unless it is empty or exactly 4096 bytes.
    pub(super) fn from_saved(bytes: &[u8]) -> Option<Self> {
        match bytes.len() {
            0 => Some(Self::default()),
            PAGE_SIZE => {
                let mut page = [0u8; PAGE_SIZE];
                page.copy_from_slice(bytes);
                Some(Self::of(&page))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_image_stores_only_non_zero_chunks_and_round_trips() {
        let mut bytes = [0u8; PAGE_SIZE];
        assert!(PageImage::of(&bytes).is_zero());
        assert_eq!(PageImage::of(&bytes).heap_bytes(), 0);
        bytes[3 * CHUNK + 7] = 9;
        bytes[15 * CHUNK] = 1;
        let image = PageImage::of(&bytes);
        assert_eq!(image.heap_bytes(), 2 * CHUNK);
        let mut out = [0xFFu8; PAGE_SIZE];
        image.expand(&mut out);
        assert_eq!(out, bytes);
        for pattern in [0x00u8, 0x5A] {
            let mut all = [pattern; PAGE_SIZE];
            all[100] = 3;
            let mut out = [0x11u8; PAGE_SIZE];
            PageImage::of(&all).expand(&mut out);
            assert_eq!(out, all);
        }
        assert_eq!(PageImage::from_saved(&image.to_saved()), Some(image));
        assert_eq!(PageImage::from_saved(&[1, 2]), None);
    }
}
