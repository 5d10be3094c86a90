//! Moving overlay pages under the partition's locks: a VP's page registers change (an MSR
//! write, a KVM exit, a reset), the hypercall page moves, and what that uncovers.

use std::sync::atomic::Ordering;

use synic_msr::PageRegister;
use vm_memory::{GuestAddressSpace, GuestMemory};

use super::{OverlayId, Overlays, Placement, VpPage};
use crate::delivery::PageRegs;
use crate::page;
use crate::partition::Partition;
use crate::shared::AllSints;

/// What a change of page registers uncovered, for the caller to act on once every lock is
/// released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Uncovered {
    /// VPs (by position) whose message page was placed: retry their queued messages.
    pub(crate) message_pages: [Option<usize>; 2],
    /// The hypercall page was placed at this GPA: the VMM refills it.
    pub(crate) hypercall_page: Option<u64>,
}

impl Uncovered {
    fn note(&mut self, id: OverlayId, gpa: u64) {
        match id {
            OverlayId::Vp(slot, VpPage::Simp) => {
                if let Some(free) = self.message_pages.iter_mut().find(|s| s.is_none()) {
                    *free = Some(slot);
                }
            }
            // The reference TSC page is refreshed as it is placed (`Partition::uncover`).
            OverlayId::Vp(_, VpPage::Siefp) | OverlayId::ReferenceTsc => {}
            OverlayId::Hypercall => self.hypercall_page = Some(gpa),
        }
    }
}

/// How a VP's page registers change ([`Partition::move_vp_pages`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PageMove {
    /// The registers delivery sees from now on (placements are computed).
    pub(crate) regs: PageRegs,
    /// Zero the content of the message page / event-flags page after the move (KVM SynIC
    /// v1 enable-writes zero the page).
    pub(crate) zero: [bool; 2],
    /// VP reset: after the pages are disabled, their contents are zeroed.
    pub(crate) reset: bool,
}

impl<M: GuestAddressSpace> Partition<M> {
    /// Applies new page registers of the VP at position `slot`: moves its overlays (carrying
    /// their contents), publishes registers and placements to delivery under all its SINT
    /// locks, runs `locked` under those locks too, then places overlays that were shadowed
    /// where a page left. The caller retries delivery where it needs to and acts on what
    /// [`Uncovered`] reports.
    pub(crate) fn move_vp_pages(
        &self,
        slot: usize,
        change: PageMove,
        locked: impl FnOnce(&mut AllSints<'_>),
    ) -> Uncovered {
        let mem = self.memory.memory();
        let mut overlays = self.lock_overlays();
        let shared = self.vp_at(slot);
        let mut uncovered_gpas = [None; 2];
        {
            let mut all = shared.lock_all();
            // Lift both pages before laying either: a guest that swaps the two addresses in
            // one exit (kernel mode) gets each content at the other's old place.
            let moving = [
                (VpPage::Simp, change.regs.simp),
                (VpPage::Siefp, change.regs.siefp),
            ]
            .map(|(page, reg)| {
                let id = OverlayId::Vp(slot, page);
                let to = PageRegister(reg).enabled_gpa();
                (id, to, overlays.gpa(id) != to)
            });
            for (n, &(id, _, moves)) in moving.iter().enumerate() {
                if moves {
                    uncovered_gpas[n] = overlays.lift(&*mem, id);
                }
            }
            for &(id, to, moves) in &moving {
                if let (true, Some(gpa)) = (moves, to) {
                    overlays.lay(&*mem, id, gpa);
                }
            }
            for (n, &(id, _, _)) in moving.iter().enumerate() {
                if change.zero[n] || change.reset {
                    overlays.zero_content(&*mem, id);
                }
            }
            shared.set_page_regs(&all, change.regs);
            shared.set_placements(&all, overlays.vp_placements(slot));
            locked(&mut all);
        }
        let mut uncovered = Uncovered::default();
        for gpa in uncovered_gpas.into_iter().flatten() {
            if let Some(next) = overlays.next_at(gpa) {
                self.uncover(&mut overlays, &*mem, next);
                uncovered.note(next, gpa);
            }
        }
        uncovered
    }

    /// Moves the hypercall page overlay to `gpa` (`None`: disabled; `reset`: its content is
    /// zeroed afterwards). Returns what it uncovered and whether it is placed now.
    pub(crate) fn move_hypercall_page(&self, gpa: Option<u64>, reset: bool) -> (Uncovered, bool) {
        let mem = self.memory.memory();
        let mut overlays = self.lock_overlays();
        let left = overlays.relocate(&*mem, OverlayId::Hypercall, gpa);
        if reset {
            overlays.zero_content(&*mem, OverlayId::Hypercall);
        }
        let mut uncovered = Uncovered::default();
        if let Some(old) = left {
            if let Some(next) = overlays.next_at(old) {
                self.uncover(&mut overlays, &*mem, next);
                uncovered.note(next, old);
            }
        }
        let placed = gpa.is_some() && overlays.placement(OverlayId::Hypercall) == Placement::Placed;
        (uncovered, placed)
    }

    /// Moves the reference TSC page overlay to `gpa` (`None`: disabled; `reset`: its content
    /// is zeroed afterwards) and, when it lies over RAM, rewrites its head with the current
    /// parameters. Returns what it uncovered.
    pub(crate) fn move_reference_tsc_page(&self, gpa: Option<u64>, reset: bool) -> Uncovered {
        let mem = self.memory.memory();
        let mut overlays = self.lock_overlays();
        let id = OverlayId::ReferenceTsc;
        let left = overlays.relocate(&*mem, id, gpa);
        if reset {
            overlays.zero_content(&*mem, id);
        }
        self.publish_reference_tsc(&overlays, &*mem);
        let mut uncovered = Uncovered::default();
        if let Some(old) = left {
            if let Some(next) = overlays.next_at(old) {
                self.uncover(&mut overlays, &*mem, next);
                uncovered.note(next, old);
            }
        }
        uncovered
    }

    /// Rewrites the head of the reference TSC page if it lies over RAM (registry held): the
    /// clock's TSC parameters shifted by the partition's time offset, or sequence 0 when the
    /// clock does not follow the guest TSC.
    pub(crate) fn publish_reference_tsc<G: GuestMemory + ?Sized>(
        &self,
        overlays: &Overlays,
        mem: &G,
    ) {
        let id = OverlayId::ReferenceTsc;
        if let (Some(gpa), Placement::Placed) = (overlays.gpa(id), overlays.placement(id)) {
            // Placed means the page is RAM; if it was removed since, there is nothing to show.
            if let Ok(page) = page::resolve(mem, gpa) {
                let last = self.tsc_sequence.load(Ordering::Relaxed);
                if let Ok(next) = page.publish_tsc(self.reference_tsc_parameters(), last) {
                    if next != 0 {
                        self.tsc_sequence.store(next, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Places the shadowed overlay `id` (registry held); a VP page is swapped under all its
    /// SINT locks and its placement published; the reference TSC page gets fresh parameters.
    fn uncover<G: GuestMemory + ?Sized>(&self, overlays: &mut Overlays, mem: &G, id: OverlayId) {
        match id {
            OverlayId::Vp(slot, _) => {
                let shared = self.vp_at(slot);
                let all = shared.lock_all();
                overlays.uncover(mem, id);
                shared.set_placements(&all, overlays.vp_placements(slot));
            }
            OverlayId::Hypercall => overlays.uncover(mem, id),
            OverlayId::ReferenceTsc => {
                overlays.uncover(mem, id);
                self.publish_reference_tsc(overlays, mem);
            }
        }
    }

    /// Retries delivery on the VPs whose message page was uncovered.
    pub(crate) fn redeliver_uncovered(&self, uncovered: Uncovered) {
        for slot in uncovered.message_pages.into_iter().flatten() {
            self.redeliver_all(self.vp_at(slot));
        }
    }
}
