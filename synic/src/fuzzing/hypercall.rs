//! Hypercall decoding over arbitrary guest memory, against an independent decoder.
//!
//! A [`Case`] is a guest memory layout and a sequence of [`Step`]s: hypercalls with any
//! control value, input GPA and input bytes (written into guest memory wherever it is RAM),
//! and guest ISRs that free the receiving slot. [`Case::run`] checks each call twice:
//! [`decode`](crate::hypercall::decode) must agree with a reference decoder (written from
//! the table in `docs/hypercalls.md`, with its own view of the memory layout), and
//! [`handle`](crate::hypercall::handle) must answer the status the registered connections
//! predict and leave the message or flag where the port says.

use std::sync::Arc;

use synic_msr::oracle::ByteReader;
use synic_msr::{index, Profile};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::guest::Harness;
use crate::hypercall::{
    decode, handle, Connections, EventPort, Hypercall, HypercallRegs, MessagePort,
    HVCALL_POST_MESSAGE, HVCALL_SIGNAL_EVENT,
};
use crate::{Mode, PartitionConfig, SintIndex, VpIndex};

/// Guest memory layouts: `(start, size)` regions.
pub const LAYOUTS: [&[(u64, usize)]; 5] = [
    &[(0, 0x1_0000)],
    // A page only half backed by RAM.
    &[(0, 0x3000), (0x5000, 0x800)],
    // Two adjacent regions splitting one page.
    &[(0x1000, 0x880), (0x1880, 0x780)],
    // RAM up to the last byte but one of the 64-bit space.
    &[(0xFFFF_FFFF_FFFF_0000, 0xFFFF)],
    // Two pages either side of 4 GiB.
    &[(0xFFFF_F000, 0x1000), (0x1_0000_0000, 0x1000)],
];

/// Call codes a control selector picks from.
pub const CODES: [u16; 8] = [0x5C, 0x5D, 0x5C, 0x5D, 0x5D, 0, 0x5E, 0xFFFF];
/// Control bits a selector adds: mostly none, else a reserved bit, a rep count, a rep start
/// or a variable header size.
pub const CONTROL_EXTRA: [u64; 15] = [
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    1 << 27,
    1 << 31,
    1 << 44,
    1 << 60,
    1 << 63,
    1 << 32,
    1 << 48,
    1 << 17,
];
/// Connection ids with a message and an event connection registered.
pub const CONNECTIONS: [u32; 3] = [1, 2, 0x00FF_FFFF];
/// Message types a selector picks from.
pub const TYPES: [u32; 4] = [1, 0x7FFF_FFFF, 0, 0x8000_0001];
/// Payload sizes a selector picks from.
pub const SIZES: [u32; 6] = [0, 24, 240, 241, 256, u32::MAX];
/// Queue capacity of the receiving SINTs.
pub const CAPACITY: usize = 2;
/// The step tag of a guest ISR.
const ISR_TAG: u8 = 0xEE;
/// The selector byte of a raw value.
const RAW: u8 = 0xFF;

/// One hypercall: registers and the first 16 input bytes (payload bytes are `fill`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// RCX.
    pub control: u64,
    /// RDX: the input GPA (fast calls: replaced by the first 8 input bytes).
    pub input: u64,
    /// Input bytes 0..16: connection id, reserved / flag number, message type, payload size.
    pub header: [u32; 4],
    /// Every payload byte.
    pub fill: u8,
}

/// One step of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A hypercall from VP 0.
    Call(Call),
    /// The receiving guest consumes SINTs 1 and 2 and writes EOM.
    GuestIsr,
}

/// A memory layout and the steps run over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// Index into [`LAYOUTS`].
    pub layout: u8,
    /// The steps.
    pub steps: Vec<Step>,
}

/// What the reference decoder expects a valid call to decode to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// HvPostMessage.
    Post {
        /// Connection id.
        connection_id: u32,
        /// Message type.
        message_type: u32,
        /// Exactly PayloadSize bytes.
        payload: Vec<u8>,
    },
    /// HvSignalEvent.
    Signal {
        /// Connection id.
        connection_id: u32,
        /// Flag number.
        flag_number: u16,
    },
}

/// The decoder's readers for a case's fields.
trait Fields {
    fn word<const N: usize>(&mut self, list: [u32; N]) -> Option<u32>;
    fn step(&mut self, layout: &[(u64, usize)]) -> Option<Step>;
}

impl Fields for ByteReader<'_> {
    fn word<const N: usize>(&mut self, list: [u32; N]) -> Option<u32> {
        let b = self.u8()?;
        if b == RAW {
            self.u32()
        } else {
            Some(list[usize::from(b) % N])
        }
    }

    fn step(&mut self, layout: &[(u64, usize)]) -> Option<Step> {
        let tag = self.u8()?;
        if tag == ISR_TAG {
            return Some(Step::GuestIsr);
        }
        let control = if tag == RAW {
            self.u64()?
        } else {
            let code = u64::from(CODES[usize::from(tag & 7)]);
            let fast = u64::from(tag >> 3 & 1) << 16;
            code | fast | CONTROL_EXTRA[usize::from(tag >> 4) % CONTROL_EXTRA.len()]
        };
        let g = self.u8()?;
        let input = if g == RAW {
            self.u64()?
        } else {
            let gpas = interesting_gpas(layout);
            gpas[usize::from(g) % gpas.len()]
        };
        let connection = self.word(CONNECTIONS)?;
        // Word 1: 0, a flag number, or a flag number with reserved bits above it.
        let b = self.u8()?;
        let word1 = match b {
            RAW => self.u32()?,
            0..=0x7F => 0,
            _ => u32::from(b & 0x3F) | u32::from(b & 0x40) << 10,
        };
        let message_type = self.word(TYPES)?;
        let size = self.word(SIZES)?;
        let fill = self.u8()?;
        Some(Step::Call(Call {
            control,
            input,
            header: [connection, word1, message_type, size],
            fill,
        }))
    }
}

/// Input GPAs at the edges of a layout's regions and pages.
pub fn interesting_gpas(layout: &[(u64, usize)]) -> Vec<u64> {
    let mut out = vec![0x1000, 0x1FF8, 0x1F00, 0x1F08, 0x1004, 0x1001, u64::MAX - 7];
    for &(start, size) in layout {
        let end = start.wrapping_add(size as u64);
        out.extend(
            [
                start,
                start.wrapping_add(8),
                start.wrapping_add(0xF00),
                end.wrapping_sub(256),
                end.wrapping_sub(8),
                end.wrapping_sub(4),
                end,
                start.wrapping_sub(8),
            ]
            .iter()
            .copied(),
        );
    }
    out
}

impl Case {
    /// Decodes a case from any bytes.
    pub fn decode(bytes: &[u8]) -> Case {
        let mut r = ByteReader::new(bytes);
        let layout = r.u8().unwrap_or(0) % LAYOUTS.len() as u8;
        let regions = LAYOUTS[usize::from(layout)];
        let steps = std::iter::from_fn(|| r.step(regions)).collect();
        Case { layout, steps }
    }

    /// Bytes that [`decode`](Self::decode) turns back into this case (every value raw).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.layout];
        for step in &self.steps {
            match step {
                Step::GuestIsr => out.push(ISR_TAG),
                Step::Call(c) => {
                    out.push(RAW);
                    out.extend_from_slice(&c.control.to_le_bytes());
                    out.push(RAW);
                    out.extend_from_slice(&c.input.to_le_bytes());
                    for w in c.header {
                        out.push(RAW);
                        out.extend_from_slice(&w.to_le_bytes());
                    }
                    out.push(c.fill);
                }
            }
        }
        out
    }

    /// Runs the steps and checks every call; returns the RAX value of each call, or
    /// describes the first disagreement.
    pub fn run(&self) -> Result<Vec<u64>, String> {
        let layout = LAYOUTS[usize::from(self.layout) % LAYOUTS.len()];
        let ranges: Vec<_> = layout
            .iter()
            .map(|&(start, size)| (GuestAddress(start), size))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| e.to_string())?;
        let mut shadow = Shadow::new(layout);
        let mut target = Target::new();
        let mut results = Vec::new();
        for (n, step) in self.steps.iter().enumerate() {
            match *step {
                Step::GuestIsr => target.isr(),
                Step::Call(call) => {
                    let regs = shadow.place(&mem, &call);
                    let want = reference_decode(&shadow, &regs);
                    let got = decode(&mem, &regs).map(|c| match c {
                        Hypercall::PostMessage(m) => Expected::Post {
                            connection_id: m.connection_id,
                            message_type: m.message_type,
                            payload: m.payload().to_vec(),
                        },
                        Hypercall::SignalEvent(e) => Expected::Signal {
                            connection_id: e.connection_id,
                            flag_number: e.flag_number,
                        },
                    });
                    let got = got.map_err(|s| s.code());
                    if got != want {
                        return Err(format!(
                            "step {n}: {call:x?}: decode gave {got:?}, reference {want:?}"
                        ));
                    }
                    let rax = target
                        .handle(&mem, &regs, &want)
                        .map_err(|e| format!("step {n}: {call:x?}: {e}"))?;
                    results.push(rax);
                }
            }
        }
        Ok(results)
    }
}

/// The reference decoder's own copy of guest memory: each region's bytes.
struct Shadow {
    regions: Vec<(u64, Vec<u8>)>,
}

impl Shadow {
    fn new(layout: &[(u64, usize)]) -> Self {
        let regions = layout
            .iter()
            .map(|&(start, size)| (start, vec![0; size]))
            .collect();
        Self { regions }
    }

    fn byte(&self, addr: u64) -> Option<u8> {
        self.regions.iter().find_map(|(start, bytes)| {
            let offset = usize::try_from(addr.checked_sub(*start)?).ok()?;
            bytes.get(offset).copied()
        })
    }

    /// Writes the call's input bytes wherever they fall in RAM; returns the registers.
    fn place(&mut self, mem: &GuestMemoryMmap<()>, call: &Call) -> HypercallRegs {
        let mut bytes = [call.fill; 256];
        for (i, w) in call.header.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        // The input may run past the end of the address space: wider arithmetic.
        let (lo, hi) = (u128::from(call.input), u128::from(call.input) + 256);
        for (start, data) in &mut self.regions {
            let (start, end) = (u128::from(*start), u128::from(*start) + data.len() as u128);
            let (from, to) = (lo.max(start), hi.min(end));
            if from < to {
                let src = &bytes[(from - lo) as usize..(to - lo) as usize];
                data[(from - start) as usize..(to - start) as usize].copy_from_slice(src);
                mem.write_slice(src, GuestAddress(from as u64))
                    .expect("RAM range");
            }
        }
        let fast = call.control & (1 << 16) != 0;
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes[..8]);
        HypercallRegs {
            control: call.control,
            input: if fast {
                u64::from_le_bytes(first)
            } else {
                call.input
            },
            output: 0,
        }
    }

    /// `len` input bytes at `gpa`, or the status for an unusable input GPA.
    fn input(&self, gpa: u64, len: u64) -> Result<Vec<u8>, u16> {
        if !gpa.is_multiple_of(8) || gpa % 4096 + len > 4096 {
            return Err(4);
        }
        (0..len)
            .map(|i| gpa.checked_add(i).and_then(|a| self.byte(a)).ok_or(4u16))
            .collect()
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The table of `docs/hypercalls.md`, written out plainly: the decoded call, or the status.
fn reference_decode(mem: &Shadow, regs: &HypercallRegs) -> Result<Expected, u16> {
    let c = regs.control;
    let bits = |lo: u32, hi: u32| (c >> lo) & ((1u64 << (hi - lo + 1)) - 1);
    if bits(27, 31) != 0 || bits(44, 47) != 0 || bits(60, 63) != 0 {
        return Err(3);
    }
    let code = bits(0, 15);
    if code != u64::from(HVCALL_POST_MESSAGE) && code != u64::from(HVCALL_SIGNAL_EVENT) {
        return Err(2);
    }
    if bits(32, 43) != 0 || bits(48, 59) != 0 || bits(17, 26) != 0 {
        return Err(3);
    }
    let fast = bits(16, 16) == 1;
    if code == u64::from(HVCALL_POST_MESSAGE) {
        if fast {
            return Err(3);
        }
        let b = mem.input(regs.input, 256)?;
        let (conn, rsvd, ty, size) = (le32(&b, 0), le32(&b, 4), le32(&b, 8), le32(&b, 12));
        if conn >> 24 != 0 || rsvd != 0 {
            return Err(3);
        }
        if ty == 0 || ty >> 31 != 0 || size > 240 {
            return Err(5);
        }
        return Ok(Expected::Post {
            connection_id: conn,
            message_type: ty,
            payload: b[16..16 + size as usize].to_vec(),
        });
    }
    let value = if fast {
        regs.input
    } else {
        let b = mem.input(regs.input, 8)?;
        u64::from(le32(&b, 0)) | u64::from(le32(&b, 4)) << 32
    };
    let conn = value as u32;
    let reserved = value >> 48;
    if conn >> 24 != 0 || reserved != 0 {
        return Err(3);
    }
    Ok(Expected::Signal {
        connection_id: conn,
        flag_number: (value >> 32) as u16,
    })
}

/// The receiving partition: message connections 1 -> SINT 1 and 0xFFFFFF -> SINT 2; event
/// connections 2 -> SINT 1 flags 0..16 and 0xFFFFFF -> SINT 2 flags 2040..2140 (the last 92
/// do not exist).
struct Target {
    h: Harness,
    connections: Connections,
    /// Per SINT: messages accepted and not yet consumed (slot + queue).
    held: [usize; 3],
}

const SIMP: u64 = 0x1_0000;
const SIEFP: u64 = 0x2_0000;

impl Target {
    fn new() -> Self {
        let config =
            PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 1).with_queue_capacity(CAPACITY);
        let mut h = Harness::with_config(config);
        h.wrmsr(0, index::SCONTROL, 1);
        h.wrmsr(0, index::SIMP, SIMP | 1);
        h.wrmsr(0, index::SIEFP, SIEFP | 1);
        for s in 1..3 {
            h.wrmsr(0, index::SINT0 + s, 0x40 + u64::from(s));
        }
        let connections = Connections::new();
        let p = &h.partition;
        let sint = |n: usize| SintIndex::ALL[n];
        let message = |n| Arc::new(MessagePort::new(p.clone(), VpIndex(0), sint(n)));
        connections.add_message(1, message(1)).unwrap();
        connections.add_message(0xFF_FFFF, message(2)).unwrap();
        let event =
            |n, base, count| Arc::new(EventPort::new(p.clone(), VpIndex(0), sint(n), base, count));
        connections.add_event(2, event(1, 0, 16)).unwrap();
        connections
            .add_event(0xFF_FFFF, event(2, 2040, 100))
            .unwrap();
        Self {
            h,
            connections,
            held: [0; 3],
        }
    }

    /// The guest takes the messages in SINTs 1 and 2 and writes EOM.
    fn isr(&mut self) {
        for s in 1..3u8 {
            if self.h.slot_at(SIMP, s).header.message_type.0 != 0 {
                self.h.guest_free_slot_at(SIMP, s);
                self.held[usize::from(s)] -= 1;
            }
        }
        self.h.eom(0);
    }

    fn handle(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        regs: &HypercallRegs,
        decoded: &Result<Expected, u16>,
    ) -> Result<u64, String> {
        let rax = handle(mem, regs, VpIndex(0), &self.connections);
        let want: u16 = match decoded {
            Err(status) => *status,
            Ok(Expected::Post {
                connection_id,
                message_type,
                payload,
            }) => {
                let s = match connection_id {
                    1 => 1,
                    0xFF_FFFF => 2,
                    _ => return check(rax, 0x12).map(|()| rax),
                };
                if self.held[s] == 1 + CAPACITY {
                    0x13
                } else {
                    self.held[s] += 1;
                    if self.held[s] == 1 {
                        // It went straight into the free slot.
                        let m = self.h.slot_at(SIMP, s as u8);
                        let want = (*message_type, u64::from(*connection_id), &payload[..]);
                        let got = (
                            m.header.message_type.0,
                            m.header.sender,
                            &m.payload[..usize::from(m.header.payload_size)],
                        );
                        if got != want {
                            return Err(format!("slot holds {got:x?}, posted {want:x?}"));
                        }
                    }
                    0
                }
            }
            Ok(Expected::Signal {
                connection_id,
                flag_number,
            }) => {
                let (s, base, count) = match connection_id {
                    2 => (1, 0, 16),
                    0xFF_FFFF => (2, 2040, 100),
                    _ => return check(rax, 0x12).map(|()| rax),
                };
                let flag = base + u32::from(*flag_number);
                if u32::from(*flag_number) >= count || flag >= 2048 {
                    5
                } else {
                    check(rax, 0)?;
                    if !self.h.flag_is_set_at(SIEFP, s, flag) {
                        return Err(format!("flag {flag} of SINT{s} not set"));
                    }
                    return Ok(rax);
                }
            }
        };
        check(rax, want)?;
        for s in 1..3u8 {
            let queued = self.h.counters(0, s).queued as usize;
            let in_slot = usize::from(self.h.slot_at(SIMP, s).header.message_type.0 != 0);
            if queued + in_slot != self.held[usize::from(s)] {
                return Err(format!(
                    "SINT{s}: {queued} queued + {in_slot} in slot, {} accepted",
                    self.held[usize::from(s)]
                ));
            }
        }
        Ok(rax)
    }
}

fn check(rax: u64, status: u16) -> Result<(), String> {
    if rax == u64::from(status) {
        Ok(())
    } else {
        Err(format!("handle returned {rax:#x}, expected {status:#x}"))
    }
}
