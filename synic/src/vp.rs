//! One VP as its vCPU thread drives it: MSR exits (userspace mode), KVM SynIC exits (kernel
//! mode), reset.
//!
//! A [`Vp`] owns its register file ([`VpRegisters`]); nothing else reads or writes it, so the
//! MSR path takes no lock for plain register accesses. What device threads also need (page
//! registers, SINT values, queues) is pushed into the VP's shared state under its SINT locks.

use std::fmt;
use std::sync::Arc;

use synic_msr::index;
use synic_msr::{
    Change, Gp, GpReason, KvmSynic, Msr, Origin, PageRegister, PageUpdate, Scope, StimerIndex,
    VpRegisters, WriteOutcome,
};
use vm_memory::GuestAddressSpace;

use crate::delivery::PageRegs;
use crate::error::{Error, MsrError};
use crate::message::HvMessage;
use crate::overlay::{PageMove, Uncovered};
use crate::page;
use crate::partition::Partition;
use crate::shared::VpShared;
use crate::{Mode, SintIndex, VpIndex};

/// What the VMM must do after an accepted MSR write, beyond resuming the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmAction {
    /// `HYPERCALL` is enabled and its overlay page lies over guest RAM at `gpa`: (re)fill it
    /// with the VMM's hypercall sequence. Also returned by a write that moved or disabled
    /// another overlay page enabled at `gpa` first, uncovering a hypercall page that was
    /// enabled under it (docs/synic-design.md, "Overlay pages").
    FillHypercallPage {
        /// The page's guest physical address.
        gpa: u64,
    },
    /// `STIMERn_CONFIG` or `STIMERn_COUNT` was written and the model re-armed the timer
    /// (userspace mode). Its deadline may now be earlier than the one the VMM's timer thread
    /// sleeps towards: wake that thread so it calls [`Partition::poll_timers`] again.
    StimerChanged(StimerIndex),
}

/// An accepted MSR write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrWrite {
    /// What the register model did.
    pub outcome: WriteOutcome,
    /// What the VMM must do, if anything.
    pub action: Option<VmmAction>,
}

/// A `KVM_EXIT_HYPERV_SYNIC` notification: the guest wrote SCONTROL, SIEFP or SIMP of an
/// in-kernel SynIC; the three fields are the registers' values after the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynicExit {
    /// The MSR written (`HV_X64_MSR_SCONTROL`, `_SIEFP` or `_SIMP`).
    pub msr: u32,
    /// `SCONTROL`.
    pub control: u64,
    /// `SIEFP`.
    pub evt_page: u64,
    /// `SIMP`.
    pub msg_page: u64,
}

/// One VP, owned by the thread that runs its vCPU.
pub struct Vp<M: GuestAddressSpace> {
    pub(crate) partition: Arc<Partition<M>>,
    /// Position in the partition's VP table (the creation number).
    pub(crate) slot: usize,
    /// Userspace mode: the VP's SynIC/timer registers. Kernel mode: unused (KVM owns them).
    pub(crate) regs: VpRegisters,
}

impl<M: GuestAddressSpace> fmt::Debug for Vp<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vp")
            .field("slot", &self.slot)
            .field("regs", &self.regs)
            .finish_non_exhaustive()
    }
}

impl<M: GuestAddressSpace> Vp<M> {
    pub(crate) fn new(partition: Arc<Partition<M>>, slot: usize) -> Self {
        // Creation numbers are below MAX_VPS, so they fit a u32.
        let regs = partition.config().fresh_registers(slot as u32);
        Self {
            partition,
            slot,
            regs,
        }
    }

    pub(crate) fn shared(&self) -> &VpShared {
        self.partition.vp_at(self.slot)
    }

    /// The VP's index (the value of `VP_INDEX`).
    pub fn index(&self) -> VpIndex {
        self.shared().index()
    }

    /// The partition this VP belongs to (for posting, signalling, counters).
    pub fn partition(&self) -> &Arc<Partition<M>> {
        &self.partition
    }

    /// The register file (userspace mode). One exception to "as the guest reads it": a
    /// one-shot timer that expired has cleared its Enable bit in the timer layer, and that is
    /// folded into STIMERn_CONFIG here only at the next STIMER write; [`Vp::rdmsr`] and
    /// [`Vp::save`] always report it.
    pub fn registers(&self) -> &VpRegisters {
        &self.regs
    }

    fn user_mode(&self, index: u32) -> Result<(), MsrError> {
        match self.partition.config().mode {
            Mode::Userspace => Ok(()),
            // KVM's SynIC owns every other Hyper-V MSR in kernel mode. The synthetic timers
            // are the model's in both modes (the VMM takes their MSRs to userspace), so the
            // model is the only writer of message slots; so is EOM, the ack that retries a
            // queued message (the VMM takes its writes to userspace).
            Mode::Kernel
                if Msr::from_index(index).is_some_and(|m| m.is_stimer() || m == Msr::Eom) =>
            {
                Ok(())
            }
            Mode::Kernel => Err(MsrError::KernelMode { index }),
        }
    }

    /// KVM profile: activates the SynIC as `KVM_CAP_HYPERV_SYNIC[2]` does (SCONTROL becomes 1),
    /// for a partition configured without activation at creation.
    pub fn activate(&mut self, version: KvmSynic) {
        self.regs.activate(version);
        let shared = self.partition.vp_at(self.slot);
        let all = shared.lock_all();
        let mut regs = shared.page_regs_all(&all);
        regs.scontrol = self.regs.scontrol().0;
        shared.set_page_regs(&all, regs);
    }

    /// Userspace mode: a guest or host RDMSR of a Hyper-V MSR (per-VP or partition-wide).
    /// Kernel mode: the synthetic-timer MSRs and EOM only.
    pub fn rdmsr(&self, index: u32, origin: Origin) -> Result<u64, MsrError> {
        self.user_mode(index)?;
        let msr = Msr::from_index(index).ok_or(Gp::new(index, GpReason::UnknownMsr))?;
        Ok(match msr.scope() {
            Scope::Vp => self.fold_stimer_enable(msr, self.regs.read(msr, origin)?),
            // Guests read the reference counter often (a clocksource): no lock for it.
            Scope::Partition if msr == Msr::TimeRefCount => self.partition.reference_time(),
            Scope::Partition => {
                let now = self.partition.reference_time();
                self.partition.registers().read(msr, origin, now)?
            }
        })
    }

    /// Userspace mode: a guest or host WRMSR of a Hyper-V MSR (kernel mode: the
    /// synthetic-timer MSRs and EOM only). On `Err` a guest access gets
    /// `#GP(0)` and nothing changed. On `Ok` the model has acted on the write (page moved,
    /// queued messages retried, SINT route told) and `action` says what is left to the VMM.
    pub fn wrmsr(&mut self, index: u32, value: u64, origin: Origin) -> Result<MsrWrite, MsrError> {
        self.user_mode(index)?;
        let msr = Msr::from_index(index).ok_or(Gp::new(index, GpReason::UnknownMsr))?;
        if msr.scope() == Scope::Partition {
            return self.write_partition(msr, value, origin);
        }
        if msr == Msr::VpIndex {
            return self.write_vp_index(value, origin);
        }
        if let Msr::StimerConfig(timer) | Msr::StimerCount(timer) = msr {
            return self.write_stimer(msr, timer, value, origin);
        }
        let outcome = self.regs.write(msr, value, origin)?;
        let action = self.apply(outcome)?;
        Ok(MsrWrite { outcome, action })
    }

    /// Sets the VP index, as a VMM does before the guest runs (KVM: a host write of
    /// VP_INDEX). Userspace mode: the same as a host WRMSR of VP_INDEX. Kernel mode: tells the
    /// model the value the VMM gave KVM, so posts and raises use it. Refused when another VP
    /// has the index.
    pub fn set_index(&mut self, index: VpIndex) -> Result<(), Error> {
        match self.partition.config().mode {
            Mode::Userspace => {
                match self.wrmsr(index::VP_INDEX, u64::from(index.0), Origin::Host) {
                    Ok(_) => Ok(()),
                    Err(MsrError::Gp(gp)) => Err(Error::RegisterRefused(gp)),
                    Err(MsrError::Refused { error, .. }) => Err(error),
                    Err(MsrError::KernelMode { .. }) => Err(Error::WrongMode {
                        mode: Mode::Userspace,
                    }),
                }
            }
            Mode::Kernel => {
                let partition = Arc::clone(&self.partition);
                let _serial = partition
                    .vp_index_lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if partition.shared(index).is_ok() && self.index() != index {
                    return Err(Error::VpIndexInUse { index: index.0 });
                }
                self.shared().set_index(index.0);
                Ok(())
            }
        }
    }

    /// GUEST_OS_ID, HYPERCALL, REFERENCE_TSC (TIME_REF_COUNT: refused or ignored by the
    /// register model). A HYPERCALL change moves the hypercall page overlay (TLFS "GPA Overlay
    /// Pages": disabling it uncovers the RAM it hid); a guest enabling it at an address that is
    /// not RAM gets #GP with the register unchanged, as with KVM. A REFERENCE_TSC write moves
    /// the reference TSC page overlay and rewrites its head (docs/timers.md).
    fn write_partition(
        &mut self,
        msr: Msr,
        value: u64,
        origin: Origin,
    ) -> Result<MsrWrite, MsrError> {
        let partition = Arc::clone(&self.partition);
        let mut registers = partition.registers();
        let outcome = registers.write(msr, value, origin)?;
        if let Change::ReferenceTscPage { new, .. } = outcome.change {
            // An overlay like the others; one outside RAM stays unbacked (KVM accepts the
            // write and leaves such a page unfilled).
            let uncovered = partition.move_reference_tsc_page(new.enabled_gpa(), false);
            drop(registers);
            partition.redeliver_uncovered(uncovered);
            let action = uncovered
                .hypercall_page
                .map(|gpa| VmmAction::FillHypercallPage { gpa });
            return Ok(MsrWrite { outcome, action });
        }
        let Change::HypercallPage { old, new } = outcome.change else {
            return Ok(MsrWrite {
                outcome,
                action: None,
            });
        };
        let to = new.enabled().then(|| new.gpa());
        if let (Some(gpa), Origin::Guest) = (to, origin) {
            let mem = partition.memory.memory();
            if let Err(error) = page::resolve(&*mem, gpa).map(|_| ()) {
                // Writing back the value the register held before cannot fail (a host write
                // passes the Locked bit).
                let _ = registers.write(Msr::Hypercall, old.0, Origin::Host);
                return Err(MsrError::Refused {
                    index: msr.index(),
                    error,
                });
            }
        }
        let (uncovered, placed) = partition.move_hypercall_page(to, false);
        drop(registers);
        partition.redeliver_uncovered(uncovered);
        let action = match to {
            Some(gpa) if placed => Some(VmmAction::FillHypercallPage { gpa }),
            _ => None,
        };
        Ok(MsrWrite { outcome, action })
    }

    fn write_vp_index(&mut self, value: u64, origin: Origin) -> Result<MsrWrite, MsrError> {
        let partition = Arc::clone(&self.partition);
        let _serial = partition
            .vp_index_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if origin == Origin::Host {
            if let Ok(wanted) = u32::try_from(value) {
                if partition.shared(VpIndex(wanted)).is_ok() && self.index() != VpIndex(wanted) {
                    return Err(MsrError::Refused {
                        index: index::VP_INDEX,
                        error: Error::VpIndexInUse { index: wanted },
                    });
                }
            }
        }
        let outcome = self.regs.write(Msr::VpIndex, value, origin)?;
        if let Change::VpIndex { new, .. } = outcome.change {
            self.shared().set_index(new);
        }
        Ok(MsrWrite {
            outcome,
            action: None,
        })
    }

    /// Acts on what a register write changed.
    fn apply(&mut self, outcome: WriteOutcome) -> Result<Option<VmmAction>, MsrError> {
        let partition = Arc::clone(&self.partition);
        let shared = partition.vp_at(self.slot);
        match outcome.change {
            Change::None
            | Change::HypercallPage { .. }
            | Change::ReferenceTscPage { .. }
            | Change::VpIndex { .. } => {}
            Change::SynicEnable { enabled } => {
                {
                    let all = shared.lock_all();
                    let mut regs = shared.page_regs_all(&all);
                    regs.scontrol = self.regs.scontrol().0;
                    shared.set_page_regs(&all, regs);
                }
                if enabled {
                    self.partition.redeliver_all(shared);
                }
            }
            Change::MessagePage(update) | Change::EventFlagsPage(update) => {
                let uncovered = self.apply_page(outcome.msr, update)?;
                if outcome.msr == Msr::Simp {
                    self.partition.redeliver_all(shared);
                }
                self.partition.redeliver_uncovered(uncovered);
                return Ok(uncovered
                    .hypercall_page
                    .map(|gpa| VmmAction::FillHypercallPage { gpa }));
            }
            Change::Eom => {
                shared.count_eom();
                self.partition.redeliver_all(shared);
            }
            Change::Sint { sint, new, .. } => {
                shared.lock(sint).sint = new;
                // TLFS: masking does not hold messages back (they are still written, only the
                // interrupt is lost), so there is nothing to redeliver; the route must follow.
                self.partition.raise.sint_changed(shared.index(), sint, new);
            }
            Change::Stimer(timer) => return Ok(Some(VmmAction::StimerChanged(timer))),
        }
        Ok(None)
    }

    /// Publishes a SIMP/SIEFP write: moves the overlay page (TLFS "GPA Overlay Pages") and
    /// switches delivery to it. Holding all SINT locks makes the switch atomic with respect to
    /// slot writes and flag updates: none is in flight on the old page once this returns, and
    /// none starts on it afterwards.
    fn apply_page(&mut self, msr: Msr, update: PageUpdate) -> Result<Uncovered, MsrError> {
        if update.zero_page {
            // KVM SynIC v1 zeroes the page on every enable-write (here: the overlay's
            // content); a page that is not RAM -> #GP, register unchanged.
            let mem = self.partition.memory.memory();
            let resolved = page::resolve(&*mem, update.new.gpa()).map(|_| ());
            if let Err(error) = resolved {
                // Writing back the value the register held before cannot fail.
                let _ = self.regs.write(msr, update.old.0, Origin::Host);
                return Err(MsrError::Refused {
                    index: msr.index(),
                    error,
                });
            }
        }
        let change = PageMove {
            regs: PageRegs::of(&self.regs),
            zero: [
                msr == Msr::Simp && update.zero_page,
                msr == Msr::Siefp && update.zero_page,
            ],
            reset: false,
        };
        Ok(self.partition.move_vp_pages(self.slot, change, |_| {}))
    }

    /// Kernel mode: applies a `KVM_EXIT_HYPERV_SYNIC` notification (the guest wrote SCONTROL,
    /// SIEFP or SIMP of KVM's SynIC) and retries queued messages.
    pub fn apply_synic_exit(&mut self, exit: SynicExit) -> Result<(), Error> {
        let mode = self.partition.config().mode;
        if mode != Mode::Kernel {
            return Err(Error::WrongMode { mode });
        }
        if !matches!(exit.msr, index::SCONTROL | index::SIEFP | index::SIMP) {
            return Err(Error::UnexpectedSynicExit { msr: exit.msr });
        }
        // KVM SynIC v1 zeroed the page in guest RAM at the write (what the overlay hid is lost);
        // the overlay's content is zeroed too, as the guest saw it.
        let v1 = self.regs.kvm_synic() == Some(KvmSynic::V1);
        let enables = |msr, reg| v1 && exit.msr == msr && PageRegister(reg).enabled();
        let change = PageMove {
            regs: PageRegs {
                scontrol: exit.control,
                simp: exit.msg_page,
                siefp: exit.evt_page,
                placements: Default::default(),
            },
            zero: [
                enables(index::SIMP, exit.msg_page),
                enables(index::SIEFP, exit.evt_page),
            ],
            reset: false,
        };
        let partition = Arc::clone(&self.partition);
        let uncovered = partition.move_vp_pages(self.slot, change, |_| {});
        partition.redeliver_all(partition.vp_at(self.slot));
        partition.redeliver_uncovered(uncovered);
        Ok(())
    }

    /// Back to power-on state (VP reset / INIT): registers reset (profile, VP index and KVM
    /// activation kept), timers stopped, SINTs masked, the message and event-flags pages
    /// disabled (the RAM they hid is back) and their overlay contents zeroed (TLFS; a message
    /// still in a slot goes with its page). Messages still queued are returned to the caller
    /// rather than dropped silently. Counters are kept.
    pub fn reset(&mut self) -> Vec<(SintIndex, HvMessage)> {
        self.disarm_timers();
        self.regs.reset();
        let partition = Arc::clone(&self.partition);
        let regs = &self.regs;
        let mut dropped = Vec::new();
        // TLFS: the overlay pages are disabled (the RAM they hid comes back) and their
        // contents zeroed; messages still in a slot go with them.
        let change = PageMove {
            regs: PageRegs::of(regs),
            zero: [false; 2],
            reset: true,
        };
        let uncovered = partition.move_vp_pages(self.slot, change, |all| {
            for (sint, st) in SintIndex::ALL.into_iter().zip(all.guards.iter_mut()) {
                st.sint = regs.sint(sint);
                dropped.extend(st.queue.take_all().into_iter().map(|m| (sint, m)));
            }
        });
        let shared = partition.vp_at(self.slot);
        if partition.config().mode == Mode::Userspace {
            for sint in SintIndex::ALL {
                partition
                    .raise
                    .sint_changed(shared.index(), sint, self.regs.sint(sint));
            }
        }
        partition.redeliver_uncovered(uncovered);
        dropped
    }
}
