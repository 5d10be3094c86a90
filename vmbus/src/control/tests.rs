//! Control-plane state machine: every step of a channel's life, hostile messages at each, and
//! the guest's UNLOAD in the middle of each.

use zerocopy::FromBytes;

use super::*;
use crate::protocol::{GpadlCreated, OfferChannel, OpenResult, VersionResponse};
use crate::sim::messages::{self as m};

/// Records what the control plane asked of the host.
#[derive(Default)]
struct Hooks {
    opened: Vec<ChannelOpen>,
    closed: Vec<(u32, String)>,
    retargeted: Vec<(u32, VpIndex)>,
    /// Page frame numbers the host refuses (not RAM, a SynIC page).
    refused_pfns: Vec<u64>,
    refuse_open: bool,
}

impl ChannelHooks for Hooks {
    fn check_pages(&self, pfns: &mut dyn Iterator<Item = u64>) -> Result<(), String> {
        for p in pfns {
            if self.refused_pfns.contains(&p) {
                return Err(format!("page {p:#x} refused"));
            }
        }
        Ok(())
    }

    fn open(&mut self, open: &ChannelOpen) -> Result<(), String> {
        if self.refuse_open {
            return Err("no eventfd".into());
        }
        self.opened.push(open.clone());
        Ok(())
    }

    fn close(&mut self, relid: u32, why: &str) {
        self.closed.push((relid, why.to_string()));
    }

    fn retarget(&mut self, relid: u32, vp: VpIndex) {
        self.retargeted.push((relid, vp));
    }
}

const MSG: u32 = DEFAULT_MESSAGE_CONNECTION_ID_5;

struct Bus {
    plane: ControlPlane,
    hooks: Hooks,
}

impl Bus {
    fn new(max: Version) -> Self {
        let mut plane = ControlPlane::new(max, vec![VpIndex(0), VpIndex(1)], MSG);
        for (i, name) in ["heartbeat", "kvp"].iter().enumerate() {
            let (relid, replies) = plane
                .add_channel(ChannelSpec {
                    interface: Guid::from_u128(0x1000 + i as u128),
                    instance: Guid::from_u128(0x2000 + i as u128),
                    name: (*name).into(),
                })
                .unwrap();
            assert_eq!(relid, i as u32 + 1);
            assert!(replies.is_empty(), "nobody asked for offers yet");
        }
        Self {
            plane,
            hooks: Hooks::default(),
        }
    }

    fn send(&mut self, conn: u32, payload: &[u8]) -> Handled {
        self.plane
            .handle(VpIndex(0), conn, payload, &mut self.hooks)
    }

    /// Sends on the message connection; expects no refusal.
    fn ok(&mut self, payload: &[u8]) -> Vec<Reply> {
        let h = self.send(self.conn(), payload);
        assert_eq!(h.error, None, "{}", h.received);
        h.replies
    }

    fn conn(&self) -> u32 {
        self.plane
            .connection()
            .map_or(VMBUS_MESSAGE_CONNECTION_ID, |c| c.message_connection_id)
    }

    fn connect(&mut self) {
        let r = self.send(4, &m::contact(Version::WIN10_V5_3, 1, 2));
        assert_eq!(r.error, None);
        let resp = VersionResponse::read_from_bytes(&r.replies[0].payload).unwrap();
        assert_eq!({ resp.msg_conn_id }, MSG);
        let offers = self.ok(&m::header(ChannelMessageType::REQUEST_OFFERS));
        assert_eq!(offers.len(), 3, "two offers and ALLOFFERS_DELIVERED");
    }

    fn gpadl(&mut self, relid: u32, id: u32, pages: u64) -> Vec<Reply> {
        let pfns: Vec<u64> = (0..pages)
            .map(|p| 0x100 + u64::from(id) * 0x100 + p)
            .collect();
        let mut out = Vec::new();
        for msg in m::gpadl(relid, id, &pfns) {
            out.extend(self.ok(&msg));
        }
        out
    }

    fn open(&mut self, relid: u32, id: u32) -> OpenResult {
        self.gpadl(relid, id, 8);
        let r = self.ok(&m::open(relid, id, 1, 4));
        OpenResult::read_from_bytes(&r[0].payload).unwrap()
    }

    fn unload(&mut self) {
        let r = self.ok(&m::header(ChannelMessageType::UNLOAD));
        assert_eq!(
            r[0].payload,
            header_only(ChannelMessageType::UNLOAD_RESPONSE)
        );
        assert_eq!(self.plane.connection(), None);
        assert_eq!(self.plane.gpadl_usage(), (0, 0), "UNLOAD drops every GPADL");
        for relid in self.plane.relids() {
            assert_eq!(
                self.plane.channel_state(relid),
                Some(ChannelState::Unoffered)
            );
        }
    }

    /// After an UNLOAD the guest can connect and use everything again.
    fn reconnect_and_open(&mut self) {
        self.connect();
        assert_eq!({ self.open(1, 0x77).status }, 0);
    }
}

fn msg_type(r: &Reply) -> u32 {
    u32::from_le_bytes(r.payload[..4].try_into().unwrap())
}

#[test]
fn guest_stepping_down_settles_on_the_highest_common_version() {
    let mut b = Bus::new(Version::WIN10_V4_1);
    for v in [
        Version::WIN10_V5_3,
        Version::WIN10_V5_2,
        Version::WIN10_V5_1,
        Version::WIN10_V5,
    ] {
        let h = b.send(4, &m::contact(v, 0, 2));
        let resp = VersionResponse::read_from_bytes(&h.replies[0].payload).unwrap();
        assert_eq!(resp.version_supported, 0, "{v}");
        assert_eq!(b.plane.connection(), None);
    }
    let h = b.send(1, &m::contact(Version::WIN10_V4_1, 1, 0));
    let resp = VersionResponse::read_from_bytes(&h.replies[0].payload).unwrap();
    assert_eq!((resp.version_supported, { resp.msg_conn_id }), (1, 0));
    // Before 5.0 the SINT is 2 whatever the union holds, and messages stay on connection 1.
    assert_eq!((h.replies[0].vp, h.replies[0].sint.get()), (VpIndex(1), 2));
    let c = b.plane.connection().unwrap();
    assert_eq!(
        (c.version, c.message_connection_id),
        (Version::WIN10_V4_1, 1)
    );
}

#[test]
fn versions_3_0_to_5_3_are_spoken_and_older_ones_refused() {
    for v in Version::ALL {
        let mut b = Bus::new(Version::WIN10_V5_3);
        let conn = if v.names_sint_and_connection() { 4 } else { 1 };
        let h = b.send(conn, &m::contact(v, 0, 2));
        let resp = VersionResponse::read_from_bytes(&h.replies[0].payload).unwrap();
        assert_eq!(resp.version_supported, 1, "{v}");
    }
    let mut b = Bus::new(Version::WIN10_V5_3);
    let h = b.send(1, &m::contact(Version(2 << 16 | 4), 0, 2));
    let resp = VersionResponse::read_from_bytes(&h.replies[0].payload).unwrap();
    assert_eq!(resp.version_supported, 0, "2.4 is older than 3.0");
}

#[test]
fn five_x_messages_must_use_the_named_connection() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    // 5.x contact on connection 1, or 4.x contact on connection 4: refused, no reply.
    let h = b.send(1, &m::contact(Version::WIN10_V5_3, 0, 2));
    assert!(matches!(
        h.error,
        Some(VmbusError::WrongConnection { want: 4, .. })
    ));
    assert!(h.replies.is_empty());
    let h = b.send(4, &m::contact(Version::WIN10, 0, 2));
    assert!(matches!(
        h.error,
        Some(VmbusError::WrongConnection { want: 1, .. })
    ));
    b.connect();
    // REQUESTOFFERS on connection 1 after a 5.3 contact named another one.
    let h = b.send(1, &m::header(ChannelMessageType::REQUEST_OFFERS));
    assert_eq!(
        h.error,
        Some(VmbusError::WrongConnection {
            kind: ChannelMessageType::REQUEST_OFFERS,
            got: 1,
            want: MSG
        })
    );
}

#[test]
fn offers_carry_guids_relid_connection_and_a_dedicated_interrupt() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.send(4, &m::contact(Version::WIN10_V5_3, 1, 3));
    let replies = b.ok(&m::header(ChannelMessageType::REQUEST_OFFERS));
    assert_eq!(
        replies.iter().map(msg_type).collect::<Vec<_>>(),
        [1, 1, 4],
        "OFFERCHANNEL x2, ALLOFFERS_DELIVERED"
    );
    let o = OfferChannel::read_from_bytes(&replies[1].payload).unwrap();
    assert_eq!({ o.offer.if_type }, Guid::from_u128(0x1001));
    assert_eq!({ o.offer.if_instance }, Guid::from_u128(0x2001));
    assert_eq!(
        ({ o.child_relid }, { o.connection_id }, {
            o.is_dedicated_interrupt
        }),
        (2, CHANNEL_CONNECTION_BASE + 2, 1)
    );
    assert_eq!(
        o.monitor_allocated, 0,
        "the guest signals with HvSignalEvent"
    );
    assert!(replies
        .iter()
        .all(|r| (r.vp, r.sint.get()) == (VpIndex(1), 3)));
    assert_eq!(b.plane.channel_state(1), Some(ChannelState::Offered));
    // A channel added while connected is offered at once.
    let (relid, now) = b
        .plane
        .add_channel(ChannelSpec {
            interface: Guid::from_u128(9),
            instance: Guid::from_u128(10),
            name: "late".into(),
        })
        .unwrap();
    assert_eq!((relid, now.len(), msg_type(&now[0])), (3, 1, 1));
}

#[test]
fn gpadl_open_close_teardown() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    // A 40-page GPADL takes a header and a body; GPADL_CREATED comes after the last.
    let replies = b.gpadl(1, 0xE1E10, 40);
    assert_eq!(replies.len(), 1);
    let created = GpadlCreated::read_from_bytes(&replies[0].payload).unwrap();
    assert_eq!(
        ({ created.child_relid }, { created.gpadl }, {
            created.creation_status
        }),
        (1, 0xE1E10, 0)
    );
    assert_eq!(b.plane.gpadl_usage(), (1, 40));
    let r = b.ok(&m::open(1, 0xE1E10, 1, 4));
    let res = OpenResult::read_from_bytes(&r[0].payload).unwrap();
    assert_eq!(
        ({ res.child_relid }, { res.openid }, { res.status }),
        (1, 1, 0)
    );
    let o = &b.hooks.opened[0];
    assert_eq!((o.relid, o.vp, o.sint.get()), (1, VpIndex(1), 2));
    assert_eq!(o.guest_to_host.len(), 4);
    assert_eq!(o.host_to_guest.len(), 36);
    assert_eq!(o.guest_to_host[0], 0x100 + 0xE1E10 * 0x100);
    assert!(matches!(
        b.plane.channel_state(1),
        Some(ChannelState::Open {
            gpadl: 0xE1E10,
            host_closed: false,
            ..
        })
    ));
    // Opened twice: refused with a failure status.
    let h = b.send(MSG, &m::open(1, 0xE1E10, 1, 4));
    assert!(matches!(h.error, Some(VmbusError::ChannelState { .. })));
    assert_ne!(
        {
            OpenResult::read_from_bytes(&h.replies[0].payload)
                .unwrap()
                .status
        },
        0
    );
    // MODIFYCHANNEL (5.3: answered).
    let r = b.ok(&m::modify(1, 0));
    assert_eq!(msg_type(&r[0]), 24);
    assert_eq!(b.hooks.retargeted, [(1, VpIndex(0))]);
    assert!(b
        .ok(&m::relid_message(ChannelMessageType::CLOSE_CHANNEL, 1))
        .is_empty());
    assert_eq!(b.hooks.closed, [(1, "closed by the guest".to_string())]);
    assert_eq!(b.plane.channel_state(1), Some(ChannelState::Offered));
    let r = b.ok(&m::teardown(1, 0xE1E10));
    assert_eq!(msg_type(&r[0]), 12, "GPADL_TORNDOWN");
    assert_eq!(b.plane.gpadl_usage(), (0, 0));
    // And again: open works after a close.
    assert_eq!({ b.open(1, 5).status }, 0);
}

#[test]
fn hostile_opens_are_refused_with_a_status() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.gpadl(1, 7, 8);
    b.gpadl(2, 8, 8);
    let status = |h: &Handled| {
        OpenResult::read_from_bytes(&h.replies[0].payload)
            .unwrap()
            .status
    };
    // Another channel's GPADL, an unknown GPADL, a split leaving a ring without data, a VP
    // that does not exist.
    for (msg, want) in [
        (m::open(1, 8, 0, 4), "GPADL"),
        (m::open(1, 99, 0, 4), "GPADL"),
        (m::open(1, 7, 0, 1), "data page"),
        (m::open(1, 7, 0, 7), "data page"),
        (m::open(1, 7, 5, 4), "VP 5"),
    ] {
        let h = b.send(MSG, &msg);
        let e = h.error.clone().unwrap().to_string();
        assert!(e.contains(want), "{e}");
        assert_eq!(status(&h), STATUS_UNSUCCESSFUL);
    }
    // The host cannot take the channel over.
    b.hooks.refuse_open = true;
    let h = b.send(MSG, &m::open(1, 7, 0, 4));
    assert!(matches!(h.error, Some(VmbusError::OpenFailed { .. })));
    assert_eq!(status(&h), STATUS_UNSUCCESSFUL);
    b.hooks.refuse_open = false;
    // A SynIC page moved onto the GPADL since it was created.
    b.hooks.refused_pfns.push(0x100 + 7 * 0x100 + 5);
    let h = b.send(MSG, &m::open(1, 7, 0, 4));
    assert!(matches!(h.error, Some(VmbusError::GpadlPages { .. })));
    b.hooks.refused_pfns.clear();
    assert!(b.hooks.opened.is_empty());
    // Unknown relid: nothing to answer.
    let h = b.send(MSG, &m::open(9, 7, 0, 4));
    assert_eq!(h.error, Some(VmbusError::NoSuchChannel(9)));
    assert!(h.replies.is_empty());
    assert_eq!({ b.ok(&m::open(1, 7, 0, 4)).len() }, 1);
    assert_eq!(b.hooks.opened.len(), 1);
    // Open again while open: refused, and the host opens (registers) nothing more.
    let h = b.send(MSG, &m::open(1, 7, 0, 4));
    assert_eq!(
        h.error,
        Some(VmbusError::ChannelState {
            relid: 1,
            state: "open"
        })
    );
    assert_eq!(status(&h), STATUS_UNSUCCESSFUL);
    assert_eq!(b.hooks.opened.len(), 1);
}

#[test]
fn hostile_gpadls_are_refused_and_bounded() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    // Pages the host refuses (outside RAM, a SynIC page).
    b.hooks.refused_pfns.push(0x100 + 3 * 0x100 + 2);
    let msgs = m::gpadl(
        1,
        3,
        &(0..8).map(|p| 0x100 + 3 * 0x100 + p).collect::<Vec<_>>(),
    );
    let h = b.send(MSG, &msgs[0]);
    assert!(matches!(
        h.error,
        Some(VmbusError::GpadlPages { gpadl: 3, .. })
    ));
    let c = GpadlCreated::read_from_bytes(&h.replies[0].payload).unwrap();
    assert_eq!({ c.creation_status }, STATUS_UNSUCCESSFUL);
    assert_eq!(b.plane.gpadl_usage(), (0, 0));
    // A GPADL for a channel that does not exist, a duplicate id, a body for nothing.
    let h = b.send(MSG, &m::gpadl(9, 4, &[1, 2])[0]);
    assert_eq!(h.error, Some(VmbusError::NoSuchChannel(9)));
    b.gpadl(1, 5, 2);
    let h = b.send(MSG, &m::gpadl(1, 5, &[1, 2])[0]);
    assert_eq!(h.error, Some(VmbusError::GpadlExists(5)));
    assert!(
        h.replies.is_empty(),
        "a failure would be taken for GPADL 5's"
    );
    let body = &m::gpadl(1, 6, &(0..30).collect::<Vec<_>>())[1];
    let h = b.send(MSG, body);
    assert!(matches!(
        h.error,
        Some(VmbusError::NoSuchGpadl { gpadl: 6, .. })
    ));
    // A body that overflows what the header announced drops the partial GPADL.
    let msgs = m::gpadl(1, 6, &(0..30).collect::<Vec<_>>());
    b.ok(&msgs[0]);
    assert_eq!(b.plane.gpadl_usage().0, 2, "GPADL 6 is being described");
    let mut long = msgs[1].clone();
    long.extend_from_slice(&[0; 8]);
    let h = b.send(MSG, &long);
    assert!(matches!(h.error, Some(VmbusError::Gpadl { gpadl: 6, .. })));
    assert_ne!(
        {
            GpadlCreated::read_from_bytes(&h.replies[0].payload)
                .unwrap()
                .creation_status
        },
        0
    );
    assert_eq!(b.plane.gpadl_usage(), (1, 2));
    // Teardown of a GPADL of another channel: not answered.
    let h = b.send(MSG, &m::teardown(2, 5));
    assert!(matches!(h.error, Some(VmbusError::NoSuchGpadl { .. })));
}

#[test]
fn gpadl_count_bound_is_enforced_at_the_bound() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    for id in 0..MAX_GPADLS as u32 {
        let h = b.send(MSG, &m::gpadl(1, id, &[u64::from(id)])[0]);
        assert_eq!(h.error, None, "GPADL {id}");
    }
    assert_eq!(b.plane.gpadl_usage(), (MAX_GPADLS, MAX_GPADLS));
    let h = b.send(MSG, &m::gpadl(1, 9999, &[1])[0]);
    assert!(matches!(h.error, Some(VmbusError::GpadlBound { .. })));
    assert_ne!(
        {
            GpadlCreated::read_from_bytes(&h.replies[0].payload)
                .unwrap()
                .creation_status
        },
        0
    );
    // One torn down makes room for one.
    b.ok(&m::teardown(1, 0));
    assert_eq!(b.send(MSG, &m::gpadl(1, 9999, &[1])[0]).error, None);
}

#[test]
fn gpadl_page_bound_is_enforced_at_the_bound() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    // Headers announcing the largest GPADL (8190 pages) until the total bound is reached;
    // the bodies never come, but the announced pages count.
    let per = crate::gpadl::MAX_GPADL_PAGES;
    let full = MAX_GPADL_TOTAL_PAGES / per;
    for id in 0..full as u32 {
        let h = b.send(MSG, &m::gpadl(1, id, &vec![1; per])[0]);
        assert_eq!(h.error, None);
    }
    let left = MAX_GPADL_TOTAL_PAGES - full * per;
    assert_eq!(b.plane.gpadl_usage().1, full * per);
    // Exactly the pages left: accepted; one more page anywhere: refused.
    assert_eq!(
        b.send(MSG, &m::gpadl(1, 500, &vec![1; left])[0]).error,
        None
    );
    assert_eq!(b.plane.gpadl_usage().1, MAX_GPADL_TOTAL_PAGES);
    let h = b.send(MSG, &m::gpadl(1, 501, &[1])[0]);
    assert!(matches!(h.error, Some(VmbusError::GpadlBound { .. })));
}

#[test]
fn teardown_of_an_open_rings_gpadl_closes_the_channel_on_the_host() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.open(1, 3);
    let r = b.ok(&m::teardown(1, 3));
    assert_eq!(msg_type(&r[0]), 12);
    assert_eq!(b.hooks.closed.len(), 1);
    assert!(b.hooks.closed[0].1.contains("torn down"));
    assert!(matches!(
        b.plane.channel_state(1),
        Some(ChannelState::Open {
            host_closed: true,
            ..
        })
    ));
    // The guest's close is still accepted, without closing twice.
    b.ok(&m::relid_message(ChannelMessageType::CLOSE_CHANNEL, 1));
    assert_eq!(b.hooks.closed.len(), 1);
}

#[test]
fn rescind_then_relid_released_frees_the_relid() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.open(2, 3);
    b.gpadl(2, 4, 2);
    let r = b.plane.rescind(2, &mut b.hooks).unwrap();
    assert_eq!(msg_type(&r[0]), 2);
    assert_eq!(b.hooks.closed, [(2, "rescinded by the host".to_string())]);
    assert_eq!(b.plane.channel_state(2), Some(ChannelState::Rescinded));
    // No new GPADL or open on a rescinded channel; a second rescind is refused.
    let h = b.send(MSG, &m::gpadl(2, 5, &[1])[0]);
    assert!(matches!(h.error, Some(VmbusError::ChannelState { .. })));
    assert!(b.plane.rescind(2, &mut b.hooks).is_err());
    // Linux closes the channel and releases the relid without tearing GPADLs down.
    b.ok(&m::relid_message(ChannelMessageType::CLOSE_CHANNEL, 2));
    b.ok(&m::relid_message(ChannelMessageType::RELID_RELEASED, 2));
    assert_eq!(b.plane.channel_state(2), None);
    assert_eq!(b.plane.gpadl_usage(), (0, 0), "its GPADLs went with it");
    assert_eq!(b.hooks.closed.len(), 1);
    // RELID_RELEASED of a channel not rescinded: refused.
    let h = b.send(
        MSG,
        &m::relid_message(ChannelMessageType::RELID_RELEASED, 1),
    );
    assert!(matches!(h.error, Some(VmbusError::ChannelState { .. })));
    // The relid is free again.
    let (relid, offer) = b
        .plane
        .add_channel(ChannelSpec {
            interface: Guid::from_u128(5),
            instance: Guid::from_u128(6),
            name: "again".into(),
        })
        .unwrap();
    assert_eq!((relid, offer.len()), (2, 1));
}

#[test]
fn modify_channel_needs_4_1_and_answers_from_5_3() {
    for (v, conn, answered) in [
        (Version::WIN10_V5_2, 4, false),
        (Version::WIN10_V4_1, 1, false),
    ] {
        let mut b = Bus::new(Version::WIN10_V5_3);
        b.send(conn, &m::contact(v, 0, 2));
        b.ok(&m::header(ChannelMessageType::REQUEST_OFFERS));
        b.open(1, 3);
        let r = b.ok(&m::modify(1, 1));
        assert_eq!(r.is_empty(), !answered, "{v}");
        assert_eq!(b.hooks.retargeted, [(1, VpIndex(1))]);
    }
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.send(1, &m::contact(Version::WIN10, 0, 2));
    b.ok(&m::header(ChannelMessageType::REQUEST_OFFERS));
    b.open(1, 3);
    let h = b.send(1, &m::modify(1, 1));
    assert_eq!(h.error, Some(VmbusError::ModifyUnsupported(Version::WIN10)));
    // 5.3: a VP that does not exist, a channel not open: answered with a failure.
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    let h = b.send(MSG, &m::modify(1, 1));
    assert!(matches!(h.error, Some(VmbusError::ChannelState { .. })));
    assert_eq!(msg_type(&h.replies[0]), 24);
    b.open(1, 3);
    let h = b.send(MSG, &m::modify(1, 9));
    assert_eq!(h.error, Some(VmbusError::NoSuchVp(9)));
    assert!(b.hooks.retargeted.is_empty());
}

#[test]
fn unload_after_offers() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.unload();
    assert!(b.hooks.closed.is_empty());
    b.reconnect_and_open();
}

#[test]
fn unload_during_a_gpadl_description() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    let msgs = m::gpadl(1, 9, &(0..60).collect::<Vec<_>>());
    b.ok(&msgs[0]);
    b.unload();
    // The body of the forgotten GPADL is refused after reconnecting.
    b.connect();
    let h = b.send(MSG, &msgs[1]);
    assert!(matches!(h.error, Some(VmbusError::NoSuchGpadl { .. })));
    assert_eq!({ b.open(1, 0x77).status }, 0);
}

#[test]
fn unload_with_a_gpadl_created() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.gpadl(1, 9, 8);
    b.unload();
    b.reconnect_and_open();
    // The old GPADL id means nothing now.
    let h = b.send(MSG, &m::teardown(1, 9));
    assert!(matches!(h.error, Some(VmbusError::NoSuchGpadl { .. })));
}

#[test]
fn unload_with_channels_open() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.open(1, 3);
    b.open(2, 4);
    b.unload();
    let mut closed = b.hooks.closed.clone();
    closed.sort();
    assert_eq!(
        closed,
        [
            (1, "the guest unloaded".to_string()),
            (2, "the guest unloaded".to_string())
        ]
    );
    b.reconnect_and_open();
}

#[test]
fn relid_released_after_unload_is_accepted_as_linux_sends_it() {
    // Linux's rmmod hv_vmbus: UNLOAD first, then RELID_RELEASED for every channel.
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.open(1, 3);
    b.unload();
    for relid in [1, 2] {
        let h = b.send(
            MSG,
            &m::relid_message(ChannelMessageType::RELID_RELEASED, relid),
        );
        assert_eq!(h.error, None, "{}", h.received);
        assert!(h.replies.is_empty());
    }
    assert_eq!(
        b.plane.relids(),
        [1, 2],
        "the host's channels stay for the next connection"
    );
    // Never connected, or on another connection id: refused.
    let mut fresh = Bus::new(Version::WIN10_V5_3);
    let h = fresh.send(
        MSG,
        &m::relid_message(ChannelMessageType::RELID_RELEASED, 1),
    );
    assert!(matches!(h.error, Some(VmbusError::NotConnected(_))));
    let h = b.send(1, &m::relid_message(ChannelMessageType::RELID_RELEASED, 1));
    assert!(matches!(h.error, Some(VmbusError::NotConnected(_))));
    b.reconnect_and_open();
}

#[test]
fn unload_after_a_close() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.open(1, 3);
    b.ok(&m::relid_message(ChannelMessageType::CLOSE_CHANNEL, 1));
    b.unload();
    assert_eq!(b.hooks.closed.len(), 1, "not closed twice");
    b.reconnect_and_open();
}

#[test]
fn unload_with_a_rescind_pending() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.open(2, 4);
    b.plane.rescind(2, &mut b.hooks).unwrap();
    b.unload();
    // The rescinded channel is gone (no RELID_RELEASED needed after an UNLOAD); the other
    // one is offered again.
    assert_eq!(b.plane.relids(), [1]);
    assert_eq!(b.hooks.closed.len(), 1, "closed at the rescind only");
    b.connect_expecting(1);
    assert_eq!({ b.open(1, 0x77).status }, 0);
}

impl Bus {
    fn connect_expecting(&mut self, offers: usize) {
        self.send(4, &m::contact(Version::WIN10_V5_3, 1, 2));
        let r = self.ok(&m::header(ChannelMessageType::REQUEST_OFFERS));
        assert_eq!(r.len(), offers + 1);
    }
}

#[test]
fn contact_while_connected_starts_over() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    b.connect();
    b.open(1, 3);
    let h = b.send(4, &m::contact(Version::WIN10_V5_3, 0, 2));
    assert!(
        h.replies[0].summary.contains("dropped"),
        "{}",
        h.replies[0].summary
    );
    assert_eq!(b.hooks.closed.len(), 1);
    assert_eq!(b.plane.gpadl_usage(), (0, 0));
    assert_eq!(b.plane.channel_state(1), Some(ChannelState::Unoffered));
}

#[test]
fn hostile_messages_are_refused_without_a_reply() {
    let mut b = Bus::new(Version::WIN10_V5_3);
    let short = &m::contact(Version::WIN10_V5_3, 0, 2)[..20];
    assert!(matches!(
        b.send(4, short).error,
        Some(VmbusError::Short { need: 40, .. })
    ));
    assert!(matches!(
        b.send(4, &[1, 2, 3]).error,
        Some(VmbusError::Short { need: 8, .. })
    ));
    assert_eq!(
        b.send(4, &m::contact(Version::WIN10_V5_3, 7, 2)).error,
        Some(VmbusError::NoSuchVp(7))
    );
    assert_eq!(
        b.send(4, &m::contact(Version::WIN10_V5_3, 0, 16)).error,
        Some(VmbusError::BadSint(16))
    );
    // Before the connection.
    for t in [3, 5, 7, 8, 9, 11, 13, 22] {
        let h = b.send(1, &m::header(ChannelMessageType(t)));
        assert_eq!(
            h.error,
            Some(VmbusError::NotConnected(ChannelMessageType(t)))
        );
        assert!(h.replies.is_empty());
    }
    b.connect();
    // Host-to-guest types, unknown types, short channel messages.
    for t in [1, 2, 4, 6, 10, 12, 15, 17, 21, 24, 99, u32::MAX] {
        let h = b.send(MSG, &m::header(ChannelMessageType(t)));
        assert!(h.error.is_some(), "{t}");
        assert!(h.replies.is_empty(), "{t}");
    }
    for t in [5, 7, 8, 9, 11, 13, 22] {
        let h = b.send(MSG, &m::header(ChannelMessageType(t)));
        assert!(matches!(h.error, Some(VmbusError::Short { .. })), "{t}");
    }
    assert!(b.hooks.opened.is_empty() && b.hooks.closed.is_empty());
}

#[test]
fn channel_table_is_bounded() {
    let mut plane = ControlPlane::new(Version::WIN10_V5_3, vec![VpIndex(0)], MSG);
    for i in 0..MAX_CHANNELS {
        let (relid, _) = plane
            .add_channel(ChannelSpec {
                interface: Guid::from_u128(i as u128),
                instance: Guid::from_u128(i as u128),
                name: String::new(),
            })
            .unwrap();
        assert_eq!(relid as usize, i + 1);
    }
    assert_eq!(
        plane.add_channel(ChannelSpec {
            interface: Guid::default(),
            instance: Guid::default(),
            name: String::new(),
        }),
        Err(VmbusError::TooManyChannels)
    );
}
