//! `#GP` as a value: every refused access says which MSR and why.

/// Why an MSR access raises a general-protection fault in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GpReason {
    /// The index is not a register this model implements (includes `0x4000_0085..=0x4000_008F`).
    #[error("not a Hyper-V register this model implements")]
    UnknownMsr,
    /// A partition-wide register was passed to the per-VP register file or the reverse
    /// (a bug in the caller's dispatch, reported instead of guessed at).
    #[error("register has the other scope (per-VP vs partition-wide)")]
    WrongScope,
    /// KVM profile: the SynIC is not activated on this vCPU.
    #[error("SynIC is not activated on this vCPU")]
    SynicInactive,
    /// KVM profile: a host write of a non-zero value while the SynIC is not activated.
    #[error("host write of a non-zero value while the SynIC is not activated")]
    InactiveNonZeroWrite,
    /// Guest write to a read-only register.
    #[error("register is read-only")]
    ReadOnly,
    /// Bits that must be zero were set.
    #[error("reserved bits {bits:#x} set")]
    ReservedBits {
        /// The offending bits.
        bits: u64,
    },
    /// A SINT vector in 0..=15 (those are exception vectors).
    #[error("SINT vector {vector} is below 16")]
    InvalidVector {
        /// The vector written.
        vector: u8,
    },
    /// A guest physical address beyond the partition's physical address width.
    #[error("page address {gpa:#x} is beyond the {bits}-bit physical address width")]
    GpaTooWide {
        /// The page address written.
        gpa: u64,
        /// The physical address width.
        bits: u8,
    },
    /// TLFS profile: the guest wrote `HYPERCALL` after setting its Locked bit.
    #[error("HYPERCALL is locked until reset")]
    HypercallLocked,
    /// A host write of `VP_INDEX` outside the supported range.
    #[error("VP index {value} is not below {limit}")]
    VpIndexOutOfRange {
        /// The value written.
        value: u64,
        /// The exclusive upper bound.
        limit: u64,
    },
    /// TLFS profile: a host write of `SVERSION` with a version this model does not implement.
    #[error("SynIC version {value:#x} is not supported (only 1)")]
    UnsupportedVersion {
        /// The value written.
        value: u64,
    },
}

/// A refused MSR access: the guest gets `#GP(0)`; the host gets this value back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("#GP on MSR {index:#x}: {reason}")]
pub struct Gp {
    /// The raw MSR index.
    pub index: u32,
    /// Why the access was refused.
    pub reason: GpReason,
}

impl Gp {
    /// A fault on `index` for `reason`.
    pub const fn new(index: u32, reason: GpReason) -> Self {
        Self { index, reason }
    }
}
