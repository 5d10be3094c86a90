//! GPADLs (guest physical address descriptor lists): the guest hands the host a list of its
//! pages in a GPADL_HEADER message and, when the list does not fit in 240 bytes, GPADL_BODY
//! messages. [`GpadlBuilder`] assembles one from those untrusted messages; every length and
//! count is checked against the message and against the bounds below before anything is
//! stored.
//!
//! The range area (`range_buflen` bytes) is a sequence of 8-byte words: for each range, one
//! [`GpaRange`] word (byte count, byte offset) followed by one word per page it touches. The
//! header message carries the first words, each body message the next ones.

use zerocopy::FromBytes;

use crate::protocol::{GpaRange, GpadlBody, GpadlHeader};

/// Size of a guest page as GPADLs count them.
pub const PAGE_SIZE: u64 = 4096;
/// Most pages one GPADL can describe: `range_buflen` is a u16, so at most 8191 words, one of
/// them the range's own. Linux's integration services use 8 per channel (two rings of 4
/// pages); its largest, netvsc's receive buffer, about 7900.
pub const MAX_GPADL_PAGES: usize = (u16::MAX as usize / 8) - 1;
/// Most ranges one GPADL may hold (Linux sends 1).
pub const MAX_GPADL_RANGES: usize = 64;
/// Page frame numbers above this are beyond any guest physical address (52 bits).
pub const MAX_PFN: u64 = (1 << (52 - 12)) - 1;

/// One range of a GPADL: `byte_count` bytes starting `byte_offset` into the first page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpadlRange {
    /// Bytes covered.
    pub byte_count: u32,
    /// Offset into the first page (below 4096).
    pub byte_offset: u32,
    /// The page frame numbers, in order.
    pub pfns: Vec<u64>,
}

/// A complete GPADL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpadl {
    /// The guest's id for it.
    pub id: u32,
    /// The channel it was created for.
    pub relid: u32,
    /// Its ranges.
    pub ranges: Vec<GpadlRange>,
}

impl Gpadl {
    /// Every page frame number of every range, in order.
    pub fn pfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r.pfns.iter().copied())
    }

    /// Number of pages.
    pub fn page_count(&self) -> usize {
        self.ranges.iter().map(|r| r.pfns.len()).sum()
    }

    /// The pages as one whole-page buffer (a ring): exactly one range, starting at offset 0
    /// and covering all its pages. `None` otherwise.
    pub fn whole_pages(&self) -> Option<&[u64]> {
        match self.ranges.as_slice() {
            [r] if r.byte_offset == 0
                && u64::from(r.byte_count) == r.pfns.len() as u64 * PAGE_SIZE =>
            {
                Some(&r.pfns)
            }
            _ => None,
        }
    }
}

/// Why a GPADL message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GpadlError {
    /// The message is shorter than its fixed part.
    #[error("{what} of {len} bytes is shorter than its {need}-byte fixed part")]
    Short {
        /// Which message.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The fixed part's length.
        need: usize,
    },
    /// The page-number area is not a whole number of 8-byte words.
    #[error("{what} carries {len} bytes of ranges, not a multiple of 8")]
    Unaligned {
        /// Which message.
        what: &'static str,
        /// The bytes after the fixed part.
        len: usize,
    },
    /// `range_buflen` is zero or not a multiple of 8, or `rangecount` is zero or too large.
    #[error("range_buflen {buflen} with rangecount {count} does not describe any valid ranges")]
    BadRangeArea {
        /// `range_buflen`.
        buflen: u16,
        /// `rangecount`.
        count: u16,
    },
    /// The messages carry more words than `range_buflen` announced.
    #[error("{got} words of ranges where range_buflen announced {want}")]
    TooManyWords {
        /// Words received so far, this message included.
        got: usize,
        /// Words announced.
        want: usize,
    },
    /// A range's byte offset is not inside its first page, or it covers no bytes.
    #[error("range {index}: byte_offset {offset}, byte_count {count}")]
    BadRange {
        /// Which range.
        index: usize,
        /// Its byte offset.
        offset: u32,
        /// Its byte count.
        count: u32,
    },
    /// The ranges do not use the words exactly (`rangecount` ranges, then nothing left).
    #[error("{count} ranges need {need} words, range_buflen gives {have}")]
    RangeMismatch {
        /// `rangecount`.
        count: u16,
        /// Words the ranges need (as far as they could be parsed).
        need: usize,
        /// Words announced.
        have: usize,
    },
    /// A page frame number beyond the 52-bit physical address space.
    #[error("page frame number {pfn:#x} is beyond the physical address space")]
    BadPfn {
        /// The number.
        pfn: u64,
    },
}

/// A GPADL whose page list is still arriving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpadlBuilder {
    id: u32,
    relid: u32,
    rangecount: u16,
    range_buflen: u16,
    words: Vec<u64>,
}

/// Splits `bytes` into little-endian words, or says why not.
fn words(what: &'static str, bytes: &[u8]) -> Result<Vec<u64>, GpadlError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(GpadlError::Unaligned {
            what,
            len: bytes.len(),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect())
}

impl GpadlBuilder {
    /// Starts a GPADL from a GPADL_HEADER payload.
    pub fn from_header(payload: &[u8]) -> Result<(GpadlHeader, Self), GpadlError> {
        let need = size_of::<GpadlHeader>();
        let (header, rest) =
            GpadlHeader::read_from_prefix(payload).map_err(|_| GpadlError::Short {
                what: "GPADL_HEADER",
                len: payload.len(),
                need,
            })?;
        let (buflen, count) = (header.range_buflen, header.rangecount);
        let words_wanted = usize::from(buflen) / 8;
        // Each range needs at least its own word and one page.
        if buflen == 0
            || !buflen.is_multiple_of(8)
            || count == 0
            || usize::from(count) > MAX_GPADL_RANGES
            || usize::from(count) * 2 > words_wanted
        {
            return Err(GpadlError::BadRangeArea { buflen, count });
        }
        let first = words("GPADL_HEADER", rest)?;
        if first.len() > words_wanted {
            return Err(GpadlError::TooManyWords {
                got: first.len(),
                want: words_wanted,
            });
        }
        let mut words = Vec::with_capacity(words_wanted);
        words.extend_from_slice(&first);
        let b = Self {
            id: header.gpadl,
            relid: header.child_relid,
            rangecount: count,
            range_buflen: buflen,
            words,
        };
        b.check_ranges_so_far()?;
        Ok((header, b))
    }

    /// The GPADL id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The channel it is for.
    pub fn relid(&self) -> u32 {
        self.relid
    }

    /// Pages this GPADL will hold once complete (an upper bound before the ranges are known).
    pub fn announced_pages(&self) -> usize {
        usize::from(self.range_buflen) / 8 - usize::from(self.rangecount)
    }

    /// Whether every word has arrived.
    pub fn is_complete(&self) -> bool {
        self.words.len() == usize::from(self.range_buflen) / 8
    }

    /// Adds a GPADL_BODY payload (its `gpadl` field already matched to this builder).
    pub fn add_body(&mut self, payload: &[u8]) -> Result<(), GpadlError> {
        let need = size_of::<GpadlBody>();
        if payload.len() < need {
            return Err(GpadlError::Short {
                what: "GPADL_BODY",
                len: payload.len(),
                need,
            });
        }
        let more = words("GPADL_BODY", &payload[need..])?;
        let want = usize::from(self.range_buflen) / 8;
        if self.words.len() + more.len() > want {
            return Err(GpadlError::TooManyWords {
                got: self.words.len() + more.len(),
                want,
            });
        }
        self.words.extend_from_slice(&more);
        self.check_ranges_so_far()
    }

    /// Checks the range words received so far, so a bad range is refused at the message that
    /// carries it.
    fn check_ranges_so_far(&self) -> Result<(), GpadlError> {
        let mut at = 0;
        let mut index = 0;
        while at < self.words.len() {
            let (offset, count) = (self.words[at] >> 32, self.words[at] & 0xFFFF_FFFF);
            let (offset, count) = (offset as u32, count as u32);
            if u64::from(offset) >= PAGE_SIZE || count == 0 || index >= usize::from(self.rangecount)
            {
                return Err(GpadlError::BadRange {
                    index,
                    offset,
                    count,
                });
            }
            let pages = (u64::from(offset) + u64::from(count)).div_ceil(PAGE_SIZE) as usize;
            let end = (at + 1).saturating_add(pages);
            for &pfn in &self.words[(at + 1).min(self.words.len())..end.min(self.words.len())] {
                if pfn > MAX_PFN {
                    return Err(GpadlError::BadPfn { pfn });
                }
            }
            at = end;
            index += 1;
        }
        Ok(())
    }

    /// The finished GPADL (call when [`is_complete`](Self::is_complete)).
    pub fn finish(self) -> Result<Gpadl, GpadlError> {
        let have = usize::from(self.range_buflen) / 8;
        let mismatch = |need| GpadlError::RangeMismatch {
            count: self.rangecount,
            need,
            have,
        };
        let mut ranges = Vec::with_capacity(usize::from(self.rangecount));
        let mut at = 0;
        for _ in 0..self.rangecount {
            let Some(&w) = self.words.get(at) else {
                return Err(mismatch(at + 1));
            };
            let range = GpaRange {
                byte_count: w as u32,
                byte_offset: (w >> 32) as u32,
            };
            let pages = (u64::from(range.byte_offset) + u64::from(range.byte_count))
                .div_ceil(PAGE_SIZE) as usize;
            let end = at + 1 + pages;
            let Some(pfns) = self.words.get(at + 1..end) else {
                return Err(mismatch(end));
            };
            ranges.push(GpadlRange {
                byte_count: range.byte_count,
                byte_offset: range.byte_offset,
                pfns: pfns.to_vec(),
            });
            at = end;
        }
        if at != self.words.len() {
            return Err(mismatch(at));
        }
        Ok(Gpadl {
            id: self.id,
            relid: self.relid,
            ranges,
        })
    }
}

#[cfg(test)]
mod tests {
    use zerocopy::IntoBytes;

    use super::*;
    use crate::protocol::{ChannelMessageHeader, ChannelMessageType};

    use crate::sim::messages::gpadl as linux_gpadl;

    fn assemble(msgs: &[Vec<u8>]) -> Result<Gpadl, GpadlError> {
        let (_, mut b) = GpadlBuilder::from_header(&msgs[0])?;
        for m in &msgs[1..] {
            b.add_body(m)?;
        }
        assert!(b.is_complete());
        b.finish()
    }

    #[test]
    fn linux_ring_gpadl_in_one_message() {
        let pfns: Vec<u64> = (0x100..0x108).collect();
        let msgs = linux_gpadl(3, 0xE1E10, &pfns);
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].len() <= 240);
        let g = assemble(&msgs).unwrap();
        assert_eq!((g.id, g.relid, g.page_count()), (0xE1E10, 3, 8));
        assert_eq!(g.whole_pages(), Some(&pfns[..]));
    }

    #[test]
    fn large_gpadl_spans_header_and_bodies() {
        let pfns: Vec<u64> = (0..100).map(|i| 0x1000 + i * 3).collect();
        let msgs = linux_gpadl(1, 7, &pfns);
        assert_eq!(msgs.len(), 1 + (100usize - 26).div_ceil(28));
        assert!(msgs.iter().all(|m| m.len() <= 240));
        let (_, mut b) = GpadlBuilder::from_header(&msgs[0]).unwrap();
        assert!(!b.is_complete());
        for m in &msgs[1..] {
            b.add_body(m).unwrap();
        }
        let g = b.finish().unwrap();
        assert_eq!(g.pfns().collect::<Vec<_>>(), pfns);
    }

    #[test]
    fn multi_range_gpadl_with_offsets() {
        // Two ranges: 100 bytes at offset 4000 (two pages), then one full page.
        let mut m = GpadlHeader {
            header: ChannelMessageHeader::new(ChannelMessageType::GPADL_HEADER),
            child_relid: 1,
            gpadl: 2,
            range_buflen: 8 * 5,
            rangecount: 2,
        }
        .as_bytes()
        .to_vec();
        for w in [4000u64 << 32 | 100, 10, 11, 4096, 20] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        let g = assemble(&[m]).unwrap();
        assert_eq!(g.ranges.len(), 2);
        assert_eq!(g.ranges[0].pfns, [10, 11]);
        assert_eq!(g.ranges[1].pfns, [20]);
        assert_eq!(g.whole_pages(), None, "a ring needs one whole-page range");
    }

    fn header_with(buflen: u16, count: u16, words: &[u64]) -> Vec<u8> {
        let mut m = GpadlHeader {
            header: ChannelMessageHeader::new(ChannelMessageType::GPADL_HEADER),
            child_relid: 1,
            gpadl: 2,
            range_buflen: buflen,
            rangecount: count,
        }
        .as_bytes()
        .to_vec();
        for w in words {
            m.extend_from_slice(&w.to_le_bytes());
        }
        m
    }

    #[test]
    fn hostile_headers_are_refused() {
        let e = |m: &[u8]| GpadlBuilder::from_header(m).unwrap_err();
        assert!(matches!(
            e(&[8, 0, 0, 0]),
            GpadlError::Short { need: 20, .. }
        ));
        assert!(matches!(
            e(&header_with(0, 1, &[])),
            GpadlError::BadRangeArea { .. }
        ));
        assert!(matches!(
            e(&header_with(12, 1, &[])),
            GpadlError::BadRangeArea { .. }
        ));
        assert!(matches!(
            e(&header_with(16, 0, &[])),
            GpadlError::BadRangeArea { .. }
        ));
        assert!(
            matches!(e(&header_with(16, 2, &[])), GpadlError::BadRangeArea { .. }),
            "two ranges need at least four words"
        );
        // More words in the header than range_buflen announced.
        assert!(matches!(
            e(&header_with(16, 1, &[4096, 1, 2])),
            GpadlError::TooManyWords { got: 3, want: 2 }
        ));
        // Trailing bytes that are not a word.
        let mut m = header_with(16, 1, &[4096, 1]);
        m.push(0);
        assert!(matches!(e(&m), GpadlError::Unaligned { len: 17, .. }));
        // Offset outside the page, empty range.
        assert!(matches!(
            e(&header_with(16, 1, &[4096 << 32 | 1, 1])),
            GpadlError::BadRange { .. }
        ));
        assert!(matches!(
            e(&header_with(16, 1, &[0, 1])),
            GpadlError::BadRange { .. }
        ));
        // A page frame number beyond 52 bits of address.
        assert!(matches!(
            e(&header_with(16, 1, &[4096, MAX_PFN + 1])),
            GpadlError::BadPfn { .. }
        ));
    }

    #[test]
    fn ranges_are_bounded_at_max_gpadl_ranges() {
        // Every range one page: a range word and a page number each. The header message
        // carries the first range; bodies would bring the rest.
        let header = |count: usize| header_with((16 * count) as u16, count as u16, &[4096, 7]);
        let (_, at_bound) = GpadlBuilder::from_header(&header(MAX_GPADL_RANGES)).unwrap();
        assert_eq!(at_bound.announced_pages(), MAX_GPADL_RANGES);
        assert!(!at_bound.is_complete());
        assert!(matches!(
            GpadlBuilder::from_header(&header(MAX_GPADL_RANGES + 1)).unwrap_err(),
            GpadlError::BadRangeArea { count, .. } if usize::from(count) == MAX_GPADL_RANGES + 1
        ));
    }

    #[test]
    fn gpadl_at_the_page_bound_is_accepted() {
        // The largest range_buflen that is a multiple of 8 holds the range word and
        // MAX_GPADL_PAGES page numbers.
        let pfns: Vec<u64> = (0..MAX_GPADL_PAGES as u64).collect();
        let buflen = 8 + 8 * MAX_GPADL_PAGES;
        assert_eq!(buflen, u16::MAX as usize - 7);
        let m = header_with(buflen as u16, 1, &[(MAX_GPADL_PAGES as u64) * 4096]);
        let (_, mut b) = GpadlBuilder::from_header(&m).unwrap();
        assert_eq!(b.announced_pages(), MAX_GPADL_PAGES);
        for chunk in pfns.chunks(28) {
            let mut body = GpadlBody {
                header: ChannelMessageHeader::new(ChannelMessageType::GPADL_BODY),
                msgnumber: 0,
                gpadl: 2,
            }
            .as_bytes()
            .to_vec();
            for p in chunk {
                body.extend_from_slice(&p.to_le_bytes());
            }
            b.add_body(&body).unwrap();
        }
        assert!(b.is_complete());
        assert_eq!(b.finish().unwrap().page_count(), MAX_GPADL_PAGES);
    }

    #[test]
    fn hostile_bodies_are_refused() {
        let msgs = linux_gpadl(1, 2, &(0..30).collect::<Vec<u64>>());
        let (_, mut b) = GpadlBuilder::from_header(&msgs[0]).unwrap();
        assert!(matches!(
            b.add_body(&[9, 0, 0, 0]),
            Err(GpadlError::Short { need: 16, .. })
        ));
        let mut extra = msgs[1].clone();
        extra.extend_from_slice(&5u64.to_le_bytes());
        assert!(matches!(
            b.add_body(&extra),
            Err(GpadlError::TooManyWords { .. })
        ));
        let mut bad = msgs[1].clone();
        bad.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            b.add_body(&bad),
            Err(GpadlError::Unaligned { .. })
        ));
        b.add_body(&msgs[1]).unwrap();
        assert!(b.is_complete());
    }

    #[test]
    fn ranges_that_do_not_match_the_words_are_refused() {
        // rangecount 1 with one page, but range_buflen announces a third word: a second range
        // where only one was announced.
        assert!(matches!(
            GpadlBuilder::from_header(&header_with(24, 1, &[4096, 1, 2])),
            Err(GpadlError::BadRange { index: 1, .. })
        ));
        // A range of two pages where range_buflen leaves room for one.
        let (_, b) = GpadlBuilder::from_header(&header_with(16, 1, &[8192, 1])).unwrap();
        assert!(b.is_complete());
        assert!(matches!(
            b.finish(),
            Err(GpadlError::RangeMismatch {
                need: 3,
                have: 2,
                ..
            })
        ));
    }
}
