//! The host API: [`VmbusHandle`], a cloneable handle whose calls block until the guest answered
//! or their timeout passed. Each call is a [`Request`] to the device thread, which sends it on
//! the service's channel once the service is open and negotiated (one transaction at a time
//! per service, in order) and gives it up at its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use vmm_sys_util::eventfd::EventFd;

use crate::ic::{IcError, IcKind, IcVersion, KvpOperation, KvpPool, Negotiated};

/// Most requests waiting in the device thread (all services together) before a call answers
/// [`RequestError::Busy`].
pub const MAX_WAITING_REQUESTS: usize = 256;
/// Most items [`VmbusHandle::kvp_get`] enumerates in the intrinsic pool.
pub const MAX_KVP_ENUMERATION: u32 = 64;

/// Why a call did not get its answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The guest did not answer in time (or the service never opened).
    #[error("no answer within the timeout")]
    Timeout,
    /// This host does not offer the service.
    #[error("the {0} service is not offered")]
    NotOffered(IcKind),
    /// The channel closed while the request was in flight.
    #[error("the channel closed: {0}")]
    Closed(String),
    /// The guest answered, badly or with a failure.
    #[error(transparent)]
    Failed(#[from] IcError),
    /// Too many requests wait already.
    #[error("too many requests wait already")]
    Busy,
    /// The control plane refused the host's request (a rescind of a channel it cannot
    /// rescind now).
    #[error("refused: {0}")]
    Refused(#[source] crate::control::VmbusError),
    /// The VMBus host stopped.
    #[error("the VMBus host stopped")]
    Stopped,
}

/// A heartbeat's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// The sequence number sent (the guest answered it plus one).
    pub sequence: u64,
    /// From the host's ring write to the device thread reading the answer.
    pub round_trip: Duration,
}

/// A time sample the guest acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSample {
    /// The host's UTC time sent, 100 ns units since 1601-01-01.
    pub host_time: u64,
    /// The partition reference time sent with it (100 ns units).
    pub reference_time: u64,
    /// The negotiated time-sync service version (4.0+: reference-time samples).
    pub service: IcVersion,
    /// From the host's ring write to the device thread reading the acknowledgement.
    pub round_trip: Duration,
}

/// What a request asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Ready,
    Rescind,
    Heartbeat,
    Shutdown(String),
    TimeSample,
    Kvp {
        operation: KvpOperation,
        pool: KvpPool,
        index: u32,
        key: String,
        value: String,
    },
}

/// What a request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Ready(Negotiated),
    Heartbeat(HeartbeatReply),
    Done,
    Time(TimeSample),
    Kvp(Option<(String, String)>),
}

pub(crate) type Reply = Result<Answer, RequestError>;

/// One call, in the device thread.
#[derive(Debug)]
pub(crate) struct Request {
    pub kind: IcKind,
    pub op: Op,
    pub deadline: Instant,
    pub reply: Sender<Reply>,
}

impl Request {
    /// Answers the caller (who may have given up already).
    pub fn answer(self, r: Reply) {
        let _ = self.reply.send(r);
    }
}

/// The host's handle on the integration services; clone it freely. Every call blocks until
/// the guest answered or `timeout` passed.
#[derive(Clone, Debug)]
pub struct VmbusHandle {
    pub(crate) tx: Sender<Request>,
    pub(crate) wake: Arc<EventFd>,
}

impl VmbusHandle {
    fn call(&self, kind: IcKind, op: Op, timeout: Duration) -> Reply {
        let (reply, rx): (Sender<Reply>, Receiver<Reply>) = crossbeam_channel::bounded(1);
        // A timeout too long to represent means no deadline that matters: a year.
        let timeout = timeout.min(Duration::from_secs(365 * 24 * 3600));
        let deadline = Instant::now() + timeout;
        match self.tx.try_send(Request {
            kind,
            op,
            deadline,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(RequestError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(RequestError::Stopped),
        }
        // A failed wake-up only delays the request to the thread's next turn.
        let _ = self.wake.write(1);
        // The thread answers at the deadline at the latest; a little slack covers its turn.
        match rx.recv_timeout(timeout + Duration::from_millis(250)) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(RequestError::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(RequestError::Stopped),
        }
    }

    /// Waits until `kind`'s channel is open and its versions are negotiated.
    pub fn wait_ready(&self, kind: IcKind, timeout: Duration) -> Result<Negotiated, RequestError> {
        match self.call(kind, Op::Ready, timeout)? {
            Answer::Ready(n) => Ok(n),
            _ => Err(RequestError::Stopped),
        }
    }

    /// One heartbeat: the guest answers the sequence number plus one.
    pub fn heartbeat(&self, timeout: Duration) -> Result<HeartbeatReply, RequestError> {
        match self.call(IcKind::Heartbeat, Op::Heartbeat, timeout)? {
            Answer::Heartbeat(h) => Ok(h),
            _ => Err(RequestError::Stopped),
        }
    }

    /// Asks the guest to power off in an orderly way, telling its users `reason`; returns
    /// when the guest accepted (it then shuts down on its own).
    pub fn shutdown(&self, reason: &str, timeout: Duration) -> Result<(), RequestError> {
        match self.call(IcKind::Shutdown, Op::Shutdown(reason.to_string()), timeout)? {
            Answer::Done => Ok(()),
            _ => Err(RequestError::Stopped),
        }
    }

    /// Sends the guest a time sample (the host's UTC time with the partition reference time)
    /// and returns it once the guest acknowledged it.
    pub fn time_sample(&self, timeout: Duration) -> Result<TimeSample, RequestError> {
        match self.call(IcKind::TimeSync, Op::TimeSample, timeout)? {
            Answer::Time(t) => Ok(t),
            _ => Err(RequestError::Stopped),
        }
    }

    fn kvp(
        &self,
        operation: KvpOperation,
        pool: KvpPool,
        index: u32,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<Option<(String, String)>, RequestError> {
        let op = Op::Kvp {
            operation,
            pool,
            index,
            key: key.to_string(),
            value: value.to_string(),
        };
        match self.call(IcKind::Kvp, op, timeout)? {
            Answer::Kvp(kv) => Ok(kv),
            _ => Err(RequestError::Stopped),
        }
    }

    /// Item `index` of `pool` as the guest's KVP daemon enumerates it (`None` past the end).
    pub fn kvp_enumerate(
        &self,
        pool: KvpPool,
        index: u32,
        timeout: Duration,
    ) -> Result<Option<(String, String)>, RequestError> {
        self.kvp(KvpOperation::Enumerate, pool, index, "", "", timeout)
    }

    /// The guest's value for `key` (`None`: it has none). In [`KvpPool::Auto`] — the guest's
    /// intrinsic items, such as `FullyQualifiedDomainName` (its host name) — the items are
    /// enumerated until `key` (at most [`MAX_KVP_ENUMERATION`]); in the other pools the key
    /// is asked for.
    pub fn kvp_get(
        &self,
        pool: KvpPool,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<String>, RequestError> {
        let deadline = Instant::now() + timeout.min(Duration::from_secs(365 * 24 * 3600));
        if pool != KvpPool::Auto {
            return Ok(self
                .kvp(KvpOperation::Get, pool, 0, key, "", timeout)?
                .map(|(_, v)| v));
        }
        for index in 0..MAX_KVP_ENUMERATION {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.kvp_enumerate(pool, index, left)? {
                Some((k, v)) if k == key => return Ok(Some(v)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Withdraws `kind`'s channel (RESCIND_CHANNELOFFER): an open channel's rings are dropped
    /// at once, the guest closes it and releases its relid. Returns once the rescind is sent.
    pub fn rescind(&self, kind: IcKind, timeout: Duration) -> Result<(), RequestError> {
        match self.call(kind, Op::Rescind, timeout)? {
            Answer::Done => Ok(()),
            _ => Err(RequestError::Stopped),
        }
    }

    /// Sets `key` to `value` in `pool`.
    pub fn kvp_set(
        &self,
        pool: KvpPool,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), RequestError> {
        self.kvp(KvpOperation::Set, pool, 0, key, value, timeout)
            .map(|_| ())
    }
}
