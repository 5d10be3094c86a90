//! Save and restore: versioned plain data out, the same data back in.
//!
//! A VP's state is its registers (userspace mode: every per-VP register; kernel mode: the
//! SCONTROL/SIEFP/SIMP values the model learned from exits, since KVM saves its own), the
//! messages still queued per SINT, (userspace mode) each synthetic timer's schedule, and the
//! page the host keeps for each of its two overlay pages (the RAM an enabled page hides, or a
//! disabled page's content). What sits in an enabled page is guest memory and travels with
//! it. Restore into a fresh model after guest memory is in place: it retries every SINT and
//! every waiting timer expiry, so delivery continues where the source stopped.

use std::sync::PoisonError;

use synic_msr::index::{self, SINT_COUNT, STIMER_COUNT};
use synic_msr::{Change, KvmSynic, Msr, Origin, PartitionRegisters, Profile, Scope, StimerIndex};
use vm_memory::GuestAddressSpace;

use crate::delivery::PageRegs;
use crate::error::Error;
use crate::message::HvMessage;
use crate::overlay::{OverlayId, OverlayState, VpPage};
use crate::partition::Partition;
use crate::stimer::StimerState;
use crate::vp::Vp;
use crate::{Mode, SintIndex, VpIndex};

/// Version of [`VpState`] and [`PartitionState`] this build writes (4: the reference TSC
/// page). It also reads version 3 (before the reference TSC page: restored disabled, its
/// content zero), version 2 (before overlay pages: every enabled page is taken to lie over
/// RAM that was zero, every disabled page's content to be zero) and version 1 (before
/// synthetic timers, too: such a VP's enabled timers restart their schedule at the restore).
pub const STATE_VERSION: u32 = 4;

/// The first version with synthetic timer schedules.
const TIMERS_VERSION: u32 = 2;

/// The first version with overlay pages.
const OVERLAY_VERSION: u32 = 3;

/// The first version with the reference TSC page.
const REFERENCE_TSC_VERSION: u32 = 4;

/// The oldest state version this build reads.
const OLDEST_VERSION: u32 = 1;

/// One VP's saved state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpState {
    /// [`STATE_VERSION`] when written.
    pub version: u32,
    /// The partition's mode when saved; restore requires the same.
    pub mode: Mode,
    /// The partition's profile when saved; restore requires the same.
    pub profile: Profile,
    /// The VP index.
    pub vp_index: u32,
    /// KVM profile: how the SynIC was activated.
    pub kvm_synic: Option<KvmSynic>,
    /// `(MSR index, value)` pairs in restore order. Userspace mode: every per-VP register of
    /// [`Msr::SAVED`] but VP_INDEX. Kernel mode: SCONTROL, SIEFP and SIMP as last reported.
    pub registers: Vec<(u32, u64)>,
    /// Per SINT (16 entries), the messages accepted and not yet in the slot, oldest first.
    pub queues: Vec<Vec<HvMessage>>,
    /// Userspace mode: the schedule of STIMER0..3 (4 entries; their registers are in
    /// `registers`), including an expiry that is due and waits for its slot. Kernel mode (KVM
    /// runs the timers) and version 1: empty.
    pub timers: Vec<StimerState>,
    /// The message page overlay (SIMP): the page the host keeps for it (version 3; ignored
    /// before).
    pub message_page: OverlayState,
    /// The event-flags page overlay (SIEFP), likewise.
    pub event_flags_page: OverlayState,
}

/// The partition-wide saved state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionState {
    /// [`STATE_VERSION`] when written.
    pub version: u32,
    /// `GUEST_OS_ID`.
    pub guest_os_id: u64,
    /// `HYPERCALL`.
    pub hypercall: u64,
    /// The reference time (`TIME_REF_COUNT`) when saved.
    pub reference_time: u64,
    /// The hypercall page overlay (userspace mode): the page the host keeps for it (version
    /// 3; ignored before).
    pub hypercall_page: OverlayState,
    /// `REFERENCE_TSC` (userspace mode; version 4, ignored before).
    pub reference_tsc: u64,
    /// The reference TSC page overlay (userspace mode): the page the host keeps for it
    /// (version 4; ignored before). Its head is rewritten at the restore, for the restored
    /// reference time.
    pub reference_tsc_page: OverlayState,
}

fn check_version(version: u32) -> Result<(), Error> {
    if !(OLDEST_VERSION..=STATE_VERSION).contains(&version) {
        return Err(Error::UnsupportedStateVersion {
            version,
            expected: STATE_VERSION,
        });
    }
    Ok(())
}

fn mismatch(what: &'static str) -> Error {
    Error::StateMismatch { what }
}

impl<M: GuestAddressSpace> Partition<M> {
    /// Saves the partition-wide registers, the reference time and the partition's overlay
    /// pages (hypercall page, reference TSC page).
    pub fn save(&self) -> PartitionState {
        let regs = self.registers();
        let overlays = self.lock_overlays();
        PartitionState {
            version: STATE_VERSION,
            guest_os_id: regs.guest_os_id(),
            hypercall: regs.hypercall().0,
            reference_time: self.reference_time(),
            hypercall_page: overlays.save(OverlayId::Hypercall),
            reference_tsc: regs.reference_tsc().0,
            reference_tsc_page: overlays.save(OverlayId::ReferenceTsc),
        }
    }

    /// Restores the partition-wide registers, and makes the reference time continue from the
    /// saved value (as if no time passed while the partition was saved). The hypercall page
    /// itself is guest memory and needs no refill; the RAM it hides comes from the state. The
    /// reference TSC page (guest memory too) is rewritten for the restored reference time and
    /// this partition's clock, with a new sequence number.
    pub fn restore(&self, state: &PartitionState) -> Result<(), Error> {
        self.restore_with_downtime(state, 0)
    }

    /// [`restore`](Self::restore), with the reference time continuing from the saved value
    /// plus `downtime` (100 ns units): the time the VMM declares the partition was away. The
    /// guest's `TIME_REF_COUNT` never goes backwards across the migration and jumps by exactly
    /// the declared downtime (plus whatever runs between this call and the guest's next read).
    /// Restore the partition before its VPs: timer schedules are absolute reference times.
    pub fn restore_with_downtime(
        &self,
        state: &PartitionState,
        downtime: u64,
    ) -> Result<(), Error> {
        check_version(state.version)?;
        let config = self.config();
        let mut fresh =
            PartitionRegisters::new(config.profile).with_phys_addr_bits(config.phys_addr_bits);
        let with_tsc = state.version >= REFERENCE_TSC_VERSION;
        let reference_tsc = if with_tsc { state.reference_tsc } else { 0 };
        fresh
            .write(Msr::GuestOsId, state.guest_os_id, Origin::Host)
            .and_then(|_| fresh.write(Msr::Hypercall, state.hypercall, Origin::Host))
            .and_then(|_| fresh.write(Msr::ReferenceTsc, reference_tsc, Origin::Host))
            .map_err(Error::RegisterRefused)?;
        let gpa = fresh.hypercall().enabled().then(|| fresh.hypercall().gpa());
        let tsc_gpa = fresh.reference_tsc().enabled_gpa();
        let tsc_page = if with_tsc {
            state.reference_tsc_page.clone()
        } else {
            OverlayState::default()
        };
        let mut registers = self.registers();
        let mem = self.memory.memory();
        let mut overlays = self.lock_overlays();
        if state.version >= OVERLAY_VERSION {
            overlays.check_install(&*mem, OverlayId::Hypercall, gpa, &state.hypercall_page)?;
        }
        overlays.check_install(&*mem, OverlayId::ReferenceTsc, tsc_gpa, &tsc_page)?;
        if gpa.is_some()
            && gpa == tsc_gpa
            && tsc_page.placed
            && (state.version < OVERLAY_VERSION || state.hypercall_page.placed)
        {
            return Err(mismatch("two overlays are placed at one address"));
        }
        if state.version >= OVERLAY_VERSION {
            overlays.install(&*mem, OverlayId::Hypercall, gpa, &state.hypercall_page);
        } else {
            overlays.install_legacy(&*mem, OverlayId::Hypercall, gpa);
        }
        overlays.install(&*mem, OverlayId::ReferenceTsc, tsc_gpa, &tsc_page);
        *registers = fresh;
        self.set_reference_time(state.reference_time.saturating_add(downtime));
        // The page's head came with guest memory, computed for the source's clock: rewrite it
        // so that the page and TIME_REF_COUNT agree again here.
        self.publish_reference_tsc(&overlays, &*mem);
        Ok(())
    }

    /// Partition reset: GUEST_OS_ID, HYPERCALL and REFERENCE_TSC back to 0 (the hypercall
    /// page and the reference TSC page are disabled, the RAM they hid comes back, their
    /// contents are zeroed). The reference time keeps running.
    pub fn reset(&self) {
        let mut registers = self.registers();
        registers.reset();
        let (uncovered, _) = self.move_hypercall_page(None, true);
        let tsc_uncovered = self.move_reference_tsc_page(None, true);
        drop(registers);
        self.redeliver_uncovered(uncovered);
        self.redeliver_uncovered(tsc_uncovered);
    }
}

impl<M: GuestAddressSpace> Vp<M> {
    /// Saves the VP: registers, queued messages, timer schedules. Take it with the vCPU and
    /// the timer thread stopped; device threads may keep posting (a message posted after the
    /// save is not in it).
    pub fn save(&self) -> VpState {
        let config = *self.partition.config();
        let shared = self.shared();
        // Lock order: overlays, timers, then SINTs. Holding them makes the snapshot atomic
        // with respect to a page move and to an expiry being written into a slot.
        let overlays = self.partition.lock_overlays();
        let timers = shared.lock_timers();
        let all = shared.lock_all();
        let registers = match config.mode {
            Mode::Userspace => Msr::SAVED
                .iter()
                .filter(|m| m.scope() == Scope::Vp && **m != Msr::VpIndex)
                .filter_map(|m| {
                    let value = self.regs.read(*m, Origin::Host).ok()?;
                    let value = match m {
                        Msr::StimerConfig(t) => {
                            synic_msr::StimerConfig(value)
                                .with_enabled(timers.stimers[t.as_usize()].config.enabled())
                                .0
                        }
                        _ => value,
                    };
                    Some((m.index(), value))
                })
                .collect(),
            Mode::Kernel => {
                let regs = shared.page_regs_all(&all);
                let mut saved = vec![
                    (index::SIEFP, regs.siefp),
                    (index::SIMP, regs.simp),
                    (index::SCONTROL, regs.scontrol),
                ];
                // The synthetic timers are the model's in kernel mode too.
                saved.extend(StimerIndex::ALL.into_iter().flat_map(|t| {
                    let config = synic_msr::StimerConfig(self.regs.stimer_config(t).0)
                        .with_enabled(timers.stimers[t.as_usize()].config.enabled());
                    [
                        (Msr::StimerConfig(t).index(), config.0),
                        (Msr::StimerCount(t).index(), self.regs.stimer_count(t)),
                    ]
                }));
                saved
            }
        };
        VpState {
            version: STATE_VERSION,
            mode: config.mode,
            profile: config.profile,
            vp_index: shared.index().0,
            kvm_synic: self.regs.kvm_synic(),
            registers,
            queues: all
                .guards
                .iter()
                .map(|st| st.queue.iter().copied().collect())
                .collect(),
            timers: timers.stimers.iter().map(|t| t.state).collect(),
            message_page: overlays.save(OverlayId::Vp(self.slot, VpPage::Simp)),
            event_flags_page: overlays.save(OverlayId::Vp(self.slot, VpPage::Siefp)),
        }
    }

    /// Restores a saved VP into this one (normally freshly created), replacing its registers
    /// and queues, then retries delivery on every SINT. On `Err` nothing changed.
    pub fn restore(&mut self, state: &VpState) -> Result<(), Error> {
        check_version(state.version)?;
        let config = *self.partition.config();
        if state.mode != config.mode || state.profile != config.profile {
            return Err(mismatch("mode or profile differs"));
        }
        if state.queues.len() != SINT_COUNT {
            return Err(mismatch("there must be 16 queues"));
        }
        // Kernel mode: states saved before the model ran kernel mode's timers have none (KVM
        // kept them).
        let timers_ok = match (config.mode, state.version) {
            (Mode::Userspace, version) if version >= TIMERS_VERSION => {
                state.timers.len() == STIMER_COUNT
            }
            (Mode::Userspace, _) => state.timers.is_empty(),
            (Mode::Kernel, _) => matches!(state.timers.len(), 0 | STIMER_COUNT),
        };
        if !timers_ok {
            return Err(mismatch(
                "there must be 4 timer schedules (userspace mode from version 2; kernel mode \
                 when saved with them) or none",
            ));
        }
        for queue in &state.queues {
            if queue.len() > config.queue_capacity {
                return Err(mismatch("a queue is longer than the queue capacity"));
            }
            if queue.iter().any(|m| m.validate(true).is_err()) {
                return Err(mismatch("a queued message is invalid"));
            }
        }
        // Rebuild the register file off to the side; commit only when everything passed.
        let mut regs = synic_msr::VpRegisters::new(config.profile, state.vp_index)
            .with_phys_addr_bits(config.phys_addr_bits);
        if let Some(v) = state.kvm_synic {
            regs.activate(v);
        }
        let page_regs = match config.mode {
            Mode::Userspace => {
                for &(msr_index, value) in &state.registers {
                    let msr = Msr::from_index(msr_index)
                        .filter(|m| m.scope() == Scope::Vp && *m != Msr::VpIndex)
                        .ok_or(mismatch("a saved register is not a per-VP register"))?;
                    // A value the fresh register already holds needs no write (and a KVM SynIC
                    // that was never activated refuses non-zero host writes, even of its own
                    // reset values).
                    if regs.read(msr, Origin::Host) == Ok(value) {
                        continue;
                    }
                    let out = regs
                        .write(msr, value, Origin::Host)
                        .map_err(Error::RegisterRefused)?;
                    debug_assert!(!matches!(out.change, Change::VpIndex { .. }));
                }
                PageRegs::of(&regs)
            }
            Mode::Kernel => {
                // The timer registers, when the state has them (host writes: no side effects).
                for &(msr_index, value) in &state.registers {
                    let Some(msr) = Msr::from_index(msr_index).filter(|m| m.is_stimer()) else {
                        continue;
                    };
                    if regs.read(msr, Origin::Host) != Ok(value) {
                        regs.write(msr, value, Origin::Host)
                            .map_err(Error::RegisterRefused)?;
                    }
                }
                let find = |i: u32| {
                    state
                        .registers
                        .iter()
                        .find(|(msr, _)| *msr == i)
                        .map(|(_, v)| *v)
                        .ok_or(mismatch("kernel mode needs SCONTROL, SIEFP and SIMP"))
                };
                PageRegs {
                    scontrol: find(index::SCONTROL)?,
                    simp: find(index::SIMP)?,
                    siefp: find(index::SIEFP)?,
                    placements: Default::default(),
                }
            }
        };
        for (t, saved) in StimerIndex::ALL.into_iter().zip(&state.timers) {
            let (c, count) = (regs.stimer_config(t), regs.stimer_count(t));
            if saved.armed && !(c.enabled() && count != 0) {
                return Err(mismatch("an armed timer is disabled or has COUNT 0"));
            }
        }
        let partition = std::sync::Arc::clone(&self.partition);
        let _serial = partition
            .vp_index_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let wanted = VpIndex(state.vp_index);
        if partition.shared(wanted).is_ok() && self.index() != wanted {
            return Err(Error::VpIndexInUse {
                index: state.vp_index,
            });
        }
        let shared = partition.vp_at(self.slot);
        let pages = [
            (VpPage::Simp, page_regs.simp, &state.message_page),
            (VpPage::Siefp, page_regs.siefp, &state.event_flags_page),
        ]
        .map(|(page, reg, saved)| {
            let id = OverlayId::Vp(self.slot, page);
            (id, synic_msr::PageRegister(reg).enabled_gpa(), saved)
        });
        let mem = partition.memory.memory();
        let mut overlays = partition.lock_overlays();
        if state.version >= OVERLAY_VERSION {
            for &(id, gpa, saved) in &pages {
                overlays.check_install(&*mem, id, gpa, saved)?;
            }
            if let [(_, Some(a), s), (_, Some(b), e)] = &pages {
                if a == b && s.placed && e.placed {
                    return Err(mismatch("two overlays are placed at one address"));
                }
            }
        }
        {
            let mut timers = shared.lock_timers();
            let mut all = shared.lock_all();
            // Messages posted to this VP before the restore (there should be none) stay, behind
            // the older saved ones; if they do not fit, nothing is restored.
            let fits = all
                .guards
                .iter()
                .zip(&state.queues)
                .all(|(st, saved)| st.queue.len() + saved.len() <= config.queue_capacity);
            if !fits {
                return Err(mismatch(
                    "saved and already queued messages exceed the capacity",
                ));
            }
            self.regs = regs;
            shared.set_index(state.vp_index);
            shared.set_page_regs(&all, page_regs);
            for &(id, gpa, saved) in &pages {
                if state.version >= OVERLAY_VERSION {
                    overlays.install(&*mem, id, gpa, saved);
                } else {
                    overlays.install_legacy(&*mem, id, gpa);
                }
            }
            shared.set_placements(&all, overlays.vp_placements(self.slot));
            let now = partition.reference_time();
            for t in StimerIndex::ALL {
                let timer = &mut timers.stimers[t.as_usize()];
                let (c, count) = (self.regs.stimer_config(t), self.regs.stimer_count(t));
                timer.waiting_on = None;
                match state.timers.get(t.as_usize()) {
                    Some(saved) => timer.restore(c, count, *saved),
                    // Version 1, or kernel mode (where nothing is enabled in our registers).
                    None => timer.arm(c, count, now),
                }
            }
            for st in all.guards.iter_mut() {
                st.timer_waiting = 0;
            }
            for ((sint, st), saved) in SintIndex::ALL
                .into_iter()
                .zip(all.guards.iter_mut())
                .zip(&state.queues)
            {
                st.sint = self.regs.sint(sint);
                st.queue.prepend(saved, config.queue_capacity);
            }
        }
        drop(overlays);
        if config.mode == Mode::Userspace {
            for sint in SintIndex::ALL {
                partition
                    .raise
                    .sint_changed(shared.index(), sint, self.regs.sint(sint));
            }
        }
        partition.redeliver_all(shared);
        Ok(())
    }
}
