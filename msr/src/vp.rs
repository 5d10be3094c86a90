//! One VP's SynIC, synthetic-timer and VP_INDEX registers.

use crate::index::{self, Msr, Scope, SINT_COUNT, STIMER_COUNT};
use crate::regs::{PageRegister, Scontrol, Sint, StimerConfig, PAGE_GPA_MASK};
use crate::{
    Change, Gp, GpReason, Origin, PageUpdate, Profile, WriteOutcome, DEFAULT_PHYS_ADDR_BITS,
    SYNIC_VERSION,
};

/// KVM's limit on VP_INDEX values (`KVM_MAX_VCPUS`).
pub(crate) const KVM_MAX_VP_INDEX: u64 = 4096;
/// TLFS profile: 0xFFFF_FFFF means "any VP" in hypercalls and is never a VP's index.
pub(crate) const TLFS_MAX_VP_INDEX: u64 = 0xFFFF_FFFF;

/// Which KVM capability activated the SynIC on this vCPU (KVM profile only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvmSynic {
    /// `KVM_CAP_HYPERV_SYNIC`: SIMP/SIEFP pages are zeroed on every guest enable-write.
    V1,
    /// `KVM_CAP_HYPERV_SYNIC2`: pages are never zeroed by a register write.
    V2,
}

/// The per-VP register file: SCONTROL, SVERSION, SIEFP, SIMP, EOM, SINT0-15,
/// STIMER0-3 CONFIG/COUNT and VP_INDEX.
///
/// Plain data; `Clone` is a complete snapshot. Partition-wide registers live in
/// [`PartitionRegisters`](crate::PartitionRegisters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpRegisters {
    profile: Profile,
    phys_addr_bits: u8,
    /// KVM profile: `None` until activated. TLFS profile: always `None`, meaning nothing.
    kvm_synic: Option<KvmSynic>,
    vp_index: u32,
    scontrol: u64,
    sversion: u64,
    siefp: u64,
    simp: u64,
    sint: [u64; SINT_COUNT],
    stimer_config: [u64; STIMER_COUNT],
    stimer_count: [u64; STIMER_COUNT],
}

impl VpRegisters {
    /// Power-on registers of the VP created as number `vp_index`.
    ///
    /// With [`Profile::Kvm`] the SynIC starts inactive: call [`activate`](Self::activate) as a
    /// VMM does with `KVM_CAP_HYPERV_SYNIC2`.
    pub fn new(profile: Profile, vp_index: u32) -> Self {
        Self {
            profile,
            phys_addr_bits: DEFAULT_PHYS_ADDR_BITS,
            kvm_synic: None,
            vp_index,
            scontrol: 0,
            sversion: SYNIC_VERSION,
            siefp: 0,
            simp: 0,
            sint: [Sint::RESET.0; SINT_COUNT],
            stimer_config: [0; STIMER_COUNT],
            stimer_count: [0; STIMER_COUNT],
        }
    }

    /// Sets the physical address width used to check page addresses (TLFS profile; bits at or
    /// above it in a page GPA raise #GP). Clamped to 12..=52.
    pub fn with_phys_addr_bits(mut self, bits: u8) -> Self {
        self.phys_addr_bits = bits.clamp(12, 52);
        self
    }

    /// KVM profile: activates the SynIC as `KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC[2])` does:
    /// the SynIC becomes accessible to the guest and SCONTROL becomes 1. Idempotent apart from
    /// SCONTROL being set again. TLFS profile: no effect.
    pub fn activate(&mut self, version: KvmSynic) {
        if self.profile == Profile::Kvm {
            self.kvm_synic = Some(version);
            self.scontrol = Scontrol::ENABLE;
        }
    }

    /// Back to power-on state, keeping the profile, the VP index, the physical address width
    /// and (KVM) the activation, which is a property of the vCPU rather than guest state.
    pub fn reset(&mut self) {
        let mut fresh =
            Self::new(self.profile, self.vp_index).with_phys_addr_bits(self.phys_addr_bits);
        if let Some(v) = self.kvm_synic {
            fresh.activate(v);
        }
        *self = fresh;
    }

    /// The behaviour profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// True when the guest may access the SynIC (always with TLFS; after activation with KVM).
    pub fn active(&self) -> bool {
        self.profile == Profile::Tlfs || self.kvm_synic.is_some()
    }

    /// KVM profile: how the SynIC was activated, if it was.
    pub fn kvm_synic(&self) -> Option<KvmSynic> {
        self.kvm_synic
    }

    /// The VP index (the value of `VP_INDEX`).
    pub fn vp_index(&self) -> u32 {
        self.vp_index
    }

    /// `SCONTROL`.
    pub fn scontrol(&self) -> Scontrol {
        Scontrol(self.scontrol)
    }

    /// `SIMP`.
    pub fn simp(&self) -> PageRegister {
        PageRegister(self.simp)
    }

    /// `SIEFP`.
    pub fn siefp(&self) -> PageRegister {
        PageRegister(self.siefp)
    }

    /// `SINTn`.
    pub fn sint(&self, sint: index::SintIndex) -> Sint {
        Sint(self.sint[sint.as_usize()])
    }

    /// `STIMERn_CONFIG`.
    pub fn stimer_config(&self, timer: index::StimerIndex) -> StimerConfig {
        StimerConfig(self.stimer_config[timer.as_usize()])
    }

    /// `STIMERn_COUNT`.
    pub fn stimer_count(&self, timer: index::StimerIndex) -> u64 {
        self.stimer_count[timer.as_usize()]
    }

    /// Lets the timer layer clear a one-shot timer's Enable bit after its expiry was delivered
    /// (TLFS: a one-shot timer disables itself), or a timer's own state machine enable it.
    pub fn set_stimer_enabled(&mut self, timer: index::StimerIndex, enabled: bool) {
        let c = &mut self.stimer_config[timer.as_usize()];
        *c = StimerConfig(*c).with_enabled(enabled).0;
    }

    /// Reads a raw MSR index: [`read`](Self::read) after classification; unknown -> #GP.
    pub fn rdmsr(&self, index: u32, origin: Origin) -> Result<u64, Gp> {
        match Msr::from_index(index) {
            Some(msr) => self.read(msr, origin),
            None => Err(Gp::new(index, GpReason::UnknownMsr)),
        }
    }

    /// Writes a raw MSR index: [`write`](Self::write) after classification; unknown -> #GP.
    pub fn wrmsr(&mut self, index: u32, value: u64, origin: Origin) -> Result<WriteOutcome, Gp> {
        match Msr::from_index(index) {
            Some(msr) => self.write(msr, value, origin),
            None => Err(Gp::new(index, GpReason::UnknownMsr)),
        }
    }

    /// Reads a per-VP register.
    pub fn read(&self, msr: Msr, origin: Origin) -> Result<u64, Gp> {
        let gp = |reason| Err(Gp::new(msr.index(), reason));
        if msr.scope() != Scope::Vp {
            return gp(GpReason::WrongScope);
        }
        if msr.is_synic() && !self.active() && origin == Origin::Guest {
            return gp(GpReason::SynicInactive);
        }
        Ok(match msr {
            Msr::VpIndex => u64::from(self.vp_index),
            Msr::Scontrol => self.scontrol,
            Msr::Sversion => self.sversion,
            Msr::Siefp => self.siefp,
            Msr::Simp => self.simp,
            Msr::Eom => 0,
            Msr::Sint(s) => self.sint[s.as_usize()],
            Msr::StimerConfig(t) => self.stimer_config[t.as_usize()],
            Msr::StimerCount(t) => self.stimer_count[t.as_usize()],
            Msr::GuestOsId | Msr::Hypercall | Msr::TimeRefCount | Msr::ReferenceTsc => {
                return gp(GpReason::WrongScope)
            }
        })
    }

    /// Writes a per-VP register. On `Ok` the register file has changed (or the write was
    /// accepted and discarded); on `Err` nothing changed.
    pub fn write(&mut self, msr: Msr, value: u64, origin: Origin) -> Result<WriteOutcome, Gp> {
        let index = msr.index();
        let gp = |reason| Err(Gp::new(index, reason));
        if msr.scope() != Scope::Vp {
            return gp(GpReason::WrongScope);
        }
        // KVM: an inactive SynIC refuses guest writes and non-zero host writes (host code
        // zero-initialises registers before activation).
        if (msr.is_synic() || msr.is_stimer()) && !self.active() {
            match origin {
                Origin::Guest => return gp(GpReason::SynicInactive),
                Origin::Host if value != 0 => return gp(GpReason::InactiveNonZeroWrite),
                Origin::Host => {}
            }
        }
        let old = self.read(msr, Origin::Host)?;
        let tlfs = self.profile == Profile::Tlfs;
        let change = match msr {
            Msr::VpIndex => {
                if origin == Origin::Guest {
                    return gp(GpReason::ReadOnly);
                }
                let limit = if tlfs {
                    TLFS_MAX_VP_INDEX
                } else {
                    KVM_MAX_VP_INDEX
                };
                if value >= limit {
                    return gp(GpReason::VpIndexOutOfRange { value, limit });
                }
                let old_index = self.vp_index;
                // `value < limit <= u32::MAX`, so the conversion is exact.
                self.vp_index = value as u32;
                Change::VpIndex {
                    old: old_index,
                    new: self.vp_index,
                }
            }
            Msr::Scontrol => {
                let was = Scontrol(self.scontrol).enabled();
                self.scontrol = if tlfs {
                    value & Scontrol::DEFINED
                } else {
                    value
                };
                let now = Scontrol(self.scontrol).enabled();
                if was != now {
                    Change::SynicEnable { enabled: now }
                } else {
                    Change::None
                }
            }
            Msr::Sversion => {
                match (origin, tlfs) {
                    (Origin::Guest, _) => return gp(GpReason::ReadOnly),
                    (Origin::Host, true) if value != SYNIC_VERSION => {
                        return gp(GpReason::UnsupportedVersion { value })
                    }
                    (Origin::Host, _) => self.sversion = value,
                }
                Change::None
            }
            Msr::Siefp | Msr::Simp => {
                let stored = if tlfs {
                    check_gpa_width(index, value, self.phys_addr_bits)?;
                    value & PageRegister::DEFINED
                } else {
                    value
                };
                let zero_page = !tlfs
                    && origin == Origin::Guest
                    && self.kvm_synic == Some(KvmSynic::V1)
                    && PageRegister(value).enabled();
                let update = PageUpdate {
                    old: PageRegister(old),
                    new: PageRegister(stored),
                    zero_page,
                };
                if msr == Msr::Simp {
                    self.simp = stored;
                    Change::MessagePage(update)
                } else {
                    self.siefp = stored;
                    Change::EventFlagsPage(update)
                }
            }
            Msr::Eom => {
                if tlfs && value != 0 {
                    return gp(GpReason::ReservedBits { bits: value });
                }
                // KVM ignores the value; an inactive SynIC (host write of 0) acks nothing.
                if self.active() {
                    Change::Eom
                } else {
                    Change::None
                }
            }
            Msr::Sint(sint) => {
                let new = Sint(value);
                let vector_invalid = new.vector() < Sint::FIRST_VALID_VECTOR;
                let refuse = if tlfs {
                    origin == Origin::Guest && vector_invalid
                } else {
                    // KVM: nested Hyper-V writes 0x10000 at boot, so only an unmasked
                    // guest-written vector below 16 faults.
                    origin == Origin::Guest && vector_invalid && !new.masked()
                };
                if refuse {
                    return gp(GpReason::InvalidVector {
                        vector: new.vector(),
                    });
                }
                let stored = if tlfs { value & Sint::DEFINED } else { value };
                self.sint[sint.as_usize()] = stored;
                Change::Sint {
                    sint,
                    old: Sint(old),
                    new: Sint(stored),
                }
            }
            Msr::StimerConfig(timer) => {
                if tlfs {
                    let reserved = value & !StimerConfig::DEFINED;
                    if reserved != 0 {
                        return gp(GpReason::ReservedBits { bits: reserved });
                    }
                }
                let mut new = StimerConfig(value);
                // A non-direct timer with SINTx = 0 has nowhere to deliver: TLFS disables it.
                // KVM only does so when the timer was enabled before this write.
                let applies = if tlfs {
                    true
                } else {
                    StimerConfig(old).enabled()
                };
                if applies && !new.direct_mode() && new.sintx() == 0 {
                    new = new.with_enabled(false);
                }
                self.stimer_config[timer.as_usize()] = new.0;
                Change::Stimer(timer)
            }
            Msr::StimerCount(timer) => {
                self.stimer_count[timer.as_usize()] = value;
                // COUNT = 0 disables; AutoEnable makes a non-zero COUNT write enable. Host
                // writes (restore) have no side effects.
                if origin == Origin::Guest {
                    let t = timer.as_usize();
                    let config = StimerConfig(self.stimer_config[t]);
                    // TLFS: "the SINTx bits cannot be set to zero for an enabled timer", so
                    // AutoEnable cannot enable a message-mode timer whose SINTx is 0 either
                    // (otherwise a restore, which re-applies that rule to CONFIG, would not
                    // reproduce the state). KVM enables it regardless.
                    let deliverable = !tlfs || config.direct_mode() || config.sintx() != 0;
                    if value == 0 {
                        self.stimer_config[t] = config.with_enabled(false).0;
                    } else if config.auto_enable() && deliverable {
                        self.stimer_config[t] = config.with_enabled(true).0;
                    }
                }
                Change::Stimer(timer)
            }
            Msr::GuestOsId | Msr::Hypercall | Msr::TimeRefCount | Msr::ReferenceTsc => {
                return gp(GpReason::WrongScope)
            }
        };
        let new = self.read(msr, Origin::Host)?;
        Ok(WriteOutcome {
            msr,
            old,
            new,
            change,
        })
    }
}

/// TLFS: page address bits at or above the physical address width are reserved.
pub(crate) fn check_gpa_width(index: u32, value: u64, bits: u8) -> Result<(), Gp> {
    let gpa = value & PAGE_GPA_MASK;
    if bits < 64 && gpa >> bits != 0 {
        return Err(Gp::new(index, GpReason::GpaTooWide { gpa, bits }));
    }
    Ok(())
}
