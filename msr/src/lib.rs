//! Hyper-V SynIC register definitions and their exact read/write semantics.
//!
//! This crate is pure: no I/O, no guest memory, no KVM. It answers one question — what happens
//! when this MSR is read or written with this value from this origin — and answers it for two
//! behaviour [`Profile`]s, TLFS-strict and KVM-compatible. The full table of choices is in
//! `docs/msr-semantics.md`.
//!
//! * [`Msr`] classifies raw indices; [`VpRegisters`] holds one VP's registers and
//!   [`PartitionRegisters`] the partition-wide ones. Both take raw indices (`rdmsr`/`wrmsr`,
//!   what an MSR exit carries) or classified [`Msr`]s (`read`/`write`).
//! * Every access names its [`Origin`]: the guest, or the VMM (save/restore, set-up), which
//!   skips guest-only checks. With [`Profile::Kvm`] the SynIC exists only after
//!   [`VpRegisters::activate`], as with `KVM_CAP_HYPERV_SYNIC2`.
//! * A write returns a [`WriteOutcome`] naming what changed (a page enabled, moved or disabled,
//!   a SINT rewritten, an EOM) so the layer above can act on guest memory and interrupts.
//! * A refused access is a [`Gp`] value carrying the reason, never a panic; a refused write
//!   changes nothing.
//! * Save/restore: host-read every register in [`Msr::SAVED`], host-write them back in that
//!   order into fresh registers with the same profile, address width and activation.
//!
//! ```
//! use synic_msr::{Msr, Origin, Profile, VpRegisters, WriteOutcome, Change, index};
//! let mut vp = VpRegisters::new(Profile::Tlfs, 0);
//! // A guest enables the message page at 0x5000.
//! let out = vp.wrmsr(index::SIMP, 0x5001, Origin::Guest).unwrap();
//! assert!(matches!(out.change, Change::MessagePage(u) if u.new.enabled_gpa() == Some(0x5000)));
//! // A SINT vector below 16 is refused with a reason.
//! let gp = vp.wrmsr(index::SINT0 + 2, 0x0f, Origin::Guest).unwrap_err();
//! assert_eq!(gp.to_string(), "#GP on MSR 0x40000092: SINT vector 15 is below 16");
//! ```
//!
//! Saving one VP and its partition and restoring them elsewhere:
//!
//! ```
//! use synic_msr::{index, KvmSynic, Msr, Origin, PartitionRegisters, Profile, Scope, VpRegisters};
//! let mut vp = VpRegisters::new(Profile::Kvm, 0);
//! vp.activate(KvmSynic::V2);
//! let mut partition = PartitionRegisters::new(Profile::Kvm);
//! partition.wrmsr(index::GUEST_OS_ID, 0x8100_0000_0000_0001, Origin::Guest).unwrap();
//! partition.wrmsr(index::HYPERCALL, 0x7001, Origin::Guest).unwrap();
//! vp.wrmsr(index::SINT0 + 1, 0x40, Origin::Guest).unwrap();
//!
//! let saved: Vec<(Msr, u64)> = Msr::SAVED
//!     .iter()
//!     .map(|&msr| {
//!         let value = match msr.scope() {
//!             Scope::Vp => vp.read(msr, Origin::Host),
//!             Scope::Partition => partition.read(msr, Origin::Host, 0),
//!         };
//!         (msr, value.unwrap())
//!     })
//!     .collect();
//!
//! // The destination is activated like the source before the registers go back in.
//! let mut vp2 = VpRegisters::new(Profile::Kvm, 7);
//! vp2.activate(KvmSynic::V2);
//! let mut partition2 = PartitionRegisters::new(Profile::Kvm);
//! for (msr, value) in saved {
//!     match msr.scope() {
//!         Scope::Vp => vp2.write(msr, value, Origin::Host),
//!         Scope::Partition => partition2.write(msr, value, Origin::Host),
//!     }
//!     .unwrap();
//! }
//! assert_eq!(vp2.rdmsr(index::SINT0 + 1, Origin::Guest), Ok(0x40));
//! assert_eq!(vp2.vp_index(), 0);
//! assert_eq!(partition2.hypercall().gpa(), 0x7000);
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod gp;
pub mod index;
#[cfg(feature = "oracle")]
pub mod oracle;
mod partition;
pub mod regs;
mod vp;

pub use gp::{Gp, GpReason};
pub use index::{Msr, Scope, SintIndex, StimerIndex, VpIndex};
pub use partition::PartitionRegisters;
pub use regs::{Hypercall, PageRegister, Scontrol, Siefp, Simp, Sint, StimerConfig};
pub use vp::{KvmSynic, VpRegisters};

/// Who performs an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The guest executed RDMSR/WRMSR.
    Guest,
    /// The VMM, e.g. saving or restoring state. Host accesses bypass guest-only checks.
    Host,
}

/// Which behaviour to model where the TLFS and KVM differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Hyper-V TLFS, strictly: reserved bits checked (RsvdZ -> #GP, RsvdP preserved), SINT
    /// vectors 16..=255, SCONTROL resets to 0, the SynIC is always present.
    Tlfs,
    /// Linux KVM's in-kernel SynIC: registers store all 64 bits, the SynIC must be activated
    /// (KVM_CAP_HYPERV_SYNIC/SYNIC2) before the guest may touch it, and so on.
    Kvm,
}

/// Default physical address width: the architectural maximum of x86-64.
pub const DEFAULT_PHYS_ADDR_BITS: u8 = 52;

/// The SynIC version `SVERSION` reports.
pub const SYNIC_VERSION: u64 = 1;

/// What an accepted write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The register written.
    pub msr: Msr,
    /// Its value before the write.
    pub old: u64,
    /// Its value after the write (what a read now returns; may differ from the value written).
    pub new: u64,
    /// What the layer above must act on.
    pub change: Change,
}

/// An update of a page register (`SIMP`, `SIEFP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageUpdate {
    /// Before the write.
    pub old: PageRegister,
    /// After the write.
    pub new: PageRegister,
    /// KVM with SYNIC v1: the caller must zero the page the guest sees at the new address (an
    /// overlay layer zeroes the overlay's content, not the RAM under it); every guest write
    /// with Enable=1 does, even of the same value. If zeroing fails, the guest must get #GP and
    /// the caller restores `old` with a host write.
    pub zero_page: bool,
}

/// How an enabled page moved, derived from a [`PageUpdate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageChange {
    /// Enabled state and address are the same.
    Unchanged,
    /// The page went from disabled to enabled at `gpa`.
    Enabled {
        /// Page base.
        gpa: u64,
    },
    /// The page stayed enabled but moved.
    Moved {
        /// Old page base.
        from: u64,
        /// New page base.
        to: u64,
    },
    /// The page was enabled at `gpa` and now is not.
    Disabled {
        /// Old page base.
        gpa: u64,
    },
}

impl PageUpdate {
    /// Classifies the update.
    pub const fn change(&self) -> PageChange {
        match (self.old.enabled_gpa(), self.new.enabled_gpa()) {
            (None, None) => PageChange::Unchanged,
            (None, Some(gpa)) => PageChange::Enabled { gpa },
            (Some(gpa), None) => PageChange::Disabled { gpa },
            (Some(from), Some(to)) if from == to => PageChange::Unchanged,
            (Some(from), Some(to)) => PageChange::Moved { from, to },
        }
    }
}

/// The effect of an accepted write that the layer above acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing to act on: the value was stored (or the write was discarded, `old == new`).
    None,
    /// `SCONTROL`'s Enable bit changed.
    SynicEnable {
        /// The new state.
        enabled: bool,
    },
    /// `SIMP` was written.
    MessagePage(PageUpdate),
    /// `SIEFP` was written.
    EventFlagsPage(PageUpdate),
    /// `EOM` was written: retry queued messages on every SINT.
    Eom,
    /// `SINTn` was written (reported even when the value is unchanged).
    Sint {
        /// Which SINT.
        sint: SintIndex,
        /// Before.
        old: Sint,
        /// After.
        new: Sint,
    },
    /// `STIMERn_CONFIG` or `STIMERn_COUNT` was written: the timer must be re-armed from the
    /// registers' new values (a write always cancels a pending expiry, as in KVM).
    Stimer(StimerIndex),
    /// `HYPERCALL` changed (or `GUEST_OS_ID` = 0 disabled it). When `new` is enabled the VMM
    /// (re)fills the hypercall page.
    HypercallPage {
        /// Before.
        old: Hypercall,
        /// After.
        new: Hypercall,
    },
    /// `REFERENCE_TSC` was written (reported even when the value is unchanged): the layer
    /// above moves the reference TSC page and refreshes its content when `new` is enabled.
    ReferenceTscPage {
        /// Before.
        old: PageRegister,
        /// After.
        new: PageRegister,
    },
    /// A host write changed `VP_INDEX`.
    VpIndex {
        /// Before.
        old: u32,
        /// After.
        new: u32,
    },
}
