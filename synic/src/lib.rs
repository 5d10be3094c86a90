//! Hyper-V SynIC core: message slots, event flags and lossless delivery over guest memory.
//!
//! * A [`Partition`] holds every VP's device-visible state by VP index. Device threads call
//!   [`Partition::post_message`], [`Partition::signal_event`] and (kernel mode)
//!   [`Partition::ack`] on it.
//! * Each [`Vp`] is owned by the thread running that vCPU: userspace mode forwards Hyper-V
//!   RDMSR/WRMSR exits to [`Vp::rdmsr`]/[`Vp::wrmsr`]; kernel mode feeds
//!   `KVM_EXIT_HYPERV_SYNIC` to [`Vp::apply_synic_exit`].
//! * Guest memory is any vm-memory [`GuestAddressSpace`](vm_memory::GuestAddressSpace); every
//!   host write marks the page dirty.
//! * The model never calls KVM: interrupts leave through [`RaiseSint`], which `synic-routing`
//!   implements for KVM (HV_SINT routes in kernel mode, MSI routes in userspace mode) and tests
//!   implement with a recorder ([`testing::RecordingRaise`]).
//!
//! Locking and memory ordering are described in `docs/synic-design.md`.
//!
//! ```
//! use std::sync::Arc;
//! use synic::{HvMessage, MessageType, Mode, Partition, PartitionConfig, Posted, VpIndex};
//! use synic::testing::RecordingRaise;
//! use synic_msr::{index, Origin, Profile};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
//! let raise = Arc::new(RecordingRaise::default());
//! let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 1);
//! let clock = Arc::new(synic::SystemReferenceClock::new());
//! let (partition, mut vps) = Partition::new(config, mem, raise.clone(), clock).unwrap();
//! // The guest enables its SynIC, message page at 0x5000, and SINT2 with vector 0x40.
//! vps[0].wrmsr(index::SCONTROL, 1, Origin::Guest).unwrap();
//! vps[0].wrmsr(index::SIMP, 0x5001, Origin::Guest).unwrap();
//! vps[0].wrmsr(index::SINT0 + 2, 0x40, Origin::Guest).unwrap();
//! // A device posts a message; it lands in slot 2 and SINT2 is raised.
//! let msg = HvMessage::new(MessageType(1), 0, b"hello").unwrap();
//! assert_eq!(partition.post_message(VpIndex(0), 2u32, msg), Ok(Posted::Delivered));
//! assert_eq!(raise.raised().len(), 1);
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod clock;
mod counters;
mod delivery;
mod error;
mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hypercall;
pub mod message;
mod overlay;
mod page;
mod partition;
mod queue;
mod shared;
mod state;
mod stimer;
pub mod testing;
mod timers;
mod vp;

pub use clock::{
    FakeReferenceClock, FakeTscClock, ReferenceClock, SystemReferenceClock, TscParameters,
    REFERENCE_HZ,
};
pub use counters::{SintCounters, VpCounters};
pub use error::{Error, MsrError, PostError};
pub use events::FlagOutcome;
pub use hypercall::HvStatus;
pub use message::{
    HvMessage, MessageFlags, MessageHeader, MessageType, ReferenceTscPage, TimerMessagePayload,
};
pub use overlay::OverlayState;
pub use partition::{
    Acked, Partition, PartitionConfig, Posted, SynicView, DEFAULT_QUEUE_CAPACITY, MAX_VPS,
};
pub use state::{PartitionState, VpState, STATE_VERSION};
pub use stimer::{StimerCounters, StimerState, MAX_CATCH_UP_PERIODS};
pub use synic_msr::{Sint, SintIndex, VpIndex};
pub use timers::TimerPoll;
pub use vp::{MsrWrite, SynicExit, VmmAction, Vp};

/// Who owns the SynIC registers of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every SynIC MSR exits to userspace (`KVM_CAP_X86_USER_SPACE_MSR`); the model owns the
    /// registers and their semantics, and SINTs are raised as MSI routes.
    Userspace,
    /// KVM's in-kernel SynIC (`KVM_CAP_HYPERV_SYNIC2`) owns the registers; the model learns
    /// SCONTROL/SIEFP/SIMP from `KVM_EXIT_HYPERV_SYNIC`, never sees SINT registers (it raises
    /// after every delivery and KVM drops masked SINTs), and gets acks from resamplefds.
    Kernel,
}

/// Where SINT interrupts leave the model.
///
/// Called from whichever thread delivered a message or set a flag (a vCPU thread or a device
/// thread), so implementations must be cheap and must not call back into the model.
pub trait RaiseSint: Send + Sync {
    /// Raises `sint` on `vp` as an edge interrupt with `vector`. `auto_eoi` tells an APIC
    /// owner to EOI on delivery (the guest will not EOI). In kernel mode the kernel reads the
    /// vector from its own copy of the SINT register and these two values are informative.
    fn raise(&self, vp: VpIndex, sint: SintIndex, vector: u8, auto_eoi: bool);

    /// The guest (or the host) rewrote `SINTn` on `vp`. Userspace-mode routes keep their MSI
    /// vector in step with it. The default does nothing.
    fn sint_changed(&self, vp: VpIndex, sint: SintIndex, value: Sint) {
        let _ = (vp, sint, value);
    }

    /// Raises `vector` on `vp` as a fixed edge interrupt, with no SINT involved: a direct-mode
    /// synthetic timer expired (`STIMERn_CONFIG.DirectMode`, `ApicVector`). Userspace-mode
    /// routing sends an MSI to the VP's local APIC. The default drops it: a VMM whose raise
    /// does not implement this must not advertise direct-mode timers (CPUID 0x4000_0003 EDX
    /// bit 19).
    fn raise_vector(&self, vp: VpIndex, vector: u8) {
        let _ = (vp, vector);
    }
}

/// A SINT number as callers hold it: a checked [`SintIndex`] or a raw number that is checked
/// here (more than 15 -> [`Error::InvalidSint`]).
pub trait IntoSint {
    /// The SINT, or why the number is not one.
    fn into_sint(self) -> Result<SintIndex, Error>;
}

impl IntoSint for SintIndex {
    fn into_sint(self) -> Result<SintIndex, Error> {
        Ok(self)
    }
}

impl IntoSint for u32 {
    fn into_sint(self) -> Result<SintIndex, Error> {
        SintIndex::new(self).ok_or(Error::InvalidSint { sint: self })
    }
}

impl IntoSint for u8 {
    fn into_sint(self) -> Result<SintIndex, Error> {
        u32::from(self).into_sint()
    }
}
