//! Host-side connections: guest -> host messages and events delivered into channels.

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use synic::hypercall::{EventConnection, HvStatus, MessageConnection, PostMessage};
use synic::VpIndex;

/// One HvPostMessage the guest sent to a [`HostMessageConnection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestMessage {
    /// The calling VP.
    pub caller: VpIndex,
    /// The message (connection id, type, payload), validated.
    pub message: PostMessage,
    /// When the hypercall reached the host.
    pub at: Instant,
}

/// One HvSignalEvent the guest sent to a [`HostEventConnection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestEvent {
    /// The calling VP.
    pub caller: VpIndex,
    /// The connection id signalled.
    pub connection_id: u32,
    /// The flag number the guest passed.
    pub flag_number: u16,
    /// When the hypercall reached the host.
    pub at: Instant,
}

/// A message connection whose messages go to a bounded channel the host reads. A full
/// channel answers `HV_STATUS_INSUFFICIENT_BUFFERS` (the guest keeps the message and retries,
/// as the TLFS says), a dropped receiver `HV_STATUS_INVALID_PORT_ID`: nothing is lost silently.
#[derive(Debug)]
pub struct HostMessageConnection {
    tx: Sender<GuestMessage>,
}

impl HostMessageConnection {
    /// A connection buffering up to `capacity` messages, and its receiving end.
    pub fn new(capacity: usize) -> (std::sync::Arc<Self>, Receiver<GuestMessage>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (std::sync::Arc::new(Self { tx }), rx)
    }
}

impl MessageConnection for HostMessageConnection {
    fn post(&self, caller: VpIndex, message: &PostMessage) -> HvStatus {
        let m = GuestMessage {
            caller,
            message: message.clone(),
            at: Instant::now(),
        };
        match self.tx.try_send(m) {
            Ok(()) => HvStatus::Success,
            Err(TrySendError::Full(_)) => HvStatus::InsufficientBuffers,
            Err(TrySendError::Disconnected(_)) => HvStatus::InvalidPortId,
        }
    }
}

/// An event connection whose signals go to a bounded channel the host reads; a full channel
/// answers `HV_STATUS_INSUFFICIENT_BUFFERS`, a dropped receiver `HV_STATUS_INVALID_PORT_ID`.
#[derive(Debug)]
pub struct HostEventConnection {
    id: u32,
    tx: Sender<GuestEvent>,
}

impl HostEventConnection {
    /// A connection for id `id` buffering up to `capacity` signals, and its receiving end.
    pub fn new(id: u32, capacity: usize) -> (std::sync::Arc<Self>, Receiver<GuestEvent>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (std::sync::Arc::new(Self { id, tx }), rx)
    }
}

impl EventConnection for HostEventConnection {
    fn signal(&self, caller: VpIndex, flag_number: u16) -> HvStatus {
        let e = GuestEvent {
            caller,
            connection_id: self.id,
            flag_number,
            at: Instant::now(),
        };
        match self.tx.try_send(e) {
            Ok(()) => HvStatus::Success,
            Err(TrySendError::Full(_)) => HvStatus::InsufficientBuffers,
            Err(TrySendError::Disconnected(_)) => HvStatus::InvalidPortId,
        }
    }
}
