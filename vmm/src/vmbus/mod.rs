//! A minimal VMBus host control plane on the SynIC library: enough for a guest's VMBus driver
//! (Linux's hv_vmbus, Windows' vmbus.sys) to connect — version negotiation, an empty offer list,
//! unload — with every message travelling the library's paths.
//!
//! Guest to host: HvPostMessage to connection 4 (INITIATE_CONTACT, protocol 5.0+) or 1 (all
//! other messages, and INITIATE_CONTACT before 5.0) reaches a
//! [`HostMessageConnection`] registered in the VM's hypercall
//! [`Connections`](synic::hypercall::Connections); a device thread reads it. Host to guest:
//! [`synic::Partition::post_message`] to the SINT the guest named, which writes the message
//! slot and raises the SINT through the VM's routes. [`VmbusHost::finish`] returns every message
//! exchanged.

mod control;
pub mod messages;

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use synic::hypercall::ConnectionError;
use synic::{HvMessage, MessageType, Posted};

pub use control::{Connection, ControlPlane, Handled, Reply, VmbusError};
pub use messages::{ChannelMessageType, Version};
use messages::{HV_MESSAGE_VMBUS, VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_CONNECTION_ID_4};

use crate::synic_vm::VmSynic;
use synic_kvm::{GuestMessage, HostMessageConnection};

/// Which way a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// HvPostMessage from the guest.
    GuestToHost,
    /// Posted by the host into the guest's message page.
    HostToGuest,
}

/// One line of the exchange log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Time since the host was attached.
    pub at: Duration,
    /// Direction.
    pub direction: Direction,
    /// What was sent, and what became of it.
    pub text: String,
    /// Whether this was refused (a guest message with no reply, a reply the SynIC refused).
    pub error: bool,
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::GuestToHost => "guest -> host",
            Direction::HostToGuest => "host -> guest",
        };
        write!(f, "[{:8.3} s] {dir}: {}", self.at.as_secs_f64(), self.text)
    }
}

/// Everything the host exchanged with the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmbusLog {
    /// Messages in order.
    pub exchanges: Vec<Exchange>,
    /// The connection at the end (`None` after UNLOAD or if never connected).
    pub connection: Option<Connection>,
    /// The last version negotiated, even if the guest unloaded since.
    pub negotiated: Option<Version>,
}

impl VmbusLog {
    /// How many exchanges were errors.
    pub fn errors(&self) -> usize {
        self.exchanges.iter().filter(|e| e.error).count()
    }
}

/// The VMBus host device: a thread answering the guest's channel-management messages.
#[derive(Debug)]
pub struct VmbusHost {
    stop: Sender<()>,
    thread: Option<JoinHandle<VmbusLog>>,
    synic: Arc<VmSynic>,
}

/// How many guest messages may wait for the device thread before HvPostMessage answers
/// `HV_STATUS_INSUFFICIENT_BUFFERS` (the guest then retries).
const QUEUE: usize = 64;

impl VmbusHost {
    /// Registers the VMBus message connections (1 and 4) with `synic` and starts the device
    /// thread, speaking protocol versions up to `max`.
    pub fn attach(synic: &Arc<VmSynic>, max: Version) -> Result<Self, ConnectionError> {
        let (conn, rx) = HostMessageConnection::new(QUEUE);
        synic
            .connections()
            .add_message(VMBUS_MESSAGE_CONNECTION_ID, conn.clone())?;
        if let Err(e) = synic
            .connections()
            .add_message(VMBUS_MESSAGE_CONNECTION_ID_4, conn)
        {
            synic.remove_message_connection(VMBUS_MESSAGE_CONNECTION_ID);
            return Err(e);
        }
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let plane = ControlPlane::new(max, synic.partition().vp_indices());
        let s = synic.clone();
        let thread = std::thread::Builder::new()
            .name("vmbus-host".into())
            .spawn(move || serve(&s, plane, &rx, &stop_rx))
            .map_err(|_| ConnectionError::InUse(VMBUS_MESSAGE_CONNECTION_ID))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            synic: synic.clone(),
        })
    }

    /// Stops the device thread, unregisters the connections and returns the exchange log.
    pub fn finish(mut self) -> VmbusLog {
        self.shutdown()
    }

    fn shutdown(&mut self) -> VmbusLog {
        let _ = self.stop.try_send(());
        self.synic
            .remove_message_connection(VMBUS_MESSAGE_CONNECTION_ID);
        self.synic
            .remove_message_connection(VMBUS_MESSAGE_CONNECTION_ID_4);
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

fn serve(
    synic: &VmSynic,
    mut plane: ControlPlane,
    rx: &Receiver<GuestMessage>,
    stop: &Receiver<()>,
) -> VmbusLog {
    let start = Instant::now();
    let mut exchanges = Vec::new();
    let mut negotiated = None;
    let mut note = |direction, text: String, error| {
        exchanges.push(Exchange {
            at: start.elapsed(),
            direction,
            text,
            error,
        })
    };
    loop {
        let m = crossbeam_channel::select! {
            recv(rx) -> m => match m { Ok(m) => m, Err(_) => break },
            recv(stop) -> _ => break,
        };
        if m.message.message_type != HV_MESSAGE_VMBUS {
            note(
                Direction::GuestToHost,
                format!(
                    "message type {:#x} on connection {} ignored (VMBus uses type 1)",
                    m.message.message_type, m.message.connection_id
                ),
                true,
            );
            continue;
        }
        match plane.handle(m.caller, m.message.connection_id, m.message.payload()) {
            Err((received, why)) => note(
                Direction::GuestToHost,
                format!("{received}: ignored, {why}"),
                true,
            ),
            Ok(Handled { received, reply }) => {
                note(Direction::GuestToHost, received, false);
                if let Some(c) = plane.connection() {
                    negotiated = Some(c.version);
                }
                if let Some(r) = reply {
                    let (text, error) = post(synic, &r);
                    note(Direction::HostToGuest, text, error);
                }
            }
        }
    }
    VmbusLog {
        exchanges,
        connection: plane.connection(),
        negotiated,
    }
}

fn post(synic: &VmSynic, r: &Reply) -> (String, bool) {
    let to = format!("VP{} SINT{}", r.vp.0, r.sint.get());
    let msg = match HvMessage::new(MessageType(HV_MESSAGE_VMBUS), 0, &r.payload) {
        Ok(m) => m,
        Err(e) => return (format!("{} to {to}: not built: {e}", r.summary), true),
    };
    match synic.partition().post_message(r.vp, r.sint, msg) {
        Ok(Posted::Delivered) => (format!("{} to {to} (delivered)", r.summary), false),
        Ok(Posted::Queued) => (format!("{} to {to} (queued)", r.summary), false),
        Err(e) => (format!("{} to {to}: refused: {}", r.summary, e.error), true),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use synic::hypercall::{validate_post_message, Hypercall, PostMessageInput};
    use synic::{HvStatus, VpIndex};
    use synic_msr::{index, Origin};
    use vm_memory::{Bytes, GuestAddress};
    use zerocopy::{FromZeros, IntoBytes};

    use super::messages::{header_only, ChannelMessageHeader, InitiateContact};
    use super::*;
    use crate::synic_vm::SynicVmBuilder;
    use synic_kvm::ModeRequest;

    const SIMP: u64 = 0x20_0000;

    /// What the guest's HvPostMessage would hand the connections registry.
    fn guest_post(synic: &VmSynic, connection_id: u32, payload: &[u8]) -> HvStatus {
        let mut input = PostMessageInput::new_zeroed();
        input.connection_id = connection_id;
        input.message_type = HV_MESSAGE_VMBUS;
        input.payload_size = payload.len() as u32;
        input.payload[..payload.len()].copy_from_slice(payload);
        let call = Hypercall::PostMessage(validate_post_message(&input).unwrap());
        synic.connections().dispatch(VpIndex(0), &call)
    }

    /// Waits for a message in slot 2 of the message page, returns its payload's first 16 bytes
    /// and frees the slot the way the guest does (type None, then EOM).
    fn take_slot2(synic: &VmSynic) -> [u8; 16] {
        let slot = GuestAddress(SIMP + 2 * 256);
        for _ in 0..500 {
            let t: u32 = synic.memory().read_obj(slot).unwrap();
            if t != 0 {
                assert_eq!(t, HV_MESSAGE_VMBUS);
                let mut p = [0u8; 16];
                synic
                    .memory()
                    .read_slice(&mut p, GuestAddress(SIMP + 2 * 256 + 16))
                    .unwrap();
                synic.memory().write_obj(0u32, slot).unwrap();
                synic
                    .with_vp(0, |vp| vp.wrmsr(index::EOM, 0, Origin::Guest))
                    .unwrap()
                    .unwrap();
                return p;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no reply in the message page");
    }

    #[test]
    fn host_answers_through_the_message_page() {
        if !synic::testing::kvm_available("host_answers_through_the_message_page") {
            return;
        }
        let vm = SynicVmBuilder::new()
            .mode(ModeRequest::Userspace)
            .testdev(false)
            .build()
            .unwrap();
        let synic = vm.synic().clone();
        // The guest's SynIC setup, as Linux does it: SINT2 unmasked, SIMP, SCONTROL.
        for (msr, value) in [
            (index::SINT0 + 2, 0xF3),
            (index::SIMP, SIMP | 1),
            (index::SCONTROL, 1),
        ] {
            synic
                .with_vp(0, |vp| vp.wrmsr(msr, value, Origin::Guest))
                .unwrap()
                .unwrap();
        }
        let host = VmbusHost::attach(&synic, Version::WIN10_V5_3).unwrap();
        let contact = InitiateContact {
            header: ChannelMessageHeader {
                msgtype: ChannelMessageType::INITIATE_CONTACT.0,
                padding: 0,
            },
            vmbus_version_requested: Version::WIN10_V5_3.0,
            target_vcpu: 0,
            interrupt_page_or_sint: 2,
            monitor_page1: 0x30_0000,
            monitor_page2: 0x30_1000,
        };
        assert_eq!(guest_post(&synic, 4, contact.as_bytes()), HvStatus::Success);
        let r = take_slot2(&synic);
        assert_eq!(r[..4], 15u32.to_le_bytes(), "VERSION_RESPONSE");
        assert_eq!(
            (r[8], r[12]),
            (1, 1),
            "supported, later messages to connection 1"
        );
        let offers = header_only(ChannelMessageType::REQUEST_OFFERS);
        assert_eq!(guest_post(&synic, 1, &offers), HvStatus::Success);
        assert_eq!(
            take_slot2(&synic)[..4],
            4u32.to_le_bytes(),
            "ALLOFFERS_DELIVERED"
        );
        let unload = header_only(ChannelMessageType::UNLOAD);
        assert_eq!(guest_post(&synic, 1, &unload), HvStatus::Success);
        assert_eq!(
            take_slot2(&synic)[..4],
            17u32.to_le_bytes(),
            "UNLOAD_RESPONSE"
        );
        assert_eq!(
            guest_post(&synic, 7, &unload),
            HvStatus::InvalidConnectionId
        );
        let log = host.finish();
        assert_eq!(log.exchanges.len(), 6, "{:#?}", log.exchanges);
        assert_eq!(
            (log.errors(), log.negotiated),
            (0, Some(Version::WIN10_V5_3))
        );
        assert_eq!(log.connection, None, "disconnected by UNLOAD");
        assert_eq!(
            guest_post(&synic, 1, &offers),
            HvStatus::InvalidConnectionId,
            "finish unregisters the connections"
        );
    }
}
