//! GPA overlay pages (TLFS "GPA Overlay Pages"), emulated by swapping page contents.
//!
//! SIMP, SIEFP, the hypercall page and the reference TSC page are overlay pages:
//! the hypervisor owns a page and lays it over the guest physical page its register names.
//! While it is enabled the guest sees the overlay, not the RAM underneath; disabling uncovers
//! that RAM untouched; the overlay keeps its content across disable and re-enable, even at
//! another address, and is zeroed only at VP reset.
//!
//! The library cannot remap guest memory (the embedding VMM owns its memory slots), so an
//! overlay is emulated by copying: **placing** an overlay at `gpa` keeps the RAM page's bytes
//! in a host buffer and copies the overlay's content into RAM; **lifting** it copies the
//! content back out and puts the RAM bytes back. So exactly one of the two pages lives in
//! RAM, and the host keeps the other one ([`PageImage`], sparse: all-zero 256-byte chunks
//! are not stored, an all-zero page costs nothing).
//!
//! Overlays at one address: the TLFS lets the hypervisor pick which one is visible and makes
//! the next one visible when the top one goes. Here the first overlay placed at a GPA stays on
//! top; an overlay enabled where another is placed is **shadowed** (its content stays in its
//! host buffer; message delivery holds messages back as for a disabled message page, event
//! flags are refused) until the top one leaves, when the first shadowed one (hypercall page,
//! reference TSC page, then VP order, message page before event-flags page) is placed in its
//! turn. An overlay
//! enabled at an address that is not wholly RAM is **unbacked**: its content stays in the
//! host buffer and delivery refuses with `PageNotInRam`, as before overlays existed.
//!
//! Locking (docs/synic-design.md): one registry mutex per partition ([`Overlays`]) serialises
//! every placement change; a VP page is swapped while holding that VP's 16 SINT locks as well,
//! so no host delivery writes the page mid-copy. Order: partition registers, registry, timer
//! mutex, SINT locks.

use std::collections::BTreeMap;

use vm_memory::GuestMemory;

use crate::error::Error;
use crate::message::PAGE_SIZE;
use crate::page;

mod image;
mod moves;

use image::PageImage;
pub(crate) use moves::{PageMove, Uncovered};

/// Where an enabled overlay is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Placement {
    /// In guest RAM at its GPA (or the overlay is disabled: nothing to say).
    #[default]
    Placed = 0,
    /// Under another overlay placed at the same GPA: its content is in the host buffer.
    Shadowed = 1,
    /// At a GPA that is not wholly guest RAM: its content is in the host buffer.
    Unbacked = 2,
}

impl Placement {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            1 => Placement::Shadowed,
            2 => Placement::Unbacked,
            _ => Placement::Placed,
        }
    }
}

/// The placements of a VP's message and event-flags pages, packed for delivery (one byte in
/// the VP's shared state, written under all its SINT locks, read under one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PagePlacements(pub(crate) u8);

impl PagePlacements {
    fn new(simp: Placement, siefp: Placement) -> Self {
        Self(simp as u8 | (siefp as u8) << 2)
    }

    /// Where the message page is.
    pub(crate) fn simp(self) -> Placement {
        Placement::from_bits(self.0)
    }

    /// Where the event-flags page is.
    pub(crate) fn siefp(self) -> Placement {
        Placement::from_bits(self.0 >> 2)
    }
}

/// One of a VP's two overlay pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VpPage {
    /// `SIMP`, the message page.
    Simp = 0,
    /// `SIEFP`, the event-flags page.
    Siefp = 1,
}

/// An overlay page of the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OverlayId {
    /// A page of the VP at this position (creation number) in the partition.
    Vp(usize, VpPage),
    /// The partition's hypercall page (userspace mode).
    Hypercall,
    /// The partition's reference TSC page (userspace mode).
    ReferenceTsc,
}

/// One overlay's host-side state.
#[derive(Clone, Debug, Default)]
struct Overlay {
    /// The page base its register enables it at; `None` when disabled.
    gpa: Option<u64>,
    placement: Placement,
    /// Placed: the RAM it covers. Otherwise: its own content.
    hidden: PageImage,
}

/// Every overlay of a partition and which GPAs they cover.
#[derive(Debug)]
pub(crate) struct Overlays {
    vps: Box<[[Overlay; 2]]>,
    hypercall: Overlay,
    reference_tsc: Overlay,
    /// The overlay placed at each GPA.
    placed: BTreeMap<u64, OverlayId>,
    /// How many overlays are shadowed (no search for one to uncover while 0).
    shadowed: usize,
}

/// One overlay page's saved state: the page the host keeps for it.
///
/// Part of [`VpState`](crate::VpState) (message and event-flags pages) and
/// [`PartitionState`](crate::PartitionState) (hypercall page from state version 3, reference
/// TSC page from version 4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayState {
    /// `true`: the overlay lay over guest RAM at its register's address when saved, so its
    /// content is in guest memory there and `page` is the RAM it hid. `false` (disabled, under
    /// another overlay at the same address, or at an address that is not RAM): `page` is the
    /// overlay's own content.
    pub placed: bool,
    /// 4096 bytes, or empty when they are all zero.
    pub page: Vec<u8>,
}

impl Overlays {
    /// No overlay enabled, every content zero.
    pub(crate) fn new(vps: usize) -> Self {
        Self {
            vps: (0..vps).map(|_| Default::default()).collect(),
            hypercall: Overlay::default(),
            reference_tsc: Overlay::default(),
            placed: BTreeMap::new(),
            shadowed: 0,
        }
    }

    fn get(&self, id: OverlayId) -> &Overlay {
        match id {
            OverlayId::Vp(slot, page) => &self.vps[slot][page as usize],
            OverlayId::Hypercall => &self.hypercall,
            OverlayId::ReferenceTsc => &self.reference_tsc,
        }
    }

    fn get_mut(&mut self, id: OverlayId) -> &mut Overlay {
        match id {
            OverlayId::Vp(slot, page) => &mut self.vps[slot][page as usize],
            OverlayId::Hypercall => &mut self.hypercall,
            OverlayId::ReferenceTsc => &mut self.reference_tsc,
        }
    }

    /// Where the overlay is enabled (`None`: disabled).
    pub(crate) fn gpa(&self, id: OverlayId) -> Option<u64> {
        self.get(id).gpa
    }

    /// Where an enabled overlay is.
    pub(crate) fn placement(&self, id: OverlayId) -> Placement {
        self.get(id).placement
    }

    /// The placements of VP `slot`'s two pages, for delivery.
    pub(crate) fn vp_placements(&self, slot: usize) -> PagePlacements {
        PagePlacements::new(
            self.placement(OverlayId::Vp(slot, VpPage::Simp)),
            self.placement(OverlayId::Vp(slot, VpPage::Siefp)),
        )
    }

    /// Lifts overlay `id` off the RAM it covers, if placed: its content goes to the host
    /// buffer, the RAM it hid goes back. Returns the GPA it uncovered. The overlay is disabled
    /// afterwards (its content kept).
    fn lift<G: GuestMemory + ?Sized>(&mut self, mem: &G, id: OverlayId) -> Option<u64> {
        let overlay = self.get_mut(id);
        let gpa = overlay.gpa.take();
        let placement = std::mem::take(&mut overlay.placement);
        match (gpa, placement) {
            (Some(gpa), Placement::Placed) => {
                overlay.hidden = match page::resolve(mem, gpa) {
                    Ok(page) => {
                        let mut content = [0u8; PAGE_SIZE];
                        let mut ram = [0u8; PAGE_SIZE];
                        overlay.hidden.expand(&mut ram);
                        // A page that is RAM cannot fail a whole-page access; if it did, the
                        // content and the RAM it hid are lost, nothing else.
                        let _ = page.read_all(&mut content);
                        if content != ram {
                            let _ = page.write_all(&ram);
                        }
                        PageImage::of(&content)
                    }
                    // The RAM was removed under the overlay: its content went with it.
                    Err(_) => PageImage::default(),
                };
                self.placed.remove(&gpa);
                Some(gpa)
            }
            (Some(_), Placement::Shadowed) => {
                self.shadowed -= 1;
                None
            }
            _ => None,
        }
    }

    /// Enables overlay `id` (currently disabled) at `gpa`: placed when nothing else covers the
    /// page and it is RAM, shadowed when another overlay is placed there, unbacked otherwise.
    fn lay<G: GuestMemory + ?Sized>(&mut self, mem: &G, id: OverlayId, gpa: u64) {
        let placement = if self.placed.contains_key(&gpa) {
            self.shadowed += 1;
            Placement::Shadowed
        } else if let Ok(page) = page::resolve(mem, gpa) {
            let overlay = self.get_mut(id);
            let mut content = [0u8; PAGE_SIZE];
            let mut ram = [0u8; PAGE_SIZE];
            overlay.hidden.expand(&mut content);
            let _ = page.read_all(&mut ram);
            if content != ram {
                let _ = page.write_all(&content);
            }
            overlay.hidden = PageImage::of(&ram);
            self.placed.insert(gpa, id);
            Placement::Placed
        } else {
            Placement::Unbacked
        };
        let overlay = self.get_mut(id);
        overlay.gpa = Some(gpa);
        overlay.placement = placement;
    }

    /// Moves overlay `id` to `gpa` (`None`: disables it), carrying its content along. Returns
    /// the GPA it uncovered, where a shadowed overlay may now be placed ([`Self::next_at`]).
    pub(crate) fn relocate<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        id: OverlayId,
        gpa: Option<u64>,
    ) -> Option<u64> {
        if self.get(id).gpa == gpa {
            return None;
        }
        let uncovered = self.lift(mem, id);
        if let Some(gpa) = gpa {
            self.lay(mem, id, gpa);
        }
        uncovered
    }

    /// Zeroes overlay `id`'s content, wherever it is (VP reset; KVM SynIC v1 enable-writes).
    pub(crate) fn zero_content<G: GuestMemory + ?Sized>(&mut self, mem: &G, id: OverlayId) {
        let overlay = self.get_mut(id);
        match (overlay.gpa, overlay.placement) {
            (Some(gpa), Placement::Placed) => {
                if let Ok(page) = page::resolve(mem, gpa) {
                    let _ = page.write_all(&[0u8; PAGE_SIZE]);
                }
            }
            _ => overlay.hidden = PageImage::default(),
        }
    }

    /// The first shadowed overlay enabled at `gpa`, when nothing is placed there any more.
    pub(crate) fn next_at(&self, gpa: u64) -> Option<OverlayId> {
        if self.shadowed == 0 || self.placed.contains_key(&gpa) {
            return None;
        }
        let waiting = |o: &Overlay| o.gpa == Some(gpa) && o.placement == Placement::Shadowed;
        if waiting(&self.hypercall) {
            return Some(OverlayId::Hypercall);
        }
        if waiting(&self.reference_tsc) {
            return Some(OverlayId::ReferenceTsc);
        }
        self.vps.iter().enumerate().find_map(|(slot, pages)| {
            [VpPage::Simp, VpPage::Siefp]
                .into_iter()
                .find(|&p| waiting(&pages[p as usize]))
                .map(|p| OverlayId::Vp(slot, p))
        })
    }

    /// Places a shadowed overlay whose cover went away.
    pub(crate) fn uncover<G: GuestMemory + ?Sized>(&mut self, mem: &G, id: OverlayId) {
        let overlay = self.get_mut(id);
        if overlay.placement != Placement::Shadowed {
            return;
        }
        let Some(gpa) = overlay.gpa.take() else {
            return;
        };
        overlay.placement = Placement::Placed;
        self.shadowed -= 1;
        self.lay(mem, id, gpa);
    }

    /// The saved form of overlay `id`.
    pub(crate) fn save(&self, id: OverlayId) -> OverlayState {
        let overlay = self.get(id);
        OverlayState {
            placed: overlay.gpa.is_some() && overlay.placement == Placement::Placed,
            page: overlay.hidden.to_saved(),
        }
    }

    /// Checks that `state` can be installed for overlay `id` enabled at `gpa` (restore).
    pub(crate) fn check_install<G: GuestMemory + ?Sized>(
        &self,
        mem: &G,
        id: OverlayId,
        gpa: Option<u64>,
        state: &OverlayState,
    ) -> Result<(), Error> {
        let mismatch = |what| Err(Error::StateMismatch { what });
        if PageImage::from_saved(&state.page).is_none() {
            return mismatch("an overlay page is neither empty nor 4096 bytes");
        }
        if state.placed {
            let Some(gpa) = gpa else {
                return mismatch("an overlay is placed but its register is disabled");
            };
            if page::resolve(mem, gpa).is_err() {
                return mismatch("an overlay is placed at an address that is not RAM");
            }
            if self.placed.get(&gpa).is_some_and(|&other| other != id) {
                return mismatch("two overlays are placed at one address");
            }
        }
        Ok(())
    }

    /// Installs a saved overlay without touching guest memory (which was restored with it):
    /// placed as saved; a saved overlay that was not placed is shadowed when its address is
    /// RAM and unbacked otherwise. Call [`Self::check_install`] first.
    pub(crate) fn install<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        id: OverlayId,
        gpa: Option<u64>,
        state: &OverlayState,
    ) {
        self.forget(id);
        let overlay = self.get_mut(id);
        overlay.hidden = PageImage::from_saved(&state.page).unwrap_or_default();
        overlay.gpa = gpa;
        let Some(gpa) = gpa else {
            return;
        };
        overlay.placement = if state.placed {
            Placement::Placed
        } else if page::resolve(mem, gpa).is_ok() {
            Placement::Shadowed
        } else {
            Placement::Unbacked
        };
        match overlay.placement {
            Placement::Placed => {
                self.placed.insert(gpa, id);
            }
            Placement::Shadowed => self.shadowed += 1,
            Placement::Unbacked => {}
        }
    }

    /// Installs overlay `id` from a state version without overlays (1 and 2, whose model
    /// wrote into guest RAM directly): an enabled page is placed over RAM taken to be zero
    /// (what it hid was overwritten long ago) unless its address is taken or not RAM; a
    /// disabled page's content is zero.
    pub(crate) fn install_legacy<G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
        id: OverlayId,
        gpa: Option<u64>,
    ) {
        self.forget(id);
        let Some(gpa) = gpa else {
            return;
        };
        let placed = !self.placed.contains_key(&gpa) && page::resolve(mem, gpa).is_ok();
        let state = OverlayState {
            placed,
            page: Vec::new(),
        };
        self.install(mem, id, Some(gpa), &state);
    }

    /// Drops overlay `id`'s state without touching guest memory.
    fn forget(&mut self, id: OverlayId) {
        let overlay = std::mem::take(self.get_mut(id));
        match (overlay.gpa, overlay.placement) {
            (Some(gpa), Placement::Placed) => {
                self.placed.remove(&gpa);
            }
            (Some(_), Placement::Shadowed) => self.shadowed -= 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn fill(mem: &GuestMemoryMmap<()>, gpa: u64, byte: u8) {
        mem.write_slice(&[byte; PAGE_SIZE], GuestAddress(gpa))
            .unwrap();
    }

    fn page(mem: &GuestMemoryMmap<()>, gpa: u64) -> Vec<u8> {
        let mut out = vec![0u8; PAGE_SIZE];
        mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
        out
    }

    const SIMP: OverlayId = OverlayId::Vp(0, VpPage::Simp);
    const SIEFP: OverlayId = OverlayId::Vp(0, VpPage::Siefp);

    #[test]
    fn enable_shows_the_overlay_disable_gives_the_ram_back_and_moves_carry_the_content() {
        let m = mem();
        let mut o = Overlays::new(1);
        fill(&m, 0x1000, 0xAA);
        fill(&m, 0x2000, 0xBB);
        assert_eq!(o.relocate(&m, SIMP, Some(0x1000)), None);
        assert_eq!(
            page(&m, 0x1000),
            vec![0; PAGE_SIZE],
            "fresh overlay is zero"
        );
        m.write_slice(b"overlay", GuestAddress(0x1010)).unwrap();
        // Move: the old page is RAM again, the overlay content is at the new place.
        assert_eq!(o.relocate(&m, SIMP, Some(0x2000)), Some(0x1000));
        assert_eq!(page(&m, 0x1000), vec![0xAA; PAGE_SIZE]);
        assert_eq!(&page(&m, 0x2000)[0x10..0x17], b"overlay");
        // Disable: RAM back, content kept by the host; re-enable shows it again.
        assert_eq!(o.relocate(&m, SIMP, None), Some(0x2000));
        assert_eq!(page(&m, 0x2000), vec![0xBB; PAGE_SIZE]);
        assert_eq!(o.save(SIMP).page.len(), PAGE_SIZE);
        o.relocate(&m, SIMP, Some(0x3000));
        assert_eq!(&page(&m, 0x3000)[0x10..0x17], b"overlay");
        // Reset zeroes the content.
        o.relocate(&m, SIMP, None);
        o.zero_content(&m, SIMP);
        assert!(o.save(SIMP).page.is_empty());
        o.relocate(&m, SIMP, Some(0x3000));
        assert_eq!(page(&m, 0x3000), vec![0; PAGE_SIZE]);
    }

    #[test]
    fn a_second_overlay_at_one_address_waits_under_the_first_and_is_uncovered_after_it() {
        let m = mem();
        let mut o = Overlays::new(1);
        fill(&m, 0x1000, 0x11);
        o.relocate(&m, SIMP, Some(0x1000));
        m.write_slice(b"simp", GuestAddress(0x1000)).unwrap();
        o.relocate(&m, SIEFP, Some(0x4000));
        m.write_slice(b"siefp", GuestAddress(0x4000)).unwrap();
        assert_eq!(o.relocate(&m, SIEFP, Some(0x1000)), Some(0x4000));
        assert_eq!(o.placement(SIEFP), Placement::Shadowed);
        assert_eq!(&page(&m, 0x1000)[..4], b"simp");
        assert_eq!(o.next_at(0x1000), None, "SIMP still covers it");
        let left = o.relocate(&m, SIMP, None);
        assert_eq!(left, Some(0x1000));
        assert_eq!(o.next_at(0x1000), Some(SIEFP));
        o.uncover(&m, SIEFP);
        assert_eq!(o.placement(SIEFP), Placement::Placed);
        assert_eq!(&page(&m, 0x1000)[..5], b"siefp");
        o.relocate(&m, SIEFP, None);
        assert_eq!(
            page(&m, 0x1000),
            vec![0x11; PAGE_SIZE],
            "the RAM under both"
        );
        assert_eq!(o.shadowed, 0);
        assert!(o.placed.is_empty());
    }

    #[test]
    fn an_overlay_outside_ram_keeps_its_content_in_the_host() {
        let m = mem();
        let mut o = Overlays::new(1);
        o.relocate(&m, SIMP, Some(0x1000));
        m.write_slice(b"kept", GuestAddress(0x1000)).unwrap();
        o.relocate(&m, SIMP, Some(0x10_0000));
        assert_eq!(o.placement(SIMP), Placement::Unbacked);
        assert_eq!(page(&m, 0x1000), vec![0; PAGE_SIZE]);
        o.relocate(&m, SIMP, Some(0x2000));
        assert_eq!(&page(&m, 0x2000)[..4], b"kept");
    }
}
