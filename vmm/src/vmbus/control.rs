//! The VMBus host's channel-management state machine, with no I/O: a guest message in, at most
//! one reply out (where to post it and what), and a line for the exchange log.
//!
//! Implemented: INITIATE_CONTACT -> VERSION_RESPONSE (accepting the requested version when the
//! host speaks it, so a guest stepping down from its newest version settles on the highest
//! version both sides support), REQUESTOFFERS -> ALLOFFERS_DELIVERED (no channels are offered),
//! UNLOAD -> UNLOAD_RESPONSE. Everything the guest sends is untrusted: short payloads, unknown
//! types, a target VP that does not exist or a SINT above 15 are refused with a
//! [`VmbusError`] and no reply.

use synic::{SintIndex, VpIndex};
use zerocopy::{FromBytes, IntoBytes};

use super::messages::{
    header_only, ChannelMessageHeader, ChannelMessageType, InitiateContact, Version,
    VersionResponse, VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_SINT,
};

/// Why a guest message got no reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmbusError {
    /// The payload is shorter than its type's layout.
    #[error("{kind:?} of {len} bytes, needs {need}")]
    Short {
        /// The message type.
        kind: ChannelMessageType,
        /// Its length.
        len: usize,
        /// The layout's length.
        need: usize,
    },
    /// A type this host does not implement (channels are not offered, so no channel message
    /// is expected).
    #[error("{0:?} is not handled by this host")]
    Unhandled(ChannelMessageType),
    /// A message that needs a connection arrived before INITIATE_CONTACT succeeded.
    #[error("{0:?} before the connection was established")]
    NotConnected(ChannelMessageType),
    /// INITIATE_CONTACT names a VP that does not exist.
    #[error("INITIATE_CONTACT targets VP {0}, which does not exist")]
    NoSuchVp(u32),
    /// INITIATE_CONTACT names a SINT above 15.
    #[error("INITIATE_CONTACT names SINT {0}")]
    BadSint(u8),
}

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
    /// The reply, if any.
    pub reply: Option<Reply>,
}

/// Where the host sends its messages once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The negotiated version.
    pub version: Version,
    /// The VP the guest named in INITIATE_CONTACT.
    pub vp: VpIndex,
    /// The SINT messages go to.
    pub sint: SintIndex,
}

/// The host's side of the VMBus connection.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    versions: Vec<Version>,
    vps: Vec<VpIndex>,
    connection: Option<Connection>,
    /// Where the last connection went, kept for an UNLOAD after a failed re-contact.
    last: Option<Connection>,
}

impl ControlPlane {
    /// A host speaking every version up to `max`, for a partition with these VPs.
    pub fn new(max: Version, vps: Vec<VpIndex>) -> Self {
        Self {
            versions: Version::ALL.into_iter().filter(|&v| v <= max).collect(),
            vps,
            connection: None,
            last: None,
        }
    }

    /// The established connection, if any.
    pub fn connection(&self) -> Option<Connection> {
        self.connection
    }

    /// Handles one message the guest posted (`payload` as validated by the hypercall layer).
    pub fn handle(
        &mut self,
        caller: VpIndex,
        connection_id: u32,
        payload: &[u8],
    ) -> Result<Handled, (String, VmbusError)> {
        let Ok((header, _)) = ChannelMessageHeader::read_from_prefix(payload) else {
            let kind = ChannelMessageType(0);
            return Err((
                format!("{} bytes without a header", payload.len()),
                VmbusError::Short {
                    kind,
                    len: payload.len(),
                    need: 8,
                },
            ));
        };
        let kind = ChannelMessageType(header.msgtype);
        let from = format!("VP{} on connection {connection_id}", caller.0);
        match kind {
            ChannelMessageType::INITIATE_CONTACT => self.initiate_contact(&from, payload),
            ChannelMessageType::REQUEST_OFFERS => match self.connection {
                Some(c) => Ok(Handled {
                    received: format!("REQUESTOFFERS from {from}"),
                    reply: Some(Reply {
                        vp: c.vp,
                        sint: c.sint,
                        payload: header_only(ChannelMessageType::ALL_OFFERS_DELIVERED).to_vec(),
                        summary: "ALLOFFERS_DELIVERED (no channels offered)".into(),
                    }),
                }),
                None => Err((
                    format!("REQUESTOFFERS from {from}"),
                    VmbusError::NotConnected(kind),
                )),
            },
            ChannelMessageType::UNLOAD => {
                let target = self.connection.take().or(self.last).unwrap_or(Connection {
                    version: Version::WS2008,
                    vp: caller,
                    sint: SintIndex::new(u32::from(VMBUS_MESSAGE_SINT))
                        .unwrap_or(SintIndex::ALL[2]),
                });
                Ok(Handled {
                    received: format!("UNLOAD from {from}"),
                    reply: Some(Reply {
                        vp: target.vp,
                        sint: target.sint,
                        payload: header_only(ChannelMessageType::UNLOAD_RESPONSE).to_vec(),
                        summary: "UNLOAD_RESPONSE (disconnected)".into(),
                    }),
                })
            }
            other => Err((
                format!("{other:?} from {from}"),
                VmbusError::Unhandled(other),
            )),
        }
    }

    fn initiate_contact(
        &mut self,
        from: &str,
        payload: &[u8],
    ) -> Result<Handled, (String, VmbusError)> {
        let need = size_of::<InitiateContact>();
        let Ok((msg, _)) = InitiateContact::read_from_prefix(payload) else {
            return Err((
                format!("INITIATE_CONTACT from {from}"),
                VmbusError::Short {
                    kind: ChannelMessageType::INITIATE_CONTACT,
                    len: payload.len(),
                    need,
                },
            ));
        };
        let version = Version(msg.vmbus_version_requested);
        let target = msg.target_vcpu;
        let raw_sint = if version.names_sint_and_connection() {
            (msg.interrupt_page_or_sint & 0xFF) as u8
        } else {
            VMBUS_MESSAGE_SINT
        };
        let (page1, page2) = (msg.monitor_page1, msg.monitor_page2);
        let received = format!(
            "INITIATE_CONTACT from {from}: version {version}, target VP {target}, SINT \
             {raw_sint}, monitor pages {page1:#x} {page2:#x}"
        );
        let vp = VpIndex(target);
        if !self.vps.contains(&vp) {
            return Err((received, VmbusError::NoSuchVp(target)));
        }
        let Some(sint) = SintIndex::new(u32::from(raw_sint)) else {
            return Err((received, VmbusError::BadSint(raw_sint)));
        };
        let supported = self.versions.contains(&version);
        let response = VersionResponse {
            header: ChannelMessageHeader {
                msgtype: ChannelMessageType::VERSION_RESPONSE.0,
                padding: 0,
            },
            version_supported: u8::from(supported),
            connection_state: 0,
            padding: 0,
            msg_conn_id: if supported && version.names_sint_and_connection() {
                VMBUS_MESSAGE_CONNECTION_ID
            } else {
                0
            },
        };
        let summary = if supported {
            let c = Connection { version, vp, sint };
            self.connection = Some(c);
            self.last = Some(c);
            if version.names_sint_and_connection() {
                format!(
                    "VERSION_RESPONSE: version {version} supported, later messages to \
                     connection {VMBUS_MESSAGE_CONNECTION_ID}"
                )
            } else {
                format!("VERSION_RESPONSE: version {version} supported")
            }
        } else {
            self.connection = None;
            format!("VERSION_RESPONSE: version {version} not supported")
        };
        Ok(Handled {
            received,
            reply: Some(Reply {
                vp,
                sint,
                payload: response.as_bytes().to_vec(),
                summary,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmbus::messages::VMBUS_MESSAGE_CONNECTION_ID_4;

    fn contact(version: Version, vp: u32, sint: u8) -> Vec<u8> {
        InitiateContact {
            header: ChannelMessageHeader {
                msgtype: ChannelMessageType::INITIATE_CONTACT.0,
                padding: 0,
            },
            vmbus_version_requested: version.0,
            target_vcpu: vp,
            interrupt_page_or_sint: u64::from(sint),
            monitor_page1: 0x10_0000,
            monitor_page2: 0x10_1000,
        }
        .as_bytes()
        .to_vec()
    }

    fn response(r: &Reply) -> VersionResponse {
        VersionResponse::read_from_bytes(&r.payload).unwrap()
    }

    fn host(max: Version) -> ControlPlane {
        ControlPlane::new(max, vec![VpIndex(0), VpIndex(1)])
    }

    #[test]
    fn guest_stepping_down_settles_on_the_highest_common_version() {
        let mut h = host(Version::WIN10_V4_1);
        for v in [
            Version::WIN10_V5_3,
            Version::WIN10_V5_2,
            Version::WIN10_V5_1,
            Version::WIN10_V5,
        ] {
            let r = h
                .handle(VpIndex(0), VMBUS_MESSAGE_CONNECTION_ID_4, &contact(v, 0, 2))
                .unwrap()
                .reply
                .unwrap();
            assert_eq!(response(&r).version_supported, 0, "{v}");
            assert_eq!(h.connection(), None);
        }
        let r = h
            .handle(
                VpIndex(0),
                VMBUS_MESSAGE_CONNECTION_ID,
                &contact(Version::WIN10_V4_1, 1, 0),
            )
            .unwrap()
            .reply
            .unwrap();
        let resp = response(&r);
        assert_eq!((resp.version_supported, { resp.msg_conn_id }), (1, 0));
        // Before 5.0 the SINT is fixed at 2 whatever the union holds.
        assert_eq!((r.vp, r.sint.get()), (VpIndex(1), 2));
        assert_eq!(h.connection().unwrap().version, Version::WIN10_V4_1);
    }

    #[test]
    fn v5_contact_names_sint_and_gets_a_connection_id() {
        let mut h = host(Version::WIN10_V5_3);
        let out = h
            .handle(VpIndex(1), 4, &contact(Version::WIN10_V5_3, 0, 5))
            .unwrap();
        assert!(out.received.contains("version 5.3"), "{}", out.received);
        let r = out.reply.unwrap();
        assert_eq!((r.vp, r.sint.get()), (VpIndex(0), 5));
        let resp = response(&r);
        assert_eq!((resp.version_supported, { resp.msg_conn_id }), (1, 1));
        assert_eq!(&r.payload[..4], &15u32.to_le_bytes());
    }

    #[test]
    fn request_offers_needs_a_connection_and_gets_all_offers_delivered() {
        let mut h = host(Version::WIN10_V5_3);
        let req = header_only(ChannelMessageType::REQUEST_OFFERS);
        let (_, e) = h.handle(VpIndex(0), 1, &req).unwrap_err();
        assert_eq!(
            e,
            VmbusError::NotConnected(ChannelMessageType::REQUEST_OFFERS)
        );
        h.handle(VpIndex(0), 4, &contact(Version::WIN10_V5_3, 1, 2))
            .unwrap();
        let r = h.handle(VpIndex(0), 1, &req).unwrap().reply.unwrap();
        assert_eq!(
            r.payload,
            header_only(ChannelMessageType::ALL_OFFERS_DELIVERED)
        );
        assert_eq!(
            (r.vp, r.sint.get()),
            (VpIndex(1), 2),
            "to the contact's target"
        );
    }

    #[test]
    fn unload_disconnects_and_answers_where_the_connection_was() {
        let mut h = host(Version::WIN10_V5_3);
        h.handle(VpIndex(0), 4, &contact(Version::WIN10_V5_3, 1, 3))
            .unwrap();
        let r = h
            .handle(VpIndex(0), 1, &header_only(ChannelMessageType::UNLOAD))
            .unwrap()
            .reply
            .unwrap();
        assert_eq!(r.payload, header_only(ChannelMessageType::UNLOAD_RESPONSE));
        assert_eq!((r.vp, r.sint.get()), (VpIndex(1), 3));
        assert_eq!(h.connection(), None);
        let req = header_only(ChannelMessageType::REQUEST_OFFERS);
        assert!(h.handle(VpIndex(0), 1, &req).is_err(), "disconnected now");
    }

    #[test]
    fn hostile_messages_are_refused_without_a_reply() {
        let mut h = host(Version::WIN10_V5_3);
        let short = &contact(Version::WIN10_V5_3, 0, 2)[..20];
        assert!(matches!(
            h.handle(VpIndex(0), 4, short).unwrap_err().1,
            VmbusError::Short { need: 40, .. }
        ));
        assert!(matches!(
            h.handle(VpIndex(0), 4, &[1, 2, 3]).unwrap_err().1,
            VmbusError::Short { need: 8, .. }
        ));
        assert_eq!(
            h.handle(VpIndex(0), 4, &contact(Version::WIN10_V5_3, 7, 2))
                .unwrap_err()
                .1,
            VmbusError::NoSuchVp(7)
        );
        assert_eq!(
            h.handle(VpIndex(0), 4, &contact(Version::WIN10_V5_3, 0, 16))
                .unwrap_err()
                .1,
            VmbusError::BadSint(16)
        );
        let open = header_only(ChannelMessageType(5));
        assert!(matches!(
            h.handle(VpIndex(0), 1, &open).unwrap_err().1,
            VmbusError::Unhandled(_)
        ));
        let weird = header_only(ChannelMessageType(u32::MAX));
        assert!(h.handle(VpIndex(0), 1, &weird).is_err());
        assert_eq!(h.connection(), None);
    }
}
