//! Open channels, on the device thread: their rings, their signals both ways, and the
//! integration-service transactions running on them. Implements [`ChannelHooks`] for the
//! control plane.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use synic::hypercall::{Connections, EventConnection, HvStatus};
use synic::{Partition, SintIndex, VpIndex};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::api::{Answer, HeartbeatReply, Op, Request, RequestError, TimeSample};
use super::{HvEventFds, ReferenceTime};
use crate::control::{ChannelHooks, ChannelOpen};
use crate::ic::{self, IcKind, Negotiated, WINDOWS_EPOCH_OFFSET};
use crate::log::Direction;
use crate::ring::{
    IncomingRing, OutgoingRing, Packet, RingError, RingPages, Written,
    PACKET_FLAG_COMPLETION_REQUESTED, PACKET_TYPE_DATA_INBAND,
};

/// Epoll token of channel `relid` (the small tokens are the thread's own fds).
pub(crate) const CHANNEL_TOKEN_BASE: u64 = 1 << 32;
/// Packets a channel may hand the host per wake-up before it yields to the others (a guest
/// that keeps writing cannot hold the device thread).
pub(crate) const PACKETS_PER_TURN: usize = 256;

/// The guest's HvSignalEvent on a channel's connection id: flag 0 wakes the device thread.
/// Kernel mode hands the same eventfd to the hypervisor ([`HvEventFds`]), which then signals
/// it without an exit; this connection still answers any other flag, as the hypervisor would
/// not.
#[derive(Debug)]
struct ChannelSignal {
    fd: Arc<EventFd>,
}

impl EventConnection for ChannelSignal {
    fn signal(&self, _caller: VpIndex, flag_number: u16) -> HvStatus {
        if flag_number != 0 {
            return HvStatus::InvalidPortId;
        }
        // A counter at its maximum still wakes the thread: the signal is not lost.
        let _ = self.fd.write(1);
        HvStatus::Success
    }
}

/// What is in flight on an IC channel.
#[derive(Debug)]
enum Pending {
    Negotiate,
    Request {
        request: Request,
        seq: u64,
        host_time: u64,
        reference_time: u64,
    },
}

#[derive(Debug)]
struct Outstanding {
    trans_id: u64,
    pending: Pending,
    /// When the packet went into the ring (None while it waits for ring space).
    sent_at: Option<Instant>,
}

/// Counters of one channel across its opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Times the guest opened it.
    pub opens: u64,
    /// Packets the host wrote.
    pub packets_to_guest: u64,
    /// Packets the host read.
    pub packets_from_guest: u64,
    /// Event flags the host set for it (0 -> 1 transitions that raised the SINT).
    pub signals_to_guest: u64,
    /// Wake-ups from the guest's HvSignalEvent.
    pub signals_from_guest: u64,
    /// Packets the host read that answered nothing in flight.
    pub unexpected_packets: u64,
    /// Integration-service transactions completed.
    pub transactions: u64,
    /// The negotiated versions, for an integration service.
    pub negotiated: Option<Negotiated>,
    /// Why it was last closed.
    pub last_close: Option<String>,
    /// The VP its signals went to last (OPENCHANNEL's target, then MODIFYCHANNEL's).
    pub target_vp: Option<u32>,
}

pub(crate) struct OpenChannel {
    kind: Option<IcKind>,
    vp: VpIndex,
    sint: SintIndex,
    connection_id: u32,
    incoming: IncomingRing,
    outgoing: OutgoingRing,
    fd: Arc<EventFd>,
    negotiated: Option<Negotiated>,
    needs_negotiation: bool,
    outstanding: Option<Outstanding>,
    /// A packet that found the ring full: (trans_id, bytes).
    unsent: Option<(u64, Vec<u8>)>,
    /// Transaction ids given up at their deadline, whose late answers are dropped.
    abandoned: Vec<u64>,
    next_trans: u64,
    next_seq: u64,
}

/// The device thread's channel side.
pub(crate) struct Channels<M: GuestAddressSpace> {
    pub partition: Arc<Partition<M>>,
    connections: Arc<Connections>,
    eventfds: Option<Arc<dyn HvEventFds>>,
    reference_time: Option<ReferenceTime>,
    pub epoll: Epoll,
    open: BTreeMap<u32, OpenChannel>,
    pub stats: BTreeMap<u32, ChannelStats>,
    /// Log lines from the hooks and the rings, drained by the thread.
    pub notes: Vec<(Direction, String, bool)>,
    /// Channels whose rings failed, to close through the control plane.
    pub failed: Vec<(u32, String)>,
}

impl<M: GuestAddressSpace> Channels<M> {
    pub fn new(
        partition: Arc<Partition<M>>,
        connections: Arc<Connections>,
        eventfds: Option<Arc<dyn HvEventFds>>,
        reference_time: Option<ReferenceTime>,
        epoll: Epoll,
    ) -> Self {
        Self {
            partition,
            connections,
            eventfds,
            reference_time,
            epoll,
            open: BTreeMap::new(),
            stats: BTreeMap::new(),
            notes: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn note(&mut self, direction: Direction, text: String, error: bool) {
        self.notes.push((direction, text, error));
    }

    /// The open channel carrying `kind`, if any.
    pub fn relid_of(&self, kind: IcKind) -> Option<u32> {
        self.open
            .iter()
            .find(|(_, c)| c.kind == Some(kind))
            .map(|(&r, _)| r)
    }

    /// Whether `kind`'s channel is open and negotiated and free for the next request.
    pub fn ready_for(&self, kind: IcKind) -> Option<(u32, Negotiated, bool)> {
        let relid = self.relid_of(kind)?;
        let c = &self.open[&relid];
        let free = c.outstanding.is_none() && c.unsent.is_none();
        c.negotiated.map(|n| (relid, n, free))
    }

    /// Sets the channel's event flag on its VP (the SINT is raised on a 0 -> 1 change only).
    fn signal_guest(&mut self, relid: u32) {
        let Some(c) = self.open.get(&relid) else {
            return;
        };
        match self.partition.signal_event(c.vp, c.sint, relid) {
            Ok(synic::FlagOutcome::Set) => {
                self.stats.entry(relid).or_default().signals_to_guest += 1;
            }
            Ok(synic::FlagOutcome::AlreadySet) => {}
            Err(e) => self.note(
                Direction::HostToGuest,
                format!("channel {relid}: event flag not set: {e}"),
                true,
            ),
        }
    }

    /// Writes a packet to the guest, or keeps it for when the ring has room.
    fn send(&mut self, relid: u32, trans_id: u64, bytes: Vec<u8>) -> Result<bool, RingError> {
        let mem = self.partition.memory().memory();
        let Some(c) = self.open.get_mut(&relid) else {
            return Ok(false);
        };
        match c.outgoing.write(
            &*mem,
            PACKET_TYPE_DATA_INBAND,
            PACKET_FLAG_COMPLETION_REQUESTED,
            trans_id,
            &bytes,
        )? {
            Written::Sent { signal } => {
                self.stats.entry(relid).or_default().packets_to_guest += 1;
                if signal {
                    self.signal_guest(relid);
                }
                Ok(true)
            }
            Written::Full => {
                c.unsent = Some((trans_id, bytes));
                Ok(false)
            }
        }
    }

    /// Starts `request` on `relid` (free and negotiated: see [`ready_for`](Self::ready_for)).
    pub fn start(&mut self, relid: u32, request: Request) {
        let Some(c) = self.open.get_mut(&relid) else {
            request.answer(Err(RequestError::Closed("the channel is not open".into())));
            return;
        };
        let Some(v) = c.negotiated else {
            request.answer(Err(RequestError::Closed("not negotiated".into())));
            return;
        };
        c.next_trans += 1;
        let trans_id = c.next_trans;
        let t = trans_id as u8;
        let (mut seq, mut host_time, mut reference_time) = (0, 0, 0);
        let bytes = match &request.op {
            Op::Ready => {
                request.answer(Ok(Answer::Ready(v)));
                return;
            }
            // Handled by the thread before it queues requests.
            Op::Rescind => {
                request.answer(Ok(Answer::Done));
                return;
            }
            Op::Heartbeat => {
                c.next_seq += 1;
                seq = c.next_seq;
                ic::heartbeat_request(v, t, seq)
            }
            Op::Shutdown(reason) => ic::shutdown_request(v, t, reason),
            Op::TimeSample => {
                let since_unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO);
                host_time = WINDOWS_EPOCH_OFFSET + (since_unix.as_nanos() / 100) as u64;
                reference_time = match &self.reference_time {
                    Some(f) => f(),
                    None => self.partition.reference_time(),
                };
                ic::timesync_request(v, t, host_time, reference_time, ic::ICTIMESYNCFLAG_SAMPLE)
            }
            Op::Kvp {
                operation,
                pool,
                index,
                key,
                value,
            } => ic::kvp_request(v, t, *operation, *pool, *index, key, value),
        };
        let pending = Pending::Request {
            request,
            seq,
            host_time,
            reference_time,
        };
        self.transmit(relid, trans_id, pending, bytes);
    }

    /// Puts a transaction in flight and its packet in the ring.
    fn transmit(&mut self, relid: u32, trans_id: u64, pending: Pending, bytes: Vec<u8>) {
        if let Some(c) = self.open.get_mut(&relid) {
            c.outstanding = Some(Outstanding {
                trans_id,
                pending,
                sent_at: None,
            });
        }
        match self.send(relid, trans_id, bytes) {
            Ok(true) => {
                if let Some(o) = self
                    .open
                    .get_mut(&relid)
                    .and_then(|c| c.outstanding.as_mut())
                {
                    o.sent_at = Some(Instant::now());
                }
            }
            Ok(false) => {}
            Err(e) => self
                .failed
                .push((relid, format!("host-to-guest ring: {e}"))),
        }
    }

    /// Sends the NEGOTIATE of every channel just opened.
    pub fn negotiate_new(&mut self) {
        let fresh: Vec<(u32, IcKind)> = self
            .open
            .iter_mut()
            .filter(|(_, c)| c.needs_negotiation)
            .filter_map(|(&r, c)| {
                c.needs_negotiation = false;
                c.kind.map(|k| (r, k))
            })
            .collect();
        for (relid, kind) in fresh {
            let Some(c) = self.open.get_mut(&relid) else {
                continue;
            };
            c.next_trans += 1;
            let trans_id = c.next_trans;
            let bytes = ic::negotiate_request(kind, trans_id as u8);
            self.transmit(relid, trans_id, Pending::Negotiate, bytes);
        }
    }

    /// Gives up requests in flight past their deadline; returns the nearest deadline left.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        let mut nearest: Option<Instant> = None;
        let mut notes = Vec::new();
        for (&relid, c) in &mut self.open {
            let expired = matches!(&c.outstanding,
                Some(Outstanding { pending: Pending::Request { request, .. }, .. })
                    if request.deadline <= now);
            if expired {
                if let Some(Outstanding {
                    trans_id,
                    pending: Pending::Request { request, .. },
                    ..
                }) = c.outstanding.take()
                {
                    notes.push(format!(
                        "channel {relid}: {:?} request {trans_id} got no answer in time",
                        request.op
                    ));
                    request.answer(Err(RequestError::Timeout));
                    // At most a few: the guest answers in order, so older ones are moot.
                    c.abandoned.push(trans_id);
                    if c.abandoned.len() > 8 {
                        c.abandoned.remove(0);
                    }
                    if c.unsent.as_ref().is_some_and(|(t, _)| *t == trans_id) {
                        c.unsent = None;
                    }
                }
            } else if let Some(Outstanding {
                pending: Pending::Request { request, .. },
                ..
            }) = &c.outstanding
            {
                nearest = Some(nearest.map_or(request.deadline, |n| n.min(request.deadline)));
            }
        }
        for n in notes {
            self.note(Direction::Host, n, true);
        }
        nearest
    }

    /// Serves channel `relid` after its eventfd fired: reads the guest's packets, publishes
    /// the read index, retries a packet that waited for room. Returns whether it should be
    /// served again (it yielded after [`PACKETS_PER_TURN`]).
    pub fn service(&mut self, relid: u32) -> bool {
        let Some(c) = self.open.get(&relid) else {
            return false;
        };
        // Reading resets the counter; a signal arriving after this read fires epoll again.
        if c.fd.read().is_ok() {
            self.stats.entry(relid).or_default().signals_from_guest += 1;
        }
        match self.drain(relid) {
            Ok(more) => {
                self.retry_unsent(relid);
                more
            }
            Err(e) => {
                self.failed
                    .push((relid, format!("guest-to-host ring: {e}")));
                false
            }
        }
    }

    fn drain(&mut self, relid: u32) -> Result<bool, RingError> {
        let mem = self.partition.memory().memory();
        let mut budget = PACKETS_PER_TURN;
        loop {
            let mut packets = Vec::new();
            {
                let Some(c) = self.open.get_mut(&relid) else {
                    return Ok(false);
                };
                while budget > 0 {
                    match c.incoming.next(&*mem)? {
                        Some(p) => packets.push(p),
                        None => break,
                    }
                    budget -= 1;
                }
                if c.incoming.commit(&*mem)? {
                    // The guest waits for room in its outbound ring.
                    self.signal_guest(relid);
                }
            }
            let n = packets.len();
            for p in packets {
                self.stats.entry(relid).or_default().packets_from_guest += 1;
                self.on_packet(relid, p);
            }
            let Some(c) = self.open.get(&relid) else {
                return Ok(false);
            };
            if budget == 0 {
                return Ok(true);
            }
            // The guest signals only when its packet made the ring non-empty: after
            // publishing the read index, look again before sleeping.
            if n == 0 || !c.incoming.has_data(&*mem)? {
                return Ok(false);
            }
        }
    }

    fn retry_unsent(&mut self, relid: u32) {
        let Some((trans_id, bytes)) = self.open.get_mut(&relid).and_then(|c| c.unsent.take())
        else {
            return;
        };
        match self.send(relid, trans_id, bytes) {
            Ok(true) => {
                if let Some(o) = self
                    .open
                    .get_mut(&relid)
                    .and_then(|c| c.outstanding.as_mut())
                {
                    o.sent_at = Some(Instant::now());
                }
            }
            Ok(false) => {}
            Err(e) => self
                .failed
                .push((relid, format!("host-to-guest ring: {e}"))),
        }
    }

    fn on_packet(&mut self, relid: u32, p: Packet) {
        let now = Instant::now();
        let Some(c) = self.open.get_mut(&relid) else {
            return;
        };
        let Some(kind) = c.kind else {
            self.stats.entry(relid).or_default().unexpected_packets += 1;
            return;
        };
        let matches = c
            .outstanding
            .as_ref()
            .is_some_and(|o| o.trans_id == p.trans_id && o.sent_at.is_some());
        if !matches {
            let late = c.abandoned.contains(&p.trans_id);
            self.stats.entry(relid).or_default().unexpected_packets += 1;
            self.note(
                Direction::GuestToHost,
                format!(
                    "channel {relid} ({kind}): packet type {} for transaction {} {}",
                    p.packet_type,
                    p.trans_id,
                    if late {
                        "answered after its deadline: dropped"
                    } else {
                        "answers nothing in flight: dropped"
                    }
                ),
                !late,
            );
            return;
        }
        let Some(o) = c.outstanding.take() else {
            return;
        };
        let round_trip = o.sent_at.map_or(Duration::ZERO, |t| now - t);
        match o.pending {
            Pending::Negotiate => match ic::negotiate_response(kind, &p.payload) {
                Ok(n) => {
                    c.negotiated = Some(n);
                    self.stats.entry(relid).or_default().negotiated = Some(n);
                    self.note(
                        Direction::GuestToHost,
                        format!(
                            "channel {relid} ({kind}): negotiated framework {} service {}",
                            n.framework, n.service
                        ),
                        false,
                    );
                }
                Err(e) => {
                    self.note(
                        Direction::GuestToHost,
                        format!("channel {relid} ({kind}): negotiation failed: {e}"),
                        true,
                    );
                }
            },
            Pending::Request {
                request,
                seq,
                host_time,
                reference_time,
            } => {
                self.stats.entry(relid).or_default().transactions += 1;
                let v = c.negotiated;
                let answer = match &request.op {
                    Op::Heartbeat => ic::heartbeat_response(&p.payload, seq).map(|()| {
                        Answer::Heartbeat(HeartbeatReply {
                            sequence: seq,
                            round_trip,
                        })
                    }),
                    Op::Shutdown(reason) => ic::shutdown_response(&p.payload).map(|()| {
                        self.notes.push((
                            Direction::GuestToHost,
                            format!("channel {relid} (shutdown): the guest accepted \"{reason}\""),
                            false,
                        ));
                        Answer::Done
                    }),
                    Op::TimeSample => ic::timesync_response(&p.payload).map(|()| {
                        Answer::Time(TimeSample {
                            host_time,
                            reference_time,
                            service: v.map_or(ic::IcVersion::new(0, 0), |n| n.service),
                            round_trip,
                        })
                    }),
                    Op::Kvp { operation, .. } => {
                        ic::kvp_response(&p.payload, *operation).map(Answer::Kvp)
                    }
                    Op::Ready | Op::Rescind => Ok(Answer::Done),
                };
                if let Err(e) = &answer {
                    self.notes.push((
                        Direction::GuestToHost,
                        format!(
                            "channel {relid} ({kind}): {:?} answered badly: {e}",
                            request.op
                        ),
                        true,
                    ));
                }
                request.answer(answer.map_err(RequestError::Failed));
            }
        }
    }

    /// Closes every open channel (the thread is stopping).
    pub fn close_all(&mut self, why: &str) {
        let relids: Vec<u32> = self.open.keys().copied().collect();
        for r in relids {
            self.close(r, why);
        }
    }
}

impl<M: GuestAddressSpace> ChannelHooks for Channels<M> {
    fn check_pages(&self, pfns: &mut dyn Iterator<Item = u64>) -> Result<(), String> {
        let mem = self.partition.memory().memory();
        let mut synic_pages = Vec::new();
        for vp in self.partition.vp_indices() {
            if let Ok(view) = self.partition.synic_view(vp) {
                synic_pages.extend(view.simp.enabled_gpa().map(|g| (vp, "message page", g)));
                synic_pages.extend(
                    view.siefp
                        .enabled_gpa()
                        .map(|g| (vp, "event-flags page", g)),
                );
            }
        }
        for pfn in pfns {
            let gpa = pfn << 12;
            if pfn > crate::gpadl::MAX_PFN {
                return Err(format!(
                    "page frame {pfn:#x} is beyond the physical address space"
                ));
            }
            crate::ring::check_page(&*mem, gpa).map_err(|e| e.to_string())?;
            if let Some((vp, what, _)) = synic_pages.iter().find(|(_, _, g)| *g == gpa) {
                return Err(format!("page {gpa:#x} is the {what} of VP {}", vp.0));
            }
        }
        Ok(())
    }

    fn open(&mut self, open: &ChannelOpen) -> Result<(), String> {
        let mem = self.partition.memory().memory();
        let incoming = RingPages::new(&open.guest_to_host)
            .and_then(|p| IncomingRing::open(&*mem, p))
            .map_err(|e| format!("guest-to-host ring: {e}"))?;
        let outgoing = RingPages::new(&open.host_to_guest)
            .and_then(|p| OutgoingRing::open(&*mem, p))
            .map_err(|e| format!("host-to-guest ring: {e}"))?;
        drop(mem);
        let relid = open.relid;
        let fd = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?);
        let token = CHANNEL_TOKEN_BASE + u64::from(relid);
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|e| format!("epoll: {e}"))?;
        let undo_epoll = |epoll: &Epoll| {
            let _ = epoll.ctl(
                ControlOperation::Delete,
                fd.as_raw_fd(),
                EpollEvent::default(),
            );
        };
        let signal = Arc::new(ChannelSignal { fd: fd.clone() });
        if let Err(e) = self
            .connections
            .add_event(open.connection_id, signal as Arc<dyn EventConnection>)
        {
            undo_epoll(&self.epoll);
            return Err(format!("event connection: {e}"));
        }
        // Kernel mode: the hypervisor signals the eventfd itself from now on, before the guest
        // hears OPENCHANNEL_RESULT, so its first HvSignalEvent makes no exit.
        if let Some(e) = &self.eventfds {
            if let Err(err) = e.assign(open.connection_id, fd.as_raw_fd()) {
                self.connections.remove_event(open.connection_id);
                undo_epoll(&self.epoll);
                return Err(format!("hypervisor eventfd: {err}"));
            }
        }
        let kind = IcKind::from_interface(open.interface);
        self.open.insert(
            relid,
            OpenChannel {
                kind,
                vp: open.vp,
                sint: open.sint,
                connection_id: open.connection_id,
                incoming,
                outgoing,
                fd,
                negotiated: None,
                needs_negotiation: kind.is_some(),
                outstanding: None,
                unsent: None,
                abandoned: Vec::new(),
                next_trans: 0,
                next_seq: 0,
            },
        );
        let stats = self.stats.entry(relid).or_default();
        stats.opens += 1;
        stats.negotiated = None;
        stats.target_vp = Some(open.vp.0);
        self.note(
            Direction::Host,
            format!(
                "channel {relid} open: signalled on VP{} SINT{} flag {relid}, guest signals \
                 connection {:#x}{}",
                open.vp.0,
                open.sint.get(),
                open.connection_id,
                if self.eventfds.is_some() {
                    " (hypervisor eventfd)"
                } else {
                    ""
                }
            ),
            false,
        );
        Ok(())
    }

    fn close(&mut self, relid: u32, why: &str) {
        let Some(c) = self.open.remove(&relid) else {
            return;
        };
        if let Some(e) = &self.eventfds {
            e.deassign(c.connection_id, c.fd.as_raw_fd());
        }
        self.connections.remove_event(c.connection_id);
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            c.fd.as_raw_fd(),
            EpollEvent::default(),
        );
        if let Some(Outstanding {
            pending: Pending::Request { request, .. },
            ..
        }) = c.outstanding
        {
            request.answer(Err(RequestError::Closed(why.to_string())));
        }
        self.stats.entry(relid).or_default().last_close = Some(why.to_string());
        let error = !(why.starts_with("closed by the guest")
            || why.starts_with("the guest unloaded")
            || why.starts_with("the host stopped")
            || why.starts_with("rescinded"));
        self.note(
            Direction::Host,
            format!("channel {relid} closed: {why}"),
            error,
        );
    }

    fn retarget(&mut self, relid: u32, vp: VpIndex) {
        if let Some(c) = self.open.get_mut(&relid) {
            c.vp = vp;
            self.stats.entry(relid).or_default().target_vp = Some(vp.0);
        }
    }
}
