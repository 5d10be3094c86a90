//! The operations of the register state machine and their byte encoding.
//!
//! [`Op::decode_all`] turns any bytes into a [`Setup`] and a list of operations (what a fuzz
//! target feeds the [`Checker`](super::Checker)); [`Op::encode_all`] is its inverse, used to
//! write seed inputs. Indices and values are edge-biased: most bytes select one of the
//! modelled registers and a value near a field boundary, some select raw numbers.

use crate::{KvmSynic, Origin};

use super::model::{Act, Via};
use super::reader::ByteReader;

/// The configuration a run starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// KVM profile (else TLFS).
    pub kvm: bool,
    /// KVM activation at creation (ignored with TLFS).
    pub act: Act,
    /// The address width asked of `with_phys_addr_bits` (the crate clamps it to 12..=52).
    pub phys_addr_bits: u8,
    /// The VP's creation index.
    pub vp_index: u32,
    /// The reference clock at the start.
    pub clock: u64,
}

/// One step of the state machine.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// RDMSR.
    Read {
        /// The entry point.
        via: Via,
        /// The raw MSR index.
        index: u32,
        /// Guest or host.
        origin: Origin,
    },
    /// WRMSR.
    Write {
        /// The entry point.
        via: Via,
        /// The raw MSR index.
        index: u32,
        /// The value written.
        value: u64,
        /// Guest or host.
        origin: Origin,
    },
    /// `VpRegisters::activate`.
    Activate(KvmSynic),
    /// VP and partition reset.
    Reset,
    /// The timer layer switches STIMERn_CONFIG.Enable.
    SetStimerEnabled {
        /// The timer (0..=3).
        timer: u8,
        /// The new Enable bit.
        enabled: bool,
    },
    /// The reference clock now reads this.
    SetClock(u64),
}

/// Indices and values in hex, so a failing sequence reads like the table.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Read { via, index, origin } => {
                write!(f, "Read {{ {via:?}, {index:#x}, {origin:?} }}")
            }
            Op::Write {
                via,
                index,
                value,
                origin,
            } => write!(
                f,
                "Write {{ {via:?}, {index:#x} = {value:#x}, {origin:?} }}"
            ),
            Op::Activate(v) => write!(f, "Activate({v:?})"),
            Op::Reset => f.write_str("Reset"),
            Op::SetStimerEnabled { timer, enabled } => {
                write!(f, "SetStimerEnabled({timer}, {enabled})")
            }
            Op::SetClock(c) => write!(f, "SetClock({c:#x})"),
        }
    }
}

/// The 33 modelled indices.
pub const KNOWN: [u32; 33] = {
    let mut all = [0u32; 33];
    let fixed = [
        0x4000_0000,
        0x4000_0001,
        0x4000_0002,
        0x4000_0020,
        0x4000_0080,
        0x4000_0081,
        0x4000_0082,
        0x4000_0083,
        0x4000_0084,
    ];
    let mut i = 0;
    while i < 9 {
        all[i] = fixed[i];
        i += 1;
    }
    while i < 25 {
        all[i] = 0x4000_0090 + (i as u32 - 9);
        i += 1;
    }
    while i < 33 {
        all[i] = 0x4000_00B0 + (i as u32 - 25);
        i += 1;
    }
    all
};

/// Indices outside the Hyper-V range or at its odd corners.
pub const ODD_INDICES: [u32; 8] = [
    0,
    0x3FFF_FFFF,
    0x4000_0100,
    0x4000_0180,
    0x4001_0080,
    0x8000_0080,
    0xC000_0080,
    u32::MAX,
];

/// Values at field boundaries of the SynIC registers.
pub const EDGE_VALUES: [u64; 20] = [
    0,
    1,
    2,
    u64::MAX,
    !1,
    0xFFE,
    !0xFFE,
    0xFFC,
    !0xFFC,
    0x7_00FF,
    !0x7_00FF,
    0xF_1FFF,
    !0xF_1FFF,
    0x1_0000,
    0x1_0000_0001,
    4095,
    4096,
    0xFFFF_FFFE,
    0xFFFF_FFFF,
    1 << 63,
];

/// Page-register bases around the interesting address widths.
pub const PAGE_BASES: [u64; 14] = [
    0,
    0x1000,
    0x5000,
    (1 << 36) - 0x1000,
    1 << 36,
    (1 << 39) - 0x1000,
    1 << 39,
    (1 << 46) - 0x1000,
    1 << 48,
    (1 << 52) - 0x1000,
    1 << 52,
    (1 << 52) + 0x1000,
    1 << 63,
    !0xFFF,
];

/// Low bits (Enable and RsvdP) combined with [`PAGE_BASES`].
pub const PAGE_LOW_BITS: [u64; 6] = [0, 1, 2, 3, 0xFFE, 0xFFF];

/// Reserved-bit patterns of SINTn.
pub const SINT_RESERVED: [u64; 5] = [0, 0xFF00, 1 << 19, 1 << 63, !0x7_00FF];

/// Reserved-bit patterns of STIMERn_CONFIG.
pub const STIMER_RESERVED: [u64; 6] = [0, 1 << 13, 1 << 15, 1 << 20, 1 << 63, !0xF_1FFF];

/// Address widths a setup picks from.
pub const PHYS_ADDR_BITS: [u8; 9] = [0, 12, 36, 39, 46, 48, 52, 60, 255];

/// Unusual creation indices a setup picks from.
pub const ODD_VP_INDICES: [u32; 4] = [4095, 4096, 0xFFFF_FFFE, u32::MAX];

impl ByteReader<'_> {
    fn setup(&mut self) -> Setup {
        // A short input still runs: missing setup bytes read as zero.
        let b = self.u8().unwrap_or(0);
        let act = [Act::Off, Act::Off, Act::V1, Act::V2][usize::from(b >> 1) & 3];
        let bits = self.pick(&PHYS_ADDR_BITS).unwrap_or(0);
        let v = self.u8().unwrap_or(0);
        let vp_index = if v & 0x80 == 0 {
            u32::from(v & 7)
        } else {
            ODD_VP_INDICES[usize::from(v) & 3]
        };
        let clock = self.u64().unwrap_or(0);
        Setup {
            kvm: b & 1 != 0,
            act,
            phys_addr_bits: bits,
            vp_index,
            clock,
        }
    }

    fn index(&mut self) -> Option<u32> {
        let b = self.u8()?;
        Some(match b {
            0x00..=0x7F => KNOWN[usize::from(b) % KNOWN.len()],
            0x80..=0xBF => 0x4000_0000 | u32::from(self.u8()?),
            // GUEST_OS_ID and HYPERCALL more often, so the hypercall rules get exercised.
            0xC0..=0xEF => 0x4000_0000 | u32::from(b & 1),
            0xF0..=0xF7 => ODD_INDICES[usize::from(b & 7)],
            0xF8..=0xFF => self.u32()?,
        })
    }

    fn value(&mut self) -> Option<u64> {
        Some(match self.u8()? % 8 {
            0 => self.pick(&EDGE_VALUES)?,
            1 => 1 << (self.u8()? % 64),
            2 => {
                // A SINT: vector, Masked/AutoEOI/Polling, reserved bits.
                let vector = u64::from(self.u8()?);
                let flags = u64::from(self.u8()? % 8);
                vector | flags << 16 | self.pick(&SINT_RESERVED)?
            }
            3 => self.pick(&PAGE_BASES)? | self.pick(&PAGE_LOW_BITS)?,
            4 => {
                // A STIMER config: low bits, vector, DirectMode, SINTx, reserved bits.
                let low = u64::from(self.u8()?);
                let vector = u64::from(self.u8()?);
                let sintx = u64::from(self.u8()?);
                (low & 0xF)
                    | vector << 4
                    | (low >> 4 & 1) << 12
                    | (sintx & 0xF) << 16
                    | self.pick(&STIMER_RESERVED)?
            }
            5 => u64::from(self.u8()?) * 4,
            _ => self.u64()?,
        })
    }

    fn op(&mut self) -> Option<Op> {
        let tag = self.u8()?;
        Some(match tag % 40 {
            0..=9 => {
                let (via, origin) = self.via_origin()?;
                Op::Read {
                    via,
                    index: self.index()?,
                    origin,
                }
            }
            10..=33 => {
                let (via, origin) = self.via_origin()?;
                Op::Write {
                    via,
                    index: self.index()?,
                    value: self.value()?,
                    origin,
                }
            }
            34 => Op::Activate(KvmSynic::V1),
            35 => Op::Activate(KvmSynic::V2),
            36 => Op::Reset,
            37 | 38 => {
                let b = self.u8()?;
                Op::SetStimerEnabled {
                    timer: b & 3,
                    enabled: b & 4 != 0,
                }
            }
            _ => Op::SetClock(self.u64()?),
        })
    }

    fn via_origin(&mut self) -> Option<(Via, Origin)> {
        let b = self.u8()?;
        let origin = if b & 1 == 0 {
            Origin::Guest
        } else {
            Origin::Host
        };
        let via = match (b >> 1) % 10 {
            8 => Via::Vp,
            9 => Via::Partition,
            _ => Via::Dispatch,
        };
        Some((via, origin))
    }
}

impl Op {
    /// Decodes a setup and as many operations as `bytes` holds. Total: any bytes decode.
    pub fn decode_all(bytes: &[u8]) -> (Setup, Vec<Op>) {
        let mut r = ByteReader::new(bytes);
        let setup = r.setup();
        let ops = std::iter::from_fn(|| r.op()).collect();
        (setup, ops)
    }

    /// Bytes that [`decode_all`](Self::decode_all) turns back into `setup` and `ops`, as long
    /// as the setup uses values the decoder can pick (a listed address width, a creation index
    /// below 8 or a listed odd one, activation `Off` with the TLFS profile).
    pub fn encode_all(setup: &Setup, ops: &[Op]) -> Vec<u8> {
        let mut out = Vec::new();
        let act = match setup.act {
            Act::Off => 0,
            Act::V1 => 2,
            Act::V2 => 3,
        };
        out.push(u8::from(setup.kvm) | act << 1);
        out.push(position(&PHYS_ADDR_BITS, setup.phys_addr_bits).unwrap_or(0));
        out.push(match position(&ODD_VP_INDICES, setup.vp_index) {
            Some(i) => 0x80 | i,
            None => (setup.vp_index & 7) as u8,
        });
        out.extend_from_slice(&setup.clock.to_le_bytes());
        for op in ops {
            op.encode(&mut out);
        }
        out
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Read { via, index, origin } => {
                out.push(0);
                out.push(encode_via_origin(via, origin));
                encode_index(index, out);
            }
            Op::Write {
                via,
                index,
                value,
                origin,
            } => {
                out.push(10);
                out.push(encode_via_origin(via, origin));
                encode_index(index, out);
                out.push(7);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::Activate(KvmSynic::V1) => out.push(34),
            Op::Activate(KvmSynic::V2) => out.push(35),
            Op::Reset => out.push(36),
            Op::SetStimerEnabled { timer, enabled } => {
                out.extend_from_slice(&[37, (timer & 3) | u8::from(enabled) << 2]);
            }
            Op::SetClock(c) => {
                out.push(39);
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
    }
}

fn position<T: PartialEq>(list: &[T], value: T) -> Option<u8> {
    list.iter().position(|v| *v == value).map(|i| i as u8)
}

fn encode_via_origin(via: Via, origin: Origin) -> u8 {
    let via = match via {
        Via::Dispatch => 0,
        Via::Vp => 8,
        Via::Partition => 9,
    };
    via << 1 | u8::from(origin == Origin::Host)
}

fn encode_index(index: u32, out: &mut Vec<u8>) {
    if let Some(i) = position(&KNOWN, index) {
        out.push(i);
    } else if index & !0xFF == 0x4000_0000 {
        out.extend_from_slice(&[0x80, index as u8]);
    } else {
        out.push(0xF8);
        out.extend_from_slice(&index.to_le_bytes());
    }
}
