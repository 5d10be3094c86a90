//! MSR indices and the classifier from a raw index to a typed register id.

use core::fmt;

/// First index of the Hyper-V synthetic MSR range.
pub const HV_MSR_FIRST: u32 = 0x4000_0000;
/// Last index of the Hyper-V synthetic MSR range this crate classifies.
pub const HV_MSR_LAST: u32 = 0x4000_00FF;

/// `HV_X64_MSR_GUEST_OS_ID`.
pub const GUEST_OS_ID: u32 = 0x4000_0000;
/// `HV_X64_MSR_HYPERCALL`.
pub const HYPERCALL: u32 = 0x4000_0001;
/// `HV_X64_MSR_VP_INDEX`.
pub const VP_INDEX: u32 = 0x4000_0002;
/// `HV_X64_MSR_TIME_REF_COUNT`.
pub const TIME_REF_COUNT: u32 = 0x4000_0020;
/// `HV_X64_MSR_REFERENCE_TSC`: the reference TSC page (bit 0 enable, 63:12 GPA).
pub const REFERENCE_TSC: u32 = 0x4000_0021;
/// `HV_X64_MSR_TSC_FREQUENCY`: the guest TSC's frequency in Hz (read-only).
pub const TSC_FREQUENCY: u32 = 0x4000_0022;
/// `HV_X64_MSR_APIC_FREQUENCY`: the local APIC timer's frequency in Hz (read-only).
pub const APIC_FREQUENCY: u32 = 0x4000_0023;
/// `HV_X64_MSR_VP_ASSIST_PAGE`.
pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// `HV_X64_MSR_SCONTROL`.
pub const SCONTROL: u32 = 0x4000_0080;
/// `HV_X64_MSR_SVERSION`.
pub const SVERSION: u32 = 0x4000_0081;
/// `HV_X64_MSR_SIEFP`.
pub const SIEFP: u32 = 0x4000_0082;
/// `HV_X64_MSR_SIMP`.
pub const SIMP: u32 = 0x4000_0083;
/// `HV_X64_MSR_EOM`.
pub const EOM: u32 = 0x4000_0084;
/// `HV_X64_MSR_SINT0`; SINTn is `SINT0 + n`.
pub const SINT0: u32 = 0x4000_0090;
/// `HV_X64_MSR_SINT15`.
pub const SINT15: u32 = 0x4000_009F;
/// `HV_X64_MSR_STIMER0_CONFIG`; STIMERn_CONFIG is `STIMER0_CONFIG + 2n`.
pub const STIMER0_CONFIG: u32 = 0x4000_00B0;
/// `HV_X64_MSR_STIMER0_COUNT`; STIMERn_COUNT is `STIMER0_COUNT + 2n`.
pub const STIMER0_COUNT: u32 = 0x4000_00B1;
/// `HV_X64_MSR_STIMER3_COUNT`, the last synthetic timer MSR.
pub const STIMER3_COUNT: u32 = 0x4000_00B7;

/// Number of synthetic interrupt sources per VP.
pub const SINT_COUNT: usize = 16;
/// Number of synthetic timers per VP.
pub const STIMER_COUNT: usize = 4;

/// A synthetic interrupt source number, 0..=15.
///
/// Constructed only through [`SintIndex::new`], so a value always indexes the 16 SINTs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SintIndex(u8);

impl SintIndex {
    /// All 16 SINTs in order.
    pub const ALL: [SintIndex; SINT_COUNT] = {
        let mut all = [SintIndex(0); SINT_COUNT];
        let mut i = 0;
        while i < SINT_COUNT {
            all[i] = SintIndex(i as u8);
            i += 1;
        }
        all
    };

    /// The SINT numbered `n`, or `None` when `n > 15`.
    pub const fn new(n: u32) -> Option<Self> {
        if n < SINT_COUNT as u32 {
            Some(Self(n as u8))
        } else {
            None
        }
    }

    /// The SINT number, 0..=15.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The SINT number as an array index.
    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for SintIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SINT{}", self.0)
    }
}

/// A synthetic timer number, 0..=3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StimerIndex(u8);

impl StimerIndex {
    /// All four timers in order.
    pub const ALL: [StimerIndex; STIMER_COUNT] = [
        StimerIndex(0),
        StimerIndex(1),
        StimerIndex(2),
        StimerIndex(3),
    ];

    /// The timer numbered `n`, or `None` when `n > 3`.
    pub const fn new(n: u32) -> Option<Self> {
        if n < STIMER_COUNT as u32 {
            Some(Self(n as u8))
        } else {
            None
        }
    }

    /// The timer number, 0..=3.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The timer number as an array index.
    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for StimerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "STIMER{}", self.0)
    }
}

/// A Hyper-V virtual processor index (the value of `VP_INDEX`), not a KVM vCPU id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VpIndex(pub u32);

impl fmt::Display for VpIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VP{}", self.0)
    }
}

/// Whether a register belongs to one VP or to the whole partition (TLFS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One copy per virtual processor.
    Vp,
    /// One copy shared by every VP of the partition.
    Partition,
}

/// A Hyper-V synthetic MSR this crate models, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Msr {
    /// `GUEST_OS_ID` (partition-wide).
    GuestOsId,
    /// `HYPERCALL` (partition-wide): enable, locked and the hypercall page GPA.
    Hypercall,
    /// `VP_INDEX`: read-only to the guest.
    VpIndex,
    /// `TIME_REF_COUNT` (partition-wide): the 100 ns reference counter, read-only.
    TimeRefCount,
    /// `REFERENCE_TSC` (partition-wide): enable and GPA of the reference TSC page.
    ReferenceTsc,
    /// `SCONTROL`: SynIC enable.
    Scontrol,
    /// `SVERSION`: SynIC version, read-only.
    Sversion,
    /// `SIEFP`: event-flags page.
    Siefp,
    /// `SIMP`: message page.
    Simp,
    /// `EOM`: end-of-message trigger, write-only.
    Eom,
    /// `SINTn`.
    Sint(SintIndex),
    /// `STIMERn_CONFIG`.
    StimerConfig(StimerIndex),
    /// `STIMERn_COUNT`.
    StimerCount(StimerIndex),
}

impl Msr {
    /// The registers that hold state, in the order a VMM should write them back with host
    /// writes when restoring a VP: `GUEST_OS_ID` before `HYPERCALL` (the hypercall page cannot
    /// be enabled without a guest OS id), `REFERENCE_TSC` after them, each `STIMERn_COUNT` before its `STIMERn_CONFIG` (so
    /// an enabled timer is armed with its final count), `SCONTROL` last (a SynIC that turns on
    /// finds its pages and SINTs in place). `EOM` (a write-only trigger) and `TIME_REF_COUNT`
    /// (derived from the partition clock) hold no state and are not listed.
    pub const SAVED: [Msr; 32] = {
        let mut all = [Msr::GuestOsId; 32];
        all[1] = Msr::Hypercall;
        all[2] = Msr::ReferenceTsc;
        all[3] = Msr::VpIndex;
        all[4] = Msr::Sversion;
        all[5] = Msr::Siefp;
        all[6] = Msr::Simp;
        let mut i = 0;
        while i < SINT_COUNT {
            all[7 + i] = Msr::Sint(SintIndex::ALL[i]);
            i += 1;
        }
        let mut t = 0;
        while t < STIMER_COUNT {
            all[23 + 2 * t] = Msr::StimerCount(StimerIndex::ALL[t]);
            all[24 + 2 * t] = Msr::StimerConfig(StimerIndex::ALL[t]);
            t += 1;
        }
        all[31] = Msr::Scontrol;
        all
    };

    /// Classifies a raw MSR index. Returns `None` for indices this crate does not model,
    /// including the holes inside the SynIC block (`0x4000_0085..=0x4000_008F`) and every
    /// index outside `0x4000_0000..=0x4000_00FF`. Never panics.
    pub const fn from_index(index: u32) -> Option<Msr> {
        Some(match index {
            GUEST_OS_ID => Msr::GuestOsId,
            HYPERCALL => Msr::Hypercall,
            VP_INDEX => Msr::VpIndex,
            TIME_REF_COUNT => Msr::TimeRefCount,
            REFERENCE_TSC => Msr::ReferenceTsc,
            SCONTROL => Msr::Scontrol,
            SVERSION => Msr::Sversion,
            SIEFP => Msr::Siefp,
            SIMP => Msr::Simp,
            EOM => Msr::Eom,
            SINT0..=SINT15 => match SintIndex::new(index - SINT0) {
                Some(s) => Msr::Sint(s),
                None => return None,
            },
            STIMER0_CONFIG..=STIMER3_COUNT => {
                let n = (index - STIMER0_CONFIG) / 2;
                let Some(t) = StimerIndex::new(n) else {
                    return None;
                };
                if (index - STIMER0_CONFIG).is_multiple_of(2) {
                    Msr::StimerConfig(t)
                } else {
                    Msr::StimerCount(t)
                }
            }
            _ => return None,
        })
    }

    /// The raw MSR index of this register.
    pub const fn index(self) -> u32 {
        match self {
            Msr::GuestOsId => GUEST_OS_ID,
            Msr::Hypercall => HYPERCALL,
            Msr::VpIndex => VP_INDEX,
            Msr::TimeRefCount => TIME_REF_COUNT,
            Msr::ReferenceTsc => REFERENCE_TSC,
            Msr::Scontrol => SCONTROL,
            Msr::Sversion => SVERSION,
            Msr::Siefp => SIEFP,
            Msr::Simp => SIMP,
            Msr::Eom => EOM,
            Msr::Sint(s) => SINT0 + s.0 as u32,
            Msr::StimerConfig(t) => STIMER0_CONFIG + 2 * t.0 as u32,
            Msr::StimerCount(t) => STIMER0_COUNT + 2 * t.0 as u32,
        }
    }

    /// Whether the register is per-VP or partition-wide.
    pub const fn scope(self) -> Scope {
        match self {
            Msr::GuestOsId | Msr::Hypercall | Msr::TimeRefCount | Msr::ReferenceTsc => {
                Scope::Partition
            }
            _ => Scope::Vp,
        }
    }

    /// True for the SynIC block proper (SCONTROL..=SINT15), the registers KVM gates on SynIC
    /// activation.
    pub const fn is_synic(self) -> bool {
        matches!(
            self,
            Msr::Scontrol | Msr::Sversion | Msr::Siefp | Msr::Simp | Msr::Eom | Msr::Sint(_)
        )
    }

    /// True for the synthetic timer registers.
    pub const fn is_stimer(self) -> bool {
        matches!(self, Msr::StimerConfig(_) | Msr::StimerCount(_))
    }
}

impl fmt::Display for Msr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msr::GuestOsId => f.write_str("GUEST_OS_ID"),
            Msr::Hypercall => f.write_str("HYPERCALL"),
            Msr::VpIndex => f.write_str("VP_INDEX"),
            Msr::TimeRefCount => f.write_str("TIME_REF_COUNT"),
            Msr::ReferenceTsc => f.write_str("REFERENCE_TSC"),
            Msr::Scontrol => f.write_str("SCONTROL"),
            Msr::Sversion => f.write_str("SVERSION"),
            Msr::Siefp => f.write_str("SIEFP"),
            Msr::Simp => f.write_str("SIMP"),
            Msr::Eom => f.write_str("EOM"),
            Msr::Sint(s) => write!(f, "SINT{}", s.0),
            Msr::StimerConfig(t) => write!(f, "STIMER{}_CONFIG", t.0),
            Msr::StimerCount(t) => write!(f, "STIMER{}_COUNT", t.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_round_trips_every_index_in_range() {
        let mut known = 0;
        for index in HV_MSR_FIRST..=HV_MSR_LAST {
            if let Some(msr) = Msr::from_index(index) {
                assert_eq!(msr.index(), index, "{msr}");
                known += 1;
            }
        }
        // 5 core + 5 SynIC + 16 SINT + 8 STIMER.
        assert_eq!(known, 34);
    }

    #[test]
    fn saved_lists_every_stateful_register_once() {
        let mut seen = std::collections::HashSet::new();
        for msr in Msr::SAVED {
            assert!(seen.insert(msr), "{msr} listed twice");
        }
        assert!(!seen.contains(&Msr::Eom) && !seen.contains(&Msr::TimeRefCount));
        assert_eq!(seen.len(), 34 - 2);
    }

    #[test]
    fn synic_holes_and_out_of_range_are_unknown() {
        for index in 0x4000_0085..=0x4000_008F {
            assert_eq!(Msr::from_index(index), None);
        }
        assert_eq!(Msr::from_index(0x4000_00B8), None);
        assert_eq!(Msr::from_index(0x4000_0100), None);
        assert_eq!(Msr::from_index(0x3FFF_FFFF), None);
        assert_eq!(Msr::from_index(u32::MAX), None);
    }

    #[test]
    fn stimer_indices_interleave_config_and_count() {
        assert_eq!(
            Msr::from_index(0x4000_00B2),
            Some(Msr::StimerConfig(StimerIndex::new(1).unwrap()))
        );
        assert_eq!(
            Msr::from_index(0x4000_00B7),
            Some(Msr::StimerCount(StimerIndex::new(3).unwrap()))
        );
    }
}
