//! One SINT's message queue and the slot-delivery step (TLFS "Delivery protocol").
//!
//! [`deliver_one`] moves at most one message from the queue into the slot. The caller holds the
//! SINT's lock, so for a given (VP, SINT) there is exactly one writer of the slot at a time, and
//! raises the returned interrupt after releasing the lock.

use std::sync::atomic::Ordering;

use synic_msr::{PageRegister, Profile, Scontrol, Sint};
use vm_memory::GuestMemory;

use crate::counters::SintCounters;
use crate::error::Error;
use crate::message::{HvMessage, MessageFlags};
use crate::overlay::{PagePlacements, Placement};
use crate::page;
use crate::queue::MessageQueue;
use crate::{Mode, SintIndex};

/// The lock-protected state of one (VP, SINT).
#[derive(Debug)]
pub(crate) struct SintState {
    /// The SINT register as delivery sees it (userspace mode; unused in kernel mode).
    pub(crate) sint: Sint,
    /// Messages accepted and not yet in the slot, oldest first (storage allocated only while
    /// some are queued).
    pub(crate) queue: MessageQueue,
    /// How many messages `queue` may hold.
    pub(crate) capacity: usize,
    /// Synthetic timers (bit n = STIMERn) with an expiry waiting for this SINT's slot. A
    /// message delivered while any is set carries MessagePending, so the guest writes EOM
    /// and the expiry gets its turn (see `timers`).
    pub(crate) timer_waiting: u8,
    /// Statistics.
    pub(crate) counters: SintCounters,
}

impl SintState {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            sint: Sint::RESET,
            queue: MessageQueue::new(),
            capacity,
            timer_waiting: 0,
            counters: SintCounters::default(),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.queue.len() >= self.capacity
    }
}

/// The SynIC page registers as the delivery paths see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct PageRegs {
    /// `SCONTROL`.
    pub(crate) scontrol: u64,
    /// `SIMP`.
    pub(crate) simp: u64,
    /// `SIEFP`.
    pub(crate) siefp: u64,
    /// Where the enabled pages are (overlays: placed in RAM, shadowed, unbacked).
    pub(crate) placements: PagePlacements,
}

/// An interrupt to raise once the SINT lock is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interrupt {
    pub(crate) vector: u8,
    pub(crate) auto_eoi: bool,
}

/// The mode- and profile-dependent delivery rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) mode: Mode,
    pub(crate) profile: Profile,
}

impl Policy {
    /// TLFS: SCONTROL Enable gates delivery to the VP. KVM never looks at it.
    pub(crate) fn synic_enabled(self, scontrol: u64) -> bool {
        self.profile == Profile::Kvm || Scontrol(scontrol).enabled()
    }

    /// Userspace mode: the SINT register decides (masked or polling: no interrupt). Kernel
    /// mode: the model never sees SINT registers, so it always raises and KVM drops the
    /// interrupt of a masked SINT; vector and AutoEOI are then only informative.
    pub(crate) fn interrupt(self, sint: Sint) -> Option<Interrupt> {
        match self.mode {
            Mode::Kernel => Some(Interrupt {
                vector: 0,
                auto_eoi: false,
            }),
            Mode::Userspace if sint.raises_interrupt() => Some(Interrupt {
                vector: sint.vector(),
                auto_eoi: sint.auto_eoi(),
            }),
            Mode::Userspace => None,
        }
    }

    /// Userspace mode: a masked SINT refuses event flags (HV_STATUS_INVALID_SYNIC_STATE).
    pub(crate) fn refuses_flags(self, sint: Sint) -> bool {
        self.mode == Mode::Userspace && sint.masked()
    }
}

/// What one delivery attempt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing queued.
    Empty,
    /// Messages stay queued: SynIC or message page disabled.
    Held,
    /// The slot is busy; MessagePending is set, the guest will EOM (or an ack will come).
    Busy,
    /// The oldest message is in the slot; raise this interrupt, if any.
    Delivered(Option<Interrupt>),
}

/// What one attempt to write a message into a slot did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotStep {
    /// Not written: SynIC or message page disabled (or the page is shadowed by another
    /// overlay page).
    Held,
    /// Not written: the slot is busy; MessagePending is set, the guest will EOM.
    Busy,
    /// Written and published.
    Written,
}

/// Writes `message` into `sint`'s slot if the slot is free (TLFS slot protocol), with
/// MessagePending set in it when `more` says something else waits behind it.
///
/// A slot is free when its `message_type` is None. A busy slot gets MessagePending set
/// atomically and its type re-read: the guest clears the type and then reads MessagePending,
/// we set MessagePending and then re-read the type, so at least one side sees the other's
/// write — either we find the slot free now, or the guest sees MessagePending and writes EOM.
/// Setting MessagePending on a message delivered while more wait is allowed by the TLFS; it
/// saves the guest an interrupt round-trip before it EOMs.
pub(crate) fn write_slot<G: GuestMemory + ?Sized>(
    mem: &G,
    policy: Policy,
    regs: PageRegs,
    sint: SintIndex,
    st: &mut SintState,
    message: &HvMessage,
    more: bool,
) -> Result<SlotStep, Error> {
    if !policy.synic_enabled(regs.scontrol) {
        return Ok(SlotStep::Held);
    }
    let Some(gpa) = PageRegister(regs.simp).enabled_gpa() else {
        return Ok(SlotStep::Held);
    };
    match regs.placements.simp() {
        Placement::Placed => {}
        // Under another overlay page at the same address: held, as for a disabled page; the
        // page is retried when it is uncovered.
        Placement::Shadowed => return Ok(SlotStep::Held),
        Placement::Unbacked => {
            st.counters.page_errors += 1;
            return Err(Error::PageNotInRam { gpa });
        }
    }
    let page = match page::resolve(mem, gpa) {
        Ok(page) => page,
        Err(e) => {
            st.counters.page_errors += 1;
            return Err(e);
        }
    };
    if page.slot_type(sint, Ordering::Acquire)? != 0 {
        #[cfg(test)]
        tests::guest_window();
        if !page.set_pending(sint)? {
            st.counters.pending_sets += 1;
        }
        if page.slot_type(sint, Ordering::SeqCst)? != 0 {
            return Ok(SlotStep::Busy);
        }
    }
    let mut message = *message;
    message.header.message_flags = MessageFlags(if more { MessageFlags::PENDING } else { 0 });
    message.header.reserved = [0; 2];
    page.publish(sint, &message)?;
    st.counters.delivered += 1;
    if more {
        st.counters.pending_sets += 1;
    }
    Ok(SlotStep::Written)
}

/// Tries to move the oldest queued message into the slot ([`write_slot`]). It carries
/// MessagePending when more messages remain queued or a timer expiry waits for the slot.
pub(crate) fn deliver_one<G: GuestMemory + ?Sized>(
    mem: &G,
    policy: Policy,
    regs: PageRegs,
    sint: SintIndex,
    st: &mut SintState,
) -> Result<Step, Error> {
    let Some(&front) = st.queue.front() else {
        return Ok(Step::Empty);
    };
    let more = st.queue.len() > 1 || st.timer_waiting != 0;
    Ok(
        match write_slot(mem, policy, regs, sint, st, &front, more)? {
            SlotStep::Held => Step::Held,
            SlotStep::Busy => Step::Busy,
            SlotStep::Written => {
                st.queue.pop_front();
                Step::Delivered(policy.interrupt(st.sint))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::atomic::{fence, AtomicU32, AtomicU8};
    use std::sync::Arc;

    use synic_msr::{index, Origin};
    use vm_memory::bitmap::AtomicBitmap;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions, VolatileMemory};

    use super::*;
    use crate::message::MessageType;
    use crate::testing::RecordingRaise;
    use crate::{FakeReferenceClock, Partition, PartitionConfig, Posted, VpIndex};

    type Hook = Box<dyn FnMut()>;

    thread_local! {
        /// Runs between the host seeing a busy slot and setting MessagePending: the window in
        /// which a guest on another vCPU may free the slot.
        static GUEST_WINDOW: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    pub(super) fn guest_window() {
        if let Some(mut hook) = GUEST_WINDOW.with(|h| h.borrow_mut().take()) {
            hook();
        }
    }

    /// The guest's slot release: clear the type, full fence, read MessagePending.
    fn guest_release(mem: &GuestMemoryMmap<AtomicBitmap>, slot: u64) -> bool {
        let s = mem
            .get_slices(GuestAddress(slot), 256, Permissions::ReadWrite)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        s.get_atomic_ref::<AtomicU32>(0)
            .unwrap()
            .store(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        s.get_atomic_ref::<AtomicU8>(5)
            .unwrap()
            .load(Ordering::SeqCst)
            & 1
            != 0
    }

    #[test]
    fn slot_freed_between_busy_check_and_pending_is_refilled_by_the_host() {
        let mem = Arc::new(
            GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 1);
        let raise = Arc::new(RecordingRaise::default());
        let clock = Arc::new(FakeReferenceClock::new(0));
        let (partition, mut vps) = Partition::new(config, mem.clone(), raise, clock).unwrap();
        for (msr, value) in [
            (index::SINT0, 0x40),
            (index::SIMP, 0x5001),
            (index::SCONTROL, 1),
        ] {
            vps[0].wrmsr(msr, value, Origin::Guest).unwrap();
        }
        let m = |ty| HvMessage::new(MessageType(ty), 0, &[]).unwrap();
        assert_eq!(
            partition.post_message(VpIndex(0), 0u32, m(1)),
            Ok(Posted::Delivered)
        );

        // Worst interleaving: the guest frees the slot and finds MessagePending clear after
        // the host saw the slot busy but before the host set MessagePending. The guest will
        // not write EOM, so the host's re-check must deliver.
        let saw_pending = Arc::new(std::sync::Mutex::new(None));
        let (mem2, saw) = (mem.clone(), saw_pending.clone());
        GUEST_WINDOW.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                *saw.lock().unwrap() = Some(guest_release(&mem2, 0x5000));
            }))
        });
        assert_eq!(
            partition.post_message(VpIndex(0), 0u32, m(2)),
            Ok(Posted::Delivered)
        );
        assert_eq!(*saw_pending.lock().unwrap(), Some(false));
        let ty: u32 = mem.read_obj(GuestAddress(0x5000)).unwrap();
        assert_eq!(
            ty, 2,
            "the second message is in the slot, not stranded in the queue"
        );
        assert_eq!(partition.counters(VpIndex(0)).unwrap().sints[0].queued, 0);
    }
}
