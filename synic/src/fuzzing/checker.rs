//! The model checker: the partition, the simulated guest, and the bookkeeping that checks
//! them after every operation. A violated rule panics with a description of the step.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use synic_msr::{index, Change, Origin, Profile, Sint};
use vm_memory::GuestAddress;
use zerocopy::IntoBytes;

use super::covers::{same_but_for_redelivery, Covers, PageBytes, Spot, PAGE};
use super::guest::{clear_dirty, dirty_pages, guest_write, guest_write_byte, Harness, Mem};
use super::op::{Isr, Op, Setup, PAGES, RAM_END, SIEFP_PAGES, SINTS};
use crate::testing::RaiseEvent;
use crate::{
    Error, FlagOutcome, HvMessage, MessageType, Mode, PartitionConfig, SynicExit, VpCounters,
    VpIndex,
};

/// The first 16 payload bytes of every message the checker posts; with the type (1, or
/// timer-expired on the hypervisor path) it tells a real message from guest garbage.
pub const MAGIC: [u8; 16] = *b"synic-fuzz-msg\x00\x01";

const S: usize = SINTS as usize;

/// The message the checker posts as number `id`.
fn message(id: u64, hypervisor: bool) -> HvMessage {
    let ty = if hypervisor {
        MessageType::TIMER_EXPIRED
    } else {
        MessageType(1)
    };
    let mut payload = [0u8; 24];
    payload[..16].copy_from_slice(&MAGIC);
    payload[16..].copy_from_slice(&id.to_le_bytes());
    HvMessage::new(ty, 0, &payload).expect("24-byte payload")
}

/// The id of a real message, `None` for garbage.
fn real_id(m: &HvMessage) -> Option<u64> {
    let ty = m.header.message_type;
    let real_type = ty == MessageType(1) || ty == MessageType::TIMER_EXPIRED;
    (real_type && m.payload[..16] == MAGIC).then(|| {
        let mut id = [0u8; 8];
        id.copy_from_slice(&m.payload[16..24]);
        u64::from_le_bytes(id)
    })
}

/// The 4 KiB page at `gpa` lies entirely in guest RAM.
fn in_ram(gpa: u64) -> bool {
    gpa <= RAM_END - 0x1000
}

/// STIMERn_CONFIG.
fn is_stimer_config(msr: u32) -> bool {
    (index::STIMER0_CONFIG..=index::STIMER3_COUNT).contains(&msr) && msr.is_multiple_of(2)
}

/// The page a page register enables (in RAM or not).
fn enabled_page(reg: u64) -> Option<u64> {
    (reg & 1 != 0).then_some(reg & !0xFFF)
}

/// The message in slot `s` of a page.
fn slot_message(page: &[u8; PAGE], s: usize) -> HvMessage {
    use zerocopy::FromBytes;
    HvMessage::read_from_bytes(&page[256 * s..256 * (s + 1)]).expect("256 bytes")
}

/// The partition and simulated guest, checked after every [`apply`](Self::apply).
#[derive(Debug)]
pub struct Checker {
    setup: Setup,
    config: PartitionConfig,
    /// The partition, its VP and guest memory.
    pub harness: Harness,
    /// The guest's view of its registers.
    scontrol: u64,
    simp: u64,
    siefp: u64,
    sints: [Sint; S],
    next_id: u64,
    /// Per SINT: ids accepted by a post.
    accepted: [HashSet<u64>; S],
    /// Per SINT: the last id the guest consumed.
    last_received: [Option<u64>; S],
    /// Per SINT: messages accepted and neither consumed nor handed back.
    outstanding: [usize; S],
    /// Ids handed back by a reset.
    returned: HashSet<u64>,
    /// Ids in the message page's slots at a reset, which zeroed the page with them (TLFS: the
    /// overlay pages are zeroed at VP reset): delivered, and gone with the guest's state.
    wiped: HashSet<u64>,
    /// The message and event-flags overlay pages as the checker expects them.
    covers: Covers,
    /// Ids the guest consumed.
    seen: HashSet<u64>,
    /// Per SINT: the guest broke the protocol (saw MessagePending and did not EOM, or wrote
    /// its slot) and no redelivery trigger has happened since.
    owes: [bool; S],
    /// Counters before the current step.
    before: VpCounters,
}

impl Checker {
    /// A partition for `setup` whose guest has enabled SCONTROL, both pages and SINTs
    /// 0..[`SINTS`].
    pub fn new(setup: Setup) -> Self {
        let config =
            PartitionConfig::new(setup.mode, setup.profile, 1).with_queue_capacity(setup.capacity);
        let mem = Mem::from_ranges(&[(GuestAddress(0), RAM_END as usize)]).unwrap();
        let harness = Harness::with_memory(config, Arc::new(mem));
        let scontrol = harness.partition.synic_view(VpIndex(0)).unwrap().scontrol.0;
        let mut checker = Self {
            setup,
            config,
            harness,
            scontrol,
            simp: 0,
            siefp: 0,
            sints: [Sint::RESET; S],
            next_id: 0,
            accepted: Default::default(),
            last_received: [None; S],
            outstanding: [0; S],
            returned: HashSet::new(),
            wiped: HashSet::new(),
            covers: Covers::new(),
            seen: HashSet::new(),
            owes: [false; S],
            before: VpCounters::default(),
        };
        // Start from a working guest; the operations then break and repair it.
        checker.well_behaved_registers();
        checker
    }

    /// Messages accepted so far, on all SINTs.
    pub fn accepted(&self) -> usize {
        self.accepted.iter().map(HashSet::len).sum()
    }

    /// Messages the guest consumed so far.
    pub fn received(&self) -> usize {
        self.seen.len()
    }

    fn user(&self) -> bool {
        self.setup.mode == Mode::Userspace
    }

    fn gated(&self) -> bool {
        self.setup.profile == Profile::Tlfs && self.scontrol & 1 == 0
    }

    /// The message page, when it lies over RAM (the guest sees it).
    fn page(&self) -> Option<u64> {
        match self.covers.c[0].spot {
            Spot::Placed(g) => Some(g),
            _ => None,
        }
    }

    /// The bytes of the guest page at `gpa`.
    fn read_page(&self, gpa: u64) -> PageBytes {
        let mut page = Box::new([0u8; PAGE]);
        vm_memory::Bytes::read_slice(&*self.harness.mem, &mut page[..], GuestAddress(gpa))
            .expect("a page in RAM");
        page
    }

    /// The guest pages in RAM at `gpas`, before a register change touches them.
    fn snapshot(&self, gpas: impl IntoIterator<Item = u64>) -> BTreeMap<u64, PageBytes> {
        gpas.into_iter()
            .filter(|&g| in_ram(g))
            .map(|g| (g, self.read_page(g)))
            .collect()
    }

    /// After a register change: moves the checker's overlay pages to the registers' new
    /// addresses on `snapshot` (the pages as they were) and compares every touched page with
    /// guest memory. The message page may differ only where the change's redelivery wrote a
    /// message into a free slot or set MessagePending on a busy one.
    fn check_overlays(
        &mut self,
        mut snapshot: BTreeMap<u64, PageBytes>,
        reset: bool,
        before: &VpCounters,
        what: &str,
    ) {
        let to = [enabled_page(self.simp), enabled_page(self.siefp)];
        let changed = self.covers.change(&mut snapshot, to, reset, in_ram);
        if changed.message_page_placed {
            // Placing the message page retries delivery on every SINT.
            self.owes = [false; S];
        }
        let now = self.harness.partition.counters(VpIndex(0)).unwrap();
        let delivered = |s: usize| now.sints[s].delivered > before.sints[s].delivered;
        for (gpa, expected) in &snapshot {
            let actual = self.read_page(*gpa);
            let message_page = Some(*gpa) == self.page();
            if let Err(s) = same_but_for_redelivery(expected, &actual, message_page, delivered) {
                panic!(
                    "{what}: page {gpa:#x} slot {s} holds {:?}, expected {:?} (overlays {:?})",
                    slot_message(&actual, s),
                    slot_message(expected, s),
                    [self.covers.c[0].spot, self.covers.c[1].spot],
                );
            }
        }
    }

    fn well_behaved_registers(&mut self) {
        for (msr, value) in [
            (index::SCONTROL, 1),
            (index::SIEFP, SIEFP_PAGES[0] | 1),
            (index::SIMP, PAGES[1] | 1),
        ] {
            assert!(self.write_reg(msr, value), "{msr:#x} = {value:#x} refused");
        }
        for s in 0..SINTS {
            let value = Sint::new(0x40 + s, false, false).0;
            assert!(self.write_reg(index::SINT0 + u32::from(s), value));
        }
    }

    /// The guest writes an MSR; returns whether it was accepted. Userspace mode: the model
    /// decides and the checker re-reads what it stored; kernel mode: KVM stores SCONTROL,
    /// SIMP and SIEFP as written and reports them in an exit, acks every SINT on EOM, and
    /// keeps SINTs to itself.
    fn write_reg(&mut self, msr: u32, value: u64) -> bool {
        let moves_pages =
            matches!(msr, index::SIMP | index::SIEFP) || (!self.user() && msr == index::SCONTROL);
        let snapshot = moves_pages.then(|| {
            let gpas: Vec<u64> = self.covers.gpas().chain([value & !0xFFF]).collect();
            self.snapshot(gpas)
        });
        let counters = self.harness.partition.counters(VpIndex(0)).unwrap();
        let what = format!("{msr:#x} = {value:#x}");
        if self.user() {
            let before = self.read_registers();
            match self.harness.vps[0].wrmsr(msr, value, Origin::Guest) {
                Ok(w) => {
                    self.refresh_registers();
                    if matches!(
                        w.outcome.change,
                        Change::Eom
                            | Change::MessagePage(_)
                            | Change::SynicEnable { enabled: true }
                    ) {
                        self.owes = [false; S];
                    }
                }
                Err(e) => {
                    assert_eq!(
                        self.read_registers(),
                        before,
                        "refused write {msr:#x} = {value:#x} ({e}) changed registers"
                    );
                    if let Some(snapshot) = snapshot {
                        self.check_overlays(snapshot, false, &counters, &what);
                    }
                    return false;
                }
            }
        } else {
            match msr {
                index::SCONTROL => self.scontrol = value,
                index::SIMP => self.simp = value,
                index::SIEFP => self.siefp = value,
                index::EOM => {
                    self.kernel_eom();
                    return true;
                }
                _ => {
                    let n = msr.wrapping_sub(index::SINT0);
                    if n < u32::from(SINTS) {
                        self.sints[n as usize] = Sint(value);
                        return true;
                    }
                    return msr == index::SINT15;
                }
            }
            let exit = SynicExit {
                msr,
                control: self.scontrol,
                evt_page: self.siefp,
                msg_page: self.simp,
            };
            self.harness.vps[0].apply_synic_exit(exit).unwrap();
            // Every exit retries delivery on all SINTs.
            self.owes = [false; S];
        }
        // Overlay pages: a page that moved or was disabled took its content (messages in its
        // slots included) along and uncovered the RAM it hid.
        if let Some(snapshot) = snapshot {
            self.check_overlays(snapshot, false, &counters, &what);
        }
        true
    }

    fn host_read(&self, msr: u32) -> u64 {
        self.harness.vps[0].rdmsr(msr, Origin::Host).unwrap()
    }

    fn read_registers(&self) -> [u64; 3 + S] {
        let mut out = [0; 3 + S];
        out[0] = self.host_read(index::SCONTROL);
        out[1] = self.host_read(index::SIMP);
        out[2] = self.host_read(index::SIEFP);
        for s in 0..S {
            out[3 + s] = self.host_read(index::SINT0 + s as u32);
        }
        out
    }

    fn refresh_registers(&mut self) {
        let r = self.read_registers();
        self.scontrol = r[0];
        self.simp = r[1];
        self.siefp = r[2];
        for s in 0..S {
            self.sints[s] = Sint(r[3 + s]);
        }
    }

    fn eom(&mut self) {
        if self.user() {
            // Valid in every profile; an EOM before activation cannot happen here.
            assert!(self.write_reg(index::EOM, 0));
        } else {
            self.kernel_eom();
        }
    }

    /// KVM acks every SINT's resamplefd on EOM.
    fn kernel_eom(&mut self) {
        self.owes = [false; S];
        for s in 0..16u32 {
            if let Err(e) = self.harness.partition.ack(VpIndex(0), s) {
                self.expect_page_error(e, "ack after EOM");
            }
        }
    }

    /// A delivery attempt may fail only because the enabled message page is outside RAM.
    fn expect_page_error(&self, e: Error, what: &str) {
        let gpa = self.simp & !0xFFF;
        assert!(
            self.simp & 1 == 1 && !in_ram(gpa) && e == Error::PageNotInRam { gpa },
            "{what}: {e} (SIMP {:#x})",
            self.simp
        );
    }

    /// The guest consumes a message from a slot: copy it out, wipe sender and payload (so
    /// stale bytes never pass for a message later), clear the type, read MessagePending.
    /// Returns MessagePending, or None when the slot was empty.
    fn consume(&mut self, page: u64, s: u8) -> Option<bool> {
        let m = self.harness.slot_at(page, s);
        if m.header.message_type.is_none() {
            return None;
        }
        let slot = page + 256 * u64::from(s);
        guest_write(&self.harness.mem, slot + 8, &[0u8; 248]);
        let pending = self.harness.guest_free_slot_at(page, s);
        if let Some(id) = real_id(&m) {
            let i = usize::from(s);
            assert!(self.seen.insert(id), "message {id} delivered twice");
            assert!(
                !self.returned.contains(&id) && !self.wiped.contains(&id),
                "message {id} delivered after a reset returned or wiped it"
            );
            if let Some(last) = self.last_received[i] {
                assert!(id > last, "SINT{s}: {id} after {last}: not FIFO");
            }
            assert!(
                self.accepted[i].contains(&id),
                "{id} never accepted on SINT{s}"
            );
            self.last_received[i] = Some(id);
            self.outstanding[i] -= 1;
        }
        Some(pending)
    }

    /// The guest is about to write its own bytes over slot `s` of the current message page
    /// (directly, or through an event-flags page on the same page): it takes the message
    /// first, and has broken the slot protocol.
    fn guest_takes_slot(&mut self, s: u8) {
        if let Some(page) = self.page() {
            self.consume(page, s);
        }
        self.owes[usize::from(s)] = true;
    }

    /// Applies `op` and checks every rule; panics with a description on a violation.
    pub fn apply(&mut self, op: &Op) {
        clear_dirty(&self.harness.mem);
        let pages_before: Vec<u64> = self.covers.gpas().collect();
        match *op {
            Op::Post { sint, hypervisor } => self.post(sint, hypervisor),
            Op::Isr { sint, how } => {
                let Some(page) = self.page() else { return };
                if how == Isr::Peek {
                    let _ = self.harness.slot_at(page, sint);
                } else if self.consume(page, sint) == Some(true) {
                    match how {
                        Isr::Good => self.eom(),
                        _ => self.owes[usize::from(sint)] = true,
                    }
                }
            }
            Op::Eom => self.eom(),
            Op::Ack { sint } => self.ack(sint),
            Op::Scribble { sint, ty, byte } => {
                let Some(page) = self.page() else { return };
                self.guest_takes_slot(sint);
                let mut garbage = HvMessage::new(MessageType(0), 0, &[byte; 240]).unwrap();
                garbage.header.message_type = MessageType(ty);
                garbage.header.message_flags.0 = byte;
                let at = page + 256 * u64::from(sint);
                guest_write(&self.harness.mem, at, garbage.as_bytes());
            }
            Op::Poke {
                sint,
                offset,
                value,
            } => {
                let Some(page) = self.page() else { return };
                if offset < 4 {
                    // Rewriting message_type: the guest has taken the message.
                    self.guest_takes_slot(sint);
                }
                self.owes[usize::from(sint)] = true;
                let at = page + 256 * u64::from(sint) + u64::from(offset % 16);
                guest_write_byte(&self.harness.mem, at, value);
            }
            Op::DisableSimp => {
                assert!(self.write_reg(index::SIMP, self.simp & !1));
            }
            Op::SetSimp { page } => {
                let value = PAGES[usize::from(page)] | 1;
                let accepted = self.write_reg(index::SIMP, value);
                // Only the TLFS profile refuses, and only a page beyond the address width.
                assert!(
                    accepted || (self.user() && self.setup.profile == Profile::Tlfs),
                    "SIMP = {value:#x} refused"
                );
            }
            Op::Scontrol { enabled } => {
                assert!(self.write_reg(index::SCONTROL, u64::from(enabled)));
            }
            Op::Siefp { page, enabled } => {
                let value = SIEFP_PAGES[usize::from(page)] | u64::from(enabled);
                let accepted = self.write_reg(index::SIEFP, value);
                assert!(accepted || (self.user() && self.setup.profile == Profile::Tlfs));
            }
            Op::SintConfig {
                sint,
                masked,
                polling,
                auto_eoi,
            } => {
                let value = Sint::new(0x40 + sint, auto_eoi, polling).with_masked(masked);
                assert!(self.write_reg(index::SINT0 + u32::from(sint), value.0));
            }
            Op::Wrmsr { index, value } => {
                self.write_reg(index, value);
            }
            Op::Signal { sint, flag } => self.signal(sint, flag),
            Op::ClearFlags { sint } => {
                let gpa = self.siefp & !0xFFF;
                if in_ram(gpa) {
                    if Some(gpa) == self.page() {
                        self.guest_takes_slot(sint);
                    }
                    guest_write(&self.harness.mem, gpa + 256 * u64::from(sint), &[0u8; 256]);
                }
            }
            Op::Tick { ticks } => {
                self.harness.clock.advance(u64::from(ticks));
                self.harness.partition.poll_timers();
            }
            Op::SaveRestore => self.save_restore(),
            Op::Reset => self.reset(),
        }
        self.check_step(op, pages_before);
    }

    fn post(&mut self, s: u32, hypervisor: bool) {
        let id = self.next_id;
        self.next_id += 1;
        let m = message(id, hypervisor);
        let p = &self.harness.partition;
        let r = if hypervisor {
            p.post_hypervisor_message(VpIndex(0), s, m)
        } else {
            p.post_message(VpIndex(0), s, m)
        };
        match r {
            Ok(_) => {
                assert!(s < u32::from(SINTS), "post to SINT {s} accepted");
                self.accepted[s as usize].insert(id);
                self.outstanding[s as usize] += 1;
                // A post retries delivery of what was queued.
                self.owes[s as usize] = false;
            }
            Err(e) => {
                assert_eq!(e.message, m, "a refused message comes back unchanged");
                if s >= u32::from(SINTS) {
                    assert_eq!(e.error, Error::InvalidSint { sint: s });
                    return;
                }
                match e.error {
                    Error::QueueFull { capacity, .. } => {
                        assert_eq!(capacity, self.setup.capacity);
                        let sint = s as u8;
                        assert_eq!(
                            self.outstanding(sint),
                            capacity + self.in_slot(sint),
                            "queue full too early"
                        );
                    }
                    Error::SynicDisabled { .. } => assert!(self.gated()),
                    e => self.expect_page_error(e, "post"),
                }
            }
        }
    }

    fn ack(&mut self, s: u32) {
        let r = self.harness.partition.ack(VpIndex(0), s);
        if s >= u32::from(SINTS) {
            if s >= 16 {
                assert_eq!(r, Err(Error::InvalidSint { sint: s }));
            }
            return;
        }
        self.owes[s as usize] = false;
        if let Err(e) = r {
            self.expect_page_error(e, "ack");
        }
    }

    fn signal(&mut self, s: u32, flag: u32) {
        let flags_gpa = self.siefp & !0xFFF;
        let expected = if s >= 16 {
            Err(Error::InvalidSint { sint: s })
        } else if flag >= 2048 {
            Err(Error::InvalidFlag { flag })
        } else if s >= u32::from(SINTS) {
            // Not tracked: only the argument checks are predicted.
            let _ = self.harness.partition.signal_event(VpIndex(0), s, flag);
            return;
        } else if self.gated() {
            Err(Error::SynicDisabled { vp: VpIndex(0) })
        } else if self.siefp & 1 == 0 {
            Err(Error::EventFlagsPageDisabled { vp: VpIndex(0) })
        } else if self.user() && self.sints[s as usize].masked() {
            Err(Error::SintMasked {
                vp: VpIndex(0),
                sint: crate::SintIndex::ALL[s as usize],
            })
        } else if self.covers.c[1].spot == Spot::Shadowed(flags_gpa) {
            // Under the message page enabled at the same address first.
            Err(Error::PageShadowed { gpa: flags_gpa })
        } else if !in_ram(flags_gpa) {
            Err(Error::PageNotInRam { gpa: flags_gpa })
        } else if self.harness.flag_is_set_at(flags_gpa, s as u8, flag) {
            Ok(FlagOutcome::AlreadySet)
        } else {
            Ok(FlagOutcome::Set)
        };
        let r = self.harness.partition.signal_event(VpIndex(0), s, flag);
        assert_eq!(r, expected, "signal SINT{s} flag {flag}");
        if r.is_ok() {
            assert!(self.harness.flag_is_set_at(flags_gpa, s as u8, flag));
        }
    }

    fn save_restore(&mut self) {
        self.owes = [false; S];
        let vp_state = self.harness.vps[0].save();
        let part_state = self.harness.partition.save();
        let fresh = Harness::with_memory(self.config, self.harness.mem.clone());
        self.harness = fresh;
        self.before = VpCounters::default();
        self.harness.partition.restore(&part_state).unwrap();
        self.harness.vps[0].restore(&vp_state).unwrap();
        // The overlay pages come back exactly: what the host kept for each, and where each is
        // (delivery writes only into guest memory, never into what the host keeps).
        let again = self.harness.vps[0].save();
        assert_eq!(
            (&again.message_page, &again.event_flags_page),
            (&vp_state.message_page, &vp_state.event_flags_page),
            "overlay pages after save/restore"
        );
        let part_again = self.harness.partition.save();
        assert_eq!(
            (
                &part_again.hypercall_page,
                part_again.reference_tsc,
                &part_again.reference_tsc_page
            ),
            (
                &part_state.hypercall_page,
                part_state.reference_tsc,
                &part_state.reference_tsc_page
            ),
            "the partition's overlay pages after save/restore"
        );
        // Queues may differ now: restore retries delivery (a slot freed without EOM fills),
        // and a one-shot timer whose expiry waited for that slot clears its Enable bit.
        let restored = again.registers;
        assert_eq!(restored.len(), vp_state.registers.len());
        for (&(msr, now), &(saved_msr, saved)) in restored.iter().zip(&vp_state.registers) {
            let fired = is_stimer_config(msr) && saved & 0b11 == 0b01 && now == saved & !1;
            assert!(
                msr == saved_msr && (now == saved || fired),
                "MSR {msr:#x} restored as {now:#x}, saved {saved:#x}"
            );
        }
    }

    fn reset(&mut self) {
        self.owes = [false; S];
        let gpas: Vec<u64> = self.covers.gpas().collect();
        let snapshot = self.snapshot(gpas);
        let counters = self.harness.partition.counters(VpIndex(0)).unwrap();
        // The reset zeroes the message page's content, wherever it is: the messages in its
        // slots go with it (delivered, and gone with the rest of the guest's VP state).
        let content = self.covers.content(0, |g| self.read_page(g));
        for s in 0..SINTS {
            if let Some(id) = real_id(&slot_message(&content, usize::from(s))) {
                assert!(!self.seen.contains(&id) && self.wiped.insert(id));
                self.outstanding[usize::from(s)] -= 1;
            }
        }
        for (s, m) in self.harness.vps[0].reset() {
            let id = real_id(&m).expect("queued messages are the checker's");
            assert!(s.get() < SINTS && self.accepted[s.as_usize()].contains(&id));
            assert!(self.returned.insert(id) && !self.seen.contains(&id));
            self.outstanding[s.as_usize()] -= 1;
        }
        let view = self.harness.partition.synic_view(VpIndex(0)).unwrap();
        self.scontrol = view.scontrol.0;
        // In kernel mode KVM keeps its registers; the model's view resets until the next exit.
        self.simp = view.simp.0;
        self.siefp = view.siefp.0;
        if self.user() {
            self.sints = [Sint::RESET; S];
        }
        // Both pages are off, the RAM they hid is back, their contents are zero.
        self.check_overlays(snapshot, true, &counters, "reset");
    }

    /// Accepted on `s` and neither received nor returned.
    fn outstanding(&self, s: u8) -> usize {
        self.outstanding[usize::from(s)]
    }

    /// 1 when the message page's content (in RAM where it lies over RAM, otherwise in the
    /// host) holds an unconsumed real message for `s`.
    fn in_slot(&self, s: u8) -> usize {
        let m = match self.page() {
            Some(page) => self.harness.slot_at(page, s),
            None => slot_message(&self.covers.c[0].hidden, usize::from(s)),
        };
        usize::from(real_id(&m).is_some())
    }

    fn check_step(&mut self, op: &Op, pages_before: Vec<u64>) {
        let now = self.harness.partition.counters(VpIndex(0)).unwrap();
        // Only this step's raises (the checker is the recorder's one reader).
        let raises: Vec<_> = self
            .harness
            .raise
            .take()
            .into_iter()
            .filter_map(|e| match e {
                RaiseEvent::Raise {
                    sint,
                    vector,
                    auto_eoi,
                    ..
                } => Some((sint, vector, auto_eoi)),
                _ => None,
            })
            .collect();
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
            if let Some(page) = self
                .page()
                .filter(|_| !self.gated() && !self.owes[usize::from(s)])
            {
                if c.queued > 0 {
                    let slot = self.harness.slot_at(page, s);
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
            let new_raises: Vec<_> = raises.iter().filter(|r| r.0.get() == s).collect();
            let expected = if raising { work as usize } else { 0 };
            assert_eq!(new_raises.len(), expected, "SINT{s} raises after {op:?}");
            if self.user() {
                for r in new_raises {
                    assert_eq!((r.1, r.2), (sint.vector(), sint.auto_eoi()));
                }
            }
        }
        self.before = now;
        // The host wrote only pages where the message or event-flags page was enabled before
        // or after (swapping overlays in and out, delivering).
        let allowed: Vec<u64> = pages_before.into_iter().chain(self.covers.gpas()).collect();
        for page in dirty_pages(&self.harness.mem) {
            assert!(
                allowed.contains(&page),
                "host wrote page {page:#x} after {op:?}"
            );
        }
    }

    /// A well-behaved guest repairs everything and drains: nothing may be left behind.
    pub fn drain(&mut self) {
        self.well_behaved_registers();
        let page = PAGES[1];
        assert_eq!(
            self.page(),
            Some(page),
            "a well-behaved message page lies over RAM"
        );
        // Each round frees every slot once. A non-lazy periodic timer that missed periods
        // reports each (up to MAX_CATCH_UP_PERIODS) and its expiries take a freed slot first,
        // so queued messages may wait behind that many; the clock stands still here, so the
        // timers add nothing new.
        let rounds = (self.setup.capacity + 2) * 4 + 4 * crate::MAX_CATCH_UP_PERIODS as usize;
        for _ in 0..rounds {
            let queued: u64 = (0..SINTS).map(|s| self.harness.counters(0, s).queued).sum();
            if queued == 0 && self.outstanding.iter().all(|&n| n == 0) {
                break;
            }
            for s in 0..SINTS {
                // Garbage from scribbles is consumed too.
                if self.consume(page, s) == Some(true) {
                    self.eom();
                }
            }
            self.eom();
        }
        for s in 0..SINTS {
            let mut lost: Vec<_> = self.accepted[usize::from(s)]
                .iter()
                .filter(|id| {
                    !self.seen.contains(id)
                        && !self.returned.contains(id)
                        && !self.wiped.contains(id)
                })
                .collect();
            lost.sort_unstable();
            assert!(lost.is_empty(), "SINT{s}: lost {lost:?}");
            assert_eq!(self.harness.counters(0, s).queued, 0);
        }
    }

    /// Drops the queued messages behind the checker's back (a reset whose returned messages
    /// are ignored): a test that [`drain`](Self::drain) notices loss.
    pub fn lose_queued_messages(&mut self) {
        let _ = self.harness.vps[0].reset();
    }
}
