//! The fuzz target's operations and checker (`fuzz/fuzz_targets/vmbus.rs`): control messages
//! (Linux-shaped and raw) into a [`ControlPlane`], host actions, and ring traffic with guest
//! pokes into the ring headers and data. [`Case::decode`] turns any bytes into operations;
//! [`Case::run`] checks after every step:
//!
//! * the host's view of open channels (the hooks' opens and closes) equals the control
//!   plane's states, and no channel is opened twice or closed while not open;
//! * every reply fits a SynIC message and is a host-to-guest type; the GPADL bounds hold; no
//!   channel is open without a connection;
//! * rings opened by the control plane lie on pages the hooks accepted;
//! * the host never changes memory outside the two rings' pages;
//! * while the guest only writes and reads through Linux's algorithm (no pokes), every packet
//!   arrives once, in order and intact, both ways, and no ring access fails.

use std::collections::{BTreeSet, VecDeque};

use synic::VpIndex;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::messages as m;
use super::ring::GuestRing;
use crate::control::{
    ChannelHooks, ChannelOpen, ChannelSpec, ChannelState, ControlPlane, Reply, MAX_GPADLS,
    MAX_GPADL_TOTAL_PAGES,
};
use crate::protocol::{ChannelMessageType, Guid, Version, MAX_MESSAGE_SIZE};
use crate::ring::{IncomingRing, OutgoingRing, RingPages, Written, PAGE_SIZE};

/// Pages of fuzz RAM.
const RAM_PAGES: u64 = 24;
/// The page the hooks treat as a SynIC page.
const SYNIC_PAGE: u64 = 12;
/// Guest-to-host ring: header and scattered data pages.
const IN_RING: [u64; 3] = [1, 4, 2];
/// Host-to-guest ring.
const OUT_RING: [u64; 3] = [6, 9, 7];
/// The message connection id of a 5.x connection here.
const MSG5: u32 = 0x20;

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// INITIATE_CONTACT: `version` picks from a list with bogus ones, `conn` from 1, 4, 0x20, 7.
    Contact {
        /// Version choice.
        version: u8,
        /// Target VP.
        vp: u8,
        /// SINT.
        sint: u8,
        /// Connection choice.
        conn: u8,
    },
    /// REQUESTOFFERS.
    RequestOffers,
    /// A GPADL of `pages` pages from `base` (as Linux sends it), only the first `keep`
    /// messages of it.
    Gpadl {
        /// Channel.
        relid: u8,
        /// GPADL id.
        id: u8,
        /// Pages.
        pages: u8,
        /// First page frame.
        base: u8,
        /// Messages sent.
        keep: u8,
    },
    /// OPENCHANNEL.
    Open {
        /// Channel.
        relid: u8,
        /// Ring GPADL.
        id: u8,
        /// Target VP.
        vp: u8,
        /// Split.
        split: u8,
    },
    /// CLOSECHANNEL.
    Close {
        /// Channel.
        relid: u8,
    },
    /// GPADL_TEARDOWN.
    Teardown {
        /// Channel.
        relid: u8,
        /// GPADL id.
        id: u8,
    },
    /// RELID_RELEASED.
    Release {
        /// Channel.
        relid: u8,
    },
    /// MODIFYCHANNEL.
    Modify {
        /// Channel.
        relid: u8,
        /// Target VP.
        vp: u8,
    },
    /// UNLOAD.
    Unload,
    /// Any bytes on connection choice `conn`.
    Raw {
        /// Connection choice.
        conn: u8,
        /// The payload.
        bytes: Vec<u8>,
    },
    /// The host rescinds a channel.
    Rescind {
        /// Channel.
        relid: u8,
    },
    /// The host closes a channel's rings on its own.
    HostClose {
        /// Channel.
        relid: u8,
    },
    /// The host adds a channel.
    AddChannel,
    /// The guest writes a u32 into a ring header (`ring` 0: guest-to-host, 1: host-to-guest).
    RingPoke {
        /// Which ring.
        ring: u8,
        /// Field (4-byte units).
        field: u8,
        /// Value.
        value: u32,
    },
    /// The guest writes bytes into a ring's data.
    RingData {
        /// Which ring.
        ring: u8,
        /// Offset into the data.
        at: u16,
        /// Bytes.
        bytes: Vec<u8>,
    },
    /// The guest writes a packet (Linux's algorithm).
    GuestWrite {
        /// Payload length.
        len: u16,
    },
    /// The host reads up to `count` packets and commits.
    HostRead {
        /// Packets.
        count: u8,
    },
    /// The host writes a packet.
    HostWrite {
        /// Payload length.
        len: u16,
    },
    /// The guest reads one packet (Linux's algorithm).
    GuestRead,
}

/// Reads bytes front to back; past the end every read is 0.
struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn bytes(&mut self) -> Vec<u8> {
        let n = usize::from(self.u8()).min(self.data.len());
        let (v, rest) = self.data.split_at(n);
        self.data = rest;
        v.to_vec()
    }
}

/// A fuzz case: the operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// In order.
    pub ops: Vec<Op>,
}

impl Case {
    /// Decodes any bytes (at most 256 operations).
    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader { data };
        let mut ops = Vec::new();
        while !r.data.is_empty() && ops.len() < 256 {
            let op = match r.u8() % 19 {
                0 => Op::Contact {
                    version: r.u8(),
                    vp: r.u8(),
                    sint: r.u8(),
                    conn: r.u8(),
                },
                1 => Op::RequestOffers,
                2 => Op::Gpadl {
                    relid: r.u8(),
                    id: r.u8(),
                    pages: r.u8(),
                    base: r.u8(),
                    keep: r.u8(),
                },
                3 => Op::Open {
                    relid: r.u8(),
                    id: r.u8(),
                    vp: r.u8(),
                    split: r.u8(),
                },
                4 => Op::Close { relid: r.u8() },
                5 => Op::Teardown {
                    relid: r.u8(),
                    id: r.u8(),
                },
                6 => Op::Release { relid: r.u8() },
                7 => Op::Modify {
                    relid: r.u8(),
                    vp: r.u8(),
                },
                8 => Op::Unload,
                9 => Op::Raw {
                    conn: r.u8(),
                    bytes: r.bytes(),
                },
                10 => Op::Rescind { relid: r.u8() },
                11 => Op::HostClose { relid: r.u8() },
                12 => Op::AddChannel,
                13 => Op::RingPoke {
                    ring: r.u8(),
                    field: r.u8(),
                    value: r.u32(),
                },
                14 => Op::RingData {
                    ring: r.u8(),
                    at: r.u16(),
                    bytes: r.bytes(),
                },
                15 => Op::GuestWrite { len: r.u16() },
                16 => Op::HostRead { count: r.u8() },
                17 => Op::HostWrite { len: r.u16() },
                _ => Op::GuestRead,
            };
            ops.push(op);
        }
        Self { ops }
    }

    /// The bytes that decode to these operations.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for op in &self.ops {
            match op {
                Op::Contact {
                    version,
                    vp,
                    sint,
                    conn,
                } => out.extend([0, *version, *vp, *sint, *conn]),
                Op::RequestOffers => out.push(1),
                Op::Gpadl {
                    relid,
                    id,
                    pages,
                    base,
                    keep,
                } => out.extend([2, *relid, *id, *pages, *base, *keep]),
                Op::Open {
                    relid,
                    id,
                    vp,
                    split,
                } => out.extend([3, *relid, *id, *vp, *split]),
                Op::Close { relid } => out.extend([4, *relid]),
                Op::Teardown { relid, id } => out.extend([5, *relid, *id]),
                Op::Release { relid } => out.extend([6, *relid]),
                Op::Modify { relid, vp } => out.extend([7, *relid, *vp]),
                Op::Unload => out.push(8),
                Op::Raw { conn, bytes } => {
                    out.extend([9, *conn, bytes.len() as u8]);
                    out.extend_from_slice(bytes);
                }
                Op::Rescind { relid } => out.extend([10, *relid]),
                Op::HostClose { relid } => out.extend([11, *relid]),
                Op::AddChannel => out.push(12),
                Op::RingPoke { ring, field, value } => {
                    out.extend([13, *ring, *field]);
                    out.extend_from_slice(&value.to_le_bytes());
                }
                Op::RingData { ring, at, bytes } => {
                    out.extend([14, *ring]);
                    out.extend_from_slice(&at.to_le_bytes());
                    out.push(bytes.len() as u8);
                    out.extend_from_slice(bytes);
                }
                Op::GuestWrite { len } => {
                    out.push(15);
                    out.extend_from_slice(&len.to_le_bytes());
                }
                Op::HostRead { count } => out.extend([16, *count]),
                Op::HostWrite { len } => {
                    out.push(17);
                    out.extend_from_slice(&len.to_le_bytes());
                }
                Op::GuestRead => out.push(18),
            }
        }
        out
    }

    /// Runs the operations; `Err` describes the first broken invariant.
    pub fn run(&self) -> Result<(), String> {
        let mut c = Checker::new();
        for (i, op) in self.ops.iter().enumerate() {
            c.step(op).map_err(|e| format!("step {i} {op:?}: {e}"))?;
        }
        c.check_memory()
    }
}

/// The hooks: RAM is `RAM_PAGES` pages with one SynIC page; records opens and closes.
#[derive(Default)]
struct Hooks {
    open: BTreeSet<u32>,
    error: Option<String>,
}

fn page_ok(pfn: u64) -> bool {
    pfn < RAM_PAGES && pfn != SYNIC_PAGE
}

impl ChannelHooks for Hooks {
    fn check_pages(&self, pfns: &mut dyn Iterator<Item = u64>) -> Result<(), String> {
        for p in pfns {
            if !page_ok(p) {
                return Err(format!("page {p:#x} refused"));
            }
        }
        Ok(())
    }

    fn open(&mut self, open: &ChannelOpen) -> Result<(), String> {
        if !self.open.insert(open.relid) {
            self.error
                .get_or_insert(format!("channel {} opened twice", open.relid));
        }
        if let Some(p) = open
            .guest_to_host
            .iter()
            .chain(&open.host_to_guest)
            .find(|&&p| !page_ok(p))
        {
            self.error
                .get_or_insert(format!("ring on refused page {p:#x}"));
        }
        if open.guest_to_host.len() < 2 || open.host_to_guest.len() < 2 {
            self.error.get_or_insert("a ring without data".into());
        }
        Ok(())
    }

    fn close(&mut self, relid: u32, _why: &str) {
        if !self.open.remove(&relid) {
            self.error
                .get_or_insert(format!("channel {relid} closed while not open"));
        }
    }

    fn retarget(&mut self, relid: u32, _vp: VpIndex) {
        if !self.open.contains(&relid) {
            self.error
                .get_or_insert(format!("channel {relid} retargeted while not open"));
        }
    }
}

struct Checker {
    plane: ControlPlane,
    hooks: Hooks,
    mem: GuestMemoryMmap<()>,
    guest_in: GuestRing,
    guest_out: GuestRing,
    host_in: Option<IncomingRing>,
    host_out: Option<OutgoingRing>,
    /// No pokes so far: the rings carry what was written.
    clean: bool,
    to_host: VecDeque<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
    /// Every page outside the rings, as it must stay.
    outside: Vec<u8>,
    next_trans: u64,
}

fn conn(choice: u8) -> u32 {
    [1, 4, MSG5, 7][usize::from(choice % 4)]
}

fn relid(r: u8) -> u32 {
    u32::from(r % 8)
}

impl Checker {
    fn new() -> Self {
        let mut plane = ControlPlane::new(Version::WIN10_V5_3, vec![VpIndex(0), VpIndex(1)], MSG5);
        for i in 0..3u128 {
            let _ = plane.add_channel(ChannelSpec {
                interface: Guid::from_u128(i),
                instance: Guid::from_u128(i + 100),
                name: format!("c{i}"),
            });
        }
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (RAM_PAGES as usize) * PAGE_SIZE)])
                .expect("fuzz RAM");
        let pattern: Vec<u8> = (0..RAM_PAGES as usize * PAGE_SIZE)
            .map(|i| (i * 13 + 5) as u8)
            .collect();
        let _ = mem.write_slice(&pattern, GuestAddress(0));
        let guest_in = GuestRing::init(&mem, &IN_RING);
        let guest_out = GuestRing::init(&mem, &OUT_RING);
        let host_in = IncomingRing::open(&mem, RingPages::new(&IN_RING).expect("ring")).ok();
        let host_out = OutgoingRing::open(&mem, RingPages::new(&OUT_RING).expect("ring")).ok();
        let mut c = Self {
            plane,
            hooks: Hooks::default(),
            mem,
            guest_in,
            guest_out,
            host_in,
            host_out,
            clean: true,
            to_host: VecDeque::new(),
            to_guest: VecDeque::new(),
            outside: Vec::new(),
            next_trans: 0,
        };
        c.outside = c.outside_pages();
        c
    }

    fn outside_pages(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for p in 0..RAM_PAGES {
            if IN_RING.contains(&p) || OUT_RING.contains(&p) {
                continue;
            }
            let mut page = vec![0u8; PAGE_SIZE];
            let _ = self.mem.read_slice(&mut page, GuestAddress(p << 12));
            v.extend_from_slice(&page);
        }
        v
    }

    fn check_memory(&self) -> Result<(), String> {
        if self.outside_pages() != self.outside {
            return Err("the host changed memory outside the rings".into());
        }
        Ok(())
    }

    fn send(&mut self, conn: u32, payload: &[u8]) -> Vec<Reply> {
        let h = self
            .plane
            .handle(VpIndex(0), conn, payload, &mut self.hooks);
        h.replies
    }

    fn check_replies(&self, replies: &[Reply]) -> Result<(), String> {
        for r in replies {
            if r.payload.len() > MAX_MESSAGE_SIZE || r.payload.len() < 8 {
                return Err(format!("reply of {} bytes", r.payload.len()));
            }
            let t = u32::from_le_bytes([r.payload[0], r.payload[1], r.payload[2], r.payload[3]]);
            if ![1, 2, 4, 6, 10, 12, 15, 17, 24].contains(&t) {
                return Err(format!("reply of type {t}"));
            }
        }
        Ok(())
    }

    fn check_control(&self) -> Result<(), String> {
        if let Some(e) = &self.hooks.error {
            return Err(e.clone());
        }
        let open: BTreeSet<u32> = self
            .plane
            .relids()
            .into_iter()
            .filter(|&r| {
                matches!(
                    self.plane.channel_state(r),
                    Some(ChannelState::Open {
                        host_closed: false,
                        ..
                    })
                )
            })
            .collect();
        if open != self.hooks.open {
            return Err(format!(
                "plane has {open:?} open, the host {:?}",
                self.hooks.open
            ));
        }
        if self.plane.connection().is_none() && !open.is_empty() {
            return Err("channels open without a connection".into());
        }
        let (count, pages) = self.plane.gpadl_usage();
        if count > MAX_GPADLS || pages > MAX_GPADL_TOTAL_PAGES {
            return Err(format!("{count} GPADLs of {pages} pages"));
        }
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let mc = self
            .plane
            .connection()
            .map_or(1, |c| c.message_connection_id);
        let replies = match op {
            Op::Contact {
                version,
                vp,
                sint,
                conn: k,
            } => {
                const VERSIONS: [u32; 10] = [
                    0x50003,
                    0x50002,
                    0x50001,
                    0x50000,
                    0x40001,
                    0x40000,
                    0x30000,
                    0x20004,
                    0x10001,
                    0xFFFF_FFFF,
                ];
                let v = Version(VERSIONS[usize::from(*version) % VERSIONS.len()]);
                self.send(conn(*k), &m::contact(v, u32::from(*vp % 3), *sint % 18))
            }
            Op::RequestOffers => self.send(mc, &m::header(ChannelMessageType::REQUEST_OFFERS)),
            Op::Gpadl {
                relid: r,
                id,
                pages,
                base,
                keep,
            } => {
                let n = u64::from(*pages % 40) + 1;
                let pfns: Vec<u64> = (0..n).map(|i| u64::from(*base % 32) + i).collect();
                let mut all = Vec::new();
                for msg in m::gpadl(relid(*r), u32::from(*id % 16), &pfns)
                    .into_iter()
                    .take(usize::from(*keep % 4) + 1)
                {
                    all.extend(self.send(mc, &msg));
                }
                all
            }
            Op::Open {
                relid: r,
                id,
                vp,
                split,
            } => self.send(
                mc,
                &m::open(
                    relid(*r),
                    u32::from(*id % 16),
                    u32::from(*vp % 3),
                    u32::from(*split % 12),
                ),
            ),
            Op::Close { relid: r } => self.send(
                mc,
                &m::relid_message(ChannelMessageType::CLOSE_CHANNEL, relid(*r)),
            ),
            Op::Teardown { relid: r, id } => {
                self.send(mc, &m::teardown(relid(*r), u32::from(*id % 16)))
            }
            Op::Release { relid: r } => self.send(
                mc,
                &m::relid_message(ChannelMessageType::RELID_RELEASED, relid(*r)),
            ),
            Op::Modify { relid: r, vp } => self.send(mc, &m::modify(relid(*r), u32::from(*vp % 3))),
            Op::Unload => self.send(mc, &m::header(ChannelMessageType::UNLOAD)),
            Op::Raw { conn: k, bytes } => self.send(conn(*k), bytes),
            Op::Rescind { relid: r } => self
                .plane
                .rescind(relid(*r), &mut self.hooks)
                .unwrap_or_default(),
            Op::HostClose { relid: r } => {
                self.plane.host_close(relid(*r), "fuzz", &mut self.hooks);
                Vec::new()
            }
            Op::AddChannel => self
                .plane
                .add_channel(ChannelSpec {
                    interface: Guid::from_u128(7),
                    instance: Guid::from_u128(8),
                    name: "added".into(),
                })
                .map(|(_, r)| r)
                .unwrap_or_default(),
            ring_op => return self.ring(ring_op),
        };
        self.check_replies(&replies)?;
        self.check_control()
    }

    fn ring(&mut self, op: &Op) -> Result<(), String> {
        let mem = &self.mem;
        match op {
            Op::RingPoke { ring, field, value } => {
                let header = if ring % 2 == 0 {
                    IN_RING[0]
                } else {
                    OUT_RING[0]
                };
                let off = u64::from(*field % 17) * 4;
                let _ = mem.write_obj(*value, GuestAddress((header << 12) + off));
                self.clean = false;
            }
            Op::RingData { ring, at, bytes } => {
                let pages = if ring % 2 == 0 { &IN_RING } else { &OUT_RING };
                let at = usize::from(*at) % (2 * PAGE_SIZE);
                let page = pages[1 + at / PAGE_SIZE];
                let off = at % PAGE_SIZE;
                let n = bytes.len().min(PAGE_SIZE - off);
                let _ = mem.write_slice(&bytes[..n], GuestAddress((page << 12) + off as u64));
                self.clean = false;
            }
            Op::GuestWrite { len } => {
                let len = usize::from(*len % 3000);
                self.next_trans += 1;
                let p: Vec<u8> = (0..len)
                    .map(|i| (i as u8) ^ (self.next_trans as u8))
                    .collect();
                if self.guest_in.write(mem, 6, self.next_trans, &p).is_ok() && self.clean {
                    self.to_host.push_back(p);
                }
            }
            Op::HostRead { count } => {
                let Some(ring) = self.host_in.as_mut() else {
                    self.host_in =
                        IncomingRing::open(mem, RingPages::new(&IN_RING).expect("ring")).ok();
                    return self.check_memory();
                };
                for _ in 0..(count % 8) {
                    match ring.next(mem) {
                        Ok(Some(p)) => {
                            if self.clean {
                                let want = self.to_host.pop_front().ok_or("an extra packet")?;
                                if p.payload.get(..want.len()) != Some(&want[..]) {
                                    return Err("a packet changed on its way to the host".into());
                                }
                            }
                        }
                        Ok(None) => {
                            if self.clean && !self.to_host.is_empty() {
                                return Err("a packet the guest wrote is missing".into());
                            }
                            break;
                        }
                        Err(e) if self.clean => return Err(format!("clean ring failed: {e}")),
                        Err(_) => {
                            self.host_in = None;
                            break;
                        }
                    }
                }
                if let Some(ring) = self.host_in.as_mut() {
                    if let Err(e) = ring.commit(mem) {
                        if self.clean {
                            return Err(format!("clean commit failed: {e}"));
                        }
                        self.host_in = None;
                    }
                }
            }
            Op::HostWrite { len } => {
                let Some(ring) = self.host_out.as_mut() else {
                    self.host_out =
                        OutgoingRing::open(mem, RingPages::new(&OUT_RING).expect("ring")).ok();
                    return self.check_memory();
                };
                let len = usize::from(*len % 9000);
                let p: Vec<u8> = (0..len).map(|i| (i * 3) as u8).collect();
                match ring.write(mem, 6, 0, 1, &p) {
                    Ok(Written::Sent { .. }) if self.clean => self.to_guest.push_back(p),
                    Ok(_) => {}
                    Err(crate::ring::RingError::TooLarge { .. }) => {}
                    Err(e) if self.clean => return Err(format!("clean write failed: {e}")),
                    Err(_) => self.host_out = None,
                }
            }
            Op::GuestRead => {
                if let Some(p) = self.guest_out.read(mem) {
                    self.guest_out.close(mem);
                    if self.clean {
                        let want = self.to_guest.pop_front().ok_or("an extra packet")?;
                        if p.payload.get(..want.len()) != Some(&want[..]) {
                            return Err("a packet changed on its way to the guest".into());
                        }
                    }
                } else if self.clean && !self.to_guest.is_empty() {
                    return Err("a packet the host wrote is missing".into());
                }
            }
            _ => {}
        }
        self.check_memory()
    }
}

/// Hand-built cases for `fuzz/seeds/vmbus`: (name, operations).
pub fn seeds() -> Vec<(&'static str, Case)> {
    let bring_up = vec![
        Op::Contact {
            version: 0,
            vp: 0,
            sint: 2,
            conn: 1,
        },
        Op::RequestOffers,
        Op::Gpadl {
            relid: 1,
            id: 3,
            pages: 7,
            base: 14,
            keep: 3,
        },
        Op::Open {
            relid: 1,
            id: 3,
            vp: 1,
            split: 4,
        },
        Op::Modify { relid: 1, vp: 0 },
        Op::GuestWrite { len: 100 },
        Op::HostRead { count: 2 },
        Op::HostWrite { len: 2000 },
        Op::GuestRead,
        Op::Close { relid: 1 },
        Op::Teardown { relid: 1, id: 3 },
        Op::Rescind { relid: 2 },
        Op::Release { relid: 2 },
        Op::Unload,
        Op::Release { relid: 1 },
    ];
    let hostile = vec![
        Op::Contact {
            version: 0,
            vp: 0,
            sint: 2,
            conn: 1,
        },
        Op::RequestOffers,
        Op::Gpadl {
            relid: 1,
            id: 4,
            pages: 39,
            base: 10,
            keep: 0,
        },
        Op::Raw {
            conn: 2,
            bytes: vec![9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4],
        },
        Op::RingPoke {
            ring: 0,
            field: 0,
            value: 12,
        },
        Op::HostRead { count: 3 },
        Op::RingPoke {
            ring: 1,
            field: 1,
            value: 0x7FFF_FFF8,
        },
        Op::HostWrite { len: 50 },
        Op::RingData {
            ring: 0,
            at: 0,
            bytes: vec![6, 0, 2, 0, 0xFF, 0xFF, 0, 0],
        },
        Op::HostRead { count: 1 },
        Op::HostClose { relid: 1 },
        Op::Unload,
    ];
    let wrap = (0..24)
        .flat_map(|i| {
            [
                Op::GuestWrite { len: 1500 + i },
                Op::HostRead { count: 1 },
                Op::HostWrite { len: 2500 + i },
                Op::GuestRead,
            ]
        })
        .collect();
    vec![
        ("bring-up", Case { ops: bring_up }),
        ("hostile", Case { ops: hostile }),
        ("wrap", Case { ops: wrap }),
    ]
}
