//! The crate's errors: one enum, one sentence per refusal.

use synic_msr::Gp;

use crate::hypercall::HvStatus;
use crate::message::HvMessage;
use crate::{SintIndex, VpIndex};

/// Why the model refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No VP of the partition has this VP index.
    #[error("no VP has index {vp}")]
    InvalidVpIndex {
        /// The index asked for.
        vp: VpIndex,
    },
    /// A SINT number above 15.
    #[error("SINT {sint} does not exist (valid: 0..=15)")]
    InvalidSint {
        /// The number asked for.
        sint: u32,
    },
    /// An event flag number above 2047.
    #[error("event flag {flag} does not exist (valid: 0..=2047)")]
    InvalidFlag {
        /// The number asked for.
        flag: u32,
    },
    /// A payload longer than 240 bytes.
    #[error("payload of {size} bytes exceeds the 240-byte maximum")]
    PayloadTooLarge {
        /// The size given.
        size: usize,
    },
    /// Message type 0 marks an empty slot and cannot be sent.
    #[error("message type 0 (HvMessageTypeNone) cannot be posted")]
    MessageTypeNone,
    /// A hypervisor-only type (bit 31 set) on the guest-visible post path.
    #[error("message type {message_type:#x} is reserved for the hypervisor (bit 31 set)")]
    HypervisorMessageType {
        /// The type given.
        message_type: u32,
    },
    /// The SINT's queue holds `capacity` messages already: retry after the guest consumed some.
    #[error("message queue of {vp} {sint} is full ({capacity} messages)")]
    QueueFull {
        /// The target VP.
        vp: VpIndex,
        /// The target SINT.
        sint: SintIndex,
        /// The queue's capacity.
        capacity: usize,
    },
    /// TLFS profile: the target's SCONTROL Enable bit is clear.
    #[error("the SynIC of {vp} is disabled (SCONTROL.Enable = 0)")]
    SynicDisabled {
        /// The target VP.
        vp: VpIndex,
    },
    /// The target's event-flags page is disabled.
    #[error("the event-flags page of {vp} is disabled (SIEFP.Enable = 0)")]
    EventFlagsPageDisabled {
        /// The target VP.
        vp: VpIndex,
    },
    /// Userspace mode: the target SINT is masked, so a flag could never be noticed.
    #[error("{sint} of {vp} is masked")]
    SintMasked {
        /// The target VP.
        vp: VpIndex,
        /// The target SINT.
        sint: SintIndex,
    },
    /// The enabled message or event-flags page is not backed by guest RAM (the guest pointed
    /// SIMP/SIEFP outside RAM, or at memory that cannot be accessed atomically).
    #[error("SynIC page {gpa:#x} is not in guest RAM")]
    PageNotInRam {
        /// The page's guest physical address.
        gpa: u64,
    },
    /// The enabled event-flags page lies under another overlay page (a message page, an
    /// event-flags page or the hypercall page) enabled at the same address first: the guest
    /// sees that other page there (TLFS "GPA Overlay Pages"), so no flag can be set.
    #[error("SynIC page {gpa:#x} is covered by another overlay page at the same address")]
    PageShadowed {
        /// The page's guest physical address.
        gpa: u64,
    },
    /// The call is meaningful only in the other [`Mode`](crate::Mode).
    #[error("operation not available in {mode:?} mode")]
    WrongMode {
        /// The partition's mode.
        mode: crate::Mode,
    },
    /// A `KVM_EXIT_HYPERV_SYNIC` naming an MSR other than SCONTROL, SIEFP or SIMP.
    #[error("KVM_EXIT_HYPERV_SYNIC for MSR {msr:#x}, which is not SCONTROL, SIEFP or SIMP")]
    UnexpectedSynicExit {
        /// The MSR index in the exit.
        msr: u32,
    },
    /// Another VP of the partition already has this VP index.
    #[error("VP index {index} is already used by another VP")]
    VpIndexInUse {
        /// The index asked for.
        index: u32,
    },
    /// Saved state with a version this build does not read.
    #[error("saved state version {version} is not supported (expected {expected})")]
    UnsupportedStateVersion {
        /// The version found.
        version: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// Saved state that does not fit this partition (wrong mode, profile, queue count, a queue
    /// longer than the capacity, an invalid message).
    #[error("saved state does not fit this partition: {what}")]
    StateMismatch {
        /// What did not fit.
        what: &'static str,
    },
    /// A partition configuration the model cannot run.
    #[error("invalid partition configuration: {what}")]
    InvalidConfig {
        /// What is wrong.
        what: &'static str,
    },
    /// The register model refused a host write (a saved register value, a VP index).
    #[error("register write refused: {0}")]
    RegisterRefused(Gp),
}

impl Error {
    /// The hypercall status a hypercall layer answers for this error (HvPostMessage,
    /// HvSignalEvent). Errors a guest cannot cause map to `INVALID_PARAMETER`.
    pub const fn hv_status(&self) -> HvStatus {
        match self {
            Error::InvalidVpIndex { .. } => HvStatus::InvalidVpIndex,
            Error::QueueFull { .. } => HvStatus::InsufficientBuffers,
            Error::SynicDisabled { .. }
            | Error::EventFlagsPageDisabled { .. }
            | Error::SintMasked { .. }
            | Error::PageNotInRam { .. }
            | Error::PageShadowed { .. } => HvStatus::InvalidSynicState,
            _ => HvStatus::InvalidParameter,
        }
    }
}

/// A refused post: the reason, and the message handed back so nothing is silently dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct PostError {
    /// Why the message was not accepted.
    pub error: Error,
    /// The message, unchanged; the caller may retry it (e.g. after [`Error::QueueFull`]).
    pub message: HvMessage,
}

/// A refused MSR access. Whatever the variant, a guest access that fails gets `#GP(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsrError {
    /// The register model refused the access.
    #[error(transparent)]
    Gp(#[from] Gp),
    /// The model refused a consequence of the write (a page to zero outside RAM, a VP index in
    /// use); the register is unchanged.
    #[error("MSR {index:#x}: {error}")]
    Refused {
        /// The raw MSR index.
        index: u32,
        /// Why.
        error: Error,
    },
    /// Kernel mode: KVM owns the SynIC registers; the model learns them from
    /// `KVM_EXIT_HYPERV_SYNIC` instead.
    #[error("MSR {index:#x}: KVM owns the SynIC registers in kernel mode")]
    KernelMode {
        /// The raw MSR index.
        index: u32,
    },
}
