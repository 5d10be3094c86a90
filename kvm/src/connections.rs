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

#[cfg(test)]
mod tests {
    use synic::hypercall::{validate_post_message, PostMessageInput};

    use super::*;

    fn message(n: u8) -> PostMessage {
        let mut input = PostMessageInput {
            connection_id: 7,
            reserved: 0,
            message_type: 1,
            payload_size: 1,
            payload: [0; 240],
        };
        input.payload[0] = n;
        validate_post_message(&input).unwrap()
    }

    /// A guest posting or signalling faster than the host reads fills the channel to its
    /// capacity and then gets INSUFFICIENT_BUFFERS (it keeps the message and retries): the
    /// channel never grows past what the host asked for, and nothing taken is lost.
    #[test]
    fn host_connections_hold_their_capacity_then_push_back() {
        let (messages, rx) = HostMessageConnection::new(3);
        let answers: Vec<HvStatus> = (0..5)
            .map(|n| messages.post(VpIndex(1), &message(n)))
            .collect();
        let full = HvStatus::InsufficientBuffers;
        assert_eq!(
            answers,
            [
                HvStatus::Success,
                HvStatus::Success,
                HvStatus::Success,
                full,
                full
            ]
        );
        let got: Vec<u8> = rx.try_iter().map(|m| m.message.payload()[0]).collect();
        assert_eq!(got, [0, 1, 2]);
        assert_eq!(messages.post(VpIndex(1), &message(9)), HvStatus::Success);
        drop(rx);
        assert_eq!(
            messages.post(VpIndex(1), &message(10)),
            HvStatus::InvalidPortId
        );

        let (events, rx) = HostEventConnection::new(7, 2);
        let answers: Vec<HvStatus> = (0..4).map(|f| events.signal(VpIndex(0), f)).collect();
        assert_eq!(answers, [HvStatus::Success, HvStatus::Success, full, full]);
        let got: Vec<u16> = rx.try_iter().map(|e| e.flag_number).collect();
        assert_eq!(got, [0, 1]);
    }
}
