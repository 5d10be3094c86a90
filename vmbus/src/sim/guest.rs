//! A simulated Linux guest: a SynIC partition over mmap'd memory with the guest's SynIC set up
//! as Linux sets it up, posting channel messages through the hypercall connections, reading
//! the host's messages from its message page (type None, then EOM when MessagePending), and
//! taking channel signals from its event-flags page. It opens the host's channels as
//! `hv_vmbus` does and answers the integration services as `hv_utils` and `hv_kvp_daemon` do.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use synic::hypercall::{
    validate_post_message, validate_signal_event, Connections, HvStatus, Hypercall,
    PostMessageInput,
};
use synic::testing::RecordingRaise;
use synic::{Mode, Partition, PartitionConfig, SystemReferenceClock, Vp, VpIndex};
use synic_msr::{index, Origin, Profile};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::messages as m;
use super::ring::GuestRing;
use crate::ic::{
    IcKind, IcMsgHeader, IcVersion, KvpValue, NegotiateHeader, HV_S_CONT, ICMSGHDRFLAG_RESPONSE,
    ICMSGHDRFLAG_TRANSACTION, ICMSGTYPE_HEARTBEAT, ICMSGTYPE_KVPEXCHANGE, ICMSGTYPE_NEGOTIATE,
    ICMSGTYPE_SHUTDOWN, ICMSGTYPE_TIMESYNC, ICMSG_HDR,
};
use crate::protocol::{
    ChannelMessageType, GpadlCreated, OfferChannel, OpenResult, Version, VersionResponse,
    HV_MESSAGE_VMBUS, VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_CONNECTION_ID_4,
};
use crate::ring::PACKET_TYPE_DATA_INBAND;

/// Guest memory of the simulated guest.
pub type SimMemory = Arc<GuestMemoryMmap<()>>;

/// RAM size.
pub const RAM: usize = 32 << 20;
/// VP `n`'s message page.
pub const fn simp(vp: u32) -> u64 {
    0x10_000 + vp as u64 * 0x2000
}
/// VP `n`'s event-flags page.
pub const fn siefp(vp: u32) -> u64 {
    0x11_000 + vp as u64 * 0x2000
}
/// The SINT the guest takes VMBus messages and channel events on.
pub const SINT: u32 = 2;
/// First page frame the guest allocates rings from.
const FIRST_RING_PFN: u64 = 0x100;

/// Linux's framework versions (`fw_versions`), newest first.
const FW: [(u16, u16); 2] = [(3, 0), (1, 0)];

/// The service versions Linux 6.1 lists, newest first.
fn linux_versions(kind: IcKind) -> &'static [(u16, u16)] {
    match kind {
        IcKind::Heartbeat => &[(3, 0), (1, 0)],
        IcKind::Shutdown => &[(3, 2), (3, 1), (3, 0), (1, 0)],
        IcKind::TimeSync => &[(4, 0), (3, 0), (1, 0)],
        IcKind::Kvp => &[(4, 0), (3, 0), (1, 0)],
    }
}

/// An open channel, guest side.
#[derive(Debug)]
pub struct SimChannel {
    /// The service, if it is one.
    pub kind: Option<IcKind>,
    /// The connection id it signals the host on.
    pub connection_id: u32,
    /// Its ring GPADL.
    pub gpadl: u32,
    /// Guest -> host.
    pub out: GuestRing,
    /// Host -> guest.
    pub inb: GuestRing,
    /// Packets answered.
    pub answered: u64,
    /// Signals sent to the host.
    pub signals: u64,
}

/// What the guest's services saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimServices {
    /// Negotiations answered with a match, per service.
    pub negotiated: BTreeMap<String, (IcVersion, IcVersion)>,
    /// Heartbeats answered.
    pub heartbeats: u64,
    /// Shutdown requests accepted.
    pub shutdowns: u64,
    /// Time samples taken: (host time, reference time, flags).
    pub time_samples: Vec<(u64, u64, u8)>,
    /// KVP requests answered.
    pub kvp_requests: u64,
}

/// The simulated guest.
pub struct SimGuest {
    /// Guest RAM.
    pub mem: SimMemory,
    /// The partition (the host's view of the guest's SynIC).
    pub partition: Arc<Partition<SimMemory>>,
    /// The hypercall connections (what HvPostMessage / HvSignalEvent reach).
    pub connections: Arc<Connections>,
    /// Every SINT raise.
    pub raise: Arc<RecordingRaise>,
    vps: Vec<Vp<SimMemory>>,
    next_pfn: u64,
    next_gpadl: u32,
    /// Where later messages go.
    pub msg_conn: u32,
    /// The negotiated version.
    pub version: Option<Version>,
    /// Offers received, by relid.
    pub offers: BTreeMap<u32, OfferChannel>,
    /// Open channels, by relid.
    pub channels: BTreeMap<u32, SimChannel>,
    inbox: VecDeque<Vec<u8>>,
    /// The guest's host name (the KVP intrinsic item FullyQualifiedDomainName).
    pub hostname: String,
    /// The KVP pools the daemon keeps: (pool, key) -> value.
    pub kvp: BTreeMap<(u8, String), String>,
    /// What the services saw.
    pub services: SimServices,
    /// Channels the host rescinded (relids), released by the guest.
    pub rescinded: Vec<u32>,
    /// Kernel mode's path for HvSignalEvent: when it takes the signal (returns true) the
    /// hypercall never reaches the connections (KVM signalling an eventfd itself).
    pub signal_hook: Option<Box<dyn Fn(u32) -> bool + Send>>,
}

impl std::fmt::Debug for SimGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGuest")
            .field("version", &self.version)
            .field("channels", &self.channels.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SimGuest {
    /// A guest with `vps` VPs whose SynICs are enabled with message and event-flags pages and
    /// SINT2 unmasked (vector 0xF3), as Linux sets them up.
    pub fn new(vps: u32) -> Self {
        let mem: SimMemory =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM"));
        let raise = Arc::new(RecordingRaise::default());
        let config = PartitionConfig::new(Mode::Userspace, Profile::Tlfs, vps);
        let (partition, mut vp_list) = Partition::new(
            config,
            mem.clone(),
            raise.clone(),
            Arc::new(SystemReferenceClock::new()),
        )
        .expect("partition");
        for (n, vp) in (0u32..).zip(&mut vp_list) {
            for (msr, value) in [
                (index::SINT0 + SINT, 0xF3),
                (index::SIMP, simp(n) | 1),
                (index::SIEFP, siefp(n) | 1),
                (index::SCONTROL, 1),
            ] {
                vp.wrmsr(msr, value, Origin::Guest).expect("SynIC setup");
            }
        }
        Self {
            mem,
            partition,
            connections: Arc::new(Connections::new()),
            raise,
            vps: vp_list,
            next_pfn: FIRST_RING_PFN,
            next_gpadl: 0xE1E10,
            msg_conn: VMBUS_MESSAGE_CONNECTION_ID,
            version: None,
            offers: BTreeMap::new(),
            channels: BTreeMap::new(),
            inbox: VecDeque::new(),
            hostname: "sim-guest".into(),
            kvp: BTreeMap::new(),
            services: SimServices::default(),
            rescinded: Vec::new(),
            signal_hook: None,
        }
    }

    /// HvPostMessage of a VMBus message from VP 0.
    pub fn post(&self, connection_id: u32, payload: &[u8]) -> HvStatus {
        let mut input = PostMessageInput::new_zeroed();
        input.connection_id = connection_id;
        input.message_type = HV_MESSAGE_VMBUS;
        input.payload_size = payload.len() as u32;
        input.payload[..payload.len()].copy_from_slice(payload);
        match validate_post_message(&input) {
            Ok(msg) => self
                .connections
                .dispatch(VpIndex(0), &Hypercall::PostMessage(msg)),
            Err(s) => s,
        }
    }

    /// Posts to the connection for channel messages, retrying while the host is busy.
    pub fn send(&self, payload: &[u8]) -> HvStatus {
        loop {
            match self.post(self.msg_conn, payload) {
                HvStatus::InsufficientBuffers => std::thread::sleep(Duration::from_micros(100)),
                s => return s,
            }
        }
    }

    /// HvSignalEvent (flag 0) from VP 0.
    pub fn signal(&self, connection_id: u32) -> HvStatus {
        if self.signal_hook.as_ref().is_some_and(|h| h(connection_id)) {
            return HvStatus::Success;
        }
        match validate_signal_event(u64::from(connection_id)) {
            Ok(e) => self
                .connections
                .dispatch(VpIndex(0), &Hypercall::SignalEvent(e)),
            Err(s) => s,
        }
    }

    /// Takes the message in VP 0's VMBus slot, if any, freeing the slot as Linux does.
    fn take_slot(&mut self) -> Option<Vec<u8>> {
        let slot = simp(0) + u64::from(SINT) * 256;
        let t: u32 = self.mem.load(GuestAddress(slot), Ordering::Acquire).ok()?;
        if t == 0 {
            return None;
        }
        let mut head = [0u8; 16];
        self.mem.read_slice(&mut head, GuestAddress(slot)).ok()?;
        let len = usize::from(head[4]).min(240);
        let mut payload = vec![0u8; len];
        self.mem
            .read_slice(&mut payload, GuestAddress(slot + 16))
            .ok()?;
        self.mem
            .store(0u32, GuestAddress(slot), Ordering::SeqCst)
            .ok()?;
        let flags: u8 = self
            .mem
            .load(GuestAddress(slot + 5), Ordering::SeqCst)
            .ok()?;
        if flags & 1 != 0 {
            let _ = self.vps[0].wrmsr(index::EOM, 0, Origin::Guest);
        }
        Some(payload)
    }

    /// The next message from the host, waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if let Some(m) = self.inbox.pop_front() {
            return Some(m);
        }
        let end = Instant::now() + timeout;
        loop {
            if let Some(m) = self.take_slot() {
                return Some(m);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Waits for a message of type `t`, keeping the others for later.
    pub fn expect(&mut self, t: ChannelMessageType) -> Vec<u8> {
        let end = Instant::now() + Duration::from_secs(10);
        let mut other = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let Some(msg) = self.recv(left) else {
                panic!("no {t} from the host (kept: {other:?})");
            };
            if msg.len() >= 4 && u32::from_le_bytes(msg[..4].try_into().unwrap()) == t.0 {
                self.inbox.extend(other);
                return msg;
            }
            other.push(msg);
        }
    }

    /// Connects at `version` and collects the offers.
    pub fn connect(&mut self, version: Version) -> bool {
        let conn = if version.names_sint_and_connection() {
            VMBUS_MESSAGE_CONNECTION_ID_4
        } else {
            VMBUS_MESSAGE_CONNECTION_ID
        };
        assert_eq!(
            self.post(conn, &m::contact(version, 0, SINT as u8)),
            HvStatus::Success
        );
        let r = self.expect(ChannelMessageType::VERSION_RESPONSE);
        let resp = VersionResponse::read_from_prefix(&r)
            .expect("VERSION_RESPONSE")
            .0;
        if resp.version_supported == 0 {
            return false;
        }
        self.version = Some(version);
        self.msg_conn = if version.names_sint_and_connection() {
            resp.msg_conn_id
        } else {
            VMBUS_MESSAGE_CONNECTION_ID
        };
        assert_eq!(
            self.send(&m::header(ChannelMessageType::REQUEST_OFFERS)),
            HvStatus::Success
        );
        loop {
            let msg = self.recv(Duration::from_secs(10)).expect("offers");
            match u32::from_le_bytes(msg[..4].try_into().unwrap()) {
                1 => {
                    let o = OfferChannel::read_from_prefix(&msg).expect("offer").0;
                    self.offers.insert(o.child_relid, o);
                }
                4 => return true,
                _ => self.inbox.push_back(msg),
            }
        }
    }

    /// The relid the host offered `kind` under.
    pub fn relid_of(&self, kind: IcKind) -> Option<u32> {
        self.offers
            .values()
            .find(|o| { o.offer.if_type } == kind.interface())
            .map(|o| o.child_relid)
    }

    /// `pages` fresh page frames, every other one (so a ring's pages are not contiguous).
    pub fn alloc(&mut self, pages: usize) -> Vec<u64> {
        let v = (0..pages as u64).map(|i| self.next_pfn + 2 * i).collect();
        self.next_pfn += 2 * pages as u64;
        v
    }

    /// Opens channel `relid` as `vmbus_open` does: two rings of `ring_pages` pages each
    /// (header included) in one GPADL. Returns OPENCHANNEL_RESULT's status.
    pub fn open(&mut self, relid: u32, ring_pages: usize) -> u32 {
        let pfns = self.alloc(2 * ring_pages);
        let out = GuestRing::init(&*self.mem, &pfns[..ring_pages]);
        let inb = GuestRing::init(&*self.mem, &pfns[ring_pages..]);
        self.next_gpadl += 1;
        let gpadl = self.next_gpadl;
        for msg in m::gpadl(relid, gpadl, &pfns) {
            assert_eq!(self.send(&msg), HvStatus::Success);
        }
        let c = self.expect(ChannelMessageType::GPADL_CREATED);
        let c = GpadlCreated::read_from_prefix(&c).expect("GPADL_CREATED").0;
        if c.creation_status != 0 {
            return c.creation_status;
        }
        assert_eq!(
            self.send(&m::open(relid, gpadl, 0, ring_pages as u32)),
            HvStatus::Success
        );
        let r = self.expect(ChannelMessageType::OPEN_CHANNEL_RESULT);
        let r = OpenResult::read_from_prefix(&r)
            .expect("OPENCHANNEL_RESULT")
            .0;
        if r.status == 0 {
            let offer = &self.offers[&relid];
            self.channels.insert(
                relid,
                SimChannel {
                    kind: IcKind::from_interface(offer.offer.if_type),
                    connection_id: offer.connection_id,
                    gpadl,
                    out,
                    inb,
                    answered: 0,
                    signals: 0,
                },
            );
        }
        r.status
    }

    /// Opens every offered service with Linux's ring size (4 pages each way).
    pub fn open_all(&mut self) {
        let relids: Vec<u32> = self.offers.keys().copied().collect();
        for relid in relids {
            assert_eq!(self.open(relid, 4), 0, "channel {relid}");
        }
    }

    /// `vmbus_close`: CLOSECHANNEL, then GPADL_TEARDOWN (waiting for GPADL_TORNDOWN).
    pub fn close(&mut self, relid: u32) {
        let Some(c) = self.channels.remove(&relid) else {
            return;
        };
        self.send(&m::relid_message(ChannelMessageType::CLOSE_CHANNEL, relid));
        self.send(&m::teardown(relid, c.gpadl));
        self.expect(ChannelMessageType::GPADL_TORNDOWN);
    }

    /// UNLOAD, waiting for UNLOAD_RESPONSE.
    pub fn unload(&mut self) {
        self.send(&m::header(ChannelMessageType::UNLOAD));
        self.expect(ChannelMessageType::UNLOAD_RESPONSE);
        self.channels.clear();
        self.offers.clear();
        self.version = None;
    }

    /// Test-and-clears every event flag of SINT2 on every VP; returns the relids set.
    pub fn take_flags(&self) -> Vec<u32> {
        let mut set = Vec::new();
        for vp in 0..self.vps.len() as u32 {
            let base = siefp(vp) + u64::from(SINT) * 256;
            for word in 0..32u64 {
                let Ok(slice) = self.mem.get_slice(GuestAddress(base + word * 8), 8) else {
                    continue;
                };
                let Ok(a) = slice.get_atomic_ref::<AtomicU64>(0) else {
                    continue;
                };
                let bits = a.swap(0, Ordering::SeqCst);
                for b in 0..64 {
                    if bits & (1 << b) != 0 {
                        set.push((word * 64 + b) as u32);
                    }
                }
            }
        }
        set
    }

    /// One pass: messages (a rescind closes and releases the channel), then every channel's
    /// inbound ring. Returns the packets answered.
    pub fn service(&mut self) -> u64 {
        while let Some(msg) = self.take_slot() {
            if msg.len() >= 12 && msg[..4] == 2u32.to_le_bytes() {
                let relid = u32::from_le_bytes(msg[8..12].try_into().unwrap());
                self.channels.remove(&relid);
                self.send(&m::relid_message(ChannelMessageType::CLOSE_CHANNEL, relid));
                self.send(&m::relid_message(ChannelMessageType::RELID_RELEASED, relid));
                self.rescinded.push(relid);
            } else {
                self.inbox.push_back(msg);
            }
        }
        self.take_flags();
        let mut answered = 0;
        let relids: Vec<u32> = self.channels.keys().copied().collect();
        for relid in relids {
            answered += self.serve_channel(relid);
        }
        answered
    }

    fn serve_channel(&mut self, relid: u32) -> u64 {
        let mem = self.mem.clone();
        let mut answered = 0;
        loop {
            let Some(c) = self.channels.get_mut(&relid) else {
                return answered;
            };
            let Some(p) = c.inb.read(&*mem) else {
                return answered;
            };
            let wake_host = c.inb.close(&*mem);
            let kind = c.kind;
            let (trans_id, mut buf) = (p.descriptor.trans_id, p.payload);
            if let Some(kind) = kind {
                self.answer(kind, &mut buf);
            }
            let c = self.channels.get_mut(&relid).expect("still open");
            let signal = c
                .out
                .write(&*mem, PACKET_TYPE_DATA_INBAND, trans_id, &buf)
                .unwrap_or(false);
            c.answered += 1;
            answered += 1;
            let conn = c.connection_id;
            if signal || wake_host {
                c.signals += 1;
                self.signal(conn);
            }
        }
    }

    /// Answers an IC request in place, as `hv_utils` does.
    fn answer(&mut self, kind: IcKind, buf: &mut [u8]) {
        if buf.len() < ICMSG_HDR {
            return;
        }
        let Ok((mut h, _)) = IcMsgHeader::read_from_prefix(&buf[8..]) else {
            return;
        };
        let data = &mut buf[ICMSG_HDR..];
        match h.icmsgtype {
            ICMSGTYPE_NEGOTIATE => {
                if let Some(v) = linux_negotiate(kind, data) {
                    self.services.negotiated.insert(kind.name().into(), v);
                }
                h.icmsgsize = 0x10;
            }
            ICMSGTYPE_HEARTBEAT if data.len() >= 8 => {
                let seq = u64::from_le_bytes(data[..8].try_into().unwrap());
                data[..8].copy_from_slice(&seq.wrapping_add(1).to_le_bytes());
                self.services.heartbeats += 1;
            }
            ICMSGTYPE_SHUTDOWN if data.len() >= 2060 => {
                self.services.shutdowns += 1;
                h.status = 0;
            }
            ICMSGTYPE_TIMESYNC if data.len() >= 17 => {
                let host = u64::from_le_bytes(data[..8].try_into().unwrap());
                let reference = u64::from_le_bytes(data[8..16].try_into().unwrap());
                self.services.time_samples.push((host, reference, data[16]));
            }
            ICMSGTYPE_KVPEXCHANGE if data.len() >= 4 + 4 + size_of::<KvpValue>() => {
                self.services.kvp_requests += 1;
                h.status = self.kvp(data);
            }
            _ => h.status = crate::ic::HV_E_FAIL,
        }
        h.icflags = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE;
        buf[8..ICMSG_HDR].copy_from_slice(h.as_bytes());
    }

    /// What `hv_kvp_daemon` answers (strings are UTF-16 on the wire).
    fn kvp(&mut self, data: &mut [u8]) -> u32 {
        let (op, pool) = (data[0], data[1]);
        let body = &mut data[4..];
        let item_at = if op == 3 { 4 } else { 0 };
        let Ok((mut item, _)) = KvpValue::read_from_prefix(&body[item_at..]) else {
            return crate::ic::HV_E_FAIL;
        };
        let key = crate::ic::utf16_from(&item.key, item.key_size);
        let value = crate::ic::utf16_from(&item.value, item.value_size);
        let found = match op {
            // Enumerate: the intrinsic pool's item 0 is the host name.
            3 => {
                let index = u32::from_le_bytes(body[..4].try_into().unwrap());
                match (pool, index) {
                    (2, 0) => Some((
                        "FullyQualifiedDomainName".to_string(),
                        self.hostname.clone(),
                    )),
                    (2, 1) => Some(("OSName".to_string(), "Simulated Linux".to_string())),
                    _ => None,
                }
            }
            0 => self.kvp.get(&(pool, key.clone())).map(|v| (key, v.clone())),
            1 => {
                self.kvp.insert((pool, key.clone()), value.clone());
                Some((key, value))
            }
            2 => self.kvp.remove(&(pool, key.clone())).map(|v| (key, v)),
            _ => None,
        };
        let Some((k, v)) = found else {
            return HV_S_CONT;
        };
        item.key_size = crate::ic::utf16_into(&k, &mut item.key) as u32;
        item.value_size = crate::ic::utf16_into(&v, &mut item.value) as u32;
        body[item_at..item_at + size_of::<KvpValue>()].copy_from_slice(item.as_bytes());
        0
    }

    /// Runs [`service`](Self::service) on a thread until stopped.
    pub fn spawn(self) -> SimGuestThread {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut g = self;
            while !s.load(Ordering::Relaxed) {
                if g.service() == 0 {
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
            g
        });
        SimGuestThread { stop, thread }
    }
}

/// A [`SimGuest`] serving on its own thread.
#[derive(Debug)]
pub struct SimGuestThread {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<SimGuest>,
}

impl SimGuestThread {
    /// Stops the thread and hands the guest back.
    pub fn join(self) -> SimGuest {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("simulated guest thread")
    }
}

/// Linux's `vmbus_prep_negotiate_resp`: picks the first of the guest's versions the host
/// lists, in place; returns the pair chosen.
pub fn linux_negotiate(kind: IcKind, data: &mut [u8]) -> Option<(IcVersion, IcVersion)> {
    let (head, _) = NegotiateHeader::read_from_prefix(data).ok()?;
    let (fw, sv) = (
        usize::from(head.icframe_vercnt),
        usize::from(head.icmsg_vercnt),
    );
    let versions = |i: usize| -> Option<(u16, u16)> {
        let at = 8 + 4 * i;
        let b = data.get(at..at + 4)?;
        Some((
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        ))
    };
    let valid = fw <= 100 && sv <= 100 && 8 + 4 * (fw + sv) <= data.len() && data.len() >= 16;
    let pick = |ours: &[(u16, u16)], range: std::ops::Range<usize>| {
        ours.iter()
            .find(|v| range.clone().any(|i| versions(i) == Some(**v)))
            .copied()
    };
    let chosen = if valid {
        pick(&FW, 0..fw).zip(pick(linux_versions(kind), fw..fw + sv))
    } else {
        None
    };
    if data.len() < 16 {
        return None;
    }
    let count: u16 = u16::from(chosen.is_some());
    data[0..2].copy_from_slice(&count.to_le_bytes());
    data[2..4].copy_from_slice(&count.to_le_bytes());
    let ((fa, fb), (sa, sb)) = chosen.unwrap_or(((fw as u16, 0), (sv as u16, 0)));
    if data.len() >= 16 {
        for (at, v) in [(8, fa), (10, fb), (12, sa), (14, sb)] {
            data[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    chosen.map(|((fa, fb), (sa, sb))| (IcVersion::new(fa, fb), IcVersion::new(sa, sb)))
}
