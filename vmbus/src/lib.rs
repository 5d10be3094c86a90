//! A VMBus host on the SynIC library: the channel-management protocol, channel ring buffers in
//! guest memory, signalling through SynIC event flags and HvSignalEvent, and the integration
//! services (heartbeat, shutdown, time sync, key-value exchange) a Hyper-V guest expects.
//!
//! * [`protocol`]: the channel messages as zerocopy types; [`Version`].
//! * [`control::ControlPlane`]: the connection and channel state machine, no I/O (offers,
//!   GPADLs, open/close, rescind, modify, unload); it calls [`control::ChannelHooks`] where the
//!   host must act.
//! * [`gpadl`]: GPADL descriptions assembled from untrusted messages.
//! * [`ring`]: the `hv_ring_buffer` rings, host side, over vm-memory.
//! * [`ic`]: the ICMSG framework and the four services' messages.
//! * [`host::VmbusHost`]: the device thread tying them to a [`synic::Partition`] and its
//!   hypercall [`synic::hypercall::Connections`]; [`host::VmbusHandle`] is the host API.
//!
//! The crate never calls KVM. A VMM in kernel mode hands it [`host::HvEventFds`] so guest
//! signals reach the device thread without an exit. `docs/vmbus.md` describes the protocol
//! and what Linux needs.
//!
//! ```
//! use synic_vmbus::ring::{OutgoingRing, RingPages, Written};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
//! // The guest gave page 4 as the ring's header and pages 5 and 6 as its data.
//! let mut ring = OutgoingRing::open(&mem, RingPages::new(&[4, 5, 6]).unwrap()).unwrap();
//! // The ring was empty and the guest's interrupt_mask is clear: signal the guest.
//! assert_eq!(ring.write(&mem, 6, 0, 1, b"hello").unwrap(), Written::Sent { signal: true });
//! // A second packet behind it needs no signal: the guest is already on its way.
//! assert_eq!(ring.write(&mem, 6, 0, 2, b"again").unwrap(), Written::Sent { signal: false });
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod control;
pub mod gpadl;
pub mod host;
pub mod ic;
pub mod log;
pub mod protocol;
pub mod ring;
#[cfg(feature = "fuzzing")]
pub mod sim;

pub use control::{ControlPlane, VmbusError};
pub use host::{
    HeartbeatReply, HvEventFds, RequestError, TimeSample, VmbusConfig, VmbusHandle, VmbusHost,
    VmbusLog,
};
pub use ic::{IcKind, KvpPool};
pub use protocol::Version;
