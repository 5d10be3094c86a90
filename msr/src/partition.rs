//! Partition-wide registers: GUEST_OS_ID, HYPERCALL, REFERENCE_TSC and the TIME_REF_COUNT
//! view.

use crate::index::{Msr, Scope};
use crate::regs::{Hypercall, PageRegister};
use crate::vp::check_gpa_width;
use crate::{Change, Gp, GpReason, Origin, Profile, WriteOutcome, DEFAULT_PHYS_ADDR_BITS};

/// The registers one partition shares among its VPs.
///
/// `TIME_REF_COUNT` holds no state here: reads return the reference time the caller passes
/// (the partition clock belongs to the layer above).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRegisters {
    profile: Profile,
    phys_addr_bits: u8,
    guest_os_id: u64,
    hypercall: u64,
    reference_tsc: u64,
}

impl PartitionRegisters {
    /// Power-on partition registers.
    pub fn new(profile: Profile) -> Self {
        Self {
            profile,
            phys_addr_bits: DEFAULT_PHYS_ADDR_BITS,
            guest_os_id: 0,
            hypercall: 0,
            reference_tsc: 0,
        }
    }

    /// Sets the physical address width used to check the hypercall page address (TLFS
    /// profile). Clamped to 12..=52.
    pub fn with_phys_addr_bits(mut self, bits: u8) -> Self {
        self.phys_addr_bits = bits.clamp(12, 52);
        self
    }

    /// Back to power-on state (profile and address width kept).
    pub fn reset(&mut self) {
        *self = Self::new(self.profile).with_phys_addr_bits(self.phys_addr_bits);
    }

    /// The behaviour profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// `GUEST_OS_ID`.
    pub fn guest_os_id(&self) -> u64 {
        self.guest_os_id
    }

    /// `HYPERCALL`.
    pub fn hypercall(&self) -> Hypercall {
        Hypercall(self.hypercall)
    }

    /// `REFERENCE_TSC`: bit 0 enables the reference TSC page at the GPA in bits 63:12.
    pub fn reference_tsc(&self) -> PageRegister {
        PageRegister(self.reference_tsc)
    }

    /// Reads a raw MSR index: [`read`](Self::read) after classification; an unknown index ->
    /// #GP `UnknownMsr`, a per-VP one -> #GP `WrongScope`.
    pub fn rdmsr(&self, index: u32, origin: Origin, reference_time: u64) -> Result<u64, Gp> {
        match Msr::from_index(index) {
            Some(msr) => self.read(msr, origin, reference_time),
            None => Err(Gp::new(index, GpReason::UnknownMsr)),
        }
    }

    /// Writes a raw MSR index: [`write`](Self::write) after classification; an unknown index
    /// -> #GP `UnknownMsr`, a per-VP one -> #GP `WrongScope`.
    pub fn wrmsr(&mut self, index: u32, value: u64, origin: Origin) -> Result<WriteOutcome, Gp> {
        match Msr::from_index(index) {
            Some(msr) => self.write(msr, value, origin),
            None => Err(Gp::new(index, GpReason::UnknownMsr)),
        }
    }

    /// Reads a partition-wide register. `reference_time` is the partition reference counter
    /// (100 ns units), returned for `TIME_REF_COUNT`.
    pub fn read(&self, msr: Msr, origin: Origin, reference_time: u64) -> Result<u64, Gp> {
        let _ = origin; // every partition register is readable by guest and host
        match msr {
            Msr::GuestOsId => Ok(self.guest_os_id),
            Msr::Hypercall => Ok(self.hypercall),
            Msr::ReferenceTsc => Ok(self.reference_tsc),
            Msr::TimeRefCount => Ok(reference_time),
            _ => {
                debug_assert_eq!(msr.scope(), Scope::Vp);
                Err(Gp::new(msr.index(), GpReason::WrongScope))
            }
        }
    }

    /// Writes a partition-wide register. On `Err` nothing changed.
    pub fn write(&mut self, msr: Msr, value: u64, origin: Origin) -> Result<WriteOutcome, Gp> {
        let index = msr.index();
        let tlfs = self.profile == Profile::Tlfs;
        let (old, change) = match msr {
            Msr::GuestOsId => {
                let old = self.guest_os_id;
                self.guest_os_id = value;
                // Clearing the guest OS id disables the hypercall page.
                let before = Hypercall(self.hypercall);
                if value == 0 && before.enabled() {
                    self.hypercall &= !Hypercall::ENABLE;
                    let after = Hypercall(self.hypercall);
                    (
                        old,
                        Change::HypercallPage {
                            old: before,
                            new: after,
                        },
                    )
                } else {
                    (old, Change::None)
                }
            }
            Msr::Hypercall => {
                let old = self.hypercall;
                // The hypercall page stays disabled until the guest has identified itself: a
                // guest write is accepted and discarded (as KVM and Hyper-V do).
                if self.guest_os_id == 0 && origin == Origin::Guest {
                    return Ok(WriteOutcome {
                        msr,
                        old,
                        new: old,
                        change: Change::None,
                    });
                }
                let mut stored = if tlfs {
                    if origin == Origin::Guest && Hypercall(old).locked() {
                        return Err(Gp::new(index, GpReason::HypercallLocked));
                    }
                    check_gpa_width(index, value, self.phys_addr_bits)?;
                    value & Hypercall::DEFINED
                } else {
                    value
                };
                // A host write (restore) is stored even then, with Enable forced off: clearing
                // GUEST_OS_ID leaves a disabled HYPERCALL value (Locked, page address) behind,
                // and a restore must reproduce it. KVM discards host writes here as well and so
                // loses that value on migration.
                if self.guest_os_id == 0 {
                    stored &= !Hypercall::ENABLE;
                }
                self.hypercall = stored;
                (
                    old,
                    Change::HypercallPage {
                        old: Hypercall(old),
                        new: Hypercall(stored),
                    },
                )
            }
            Msr::ReferenceTsc => {
                // TLFS: bits 11:1 RsvdP, the page address within the physical address width.
                // KVM stores all 64 bits (`kvm_hv_set_msr_pw`). Neither needs a guest OS id.
                let stored = if tlfs {
                    check_gpa_width(index, value, self.phys_addr_bits)?;
                    value & PageRegister::DEFINED
                } else {
                    value
                };
                let old = self.reference_tsc;
                self.reference_tsc = stored;
                (
                    old,
                    Change::ReferenceTscPage {
                        old: PageRegister(old),
                        new: PageRegister(stored),
                    },
                )
            }
            Msr::TimeRefCount => {
                if origin == Origin::Guest {
                    return Err(Gp::new(index, GpReason::ReadOnly));
                }
                // A host write is accepted and ignored: the counter follows the partition clock.
                (0, Change::None)
            }
            _ => return Err(Gp::new(index, GpReason::WrongScope)),
        };
        let new = match msr {
            Msr::TimeRefCount => 0,
            _ => self.read(msr, Origin::Host, 0)?,
        };
        Ok(WriteOutcome {
            msr,
            old,
            new,
            change,
        })
    }
}
