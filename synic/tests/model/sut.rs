//! The system under test: the model, the simulated guest, and the bookkeeping that checks
//! them after every operation.

use std::collections::{BTreeSet, HashSet};

use synic::{
    Error, FlagOutcome, HvMessage, MessageType, Mode, PartitionConfig, SynicExit, VpCounters,
    VpIndex,
};
use synic_msr::{index, Profile, Sint};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

use crate::common::{self, clear_dirty, dirty_pages, id_of, Harness};
use crate::{Isr, Op, Setup, CAPACITY, PAGES, SIEFP, SINTS};

/// The model plus the simulated guest and the bookkeeping that checks it.
pub(crate) struct Sut {
    setup: Setup,
    config: PartitionConfig,
    pub(crate) h: Harness,
    /// The guest's view of its registers.
    scontrol: u64,
    simp: u64,
    siefp: u64,
    sints: [Sint; SINTS as usize],
    next_id: u64,
    /// Per SINT: ids accepted by post_message, in order.
    accepted: Vec<Vec<u64>>,
    /// Per SINT: ids the guest consumed, in order.
    received: Vec<Vec<u64>>,
    /// Ids handed back by a reset.
    returned: HashSet<u64>,
    seen: HashSet<u64>,
    /// Event flags the guest has not cleared, per SINT.
    flags: Vec<BTreeSet<u32>>,
    /// Per SINT: the guest broke the protocol (saw MessagePending and did not EOM, or wrote
    /// its slot) and no redelivery trigger has happened since.
    owes: [bool; SINTS as usize],
    /// Counters and raise count before the current step.
    before: VpCounters,
    raises_before: usize,
}

/// The page a SIMP value enables, when it is in guest RAM.
fn ram_page(simp: u64) -> Option<u64> {
    (simp & 1 != 0 && simp & !0xFFF != PAGES[3]).then_some(simp & !0xFFF)
}

fn real_type(ty: u32) -> bool {
    ty == 1 || ty == MessageType::TIMER_EXPIRED.0
}

impl Sut {
    pub(crate) fn new(setup: Setup) -> Self {
        let config =
            PartitionConfig::new(setup.mode, setup.profile, 1).with_queue_capacity(CAPACITY);
        let h = Harness::with_config(config);
        let scontrol = h.partition.synic_view(VpIndex(0)).unwrap().scontrol.0;
        let mut sut = Self {
            setup,
            config,
            h,
            scontrol,
            simp: 0,
            siefp: 0,
            sints: [Sint::RESET; SINTS as usize],
            next_id: 0,
            accepted: vec![Vec::new(); SINTS as usize],
            received: vec![Vec::new(); SINTS as usize],
            returned: HashSet::new(),
            seen: HashSet::new(),
            flags: vec![BTreeSet::new(); SINTS as usize],
            owes: [false; SINTS as usize],
            before: VpCounters::default(),
            raises_before: 0,
        };
        // Start from a working guest; the operations then break and repair it.
        sut.set_scontrol(1);
        sut.set_siefp(SIEFP | 1);
        sut.set_simp(PAGES[0] | 1);
        for s in 0..SINTS {
            sut.set_sint(s, Sint::new(0x40 + s, false, false));
        }
        sut
    }

    fn user(&self) -> bool {
        self.setup.mode == Mode::Userspace
    }

    fn kernel_exit(&mut self, msr: u32) {
        let exit = SynicExit {
            msr,
            control: self.scontrol,
            evt_page: self.siefp,
            msg_page: self.simp,
        };
        self.h.vps[0].apply_synic_exit(exit).unwrap();
    }

    fn set_scontrol(&mut self, value: u64) {
        if !self.user() || (self.scontrol & 1 == 0 && value & 1 == 1) {
            self.owes = [false; SINTS as usize];
        }
        self.scontrol = value;
        if self.user() {
            self.h.wrmsr(0, index::SCONTROL, value);
        } else {
            self.kernel_exit(index::SCONTROL);
        }
    }

    fn set_siefp(&mut self, value: u64) {
        self.siefp = value;
        if self.user() {
            self.h.wrmsr(0, index::SIEFP, value);
        } else {
            self.kernel_exit(index::SIEFP);
        }
    }

    /// Writes SIMP, then the guest reads what it left in the old page (it is still its RAM).
    fn set_simp(&mut self, value: u64) {
        self.owes = [false; SINTS as usize];
        let old = self.simp;
        self.simp = value;
        if self.user() {
            self.h.wrmsr(0, index::SIMP, value);
        } else {
            self.kernel_exit(index::SIMP);
        }
        if let Some(page) = ram_page(old).filter(|_| old != value) {
            for s in 0..SINTS {
                self.consume(page, s);
            }
        }
    }

    fn set_sint(&mut self, s: u8, value: Sint) {
        self.sints[usize::from(s)] = value;
        if self.user() {
            self.h.wrmsr(0, index::SINT0 + u32::from(s), value.0);
        }
    }

    fn page(&self) -> Option<u64> {
        ram_page(self.simp)
    }

    fn eom(&mut self) {
        self.owes = [false; SINTS as usize];
        if self.user() {
            self.h.eom(0);
        } else {
            // KVM acks every SINT's resamplefd on EOM.
            for s in 0..16u32 {
                self.h
                    .partition
                    .ack(VpIndex(0), s)
                    .unwrap_or_else(|e| match e {
                        Error::PageNotInRam { .. } => synic::Acked::Spurious,
                        e => panic!("ack: {e}"),
                    });
            }
        }
    }

    /// The guest consumes a real message from a slot: record it, clear the type. Returns
    /// MessagePending as read after clearing, or None when the slot held no real message.
    fn consume(&mut self, page: u64, s: u8) -> Option<bool> {
        let m = self.h.slot_at(page, s);
        let ty = m.header.message_type.0;
        if ty == 0 {
            return None;
        }
        let pending = self.h.guest_free_slot_at(page, s);
        if real_type(ty) {
            let id = id_of(&m);
            assert!(self.seen.insert(id), "message {id} delivered twice");
            let sint_received = &mut self.received[usize::from(s)];
            if let Some(&last) = sint_received.last() {
                assert!(id > last, "SINT{s}: {id} after {last}: not FIFO");
            }
            assert!(
                self.accepted[usize::from(s)].contains(&id),
                "{id} never accepted on SINT{s}"
            );
            sint_received.push(id);
        }
        Some(pending)
    }

    pub(crate) fn apply(&mut self, op: &Op) {
        clear_dirty(&self.h.mem);
        let simp_before = self.page();
        match *op {
            Op::Post { sint, hypervisor } => self.post(sint, hypervisor),
            Op::Isr { sint, how } => {
                let Some(page) = self.page() else { return };
                if how == Isr::Peek {
                    let _ = self.h.slot_at(page, sint);
                } else if self.consume(page, sint) == Some(true) {
                    match how {
                        Isr::Good => self.eom(),
                        _ => self.owes[usize::from(sint)] = true,
                    }
                }
            }
            Op::Eom => self.eom(),
            Op::Ack { sint } => {
                self.owes[usize::from(sint)] = false;
                let r = self.h.partition.ack(VpIndex(0), u32::from(sint));
                assert!(r.is_ok() || self.page().is_none(), "{r:?}");
            }
            Op::Scribble { sint, ty, byte } => {
                let Some(page) = self.page() else { return };
                self.consume(page, sint);
                let mut garbage = HvMessage::new(MessageType(ty), 0, &[byte; 240]).unwrap();
                garbage.header.message_flags.0 = byte;
                let at = GuestAddress(page + 256 * u64::from(sint));
                self.h.mem.write_slice(garbage.as_bytes(), at).unwrap();
                // The guest's own write: not the host's.
                clear_dirty(&self.h.mem);
                self.owes[usize::from(sint)] = true;
            }
            Op::DisableSimp => self.set_simp(self.simp & !1),
            Op::SetSimp { page } => self.set_simp(PAGES[page] | 1),
            Op::Scontrol { enabled } => self.set_scontrol(u64::from(enabled)),
            Op::Siefp { enabled } => self.set_siefp(SIEFP | u64::from(enabled)),
            Op::SintConfig {
                sint,
                masked,
                polling,
                auto_eoi,
            } => {
                self.set_sint(
                    sint,
                    Sint::new(0x40 + sint, auto_eoi, polling).with_masked(masked),
                );
            }
            Op::Signal { sint, flag } => self.signal(sint, flag),
            Op::ClearFlags { sint } => {
                let at = GuestAddress(SIEFP + 256 * u64::from(sint));
                self.h.mem.write_slice(&[0u8; 256], at).unwrap();
                clear_dirty(&self.h.mem);
                self.flags[usize::from(sint)].clear();
            }
            Op::SaveRestore => self.save_restore(),
            Op::Reset => self.reset(),
        }
        self.check_step(op, simp_before);
    }

    fn post(&mut self, s: u8, hypervisor: bool) {
        let id = self.next_id;
        self.next_id += 1;
        let ty = if hypervisor {
            MessageType::TIMER_EXPIRED
        } else {
            MessageType(1)
        };
        let m = HvMessage::new(ty, 0, &id.to_le_bytes()).unwrap();
        let p = &self.h.partition;
        let r = if hypervisor {
            p.post_hypervisor_message(VpIndex(0), u32::from(s), m)
        } else {
            p.post_message(VpIndex(0), u32::from(s), m)
        };
        match r {
            Ok(_) => {
                self.accepted[usize::from(s)].push(id);
                self.owes[usize::from(s)] = false;
            }
            Err(e) => {
                assert_eq!(e.message, m, "a refused message comes back unchanged");
                let gated = self.setup.profile == Profile::Tlfs && self.scontrol & 1 == 0;
                match e.error {
                    Error::QueueFull { capacity, .. } => {
                        assert_eq!(capacity, CAPACITY);
                        assert_eq!(self.outstanding(s), CAPACITY + self.in_slot(s));
                    }
                    Error::SynicDisabled { .. } => assert!(gated),
                    Error::PageNotInRam { .. } => assert_eq!(self.simp, PAGES[3] | 1),
                    e => panic!("unexpected refusal: {e}"),
                }
            }
        }
    }

    fn signal(&mut self, s: u8, flag: u32) {
        let r = self
            .h
            .partition
            .signal_event(VpIndex(0), u32::from(s), flag);
        let sint = self.sints[usize::from(s)];
        let expected = if self.setup.profile == Profile::Tlfs && self.scontrol & 1 == 0 {
            Err(Error::SynicDisabled { vp: VpIndex(0) })
        } else if self.siefp & 1 == 0 {
            Err(Error::EventFlagsPageDisabled { vp: VpIndex(0) })
        } else if self.user() && sint.masked() {
            Err(Error::SintMasked {
                vp: VpIndex(0),
                sint: common::sint(s),
            })
        } else if self.flags[usize::from(s)].insert(flag) {
            Ok(FlagOutcome::Set)
        } else {
            Ok(FlagOutcome::AlreadySet)
        };
        assert_eq!(r, expected);
        if r.is_ok() {
            assert!(self.h.flag_is_set_at(SIEFP, s, flag));
        }
    }

    fn save_restore(&mut self) {
        self.owes = [false; SINTS as usize];
        let vp_state = self.h.vps[0].save();
        let part_state = self.h.partition.save();
        let fresh = Harness::with_memory(self.config, self.h.mem.clone());
        self.h = fresh;
        self.before = VpCounters::default();
        self.raises_before = 0;
        self.h.partition.restore(&part_state).unwrap();
        self.h.vps[0].restore(&vp_state).unwrap();
        // Queues may differ now: restore retries delivery (a slot freed without EOM fills).
        assert_eq!(self.h.vps[0].save().registers, vp_state.registers);
    }

    fn reset(&mut self) {
        self.owes = [false; SINTS as usize];
        let old_page = self.page();
        for (s, m) in self.h.vps[0].reset() {
            let id = id_of(&m);
            assert!(s.get() < SINTS && self.accepted[s.as_usize()].contains(&id));
            assert!(self.returned.insert(id) && !self.seen.contains(&id));
        }
        let view = self.h.partition.synic_view(VpIndex(0)).unwrap();
        self.scontrol = view.scontrol.0;
        // In kernel mode KVM keeps its registers; the model's view resets until the next exit.
        self.simp = view.simp.0;
        self.siefp = view.siefp.0;
        if self.user() {
            self.sints = [Sint::RESET; SINTS as usize];
        }
        // What was delivered before the reset is still in the guest's RAM; it reads it.
        if let Some(page) = old_page {
            for s in 0..SINTS {
                self.consume(page, s);
            }
        }
    }

    /// Accepted on `s` and neither received nor returned.
    fn outstanding(&self, s: u8) -> usize {
        self.accepted[usize::from(s)]
            .iter()
            .filter(|id| !self.seen.contains(id) && !self.returned.contains(id))
            .count()
    }

    /// 1 when the current message page holds an unconsumed real message for `s`.
    fn in_slot(&self, s: u8) -> usize {
        match self.page() {
            Some(page) => usize::from(real_type(self.h.slot_at(page, s).header.message_type.0)),
            None => 0,
        }
    }

    fn check_step(&mut self, op: &Op, simp_before: Option<u64>) {
        let now = self.h.partition.counters(VpIndex(0)).unwrap();
        let raises = self.h.raised();
        for s in 0..SINTS {
            let c = now.sints[usize::from(s)];
            // Conservation: every accepted message is somewhere.
            assert_eq!(
                self.outstanding(s),
                c.queued as usize + self.in_slot(s),
                "SINT{s} after {op:?}: accepted messages unaccounted for"
            );
            // Liveness: unless the guest broke the protocol, a queued message sits behind a
            // busy slot that tells the guest to write EOM.
            let gated = self.setup.profile == Profile::Tlfs && self.scontrol & 1 == 0;
            if let Some(page) = self.page().filter(|_| !gated && !self.owes[usize::from(s)]) {
                if c.queued > 0 {
                    let slot = self.h.slot_at(page, s);
                    assert!(
                        !slot.header.message_type.is_none() && slot.header.message_flags.pending(),
                        "SINT{s} after {op:?}: {} queued behind a slot without MessagePending",
                        c.queued
                    );
                }
            }
            // Interrupts: one per delivery and per flag set, unless masked or polling.
            let b = self.before.sints[usize::from(s)];
            let work = (c.delivered - b.delivered) + (c.flags_set - b.flags_set);
            let sint = self.sints[usize::from(s)];
            let raising = !self.user() || sint.raises_interrupt();
            let new_raises: Vec<_> = raises[self.raises_before..]
                .iter()
                .filter(|r| r.1.get() == s)
                .collect();
            let expected = if raising { work as usize } else { 0 };
            assert_eq!(new_raises.len(), expected, "SINT{s} raises after {op:?}");
            if self.user() {
                for r in new_raises {
                    assert_eq!((r.2, r.3), (sint.vector(), sint.auto_eoi()));
                }
            }
        }
        self.before = now;
        self.raises_before = raises.len();
        // The host wrote only the message page(s) in force and the event-flags page.
        let allowed: Vec<u64> = [simp_before, self.page(), Some(SIEFP)]
            .into_iter()
            .flatten()
            .collect();
        for page in dirty_pages(&self.h.mem) {
            assert!(
                allowed.contains(&page),
                "host wrote page {page:#x} after {op:?}"
            );
        }
    }

    /// A well-behaved guest repairs everything and drains: nothing may be left behind.
    pub(crate) fn drain(&mut self) {
        self.set_scontrol(1);
        self.set_simp(PAGES[1] | 1);
        for s in 0..SINTS {
            self.set_sint(s, Sint::new(0x40 + s, false, false));
        }
        for _ in 0..(CAPACITY + 2) * 4 {
            for s in 0..SINTS {
                // Garbage from scribbles is consumed too.
                if self.consume(PAGES[1], s) == Some(true) {
                    self.eom();
                }
            }
            self.eom();
        }
        for s in 0..SINTS {
            let lost: Vec<_> = self.accepted[usize::from(s)]
                .iter()
                .filter(|id| !self.seen.contains(id) && !self.returned.contains(id))
                .collect();
            assert!(lost.is_empty(), "SINT{s}: lost {lost:?}");
            assert_eq!(self.h.counters(0, s).queued, 0);
        }
    }
}
