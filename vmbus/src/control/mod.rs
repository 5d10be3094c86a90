//! The VMBus host's channel-management state machine, with no I/O: a guest message in, the
//! replies to post out, and calls into [`ChannelHooks`] where the host must act (check GPADL
//! pages, take over or drop a channel's rings).
//!
//! Connection: INITIATE_CONTACT -> VERSION_RESPONSE (the requested version is accepted when the
//! host speaks it, so a guest stepping down from its newest version settles on the highest
//! version both sides speak); from 5.0 on the guest names its SINT and the host names the
//! connection id every later message must arrive on. UNLOAD -> UNLOAD_RESPONSE tears down
//! every channel and GPADL.
//!
//! Channels (see `docs/vmbus.md` for the flow): REQUESTOFFERS -> one OFFERCHANNEL per channel,
//! ALLOFFERS_DELIVERED; GPADL_HEADER/BODY -> GPADL_CREATED; OPENCHANNEL -> OPENCHANNEL_RESULT;
//! CLOSECHANNEL; GPADL_TEARDOWN -> GPADL_TORNDOWN; the host's rescind -> RESCIND_CHANNELOFFER,
//! then the guest's RELID_RELEASED; MODIFYCHANNEL (-> MODIFYCHANNEL_RESPONSE from 5.3).
//!
//! Everything the guest sends is untrusted. A message the host cannot act on is refused with a
//! [`VmbusError`]; when the guest would otherwise wait forever (a GPADL, an open) the refusal
//! is also answered with a failure status. Every table the guest can grow is bounded
//! ([`MAX_GPADLS`], [`MAX_GPADL_TOTAL_PAGES`]); the host's own channel table by
//! [`MAX_CHANNELS`].

use std::collections::BTreeMap;

use synic::{SintIndex, VpIndex};
use zerocopy::{FromBytes, IntoBytes};

mod channels;
mod error;
mod gpadls;

pub use error::VmbusError;

use crate::gpadl::{Gpadl, GpadlBuilder};
use crate::protocol::{
    header_only, ChannelMessageHeader, ChannelMessageType, CloseChannel, Guid, InitiateContact,
    OfferChannel, RescindOffer, Version, VersionResponse, VMBUS_MESSAGE_CONNECTION_ID,
    VMBUS_MESSAGE_CONNECTION_ID_4, VMBUS_MESSAGE_SINT,
};

/// Most channels the host may offer at once.
pub const MAX_CHANNELS: usize = 64;
/// Most GPADLs (complete or being described) a guest may hold at once.
pub const MAX_GPADLS: usize = 256;
/// Most pages all GPADLs together may describe (the host stores 8 bytes per page).
pub const MAX_GPADL_TOTAL_PAGES: usize = 64 * 1024;
/// The status the host answers a refused GPADL, open or channel modification with
/// (`STATUS_UNSUCCESSFUL`; the guest only tests for non-zero).
pub const STATUS_UNSUCCESSFUL: u32 = 0xC000_0001;
/// First connection id given to channels (the guest signals channel `relid` on
/// `CHANNEL_CONNECTION_BASE + relid`).
pub const CHANNEL_CONNECTION_BASE: u32 = 0x2000;
/// The connection id this host names in VERSION_RESPONSE for a 5.x guest's later messages
/// (any 24-bit id the host registered; not 1, so the rule is exercised).
pub const DEFAULT_MESSAGE_CONNECTION_ID_5: u32 = 0x20;

/// A message for the guest: post `payload` to `sint` of `vp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Target VP.
    pub vp: VpIndex,
    /// Target SINT.
    pub sint: SintIndex,
    /// The channel message.
    pub payload: Vec<u8>,
    /// What it says, for the exchange log.
    pub summary: String,
}

/// The outcome of one guest message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// What the guest sent, for the exchange log.
    pub received: String,
    /// Why it was refused, if it was (a refusal may still be answered, with a failure status).
    pub error: Option<VmbusError>,
    /// The replies, in order.
    pub replies: Vec<Reply>,
}

/// Where the host sends its messages once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The negotiated version.
    pub version: Version,
    /// The VP the guest named in INITIATE_CONTACT.
    pub vp: VpIndex,
    /// The SINT messages and channel event flags go to.
    pub sint: SintIndex,
    /// The connection id the guest posts its later messages to.
    pub message_connection_id: u32,
}

/// What a channel is, as the host offers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The device class.
    pub interface: Guid,
    /// This device (unique per VM).
    pub instance: Guid,
    /// A short name for logs.
    pub name: String,
}

/// A channel the guest opened, handed to [`ChannelHooks::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelOpen {
    /// The channel.
    pub relid: u32,
    /// The connection id the guest signals it on.
    pub connection_id: u32,
    /// The device class.
    pub interface: Guid,
    /// The VP to signal it on.
    pub vp: VpIndex,
    /// The SINT whose event flags carry it (the connection's).
    pub sint: SintIndex,
    /// Pages of the guest's outbound ring (guest writes): header first.
    pub guest_to_host: Vec<u64>,
    /// Pages of the guest's inbound ring (host writes): header first.
    pub host_to_guest: Vec<u64>,
}

/// Where the control plane needs the host.
pub trait ChannelHooks {
    /// Whether these page frame numbers may back a GPADL: guest RAM, not a SynIC page.
    fn check_pages(&self, pfns: &mut dyn Iterator<Item = u64>) -> Result<(), String>;
    /// Takes a channel's rings over and starts taking its signals (before the guest hears
    /// OPENCHANNEL_RESULT). A refusal answers the guest with a failure status.
    fn open(&mut self, open: &ChannelOpen) -> Result<(), String>;
    /// Stops using a channel's rings and signals.
    fn close(&mut self, relid: u32, why: &str);
    /// MODIFYCHANNEL: signal the channel on `vp` from now on.
    fn retarget(&mut self, relid: u32, vp: VpIndex);
}

/// Where a channel stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Not offered on the current connection (none, or offers not yet asked for).
    Unoffered,
    /// Offered, not open.
    Offered,
    /// Open on ring GPADL `gpadl`.
    Open {
        /// The ring GPADL.
        gpadl: u32,
        /// The VP signalled.
        vp: VpIndex,
        /// The host stopped using the rings (a hostile ring, the GPADL torn down); the guest
        /// still has to close it.
        host_closed: bool,
    },
    /// Rescinded by the host; waiting for the guest's RELID_RELEASED.
    Rescinded,
}

impl ChannelState {
    fn name(self) -> &'static str {
        match self {
            Self::Unoffered => "not offered",
            Self::Offered => "offered and not open",
            Self::Open { .. } => "open",
            Self::Rescinded => "rescinded",
        }
    }
}

#[derive(Clone, Debug)]
struct Channel {
    spec: ChannelSpec,
    state: ChannelState,
    /// Still in the host's table (false after a rescind: removed at RELID_RELEASED).
    offered_by_host: bool,
}

#[derive(Clone, Debug)]
enum GpadlEntry {
    Building(GpadlBuilder),
    Created(Gpadl),
}

impl GpadlEntry {
    fn relid(&self) -> u32 {
        match self {
            Self::Building(b) => b.relid(),
            Self::Created(g) => g.relid,
        }
    }

    fn pages(&self) -> usize {
        match self {
            Self::Building(b) => b.announced_pages(),
            Self::Created(g) => g.page_count(),
        }
    }
}

/// The host's side of the VMBus connection and its channels.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    versions: Vec<Version>,
    vps: Vec<VpIndex>,
    message_connection_id_5: u32,
    connection: Option<Connection>,
    /// Where the last connection went, kept for an UNLOAD after a failed re-contact.
    last: Option<Connection>,
    offers_requested: bool,
    channels: BTreeMap<u32, Channel>,
    gpadls: BTreeMap<u32, GpadlEntry>,
}

fn parse<T: FromBytes>(kind: ChannelMessageType, payload: &[u8]) -> Result<T, VmbusError> {
    T::read_from_prefix(payload)
        .map(|(t, _)| t)
        .map_err(|_| VmbusError::Short {
            kind,
            len: payload.len(),
            need: size_of::<T>(),
        })
}

impl ControlPlane {
    /// A host speaking every version in [`Version::ALL`] up to `max`, for a partition with
    /// these VPs, naming `message_connection_id_5` to 5.x guests.
    pub fn new(max: Version, vps: Vec<VpIndex>, message_connection_id_5: u32) -> Self {
        Self {
            versions: Version::ALL.into_iter().filter(|&v| v <= max).collect(),
            vps,
            message_connection_id_5,
            connection: None,
            last: None,
            offers_requested: false,
            channels: BTreeMap::new(),
            gpadls: BTreeMap::new(),
        }
    }

    /// The established connection, if any.
    pub fn connection(&self) -> Option<Connection> {
        self.connection
    }

    /// The state of channel `relid`.
    pub fn channel_state(&self, relid: u32) -> Option<ChannelState> {
        self.channels.get(&relid).map(|c| c.state)
    }

    /// Relids of the channels, in order.
    pub fn relids(&self) -> Vec<u32> {
        self.channels.keys().copied().collect()
    }

    /// The spec of channel `relid`.
    pub fn channel_spec(&self, relid: u32) -> Option<&ChannelSpec> {
        self.channels.get(&relid).map(|c| &c.spec)
    }

    /// GPADLs held (complete or being described) and the pages they describe.
    pub fn gpadl_usage(&self) -> (usize, usize) {
        (
            self.gpadls.len(),
            self.gpadls.values().map(GpadlEntry::pages).sum(),
        )
    }

    /// The connection id the guest signals channel `relid` on.
    pub fn channel_connection_id(relid: u32) -> u32 {
        CHANNEL_CONNECTION_BASE + relid
    }

    /// Adds a channel to the host's table with the lowest free relid (from 1). Offered at
    /// once (the returned reply) when the guest already asked for offers.
    pub fn add_channel(&mut self, spec: ChannelSpec) -> Result<(u32, Vec<Reply>), VmbusError> {
        if self.channels.len() >= MAX_CHANNELS {
            return Err(VmbusError::TooManyChannels);
        }
        let relid = (1..)
            .find(|r| !self.channels.contains_key(r))
            .unwrap_or(u32::MAX);
        self.channels.insert(
            relid,
            Channel {
                spec,
                state: ChannelState::Unoffered,
                offered_by_host: true,
            },
        );
        let mut replies = Vec::new();
        if let (Some(c), true) = (self.connection, self.offers_requested) {
            replies.push(self.offer(c, relid));
        }
        Ok((relid, replies))
    }

    /// Withdraws channel `relid`: an open channel's rings are dropped now, the guest hears
    /// RESCIND_CHANNELOFFER and frees the relid with RELID_RELEASED. A channel never offered
    /// on this connection goes at once.
    pub fn rescind(
        &mut self,
        relid: u32,
        hooks: &mut dyn ChannelHooks,
    ) -> Result<Vec<Reply>, VmbusError> {
        let Some(ch) = self.channels.get_mut(&relid) else {
            return Err(VmbusError::NoSuchChannel(relid));
        };
        match (ch.state, self.connection) {
            (ChannelState::Rescinded, _) => Err(VmbusError::ChannelState {
                relid,
                state: "rescinded",
            }),
            (ChannelState::Unoffered, _) | (_, None) => {
                self.channels.remove(&relid);
                Ok(Vec::new())
            }
            (state, Some(c)) => {
                if let ChannelState::Open {
                    host_closed: false, ..
                } = state
                {
                    hooks.close(relid, "rescinded by the host");
                }
                ch.state = ChannelState::Rescinded;
                ch.offered_by_host = false;
                let msg = RescindOffer {
                    header: ChannelMessageHeader::new(ChannelMessageType::RESCIND_CHANNEL_OFFER),
                    child_relid: relid,
                };
                Ok(vec![Reply {
                    vp: c.vp,
                    sint: c.sint,
                    payload: msg.as_bytes().to_vec(),
                    summary: format!("RESCIND_CHANNELOFFER channel {relid}"),
                }])
            }
        }
    }

    /// The host stopped using channel `relid`'s rings on its own (a hostile ring): the channel
    /// stays open for the guest until it closes it. Calls [`ChannelHooks::close`].
    pub fn host_close(&mut self, relid: u32, why: &str, hooks: &mut dyn ChannelHooks) {
        if let Some(ch) = self.channels.get_mut(&relid) {
            if let ChannelState::Open {
                ref mut host_closed,
                ..
            } = ch.state
            {
                if !*host_closed {
                    *host_closed = true;
                    hooks.close(relid, why);
                }
            }
        }
    }

    /// Handles one message the guest posted on `connection_id` (`payload` as validated by the
    /// hypercall layer).
    pub fn handle(
        &mut self,
        caller: VpIndex,
        connection_id: u32,
        payload: &[u8],
        hooks: &mut dyn ChannelHooks,
    ) -> Handled {
        let Ok((header, _)) = ChannelMessageHeader::read_from_prefix(payload) else {
            return refused(
                format!("{} bytes without a header", payload.len()),
                VmbusError::Short {
                    kind: ChannelMessageType(0),
                    len: payload.len(),
                    need: 8,
                },
            );
        };
        let kind = ChannelMessageType(header.msgtype);
        let from = format!("VP{} on connection {connection_id}", caller.0);
        if kind == ChannelMessageType::INITIATE_CONTACT {
            return self.initiate_contact(&from, connection_id, payload, hooks);
        }
        if kind == ChannelMessageType::UNLOAD {
            return self.unload(caller, &from, hooks);
        }
        let Some(c) = self.connection else {
            // Linux unloads first and releases its channels' relids after: nothing is left
            // to release then, and nothing to answer.
            if let (ChannelMessageType::RELID_RELEASED, Some(last)) = (kind, self.last) {
                if connection_id == last.message_connection_id {
                    if let Ok(m) = parse::<CloseChannel>(kind, payload) {
                        return Handled {
                            received: format!(
                                "RELID_RELEASED channel {} from {from} after UNLOAD: nothing to \
                                 release",
                                { m.child_relid }
                            ),
                            error: None,
                            replies: Vec::new(),
                        };
                    }
                }
            }
            return refused(
                format!("{kind} from {from}"),
                VmbusError::NotConnected(kind),
            );
        };
        if connection_id != c.message_connection_id {
            return refused(
                format!("{kind} from {from}"),
                VmbusError::WrongConnection {
                    kind,
                    got: connection_id,
                    want: c.message_connection_id,
                },
            );
        }
        let result = match kind {
            ChannelMessageType::REQUEST_OFFERS => Ok(self.request_offers(c)),
            ChannelMessageType::GPADL_HEADER => self.gpadl_header(c, payload, hooks),
            ChannelMessageType::GPADL_BODY => self.gpadl_body(c, payload, hooks),
            ChannelMessageType::GPADL_TEARDOWN => self.gpadl_teardown(c, payload, hooks),
            ChannelMessageType::OPEN_CHANNEL => self.open_channel(c, payload, hooks),
            ChannelMessageType::CLOSE_CHANNEL => self.close_channel(payload, hooks),
            ChannelMessageType::RELID_RELEASED => self.relid_released(payload),
            ChannelMessageType::MODIFY_CHANNEL => self.modify_channel(c, payload, hooks),
            other => Err((format!("{other}"), VmbusError::Unhandled(other), Vec::new())),
        };
        match result {
            Ok((what, replies)) => Handled {
                received: format!("{what} from {from}"),
                error: None,
                replies,
            },
            Err((what, error, replies)) => Handled {
                received: format!("{what} from {from}"),
                error: Some(error),
                replies,
            },
        }
    }

    fn initiate_contact(
        &mut self,
        from: &str,
        connection_id: u32,
        payload: &[u8],
        hooks: &mut dyn ChannelHooks,
    ) -> Handled {
        let kind = ChannelMessageType::INITIATE_CONTACT;
        let msg: InitiateContact = match parse(kind, payload) {
            Ok(m) => m,
            Err(e) => return refused(format!("INITIATE_CONTACT from {from}"), e),
        };
        let version = Version(msg.vmbus_version_requested);
        let target = msg.target_vcpu;
        let five = version.names_sint_and_connection();
        let raw_sint = if five {
            (msg.interrupt_page_or_sint & 0xFF) as u8
        } else {
            VMBUS_MESSAGE_SINT
        };
        let (page1, page2) = (msg.monitor_page1, msg.monitor_page2);
        let received = format!(
            "INITIATE_CONTACT from {from}: version {version}, target VP {target}, SINT \
             {raw_sint}, monitor pages {page1:#x} {page2:#x}"
        );
        let want = if five {
            VMBUS_MESSAGE_CONNECTION_ID_4
        } else {
            VMBUS_MESSAGE_CONNECTION_ID
        };
        if connection_id != want {
            return refused(
                received,
                VmbusError::WrongConnection {
                    kind,
                    got: connection_id,
                    want,
                },
            );
        }
        let vp = VpIndex(target);
        if !self.vps.contains(&vp) {
            return refused(received, VmbusError::NoSuchVp(target));
        }
        let Some(sint) = SintIndex::new(u32::from(raw_sint)) else {
            return refused(received, VmbusError::BadSint(raw_sint));
        };
        // A second contact while connected (a kexec'd kernel that did not unload): start over.
        let mut notes = String::new();
        if self.connection.is_some() {
            self.reset(hooks, "the guest made contact again");
            notes.push_str(" (was connected: every channel and GPADL dropped)");
        }
        let supported = self.versions.contains(&version);
        let message_connection_id = if five {
            self.message_connection_id_5
        } else {
            VMBUS_MESSAGE_CONNECTION_ID
        };
        let response = VersionResponse {
            header: ChannelMessageHeader::new(ChannelMessageType::VERSION_RESPONSE),
            version_supported: u8::from(supported),
            connection_state: 0,
            padding: 0,
            msg_conn_id: if supported && five {
                message_connection_id
            } else {
                0
            },
        };
        let summary = if supported {
            let c = Connection {
                version,
                vp,
                sint,
                message_connection_id,
            };
            self.connection = Some(c);
            self.last = Some(c);
            if five {
                format!(
                    "VERSION_RESPONSE: version {version} supported, later messages to \
                     connection {message_connection_id}{notes}"
                )
            } else {
                format!("VERSION_RESPONSE: version {version} supported{notes}")
            }
        } else {
            self.connection = None;
            format!("VERSION_RESPONSE: version {version} not supported{notes}")
        };
        Handled {
            received,
            error: None,
            replies: vec![Reply {
                vp,
                sint,
                payload: response.as_bytes().to_vec(),
                summary,
            }],
        }
    }

    /// Closes every open channel, drops every GPADL and every rescinded channel, and marks
    /// the others as not offered.
    fn reset(&mut self, hooks: &mut dyn ChannelHooks, why: &str) {
        for (&relid, ch) in &mut self.channels {
            if let ChannelState::Open {
                host_closed: false, ..
            } = ch.state
            {
                hooks.close(relid, why);
            }
            ch.state = ChannelState::Unoffered;
        }
        self.channels.retain(|_, ch| ch.offered_by_host);
        self.gpadls.clear();
        self.offers_requested = false;
        self.connection = None;
    }

    fn unload(&mut self, caller: VpIndex, from: &str, hooks: &mut dyn ChannelHooks) -> Handled {
        let target = self.connection.or(self.last).unwrap_or(Connection {
            version: Version::WIN8_1,
            vp: caller,
            sint: SintIndex::ALL[usize::from(VMBUS_MESSAGE_SINT)],
            message_connection_id: VMBUS_MESSAGE_CONNECTION_ID,
        });
        self.reset(hooks, "the guest unloaded");
        Handled {
            received: format!("UNLOAD from {from}"),
            error: None,
            replies: vec![Reply {
                vp: target.vp,
                sint: target.sint,
                payload: header_only(ChannelMessageType::UNLOAD_RESPONSE).to_vec(),
                summary: "UNLOAD_RESPONSE (disconnected)".into(),
            }],
        }
    }

    fn offer(&mut self, c: Connection, relid: u32) -> Reply {
        let ch = self
            .channels
            .get_mut(&relid)
            .expect("offer of a known channel");
        ch.state = ChannelState::Offered;
        let mut msg = OfferChannel::new_zeroed_offer();
        msg.offer.if_type = ch.spec.interface;
        msg.offer.if_instance = ch.spec.instance;
        msg.child_relid = relid;
        msg.is_dedicated_interrupt = 1;
        msg.connection_id = Self::channel_connection_id(relid);
        Reply {
            vp: c.vp,
            sint: c.sint,
            payload: msg.as_bytes().to_vec(),
            summary: format!(
                "OFFERCHANNEL {} ({}, instance {}), relid {relid}, connection {:#x}",
                ch.spec.name,
                ch.spec.interface,
                ch.spec.instance,
                Self::channel_connection_id(relid)
            ),
        }
    }

    fn request_offers(&mut self, c: Connection) -> (String, Vec<Reply>) {
        let mut replies = Vec::new();
        let waiting: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.state == ChannelState::Unoffered)
            .map(|(&r, _)| r)
            .collect();
        for relid in waiting {
            replies.push(self.offer(c, relid));
        }
        self.offers_requested = true;
        replies.push(Reply {
            vp: c.vp,
            sint: c.sint,
            payload: header_only(ChannelMessageType::ALL_OFFERS_DELIVERED).to_vec(),
            summary: format!("ALLOFFERS_DELIVERED ({} offered)", replies.len()),
        });
        ("REQUESTOFFERS".into(), replies)
    }
}

type Step = Result<(String, Vec<Reply>), (String, VmbusError, Vec<Reply>)>;

fn refused(received: String, error: VmbusError) -> Handled {
    Handled {
        received,
        error: Some(error),
        replies: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
