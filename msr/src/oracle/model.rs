//! The reference model: a second, plain implementation of `docs/msr-semantics.md` with raw
//! `u64` fields, its own index decoder and bit arithmetic written from the table. It uses the
//! crate's types only to spell the expected answers, never its logic.

use crate::{
    Change, Gp, GpReason, Hypercall, Msr, Origin, PageRegister, PageUpdate, Sint, SintIndex,
    StimerIndex,
};

use super::Setup;

/// KVM activation state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Not activated (always so with the TLFS profile).
    Off,
    /// `KVM_CAP_HYPERV_SYNIC`.
    V1,
    /// `KVM_CAP_HYPERV_SYNIC2`.
    V2,
}

/// A register, decoded from the raw index by the model itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    GuestOsId,
    Hypercall,
    VpIndex,
    TimeRef,
    RefTsc,
    Scontrol,
    Sversion,
    Siefp,
    Simp,
    Eom,
    Sint(u8),
    Config(u8),
    Count(u8),
}

fn decode(index: u32) -> Option<Reg> {
    if !(0x4000_0000..=0x4000_00FF).contains(&index) {
        return None;
    }
    let off = index - 0x4000_0000;
    Some(match off {
        0x00 => Reg::GuestOsId,
        0x01 => Reg::Hypercall,
        0x02 => Reg::VpIndex,
        0x20 => Reg::TimeRef,
        0x21 => Reg::RefTsc,
        0x80 => Reg::Scontrol,
        0x81 => Reg::Sversion,
        0x82 => Reg::Siefp,
        0x83 => Reg::Simp,
        0x84 => Reg::Eom,
        0x90..=0x9F => Reg::Sint((off - 0x90) as u8),
        0xB0..=0xB7 if off & 1 == 0 => Reg::Config(((off - 0xB0) / 2) as u8),
        0xB0..=0xB7 => Reg::Count(((off - 0xB1) / 2) as u8),
        _ => return None,
    })
}

impl Reg {
    fn partition(self) -> bool {
        matches!(
            self,
            Reg::GuestOsId | Reg::Hypercall | Reg::TimeRef | Reg::RefTsc
        )
    }
    /// SCONTROL..SINT15: gated on activation for reads and writes.
    fn synic_block(self) -> bool {
        matches!(
            self,
            Reg::Scontrol | Reg::Sversion | Reg::Siefp | Reg::Simp | Reg::Eom | Reg::Sint(_)
        )
    }
    fn timer(self) -> bool {
        matches!(self, Reg::Config(_) | Reg::Count(_))
    }
    /// The crate's name for it, to compare `WriteOutcome::msr`.
    fn msr(self) -> Msr {
        match self {
            Reg::GuestOsId => Msr::GuestOsId,
            Reg::Hypercall => Msr::Hypercall,
            Reg::VpIndex => Msr::VpIndex,
            Reg::TimeRef => Msr::TimeRefCount,
            Reg::RefTsc => Msr::ReferenceTsc,
            Reg::Scontrol => Msr::Scontrol,
            Reg::Sversion => Msr::Sversion,
            Reg::Siefp => Msr::Siefp,
            Reg::Simp => Msr::Simp,
            Reg::Eom => Msr::Eom,
            Reg::Sint(n) => Msr::Sint(sint_index(n)),
            Reg::Config(t) => Msr::StimerConfig(timer_index(t)),
            Reg::Count(t) => Msr::StimerCount(timer_index(t)),
        }
    }
}

fn sint_index(n: u8) -> SintIndex {
    SintIndex::ALL[usize::from(n & 15)]
}

/// The timer `t & 3` names.
pub fn timer_index(t: u8) -> StimerIndex {
    StimerIndex::ALL[usize::from(t & 3)]
}

/// Which entry point an access goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Raw index, routed to the file its scope names (what a VMM does).
    Dispatch,
    /// `VpRegisters::rdmsr/wrmsr` whatever the index.
    Vp,
    /// `PartitionRegisters::rdmsr/wrmsr` whatever the index.
    Partition,
}

/// A write's answer reduced to what the model predicts: the register, old and new value and
/// the change, or the #GP.
pub type WriteResult = Result<(Msr, u64, u64, Change), Gp>;

const SINT_MASKED: u64 = 1 << 16;

/// The model's register file (one VP and its partition) and clock.
#[derive(Clone, Debug)]
pub struct Model {
    kvm: bool,
    act: Act,
    bits: u32,
    vp_index: u64,
    scontrol: u64,
    sversion: u64,
    siefp: u64,
    simp: u64,
    sint: [u64; 16],
    config: [u64; 4],
    count: [u64; 4],
    os_id: u64,
    hypercall: u64,
    ref_tsc: u64,
    clock: u64,
}

impl Model {
    /// Power-on state for `setup`.
    pub fn new(setup: &Setup) -> Self {
        let act = if setup.kvm { setup.act } else { Act::Off };
        let mut m = Model {
            kvm: setup.kvm,
            act,
            bits: u32::from(setup.phys_addr_bits).clamp(12, 52),
            vp_index: u64::from(setup.vp_index),
            scontrol: 0,
            sversion: 1,
            siefp: 0,
            simp: 0,
            sint: [SINT_MASKED; 16],
            config: [0; 4],
            count: [0; 4],
            os_id: 0,
            hypercall: 0,
            ref_tsc: 0,
            clock: setup.clock,
        };
        m.power_on();
        m
    }

    /// Reset: every register back to its power-on value; activation and VP index kept.
    pub fn power_on(&mut self) {
        self.scontrol = u64::from(self.activated());
        self.sversion = 1;
        self.siefp = 0;
        self.simp = 0;
        self.sint = [SINT_MASKED; 16];
        self.config = [0; 4];
        self.count = [0; 4];
        self.os_id = 0;
        self.hypercall = 0;
        self.ref_tsc = 0;
    }

    /// `KVM_CAP_HYPERV_SYNIC[2]` (KVM profile only; TLFS ignores it).
    pub fn activate(&mut self, act: Act) {
        if self.kvm {
            self.act = act;
            self.scontrol = 1;
        }
    }

    /// The timer layer switched STIMERn_CONFIG.Enable.
    pub fn set_stimer_enabled(&mut self, timer: u8, enabled: bool) {
        let c = &mut self.config[usize::from(timer & 3)];
        *c = if enabled { *c | 1 } else { *c & !1 };
    }

    /// The reference clock now reads `clock`.
    pub fn set_clock(&mut self, clock: u64) {
        self.clock = clock;
    }

    /// The reference clock.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// KVM activation state.
    pub fn act(&self) -> Act {
        self.act
    }

    /// VP_INDEX.
    pub fn vp_index(&self) -> u64 {
        self.vp_index
    }

    fn activated(&self) -> bool {
        self.kvm && self.act != Act::Off
    }

    /// The guest may touch the SynIC: always with TLFS, after activation with KVM.
    pub fn open(&self) -> bool {
        !self.kvm || self.act != Act::Off
    }

    fn check_scope(via: Via, reg: Reg) -> Result<(), GpReason> {
        match via {
            Via::Vp if reg.partition() => Err(GpReason::WrongScope),
            Via::Partition if !reg.partition() => Err(GpReason::WrongScope),
            _ => Ok(()),
        }
    }

    fn stored(&self, reg: Reg) -> u64 {
        match reg {
            Reg::GuestOsId => self.os_id,
            Reg::Hypercall => self.hypercall,
            Reg::VpIndex => self.vp_index,
            Reg::TimeRef => self.clock,
            Reg::RefTsc => self.ref_tsc,
            Reg::Scontrol => self.scontrol,
            Reg::Sversion => self.sversion,
            Reg::Siefp => self.siefp,
            Reg::Simp => self.simp,
            Reg::Eom => 0,
            Reg::Sint(n) => self.sint[n as usize],
            Reg::Config(t) => self.config[t as usize],
            Reg::Count(t) => self.count[t as usize],
        }
    }

    /// What a read of `index` through `via` by `origin` returns.
    pub fn read(&self, via: Via, index: u32, origin: Origin) -> Result<u64, Gp> {
        let gp = |reason| Gp::new(index, reason);
        let reg = decode(index).ok_or(gp(GpReason::UnknownMsr))?;
        Self::check_scope(via, reg).map_err(gp)?;
        if reg.synic_block() && !self.open() && origin == Origin::Guest {
            return Err(gp(GpReason::SynicInactive));
        }
        Ok(self.stored(reg))
    }

    /// Applies a write and returns its answer; a refusal changes nothing.
    pub fn write(&mut self, via: Via, index: u32, v: u64, origin: Origin) -> WriteResult {
        let gp = |reason| Gp::new(index, reason);
        let reg = decode(index).ok_or(gp(GpReason::UnknownMsr))?;
        Self::check_scope(via, reg).map_err(gp)?;
        let guest = origin == Origin::Guest;
        let tlfs = !self.kvm;
        if (reg.synic_block() || reg.timer()) && !self.open() {
            if guest {
                return Err(gp(GpReason::SynicInactive));
            }
            if v != 0 {
                return Err(gp(GpReason::InactiveNonZeroWrite));
            }
        }
        let old = if reg == Reg::TimeRef {
            0
        } else {
            self.stored(reg)
        };
        let change = match reg {
            Reg::GuestOsId => {
                self.os_id = v;
                if v == 0 && self.hypercall & 1 == 1 {
                    let before = self.hypercall;
                    self.hypercall &= !1;
                    Change::HypercallPage {
                        old: Hypercall(before),
                        new: Hypercall(self.hypercall),
                    }
                } else {
                    Change::None
                }
            }
            Reg::Hypercall => {
                if self.os_id == 0 && guest {
                    return Ok((reg.msr(), old, old, Change::None));
                }
                let mut new = v;
                if tlfs {
                    if guest && old & 2 != 0 {
                        return Err(gp(GpReason::HypercallLocked));
                    }
                    self.check_width(index, v)?;
                    new &= !0xFFC;
                }
                if self.os_id == 0 {
                    new &= !1;
                }
                self.hypercall = new;
                Change::HypercallPage {
                    old: Hypercall(old),
                    new: Hypercall(new),
                }
            }
            Reg::RefTsc => {
                let new = if tlfs {
                    self.check_width(index, v)?;
                    v & !0xFFE
                } else {
                    v
                };
                self.ref_tsc = new;
                Change::ReferenceTscPage {
                    old: PageRegister(old),
                    new: PageRegister(new),
                }
            }
            Reg::TimeRef => {
                if guest {
                    return Err(gp(GpReason::ReadOnly));
                }
                Change::None
            }
            Reg::VpIndex => {
                if guest {
                    return Err(gp(GpReason::ReadOnly));
                }
                let limit = if self.kvm { 4096 } else { 0xFFFF_FFFF };
                if v >= limit {
                    return Err(gp(GpReason::VpIndexOutOfRange { value: v, limit }));
                }
                self.vp_index = v;
                Change::VpIndex {
                    old: old as u32,
                    new: v as u32,
                }
            }
            Reg::Scontrol => {
                self.scontrol = if tlfs { v & 1 } else { v };
                if (old ^ self.scontrol) & 1 == 1 {
                    Change::SynicEnable {
                        enabled: self.scontrol & 1 == 1,
                    }
                } else {
                    Change::None
                }
            }
            Reg::Sversion => {
                if guest {
                    return Err(gp(GpReason::ReadOnly));
                }
                if tlfs && v != 1 {
                    return Err(gp(GpReason::UnsupportedVersion { value: v }));
                }
                self.sversion = v;
                Change::None
            }
            Reg::Siefp | Reg::Simp => {
                let new = if tlfs {
                    self.check_width(index, v)?;
                    v & !0xFFE
                } else {
                    v
                };
                let update = PageUpdate {
                    old: PageRegister(old),
                    new: PageRegister(new),
                    zero_page: self.kvm && guest && self.act == Act::V1 && v & 1 == 1,
                };
                if reg == Reg::Simp {
                    self.simp = new;
                    Change::MessagePage(update)
                } else {
                    self.siefp = new;
                    Change::EventFlagsPage(update)
                }
            }
            Reg::Eom => {
                if tlfs && v != 0 {
                    return Err(gp(GpReason::ReservedBits { bits: v }));
                }
                if self.open() {
                    Change::Eom
                } else {
                    Change::None
                }
            }
            Reg::Sint(n) => {
                let vector = (v & 0xFF) as u8;
                let masked = v & SINT_MASKED != 0;
                if guest && vector < 16 && (tlfs || !masked) {
                    return Err(gp(GpReason::InvalidVector { vector }));
                }
                let new = if tlfs { v & 0x7_00FF } else { v };
                self.sint[n as usize] = new;
                Change::Sint {
                    sint: sint_index(n),
                    old: Sint(old),
                    new: Sint(new),
                }
            }
            Reg::Config(t) => {
                if tlfs && v & !0xF_1FFF != 0 {
                    return Err(gp(GpReason::ReservedBits {
                        bits: v & !0xF_1FFF,
                    }));
                }
                let direct = v & (1 << 12) != 0;
                let sintx = (v >> 16) & 0xF;
                let mut new = v;
                if !direct && sintx == 0 && (tlfs || old & 1 == 1) {
                    new &= !1;
                }
                self.config[t as usize] = new;
                Change::Stimer(timer_index(t))
            }
            Reg::Count(t) => {
                self.count[t as usize] = v;
                let c = &mut self.config[t as usize];
                if guest {
                    let direct = *c & (1 << 12) != 0;
                    let sintx = (*c >> 16) & 0xF;
                    let auto_enable = *c & (1 << 3) != 0;
                    if v == 0 {
                        *c &= !1;
                    } else if auto_enable && (self.kvm || direct || sintx != 0) {
                        *c |= 1;
                    }
                }
                Change::Stimer(timer_index(t))
            }
        };
        let new = if reg == Reg::TimeRef {
            0
        } else {
            self.stored(reg)
        };
        Ok((reg.msr(), old, new, change))
    }

    fn check_width(&self, index: u32, v: u64) -> Result<(), Gp> {
        let gpa = v & !0xFFF;
        if gpa >> self.bits != 0 {
            return Err(Gp::new(
                index,
                GpReason::GpaTooWide {
                    gpa,
                    bits: self.bits as u8,
                },
            ));
        }
        Ok(())
    }
}
