//! The VMBus host device: one thread that answers the guest's channel-management messages,
//! serves the channels' rings, and runs the integration services for [`VmbusHandle`] calls.
//!
//! Wiring, all through the SynIC library:
//! * guest -> host messages: a [`MessageConnection`] registered in the partition's
//!   [`Connections`] under connection ids 1, 4 and the 5.x message connection id, feeding a
//!   bounded queue (full: HvPostMessage answers `HV_STATUS_INSUFFICIENT_BUFFERS` and the guest
//!   retries);
//! * host -> guest messages: [`Partition::post_message`] to the VP and SINT the guest named;
//!   a full SynIC queue keeps the reply in a bounded backlog, retried in order;
//! * guest -> host channel signals: HvSignalEvent on the channel's connection id wakes the
//!   thread through an eventfd — from the hypercall exit in userspace mode, from the
//!   hypervisor itself when the VMM supplies [`HvEventFds`] (KVM's `KVM_HYPERV_EVENTFD`);
//! * host -> guest channel signals: [`Partition::signal_event`] sets flag `child_relid` in the
//!   target VP's event-flags page for the VMBus SINT and raises the SINT on a 0 -> 1 change.

mod api;
mod channels;

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use synic::hypercall::{ConnectionError, Connections, HvStatus, MessageConnection, PostMessage};
use synic::{HvMessage, MessageType, Partition, VpIndex};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use api::{
    HeartbeatReply, RequestError, TimeSample, VmbusHandle, MAX_KVP_ENUMERATION,
    MAX_WAITING_REQUESTS,
};
pub use channels::ChannelStats;

use crate::control::{
    ChannelSpec, Connection, ControlPlane, Handled, Reply, DEFAULT_MESSAGE_CONNECTION_ID_5,
};
use crate::ic::IcKind;
use crate::log::{Direction, Exchange, ExchangeLog, DEFAULT_LOG_CAPACITY};
use crate::protocol::{
    Version, HV_MESSAGE_VMBUS, VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_CONNECTION_ID_4,
};
use api::{Op, Request};
use channels::{Channels, CHANNEL_TOKEN_BASE};

/// Guest messages that may wait for the device thread before HvPostMessage answers
/// `HV_STATUS_INSUFFICIENT_BUFFERS`.
pub const MESSAGE_QUEUE: usize = 64;
/// Host messages that may wait for room in the guest's SynIC queue. The thread stops taking
/// guest messages while the backlog could not hold one more message's replies.
pub const MAX_BACKLOG: usize = 256;
/// Guest messages handled per turn of the thread.
const MESSAGES_PER_TURN: usize = 64;
/// How soon a backlog is retried; doubled (up to `BACKLOG_RETRY_MAX`) while the guest takes
/// none of it, so a guest that never frees its message slot costs a few wake-ups a second.
const BACKLOG_RETRY: Duration = Duration::from_millis(1);
const BACKLOG_RETRY_MAX: Duration = Duration::from_millis(100);

const TOKEN_CONTROL: u64 = 1;
const TOKEN_API: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// Where the hypervisor can signal an eventfd itself when the guest calls HvSignalEvent (KVM's
/// `KVM_HYPERV_EVENTFD`), so a channel signal makes no exit. The VMM implements it; without
/// it the signals arrive through the hypercall exit and [`Connections`].
pub trait HvEventFds: Send + Sync {
    /// Makes HvSignalEvent to `connection_id` with flag 0 signal `fd`.
    fn assign(&self, connection_id: u32, fd: RawFd) -> std::io::Result<()>;
    /// Undoes [`assign`](Self::assign).
    fn deassign(&self, connection_id: u32, fd: RawFd);
}

/// The partition reference time (100 ns units) as the guest reads it, for time samples.
pub type ReferenceTime = Arc<dyn Fn() -> u64 + Send + Sync>;

/// How the host is set up.
#[derive(Clone)]
pub struct VmbusConfig {
    /// Newest protocol version spoken (older ones down to 3.0 too).
    pub max_version: Version,
    /// The connection id named to 5.x guests for their later messages.
    pub message_connection_id_5: u32,
    /// The integration services offered.
    pub services: Vec<IcKind>,
    /// Kernel mode: the hypervisor's eventfd registration.
    pub eventfds: Option<Arc<dyn HvEventFds>>,
    /// The reference time the guest reads (default: the partition's).
    pub reference_time: Option<ReferenceTime>,
    /// Exchange-log entries kept.
    pub log_capacity: usize,
}

impl Default for VmbusConfig {
    fn default() -> Self {
        Self {
            max_version: Version::WIN10_V5_3,
            message_connection_id_5: DEFAULT_MESSAGE_CONNECTION_ID_5,
            services: IcKind::ALL.to_vec(),
            eventfds: None,
            reference_time: None,
            log_capacity: DEFAULT_LOG_CAPACITY,
        }
    }
}

impl std::fmt::Debug for VmbusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbusConfig")
            .field("max_version", &self.max_version)
            .field("message_connection_id_5", &self.message_connection_id_5)
            .field("services", &self.services)
            .field("eventfds", &self.eventfds.is_some())
            .field("log_capacity", &self.log_capacity)
            .finish_non_exhaustive()
    }
}

/// Why the host could not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A message connection id is taken.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// An eventfd, the epoll set or the thread could not be created.
    #[error("{what}: {source}")]
    Io {
        /// What was being created.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> AttachError {
    move |source| AttachError::Io { what, source }
}

/// One channel in the final report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelReport {
    /// Its relid.
    pub relid: u32,
    /// Its name.
    pub name: String,
    /// Its counters.
    pub stats: ChannelStats,
}

/// Everything the host saw, returned by [`VmbusHost::finish`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmbusLog {
    /// The exchange log (bounded).
    pub log: ExchangeLog,
    /// The connection at the end (`None` after UNLOAD or if never connected).
    pub connection: Option<Connection>,
    /// The last version negotiated, even if the guest unloaded since.
    pub negotiated: Option<Version>,
    /// Every channel the host offered.
    pub channels: Vec<ChannelReport>,
}

/// A guest message as the connection hands it to the thread.
struct GuestMessage {
    caller: VpIndex,
    message: PostMessage,
}

/// Connections 1, 4 and the 5.x message connection.
struct ControlConnection {
    tx: Sender<GuestMessage>,
    wake: Arc<EventFd>,
}

impl MessageConnection for ControlConnection {
    fn post(&self, caller: VpIndex, message: &PostMessage) -> HvStatus {
        let m = GuestMessage {
            caller,
            message: message.clone(),
        };
        match self.tx.try_send(m) {
            Ok(()) => {
                let _ = self.wake.write(1);
                HvStatus::Success
            }
            Err(TrySendError::Full(_)) => HvStatus::InsufficientBuffers,
            Err(TrySendError::Disconnected(_)) => HvStatus::InvalidPortId,
        }
    }
}

/// The VMBus host device.
pub struct VmbusHost {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<VmbusLog>>,
    connections: Arc<Connections>,
    message_ids: Vec<u32>,
    handle: VmbusHandle,
}

impl std::fmt::Debug for VmbusHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbusHost")
            .field("message_ids", &self.message_ids)
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

impl VmbusHost {
    /// Registers the message connections in `connections` (the registry the VMM's
    /// hypercall handler dispatches to) and starts the device thread on `partition`.
    pub fn attach<M>(
        partition: Arc<Partition<M>>,
        connections: Arc<Connections>,
        config: VmbusConfig,
    ) -> Result<Self, AttachError>
    where
        M: GuestAddressSpace + Send + Sync + 'static,
        M::M: Send + Sync,
        M::T: Send,
    {
        let epoll = Epoll::new().map_err(io("epoll"))?;
        let control_wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?);
        let api_wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?);
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?);
        for (fd, token) in [
            (control_wake.as_raw_fd(), TOKEN_CONTROL),
            (api_wake.as_raw_fd(), TOKEN_API),
            (stop.as_raw_fd(), TOKEN_STOP),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(io("epoll"))?;
        }
        let (tx, control_rx) = crossbeam_channel::bounded(MESSAGE_QUEUE);
        let conn = Arc::new(ControlConnection {
            tx,
            wake: control_wake.clone(),
        });
        let mut message_ids = vec![VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_CONNECTION_ID_4];
        if !message_ids.contains(&config.message_connection_id_5) {
            message_ids.push(config.message_connection_id_5);
        }
        let mut registered = Vec::new();
        for &id in &message_ids {
            if let Err(e) = connections.add_message(id, conn.clone()) {
                for &r in &registered {
                    connections.remove_message(r);
                }
                return Err(e.into());
            }
            registered.push(id);
        }
        let (api_tx, api_rx) = crossbeam_channel::bounded(MAX_WAITING_REQUESTS);
        let handle = VmbusHandle {
            tx: api_tx,
            wake: api_wake.clone(),
        };
        let mut plane = ControlPlane::new(
            config.max_version,
            partition.vp_indices(),
            config.message_connection_id_5,
        );
        let mut services = BTreeMap::new();
        for &kind in &config.services {
            // At most four services: far below MAX_CHANNELS.
            if let Ok((relid, _)) = plane.add_channel(ChannelSpec {
                interface: kind.interface(),
                instance: kind.instance(),
                name: kind.name().into(),
            }) {
                services.insert(kind, relid);
            }
        }
        let chans = Channels::new(
            partition,
            connections.clone(),
            config.eventfds.clone(),
            config.reference_time.clone(),
            epoll,
        );
        let device = Device {
            start: Instant::now(),
            plane,
            chans,
            log: ExchangeLog::new(config.log_capacity),
            backlog: VecDeque::new(),
            backlog_retry: BACKLOG_RETRY,
            negotiated: None,
            control_rx,
            control_wake,
            control_pending: false,
            api_rx,
            api_wake,
            services,
            waiting: BTreeMap::new(),
            rearm: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("vmbus-host".into())
            .spawn(move || device.run());
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                for &r in &registered {
                    connections.remove_message(r);
                }
                return Err(io("thread")(e));
            }
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            connections,
            message_ids,
            handle,
        })
    }

    /// A handle for the integration services.
    pub fn handle(&self) -> VmbusHandle {
        self.handle.clone()
    }

    /// Unregisters the message connections, stops the thread (closing every channel) and
    /// returns what it saw.
    pub fn finish(mut self) -> VmbusLog {
        self.shutdown()
    }

    fn shutdown(&mut self) -> VmbusLog {
        for &id in &self.message_ids {
            self.connections.remove_message(id);
        }
        let _ = self.stop.write(1);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for VmbusHost {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

/// The device thread's state.
struct Device<M: GuestAddressSpace> {
    start: Instant,
    plane: ControlPlane,
    chans: Channels<M>,
    log: ExchangeLog,
    backlog: VecDeque<Reply>,
    backlog_retry: Duration,
    negotiated: Option<Version>,
    control_rx: Receiver<GuestMessage>,
    control_wake: Arc<EventFd>,
    control_pending: bool,
    api_rx: Receiver<Request>,
    api_wake: Arc<EventFd>,
    services: BTreeMap<IcKind, u32>,
    /// Requests not yet in flight, per service, in order.
    waiting: BTreeMap<IcKind, VecDeque<Request>>,
    /// Channels that yielded and must be served again.
    rearm: Vec<u32>,
}

impl<M: GuestAddressSpace> Device<M> {
    fn note(&mut self, direction: Direction, text: String, error: bool) {
        self.log.push(Exchange {
            at: self.start.elapsed(),
            direction,
            text,
            error,
        });
    }

    fn run(mut self) -> VmbusLog {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = self.timeout();
            let n = match self.chans.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.note(
                        Direction::Host,
                        format!("epoll failed: {e}; stopping"),
                        true,
                    );
                    break;
                }
            };
            let mut stop = false;
            let mut ready = std::mem::take(&mut self.rearm);
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => stop = true,
                    TOKEN_CONTROL => {
                        let _ = self.control_wake.read();
                        self.control_pending = true;
                    }
                    TOKEN_API => {
                        let _ = self.api_wake.read();
                    }
                    t if t >= CHANNEL_TOKEN_BASE => ready.push((t - CHANNEL_TOKEN_BASE) as u32),
                    _ => {}
                }
            }
            if stop {
                break;
            }
            self.retry_backlog();
            self.take_messages();
            self.take_requests();
            ready.sort_unstable();
            ready.dedup();
            for relid in ready {
                if self.chans.service(relid) {
                    self.rearm.push(relid);
                }
            }
            self.after_hooks();
            self.expire();
            self.pump();
            self.after_hooks();
        }
        self.chans.close_all("the host stopped");
        self.after_hooks();
        for (_, q) in std::mem::take(&mut self.waiting) {
            for r in q {
                r.answer(Err(RequestError::Stopped));
            }
        }
        let channels = self
            .plane
            .relids()
            .into_iter()
            .map(|relid| ChannelReport {
                relid,
                name: self
                    .plane
                    .channel_spec(relid)
                    .map_or_else(String::new, |s| s.name.clone()),
                stats: self.chans.stats.get(&relid).cloned().unwrap_or_default(),
            })
            .collect();
        VmbusLog {
            log: self.log,
            connection: self.plane.connection(),
            negotiated: self.negotiated,
            channels,
        }
    }

    /// Milliseconds until something is due (-1: nothing). Gives up requests in flight past
    /// their deadline on the way.
    fn timeout(&mut self) -> i32 {
        if !self.rearm.is_empty()
            || (self.control_pending && self.backlog_has_room())
            || !self.api_rx.is_empty()
        {
            return 0;
        }
        let now = Instant::now();
        let mut due = self.chans.expire(now);
        for q in self.waiting.values() {
            for r in q {
                due = Some(due.map_or(r.deadline, |d| d.min(r.deadline)));
            }
        }
        if !self.backlog.is_empty() {
            let b = now + self.backlog_retry;
            due = Some(due.map_or(b, |d| d.min(b)));
        }
        match due {
            None => -1,
            Some(d) => {
                let ms = d.saturating_duration_since(now).as_millis() + 1;
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
        }
    }

    fn backlog_has_room(&self) -> bool {
        // One message produces at most an offer per channel and ALLOFFERS_DELIVERED.
        self.backlog.len() + crate::control::MAX_CHANNELS < MAX_BACKLOG
    }

    /// Posts a reply, keeping order behind any backlog.
    fn post(&mut self, r: Reply) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(r);
            return;
        }
        if let Some(r) = self.try_post(r) {
            self.backlog.push_back(r);
        }
    }

    /// Posts `r`; hands it back when the SynIC queue is full.
    fn try_post(&mut self, r: Reply) -> Option<Reply> {
        let to = format!("VP{} SINT{}", r.vp.0, r.sint.get());
        let msg = match HvMessage::new(MessageType(HV_MESSAGE_VMBUS), 0, &r.payload) {
            Ok(m) => m,
            Err(e) => {
                self.note(
                    Direction::HostToGuest,
                    format!("{} to {to}: not built: {e}", r.summary),
                    true,
                );
                return None;
            }
        };
        match self.chans.partition.post_message(r.vp, r.sint, msg) {
            Ok(_) => {
                self.note(
                    Direction::HostToGuest,
                    format!("{} to {to}", r.summary),
                    false,
                );
                None
            }
            Err(e) if matches!(e.error, synic::Error::QueueFull { .. }) => Some(r),
            Err(e) => {
                self.note(
                    Direction::HostToGuest,
                    format!("{} to {to}: refused: {}", r.summary, e.error),
                    true,
                );
                None
            }
        }
    }

    fn retry_backlog(&mut self) {
        let before = self.backlog.len();
        while let Some(r) = self.backlog.pop_front() {
            if let Some(r) = self.try_post(r) {
                self.backlog.push_front(r);
                break;
            }
        }
        self.backlog_retry = if self.backlog.len() < before || self.backlog.is_empty() {
            BACKLOG_RETRY
        } else {
            (self.backlog_retry * 2).min(BACKLOG_RETRY_MAX)
        };
    }

    fn take_messages(&mut self) {
        if !self.control_pending {
            return;
        }
        for _ in 0..MESSAGES_PER_TURN {
            if !self.backlog_has_room() {
                return;
            }
            let Ok(m) = self.control_rx.try_recv() else {
                self.control_pending = false;
                return;
            };
            if m.message.message_type != HV_MESSAGE_VMBUS {
                self.note(
                    Direction::GuestToHost,
                    format!(
                        "message type {:#x} on connection {} ignored (VMBus uses type 1)",
                        m.message.message_type, m.message.connection_id
                    ),
                    true,
                );
                continue;
            }
            let Handled {
                received,
                error,
                replies,
            } = self.plane.handle(
                m.caller,
                m.message.connection_id,
                m.message.payload(),
                &mut self.chans,
            );
            let refused = error.is_some();
            let text = match error {
                Some(e) => format!("{received}: refused: {e}"),
                None => received,
            };
            self.note(Direction::GuestToHost, text, refused);
            if let Some(c) = self.plane.connection() {
                self.negotiated = Some(c.version);
            }
            self.after_hooks();
            for r in replies {
                self.post(r);
            }
            // NEGOTIATE goes out after OPENCHANNEL_RESULT.
            self.chans.negotiate_new();
            self.after_hooks();
        }
    }

    /// Moves the hooks' log lines into the log and closes channels whose rings failed.
    fn after_hooks(&mut self) {
        loop {
            for (d, t, e) in std::mem::take(&mut self.chans.notes) {
                self.note(d, t, e);
            }
            let failed = std::mem::take(&mut self.chans.failed);
            if failed.is_empty() {
                return;
            }
            for (relid, why) in failed {
                self.plane.host_close(relid, &why, &mut self.chans);
            }
        }
    }

    fn waiting_count(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    fn take_requests(&mut self) {
        while let Ok(r) = self.api_rx.try_recv() {
            if !self.services.contains_key(&r.kind) {
                let k = r.kind;
                r.answer(Err(RequestError::NotOffered(k)));
                continue;
            }
            if r.op == Op::Rescind {
                self.rescind(r);
                continue;
            }
            if self.waiting_count() >= MAX_WAITING_REQUESTS {
                r.answer(Err(RequestError::Busy));
                continue;
            }
            self.waiting.entry(r.kind).or_default().push_back(r);
        }
    }

    fn rescind(&mut self, r: Request) {
        let Some(&relid) = self.services.get(&r.kind) else {
            return;
        };
        match self.plane.rescind(relid, &mut self.chans) {
            Ok(replies) => {
                self.services.remove(&r.kind);
                self.note(
                    Direction::Host,
                    format!("channel {relid} ({}) rescinded by the host", r.kind),
                    false,
                );
                self.after_hooks();
                for reply in replies {
                    self.post(reply);
                }
                r.answer(Ok(api::Answer::Done));
            }
            Err(e) => r.answer(Err(RequestError::Refused(e))),
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.chans.expire(now);
        for q in self.waiting.values_mut() {
            let mut keep = VecDeque::with_capacity(q.len());
            for r in q.drain(..) {
                if r.deadline <= now {
                    r.answer(Err(RequestError::Timeout));
                } else {
                    keep.push_back(r);
                }
            }
            *q = keep;
        }
    }

    /// Starts the next waiting request of every service whose channel is free.
    fn pump(&mut self) {
        let kinds: Vec<IcKind> = self.waiting.keys().copied().collect();
        for kind in kinds {
            while let Some((relid, _, free)) = self.chans.ready_for(kind) {
                let Some(q) = self.waiting.get_mut(&kind) else {
                    break;
                };
                // Readiness questions are answered at once, in any order.
                if let Some(pos) = q.iter().position(|r| r.op == Op::Ready) {
                    if let Some(r) = q.remove(pos) {
                        self.chans.start(relid, r);
                    }
                    continue;
                }
                if !free {
                    break;
                }
                let Some(r) = q.pop_front() else {
                    break;
                };
                self.chans.start(relid, r);
            }
        }
    }
}
