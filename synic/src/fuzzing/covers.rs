//! The checker's own account of the VP's two overlay pages (TLFS "GPA Overlay Pages"): where
//! each one is, the page the host must be keeping for it, and what every guest page a register
//! change touches must hold afterwards. It follows the rules of docs/synic-design.md
//! ("Overlay pages") on byte arrays, apart from the model's code, and the checker compares
//! guest memory with it after every register change.

use std::collections::BTreeMap;

/// Bytes in a page.
pub(super) const PAGE: usize = 4096;

/// A page's bytes.
pub(super) type PageBytes = Box<[u8; PAGE]>;

/// A zero page.
pub(super) fn zero_page() -> PageBytes {
    Box::new([0u8; PAGE])
}

/// Where an overlay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Spot {
    /// Disabled.
    Off,
    /// Laid over guest RAM at this address.
    Placed(u64),
    /// Enabled at this address, under the other overlay placed there first.
    Shadowed(u64),
    /// Enabled at an address that is not RAM.
    Unbacked(u64),
}

impl Spot {
    /// The address it is enabled at.
    pub(super) fn gpa(self) -> Option<u64> {
        match self {
            Spot::Off => None,
            Spot::Placed(g) | Spot::Shadowed(g) | Spot::Unbacked(g) => Some(g),
        }
    }
}

/// One overlay.
#[derive(Clone, Debug)]
pub(super) struct Cover {
    /// Where it is.
    pub(super) spot: Spot,
    /// Placed: the RAM it hides. Otherwise: its own content.
    pub(super) hidden: PageBytes,
}

/// The message page (`[0]`) and the event-flags page (`[1]`).
#[derive(Clone, Debug)]
pub(super) struct Covers {
    pub(super) c: [Cover; 2],
}

/// What a register change did, beyond the pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Changed {
    /// The message page went from not placed to placed (moved onto RAM or uncovered): the
    /// model retried delivery on it.
    pub(super) message_page_placed: bool,
}

impl Covers {
    /// Both disabled, both contents zero.
    pub(super) fn new() -> Self {
        let off = || Cover {
            spot: Spot::Off,
            hidden: zero_page(),
        };
        Self { c: [off(), off()] }
    }

    /// The message page's content as it stands (from `ram` when placed).
    pub(super) fn content(&self, n: usize, ram: impl Fn(u64) -> PageBytes) -> PageBytes {
        match self.c[n].spot {
            Spot::Placed(g) => ram(g),
            _ => self.c[n].hidden.clone(),
        }
    }

    /// Every address an overlay is enabled at.
    pub(super) fn gpas(&self) -> impl Iterator<Item = u64> + '_ {
        self.c.iter().filter_map(|c| c.spot.gpa())
    }

    fn placed_at(&self, gpa: u64) -> Option<usize> {
        (0..2).find(|&n| self.c[n].spot == Spot::Placed(gpa))
    }

    fn lift(&mut self, n: usize, ram: &mut BTreeMap<u64, PageBytes>) -> Option<u64> {
        let spot = std::mem::replace(&mut self.c[n].spot, Spot::Off);
        let Spot::Placed(g) = spot else {
            return None;
        };
        let page = ram.get_mut(&g).expect("snapshot holds every page touched");
        std::mem::swap(page, &mut self.c[n].hidden);
        Some(g)
    }

    fn lay(
        &mut self,
        n: usize,
        g: u64,
        ram: &mut BTreeMap<u64, PageBytes>,
        in_ram: &impl Fn(u64) -> bool,
    ) {
        self.c[n].spot = if self.placed_at(g).is_some() {
            Spot::Shadowed(g)
        } else if in_ram(g) {
            let page = ram.get_mut(&g).expect("snapshot holds every page touched");
            std::mem::swap(page, &mut self.c[n].hidden);
            Spot::Placed(g)
        } else {
            Spot::Unbacked(g)
        };
    }

    /// The registers now enable the pages at `to` (`None`: disabled). `ram` holds, before,
    /// every page in RAM at an old or new address and, after, what those pages must hold.
    /// `reset`: the contents are zeroed once the pages are off.
    pub(super) fn change(
        &mut self,
        ram: &mut BTreeMap<u64, PageBytes>,
        to: [Option<u64>; 2],
        reset: bool,
        in_ram: impl Fn(u64) -> bool,
    ) -> Changed {
        let was_placed = matches!(self.c[0].spot, Spot::Placed(_));
        let moves: Vec<usize> = (0..2).filter(|&n| self.c[n].spot.gpa() != to[n]).collect();
        let mut freed = Vec::new();
        for &n in &moves {
            freed.extend(self.lift(n, ram));
        }
        for &n in &moves {
            if let Some(g) = to[n] {
                self.lay(n, g, ram, &in_ram);
            }
        }
        if reset {
            for c in &mut self.c {
                c.hidden = zero_page();
            }
        }
        // Where a page left, the first overlay waiting under it (message page first) is laid.
        for g in freed {
            if self.placed_at(g).is_none() {
                if let Some(n) = (0..2).find(|&n| self.c[n].spot == Spot::Shadowed(g)) {
                    self.c[n].spot = Spot::Off;
                    self.lay(n, g, ram, &in_ram);
                }
            }
        }
        Changed {
            message_page_placed: !was_placed && matches!(self.c[0].spot, Spot::Placed(_)),
        }
    }
}

/// The message type in slot `s` of a page.
fn slot_type(page: &[u8; PAGE], s: usize) -> u32 {
    let at = 256 * s;
    u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
}

/// Whether `actual` is the page the checker expects. On the message page (`message_page`) a
/// slot may also differ because the change's redelivery wrote a message into it while it was
/// free (`delivered(s)`: the SINT's delivered counter moved) or set MessagePending on it while
/// it was busy. `Err(s)`: the first slot that differs otherwise.
pub(super) fn same_but_for_redelivery(
    expected: &[u8; PAGE],
    actual: &[u8; PAGE],
    message_page: bool,
    delivered: impl Fn(usize) -> bool,
) -> Result<(), usize> {
    for s in 0..PAGE / 256 {
        let range = 256 * s..256 * (s + 1);
        if expected[range.clone()] == actual[range.clone()] {
            continue;
        }
        let mut pending = *expected;
        pending[256 * s + 5] |= 1;
        let redelivered = (slot_type(expected, s) == 0 && delivered(s))
            || pending[range.clone()] == actual[range];
        if !(message_page && redelivered) {
            return Err(s);
        }
    }
    Ok(())
}
