//! The partition: every VP's shared state by VP index, the partition-wide registers, and the
//! device-thread entry points (post a message, acknowledge a SINT).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use synic_msr::{KvmSynic, PageRegister, PartitionRegisters, Profile, Scontrol, VpRegisters};
use vm_memory::GuestAddressSpace;

use crate::clock::{ReferenceClock, TscParameters};
use crate::counters::VpCounters;
use crate::delivery::{
    deliver_one, write_slot, Interrupt, PageRegs, Policy, SintState, SlotStep, Step,
};
use crate::error::{Error, PostError};
use crate::message::HvMessage;
use crate::overlay::Overlays;
use crate::shared::VpShared;
use crate::vp::Vp;
use crate::{IntoSint, Mode, RaiseSint, SintIndex, VpIndex};

/// Most VPs a partition may have (KVM's `KVM_MAX_VCPUS`).
pub const MAX_VPS: u32 = 4096;
/// Default capacity of each (VP, SINT) message queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;

/// How a partition is configured; fixed for its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    /// Who owns the SynIC registers: the model (userspace) or KVM (kernel).
    pub mode: Mode,
    /// TLFS-strict or KVM-compatible register and delivery semantics. In the KVM profile
    /// SCONTROL's Enable bit gates nothing, as in KVM.
    pub profile: Profile,
    /// Number of VPs; VP `n` starts with VP index `n`.
    pub vp_count: u32,
    /// Capacity of each (VP, SINT) message queue (messages not yet in the slot); at least 1.
    pub queue_capacity: usize,
    /// Guest physical address width used to check page addresses (TLFS profile).
    pub phys_addr_bits: u8,
    /// KVM profile: the SynIC capability the VPs are activated with at creation (`None`: the
    /// VMM calls [`Vp::activate`] itself). Ignored with the TLFS profile.
    pub kvm_synic: Option<KvmSynic>,
}

impl PartitionConfig {
    /// A configuration with the default queue capacity, a 52-bit address width and (KVM
    /// profile) SynIC v2 activated at creation.
    pub fn new(mode: Mode, profile: Profile, vp_count: u32) -> Self {
        Self {
            mode,
            profile,
            vp_count,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            phys_addr_bits: synic_msr::DEFAULT_PHYS_ADDR_BITS,
            kvm_synic: Some(KvmSynic::V2),
        }
    }

    /// This configuration with another queue capacity.
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.vp_count == 0 || self.vp_count > MAX_VPS {
            return Err(Error::InvalidConfig {
                what: "vp_count must be 1..=4096",
            });
        }
        if self.queue_capacity == 0 {
            return Err(Error::InvalidConfig {
                what: "queue_capacity must be at least 1",
            });
        }
        Ok(())
    }

    /// A power-on register file for the VP created as number `index`.
    pub(crate) fn fresh_registers(&self, index: u32) -> VpRegisters {
        let mut regs =
            VpRegisters::new(self.profile, index).with_phys_addr_bits(self.phys_addr_bits);
        if let Some(v) = self.kvm_synic {
            regs.activate(v);
        }
        regs
    }
}

/// What a successful post did with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// It is in the slot now (and the SINT was raised unless masked or polling).
    Delivered,
    /// It waits in the queue: the slot is busy (MessagePending is set), older messages are
    /// ahead of it, or the SynIC or message page is disabled.
    Queued,
}

/// What an acknowledgement achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    /// The next queued message went into the slot.
    Delivered,
    /// Nothing to do: no message queued, or the slot is still busy (counted as spurious).
    Spurious,
}

/// The SynIC page registers of one VP as the delivery paths see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynicView {
    /// `SCONTROL`.
    pub scontrol: Scontrol,
    /// `SIMP`.
    pub simp: PageRegister,
    /// `SIEFP`.
    pub siefp: PageRegister,
}

/// One partition's SynIC: shared by device threads (post, signal, ack) and, through [`Vp`],
/// by vCPU threads.
pub struct Partition<M: GuestAddressSpace> {
    config: PartitionConfig,
    pub(crate) policy: Policy,
    pub(crate) memory: M,
    pub(crate) raise: Arc<dyn RaiseSint>,
    clock: Arc<dyn ReferenceClock>,
    /// Added to the clock's reading (restore continues the source's reference time).
    time_offset: AtomicU64,
    /// The last non-zero TscSequence written into the reference TSC page (changed under the
    /// overlay registry's lock).
    pub(crate) tsc_sequence: AtomicU32,
    registers: Mutex<PartitionRegisters>,
    vps: Box<[VpShared]>,
    /// Every overlay page (message and event-flags pages, hypercall page) and the RAM they
    /// cover; held for placement changes, save and restore (never by delivery).
    overlays: Mutex<Overlays>,
    /// Serialises VP index changes (host writes of VP_INDEX, restores) so indices stay unique.
    pub(crate) vp_index_lock: Mutex<()>,
}

impl<M: GuestAddressSpace> fmt::Debug for Partition<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("config", &self.config)
            .field("vps", &self.vps.len())
            .finish_non_exhaustive()
    }
}

impl<M: GuestAddressSpace> Partition<M> {
    /// Creates the partition and its VPs; hand each [`Vp`] to the thread that runs that vCPU.
    ///
    /// `memory` is the guest's RAM, `raise` where SINT interrupts go, `clock` the reference
    /// clock behind `TIME_REF_COUNT`, the synthetic timers and (when it follows the guest TSC,
    /// [`ReferenceClock::tsc_parameters`]) the reference TSC page.
    pub fn new(
        config: PartitionConfig,
        memory: M,
        raise: Arc<dyn RaiseSint>,
        clock: Arc<dyn ReferenceClock>,
    ) -> Result<(Arc<Self>, Vec<Vp<M>>), Error> {
        config.validate()?;
        let vps = (0..config.vp_count)
            .map(|i| {
                let regs = config.fresh_registers(i);
                VpShared::new(i, config.queue_capacity, PageRegs::of(&regs))
            })
            .collect();
        let partition = Arc::new(Self {
            config,
            policy: Policy {
                mode: config.mode,
                profile: config.profile,
            },
            memory,
            raise,
            clock,
            time_offset: AtomicU64::new(0),
            tsc_sequence: AtomicU32::new(0),
            registers: Mutex::new(
                PartitionRegisters::new(config.profile).with_phys_addr_bits(config.phys_addr_bits),
            ),
            vps,
            overlays: Mutex::new(Overlays::new(config.vp_count as usize)),
            vp_index_lock: Mutex::new(()),
        });
        let vps = (0..config.vp_count)
            .map(|i| Vp::new(Arc::clone(&partition), i as usize))
            .collect();
        Ok((partition, vps))
    }

    /// The configuration.
    pub fn config(&self) -> &PartitionConfig {
        &self.config
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// The partition reference time (100 ns units): what `TIME_REF_COUNT` reads.
    pub fn reference_time(&self) -> u64 {
        self.clock
            .now()
            .wrapping_add(self.time_offset.load(Ordering::Relaxed))
    }

    /// What the reference TSC page shows (userspace mode): the clock's TSC parameters with
    /// the partition's time offset added, so that the page's formula gives exactly
    /// [`reference_time`](Self::reference_time) for the guest's TSC. `None` when the clock does
    /// not follow the guest TSC: the page then holds sequence 0 ("read TIME_REF_COUNT").
    pub fn reference_tsc_parameters(&self) -> Option<TscParameters> {
        let offset = self.time_offset.load(Ordering::Relaxed);
        self.clock.tsc_parameters().map(|p| p.shifted(offset))
    }

    /// Rewrites the reference TSC page (if the guest has it enabled over RAM) from the clock's
    /// current TSC parameters, with a new sequence number. The partition does this itself
    /// when the page is enabled, moved or uncovered and at a restore; a VMM calls it when its
    /// clock's [`ReferenceClock::tsc_parameters`] changed otherwise (e.g. the TSC stopped being
    /// usable: the page then says "read TIME_REF_COUNT").
    pub fn refresh_reference_tsc_page(&self) {
        let mem = self.memory.memory();
        let overlays = self.lock_overlays();
        self.publish_reference_tsc(&overlays, &*mem);
    }

    /// Makes the reference time read `time` now (restore).
    pub(crate) fn set_reference_time(&self, time: u64) {
        let offset = time.wrapping_sub(self.clock.now());
        self.time_offset.store(offset, Ordering::Relaxed);
    }

    /// The partition-wide registers (GUEST_OS_ID, HYPERCALL); held briefly, rarely written.
    pub(crate) fn registers(&self) -> MutexGuard<'_, PartitionRegisters> {
        self.registers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The overlay registry. Lock order: partition registers, then this, then a VP's timer
    /// mutex, then its SINT locks.
    pub(crate) fn lock_overlays(&self) -> MutexGuard<'_, Overlays> {
        self.overlays.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn vp_at(&self, slot: usize) -> &VpShared {
        &self.vps[slot]
    }

    /// The VP with index `vp`. VP indices equal creation numbers unless the host rewrote
    /// VP_INDEX, so the direct look-up nearly always hits.
    pub(crate) fn shared(&self, vp: VpIndex) -> Result<&VpShared, Error> {
        if let Some(direct) = self.vps.get(vp.0 as usize) {
            if direct.index() == vp {
                return Ok(direct);
            }
        }
        self.vps
            .iter()
            .find(|s| s.index() == vp)
            .ok_or(Error::InvalidVpIndex { vp })
    }

    /// The VP indices of all VPs, in creation order.
    pub fn vp_indices(&self) -> Vec<VpIndex> {
        self.vps.iter().map(VpShared::index).collect()
    }

    /// SCONTROL, SIMP and SIEFP of `vp` as delivery sees them (kernel mode: as last reported
    /// by `KVM_EXIT_HYPERV_SYNIC`).
    pub fn synic_view(&self, vp: VpIndex) -> Result<SynicView, Error> {
        let shared = self.shared(vp)?;
        let st = shared.lock(SintIndex::ALL[0]);
        let regs = shared.page_regs(&st);
        Ok(SynicView {
            scontrol: Scontrol(regs.scontrol),
            simp: PageRegister(regs.simp),
            siefp: PageRegister(regs.siefp),
        })
    }

    /// Statistics of `vp`.
    pub fn counters(&self, vp: VpIndex) -> Result<VpCounters, Error> {
        Ok(self.shared(vp)?.counters())
    }

    /// Posts a message to `sint` of `vp`, on behalf of a guest-visible sender (a device, or
    /// HvPostMessage). The type must be non-zero with bit 31 clear and the payload at most 240
    /// bytes.
    ///
    /// The message goes into the slot now if the queue is empty and the slot is free,
    /// otherwise into the SINT's FIFO queue (delivered on EOM, on an [`ack`](Self::ack), or on
    /// the next post). Refused — with the message handed back — when the queue is full, the
    /// arguments are invalid, the TLFS profile's SCONTROL is disabled, or the enabled message
    /// page is outside guest RAM. A disabled message page is not a refusal: the message waits.
    // The refused message comes back by value inside the error (no allocation on the
    // backpressure path); the large `Err` is the point, not an accident.
    #[allow(clippy::result_large_err)]
    pub fn post_message(
        &self,
        vp: VpIndex,
        sint: impl IntoSint,
        message: HvMessage,
    ) -> Result<Posted, PostError> {
        self.post(vp, sint, message, false)
    }

    /// [`post_message`](Self::post_message) for the hypervisor's own messages: also accepts
    /// types with bit 31 set (e.g. `HVMSG_TIMER_EXPIRED` from a synthetic timer). Host-internal;
    /// never reachable from a guest hypercall.
    // The refused message comes back by value inside the error (no allocation on the
    // backpressure path); the large `Err` is the point, not an accident.
    #[allow(clippy::result_large_err)]
    pub fn post_hypervisor_message(
        &self,
        vp: VpIndex,
        sint: impl IntoSint,
        message: HvMessage,
    ) -> Result<Posted, PostError> {
        self.post(vp, sint, message, true)
    }

    // The refused message comes back by value inside the error (no allocation on the
    // backpressure path); the large `Err` is the point, not an accident.
    #[allow(clippy::result_large_err)]
    fn post(
        &self,
        vp: VpIndex,
        sint: impl IntoSint,
        message: HvMessage,
        allow_hypervisor_types: bool,
    ) -> Result<Posted, PostError> {
        let checked = sint.into_sint().and_then(|sint| {
            message.validate(allow_hypervisor_types)?;
            Ok((self.shared(vp)?, sint))
        });
        let (shared, sint) = checked.map_err(|error| PostError { error, message })?;
        let mut interrupt = None;
        let result = {
            let mut st = shared.lock(sint);
            let regs = shared.page_regs(&st);
            self.post_locked(vp, sint, regs, &mut st, &message, &mut interrupt)
        };
        self.raise_after_unlock(shared, sint, interrupt);
        result.map_err(|error| PostError { error, message })
    }

    fn post_locked(
        &self,
        vp: VpIndex,
        sint: SintIndex,
        regs: PageRegs,
        st: &mut SintState,
        message: &HvMessage,
        interrupt: &mut Option<Interrupt>,
    ) -> Result<Posted, Error> {
        if !self.policy.synic_enabled(regs.scontrol) {
            return Err(Error::SynicDisabled { vp });
        }
        let mem = self.memory.memory();
        if st.queue.is_empty() {
            // Nothing ahead of it: straight into a free slot, without touching the queue (whose
            // storage is allocated only while messages wait).
            let more = st.timer_waiting != 0;
            let posted = match write_slot(&*mem, self.policy, regs, sint, st, message, more)? {
                SlotStep::Written => {
                    *interrupt = self.policy.interrupt(st.sint);
                    Posted::Delivered
                }
                SlotStep::Busy | SlotStep::Held => {
                    st.queue.push_back(*message, st.capacity);
                    Posted::Queued
                }
            };
            st.counters.posted += 1;
            return Ok(posted);
        }
        if st.is_full() {
            // The guest may have freed the slot without writing EOM yet: make room first.
            if let Ok(Step::Delivered(i)) = deliver_one(&*mem, self.policy, regs, sint, st) {
                *interrupt = i;
            }
            if st.is_full() {
                st.counters.rejected_full += 1;
                return Err(Error::QueueFull {
                    vp,
                    sint,
                    capacity: st.capacity,
                });
            }
        }
        let first = st.queue.is_empty();
        st.queue.push_back(*message, st.capacity);
        match deliver_one(&*mem, self.policy, regs, sint, st) {
            Ok(step) => {
                st.counters.posted += 1;
                match step {
                    // If the guest freed the slot again right after the pre-drain filled it,
                    // this is a second delivery; one raise (same SINT, same vector) after both
                    // publishes tells the guest about both, like an APIC coalescing two edges.
                    Step::Delivered(i) => {
                        *interrupt = i;
                        Ok(if first {
                            Posted::Delivered
                        } else {
                            Posted::Queued
                        })
                    }
                    Step::Empty | Step::Held | Step::Busy => Ok(Posted::Queued),
                }
            }
            Err(e) => {
                // Nothing was delivered, so the message just pushed is still the last one.
                st.queue.pop_back();
                Err(e)
            }
        }
    }

    /// An acknowledgement for `sint` of `vp` from the routing layer (kernel mode: the SINT's
    /// resamplefd fired after an EOM or an EOI). Retries delivery; spurious acks are harmless.
    pub fn ack(&self, vp: VpIndex, sint: impl IntoSint) -> Result<Acked, Error> {
        let sint = sint.into_sint()?;
        let shared = self.shared(vp)?;
        // A timer expiry waiting for the slot gets it first (see `redeliver_all`).
        self.service_timers(shared);
        let mut interrupt = None;
        let result = {
            let mut st = shared.lock(sint);
            let regs = shared.page_regs(&st);
            st.counters.acks += 1;
            let step = deliver_one(&*self.memory.memory(), self.policy, regs, sint, &mut st);
            if let Ok(Step::Delivered(i)) = step {
                interrupt = i;
                Ok(Acked::Delivered)
            } else {
                st.counters.spurious_acks += 1;
                step.map(|_| Acked::Spurious)
            }
        };
        self.raise_after_unlock(shared, sint, interrupt);
        result
    }

    /// Retries delivery on every SINT of a VP (EOM, page enable, SynIC enable, restore).
    /// Page errors are counted, not returned: the guest's EOM itself was valid.
    ///
    /// Timer expiries waiting for a slot go first: a timer holds at most one expiry at a
    /// time, so it cannot starve queued messages, while a steady stream of posts could
    /// otherwise take every freed slot from a waiting timer.
    pub(crate) fn redeliver_all(&self, shared: &VpShared) {
        self.service_timers(shared);
        let mem = self.memory.memory();
        for sint in SintIndex::ALL {
            let interrupt = {
                let mut st = shared.lock(sint);
                let regs = shared.page_regs(&st);
                match deliver_one(&*mem, self.policy, regs, sint, &mut st) {
                    Ok(Step::Delivered(i)) => i,
                    _ => None,
                }
            };
            self.raise_after_unlock(shared, sint, interrupt);
        }
    }

    /// Raises a delivery's interrupt. Called without the SINT lock: the message or flag is
    /// already visible in guest memory, and the raise (an irqfd write) is a system call that
    /// must not lengthen the critical section.
    pub(crate) fn raise_after_unlock(
        &self,
        shared: &VpShared,
        sint: SintIndex,
        interrupt: Option<Interrupt>,
    ) {
        if let Some(i) = interrupt {
            self.raise.raise(shared.index(), sint, i.vector, i.auto_eoi);
        }
    }
}

impl PageRegs {
    /// The page registers of a register file.
    pub(crate) fn of(regs: &VpRegisters) -> Self {
        Self {
            scontrol: regs.scontrol().0,
            simp: regs.simp().0,
            siefp: regs.siefp().0,
            placements: Default::default(),
        }
    }
}
