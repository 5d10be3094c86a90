//! The operations of the model checker and their byte encoding.
//!
//! [`Op::decode_all`] turns any bytes into a [`Setup`] and operations (what the fuzz target
//! feeds the [`Checker`](super::Checker)); [`Op::encode_all`] is its inverse for the values
//! the decoder can produce, used to write seed inputs.

use synic_msr::oracle::ByteReader;
use synic_msr::{index, Profile};

use crate::Mode;

/// SINTs the checker tracks (0..SINTS); posts and signals go to these or to invalid numbers.
pub const SINTS: u8 = 4;
/// Event flags the small-flag encoding reaches (the wide one reaches all 2048).
pub const FLAGS: u32 = 40;
/// Guest RAM of the checker's partition: `0..RAM_END` (small, so checking every page's dirty
/// bit after each step stays cheap).
pub const RAM_END: u64 = 0x5_0000;
/// Candidate message pages: three ordinary RAM pages, then hostile ones.
pub const PAGES: [u64; 9] = [
    0x1_0000,
    0x2_0000,
    0x3_0000,
    // Outside guest RAM.
    0x2000_0000,
    // The event-flags page of `SIEFP_PAGES[0]`: both on one page.
    0x4_0000,
    // The last page of guest RAM.
    RAM_END - 0x1000,
    // Beyond RAM but inside 52 address bits.
    1 << 51,
    // Wider than any physical address (non-canonical as a linear address).
    0xFFFF_8000_0000_0000,
    // The last page of the 64-bit space (slot offsets must not wrap).
    0xFFFF_FFFF_FFFF_F000,
];
/// Candidate event-flags pages; `[0]` is the ordinary one, `[1]` is `PAGES[0]`.
pub const SIEFP_PAGES: [u64; 5] = [
    0x4_0000,
    0x1_0000,
    0x2000_0000,
    RAM_END - 0x1000,
    0xFFFF_FFFF_FFFF_F000,
];
/// Low 12 bits of a page register: Enable and the RsvdP bits.
pub const PAGE_LOW_BITS: [u64; 4] = [1, 0, 0xFFF, 0x800];
/// SINT numbers a device may ask for that do not exist.
pub const INVALID_SINTS: [u32; 4] = [16, 17, 255, u32::MAX];
/// Flag numbers that do not exist.
pub const INVALID_FLAGS: [u32; 4] = [2048, 2049, 0xFFFF, u32::MAX];
/// Message types the guest scribbles into a slot (none of them is a real message: real
/// messages carry [`MAGIC`](super::MAGIC) in their payload).
pub const SCRIBBLE_TYPES: [u32; 8] = [
    0,
    0x7777_0001,
    0x7777_0002,
    0x7777_0003,
    1,
    0x8000_0010,
    u32::MAX,
    0x8000_0000,
];
/// MSRs the raw [`Op::Wrmsr`] writes: every SynIC register the checker follows, SINT15, the
/// read-only SVERSION, an index in the SynIC block that is no register, and synthetic timer
/// registers.
pub const WRMSR_INDICES: [u32; 15] = [
    index::SCONTROL,
    index::SVERSION,
    index::SIEFP,
    index::SIMP,
    index::EOM,
    index::SINT0,
    index::SINT0 + 1,
    index::SINT0 + 2,
    index::SINT0 + 3,
    index::SINT15,
    0x4000_0085,
    index::STIMER0_CONFIG,
    index::STIMER0_COUNT,
    index::STIMER0_CONFIG + 2,
    index::STIMER3_COUNT,
];
/// Values at field boundaries.
pub const EDGE_VALUES: [u64; 8] = [0, 1, 2, u64::MAX, 1 << 63, 0x1_0000, 0x1_000F, 0x7_00FF];
/// Reserved-bit patterns of SINTn.
pub const SINT_RESERVED: [u64; 4] = [0, 0xFF00, 1 << 19, 1 << 63];

/// The configuration a run starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Who owns the registers.
    pub mode: Mode,
    /// TLFS or KVM semantics (kernel mode is always KVM).
    pub profile: Profile,
    /// Capacity of each SINT's queue (1..=4).
    pub capacity: usize,
}

/// The setups the decoder picks from.
pub const SETUPS: [(Mode, Profile); 3] = [
    (Mode::Userspace, Profile::Tlfs),
    (Mode::Userspace, Profile::Kvm),
    (Mode::Kernel, Profile::Kvm),
];

/// How the simulated guest's ISR treats its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isr {
    /// Consume, and EOM when MessagePending is set.
    Good,
    /// Consume, never EOM.
    NoEom,
    /// Look without consuming.
    Peek,
}

/// One step: a host call or something the (sometimes misbehaving) guest does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A device posts a message (`sint` may be invalid); `hypervisor` posts a
    /// timer-expired-typed one through `post_hypervisor_message`.
    Post {
        /// The SINT number.
        sint: u32,
        /// Use the hypervisor path and type.
        hypervisor: bool,
    },
    /// The guest's ISR on a SINT's slot.
    Isr {
        /// The SINT (< [`SINTS`]).
        sint: u8,
        /// How it behaves.
        how: Isr,
    },
    /// The guest writes EOM (kernel mode: KVM acks every SINT).
    Eom,
    /// The routing layer acks a SINT (a resamplefd fired); `sint` may be invalid.
    Ack {
        /// The SINT number.
        sint: u32,
    },
    /// The guest consumes its slot and then writes a whole garbage message into it.
    Scribble {
        /// The SINT (< [`SINTS`]).
        sint: u8,
        /// The message type written.
        ty: u32,
        /// Every payload byte and the flags byte.
        byte: u8,
    },
    /// The guest writes one header byte of its slot: message_type (consuming the message
    /// first), payload size, flags (MessagePending), reserved or sender.
    Poke {
        /// The SINT (< [`SINTS`]).
        sint: u8,
        /// Byte offset in the slot, 0..16.
        offset: u8,
        /// The byte.
        value: u8,
    },
    /// The guest clears SIMP.Enable.
    DisableSimp,
    /// The guest points SIMP at `PAGES[page]`, enabled.
    SetSimp {
        /// Index into [`PAGES`].
        page: u8,
    },
    /// The guest writes SCONTROL.
    Scontrol {
        /// Enable bit.
        enabled: bool,
    },
    /// The guest points SIEFP at `SIEFP_PAGES[page]`.
    Siefp {
        /// Index into [`SIEFP_PAGES`].
        page: u8,
        /// Enable bit.
        enabled: bool,
    },
    /// The guest rewrites a SINT register with vector `0x40 + sint`.
    SintConfig {
        /// The SINT (< [`SINTS`]).
        sint: u8,
        /// Masked.
        masked: bool,
        /// Polling.
        polling: bool,
        /// AutoEOI.
        auto_eoi: bool,
    },
    /// The guest writes any value to one of [`WRMSR_INDICES`] (kernel mode: what KVM would
    /// report or do).
    Wrmsr {
        /// The MSR index.
        index: u32,
        /// The value.
        value: u64,
    },
    /// A device signals event flag `flag` of `sint` (either may be invalid).
    Signal {
        /// The SINT number.
        sint: u32,
        /// The flag number.
        flag: u32,
    },
    /// The guest zeroes a SINT's 256 bytes of its event-flags page.
    ClearFlags {
        /// The SINT (< [`SINTS`]).
        sint: u8,
    },
    /// The reference clock moves forward by `ticks` (100 ns) and the timer thread polls.
    Tick {
        /// How far.
        ticks: u32,
    },
    /// Save the VP and partition, restore into a fresh partition over the same memory.
    SaveRestore,
    /// VP reset (the queued messages are handed back).
    Reset,
}

/// Relative frequency of each operation kind in decoded input, in [`Op`] order.
const WEIGHTS: [u8; 17] = [30, 25, 4, 4, 2, 3, 2, 5, 3, 3, 5, 8, 10, 4, 3, 2, 1];

/// The decoder's readers for this checker's fields.
trait Fields {
    fn tracked_sint(&mut self) -> Option<u8>;
    fn any_sint(&mut self) -> Option<u32>;
    fn flag(&mut self) -> Option<u32>;
    fn value(&mut self) -> Option<u64>;
    fn op(&mut self) -> Option<Op>;
}

impl Fields for ByteReader<'_> {
    fn tracked_sint(&mut self) -> Option<u8> {
        Some(self.u8()? % SINTS)
    }

    fn any_sint(&mut self) -> Option<u32> {
        let b = self.u8()?;
        Some(if b < 0xF0 {
            u32::from(b % SINTS)
        } else {
            INVALID_SINTS[usize::from(b & 3)]
        })
    }

    fn flag(&mut self) -> Option<u32> {
        let b = self.u8()?;
        Some(match b >> 6 {
            0 | 1 => u32::from(b & 0x3F) % FLAGS,
            2 => u32::from(self.u16()?) % 2048,
            _ => INVALID_FLAGS[usize::from(b & 3)],
        })
    }

    fn value(&mut self) -> Option<u64> {
        Some(match self.u8()? % 8 {
            0 => self.pick(&PAGES)? | self.pick(&PAGE_LOW_BITS)?,
            1 => self.pick(&SIEFP_PAGES)? | self.pick(&PAGE_LOW_BITS)?,
            2 => {
                let vector = u64::from(self.u8()?);
                let flags = u64::from(self.u8()? % 8);
                vector | flags << 16 | self.pick(&SINT_RESERVED)?
            }
            3 => self.pick(&EDGE_VALUES)?,
            4 => {
                // A STIMER config: Enable/Periodic/Lazy/AutoEnable, a vector, DirectMode,
                // SINTx (mostly a tracked SINT).
                let low = u64::from(self.u8()?);
                let vector = u64::from(self.u8()?);
                (low & 0xF) | vector << 4 | (low >> 4 & 1) << 12 | ((low >> 5) % 6) << 16
            }
            5 => u64::from(self.u16()?),
            _ => self.u64()?,
        })
    }

    fn op(&mut self) -> Option<Op> {
        let total: u32 = WEIGHTS.iter().map(|&w| u32::from(w)).sum();
        let mut tag = u32::from(self.u8()?) % total;
        let mut kind = 0;
        while tag >= u32::from(WEIGHTS[kind]) {
            tag -= u32::from(WEIGHTS[kind]);
            kind += 1;
        }
        Some(match kind {
            0 => Op::Post {
                sint: self.any_sint()?,
                hypervisor: self.u8()? % 5 == 0,
            },
            1 => Op::Isr {
                sint: self.tracked_sint()?,
                how: match self.u8()? % 10 {
                    8 => Isr::NoEom,
                    9 => Isr::Peek,
                    _ => Isr::Good,
                },
            },
            2 => Op::Eom,
            3 => Op::Ack {
                sint: self.any_sint()?,
            },
            4 => Op::Scribble {
                sint: self.tracked_sint()?,
                ty: self.pick(&SCRIBBLE_TYPES)?,
                byte: self.u8()?,
            },
            5 => Op::Poke {
                sint: self.tracked_sint()?,
                offset: self.u8()? % 16,
                value: self.u8()?,
            },
            6 => Op::DisableSimp,
            7 => Op::SetSimp {
                page: self.u8()? % PAGES.len() as u8,
            },
            8 => Op::Scontrol {
                enabled: self.u8()? & 1 != 0,
            },
            9 => {
                let b = self.u8()?;
                Op::Siefp {
                    page: (b >> 1) % SIEFP_PAGES.len() as u8,
                    enabled: b & 1 != 0,
                }
            }
            10 => {
                let sint = self.tracked_sint()?;
                let b = self.u8()?;
                Op::SintConfig {
                    sint,
                    masked: b & 7 == 0,
                    polling: b >> 3 & 7 == 0,
                    auto_eoi: b & 0x40 != 0,
                }
            }
            11 => Op::Wrmsr {
                index: self.pick(&WRMSR_INDICES)?,
                value: self.value()?,
            },
            12 => Op::Signal {
                sint: self.any_sint()?,
                flag: self.flag()?,
            },
            13 => Op::ClearFlags {
                sint: self.tracked_sint()?,
            },
            14 => Op::Tick {
                ticks: u32::from(self.u16()?) * 4,
            },
            15 => Op::SaveRestore,
            _ => Op::Reset,
        })
    }
}

fn position<T: PartialEq>(list: &[T], value: T) -> u8 {
    list.iter()
        .position(|v| *v == value)
        .expect("only listed values can be encoded") as u8
}

impl Op {
    /// Decodes a setup and as many operations as `bytes` holds. Total: any bytes decode.
    pub fn decode_all(bytes: &[u8]) -> (Setup, Vec<Op>) {
        let mut r = ByteReader::new(bytes);
        let b = r.u8().unwrap_or(0);
        let (mode, profile) = SETUPS[usize::from(b) % SETUPS.len()];
        let setup = Setup {
            mode,
            profile,
            capacity: 1 + usize::from(b) / SETUPS.len() % 4,
        };
        let ops = std::iter::from_fn(|| r.op()).collect();
        (setup, ops)
    }

    /// Bytes that [`decode_all`](Self::decode_all) turns back into `setup` and `ops`.
    ///
    /// # Panics
    /// On a value the decoder cannot produce: a setup not in [`SETUPS`] or a capacity outside
    /// 1..=4, a tracked SINT at or above [`SINTS`], an invalid SINT or flag, scribble type or
    /// MSR index not in its list, a page index out of range, a poke offset above 15, a tick
    /// count that is not a multiple of 4 up to 4 * 65535.
    pub fn encode_all(setup: &Setup, ops: &[Op]) -> Vec<u8> {
        assert!((1..=4).contains(&setup.capacity));
        let combo = position(&SETUPS, (setup.mode, setup.profile));
        let mut out = vec![combo + SETUPS.len() as u8 * (setup.capacity as u8 - 1)];
        for op in ops {
            op.encode(&mut out);
        }
        out
    }

    fn kind(&self) -> usize {
        match self {
            Op::Post { .. } => 0,
            Op::Isr { .. } => 1,
            Op::Eom => 2,
            Op::Ack { .. } => 3,
            Op::Scribble { .. } => 4,
            Op::Poke { .. } => 5,
            Op::DisableSimp => 6,
            Op::SetSimp { .. } => 7,
            Op::Scontrol { .. } => 8,
            Op::Siefp { .. } => 9,
            Op::SintConfig { .. } => 10,
            Op::Wrmsr { .. } => 11,
            Op::Signal { .. } => 12,
            Op::ClearFlags { .. } => 13,
            Op::Tick { .. } => 14,
            Op::SaveRestore => 15,
            Op::Reset => 16,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let tag: u32 = WEIGHTS[..self.kind()].iter().map(|&w| u32::from(w)).sum();
        out.push(tag as u8);
        let tracked = |s: u8| {
            assert!(s < SINTS, "SINT {s} is not tracked");
            s
        };
        let any_sint = |s: u32| {
            if s < u32::from(SINTS) {
                s as u8
            } else {
                0xF0 | position(&INVALID_SINTS, s)
            }
        };
        match *self {
            Op::Post { sint, hypervisor } => {
                out.extend_from_slice(&[any_sint(sint), if hypervisor { 0 } else { 1 }]);
            }
            Op::Isr { sint, how } => {
                let how = match how {
                    Isr::Good => 0,
                    Isr::NoEom => 8,
                    Isr::Peek => 9,
                };
                out.extend_from_slice(&[tracked(sint), how]);
            }
            Op::Eom | Op::DisableSimp | Op::SaveRestore | Op::Reset => {}
            Op::Ack { sint } => out.push(any_sint(sint)),
            Op::Scribble { sint, ty, byte } => {
                out.extend_from_slice(&[tracked(sint), position(&SCRIBBLE_TYPES, ty), byte]);
            }
            Op::Poke {
                sint,
                offset,
                value,
            } => {
                assert!(offset < 16);
                out.extend_from_slice(&[tracked(sint), offset, value]);
            }
            Op::SetSimp { page } => {
                assert!(usize::from(page) < PAGES.len());
                out.push(page);
            }
            Op::Scontrol { enabled } => out.push(u8::from(enabled)),
            Op::Siefp { page, enabled } => {
                assert!(usize::from(page) < SIEFP_PAGES.len());
                out.push(page << 1 | u8::from(enabled));
            }
            Op::SintConfig {
                sint,
                masked,
                polling,
                auto_eoi,
            } => {
                let b = u8::from(!masked) | u8::from(!polling) << 3 | u8::from(auto_eoi) << 6;
                out.extend_from_slice(&[tracked(sint), b]);
            }
            Op::Wrmsr { index, value } => {
                out.extend_from_slice(&[position(&WRMSR_INDICES, index), 7]);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::Tick { ticks } => {
                assert!(ticks % 4 == 0 && ticks / 4 <= u32::from(u16::MAX));
                out.extend_from_slice(&((ticks / 4) as u16).to_le_bytes());
            }
            Op::Signal { sint, flag } => {
                out.push(any_sint(sint));
                if flag < FLAGS {
                    out.push(flag as u8);
                } else if flag < 2048 {
                    out.push(0x80);
                    out.extend_from_slice(&(flag as u16).to_le_bytes());
                } else {
                    out.push(0xC0 | position(&INVALID_FLAGS, flag));
                }
            }
            Op::ClearFlags { sint } => out.push(tracked(sint)),
        }
    }
}
