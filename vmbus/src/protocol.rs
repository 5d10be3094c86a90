//! The VMBus channel-management protocol: the messages guest and host exchange in SynIC message
//! payloads, as zerocopy types with their sizes checked at compile time. The layouts are public
//! (Linux's `include/linux/hyperv.h` describes them); names follow Linux's `CHANNELMSG_*`.

// zerocopy's derives emit helper items the lint cannot see a `Debug` for; every type here
// derives `Debug`.
#![allow(missing_debug_implementations)]

use std::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The SynIC message type of every VMBus channel message (`HVMSG_...` 1, "channel message").
pub const HV_MESSAGE_VMBUS: u32 = 1;
/// The connection id the guest posts channel messages to before protocol 5.0.
pub const VMBUS_MESSAGE_CONNECTION_ID: u32 = 1;
/// The connection id a guest speaking protocol 5.0 or later posts INITIATE_CONTACT to.
pub const VMBUS_MESSAGE_CONNECTION_ID_4: u32 = 4;
/// The SINT VMBus messages (and channel event flags) arrive on before protocol 5.0; from 5.0
/// on the guest names it in INITIATE_CONTACT (Linux still names 2).
pub const VMBUS_MESSAGE_SINT: u8 = 2;
/// Largest channel message: a SynIC message payload.
pub const MAX_MESSAGE_SIZE: usize = synic::message::MAX_PAYLOAD_SIZE;
/// Bytes of driver-defined data in an offer (`MAX_USER_DEFINED_BYTES`).
pub const MAX_USER_DEFINED_BYTES: usize = 120;

/// A channel message type (`enum vmbus_channel_message_type`), the first u32 of a payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelMessageType(pub u32);

impl ChannelMessageType {
    /// Host: a channel is offered.
    pub const OFFER_CHANNEL: Self = Self(1);
    /// Host: an offer is withdrawn.
    pub const RESCIND_CHANNEL_OFFER: Self = Self(2);
    /// Guest asks for the channel offers.
    pub const REQUEST_OFFERS: Self = Self(3);
    /// Host: every offer was sent.
    pub const ALL_OFFERS_DELIVERED: Self = Self(4);
    /// Guest opens a channel on a ring-buffer GPADL.
    pub const OPEN_CHANNEL: Self = Self(5);
    /// Host answers OPENCHANNEL.
    pub const OPEN_CHANNEL_RESULT: Self = Self(6);
    /// Guest closes a channel.
    pub const CLOSE_CHANNEL: Self = Self(7);
    /// Guest describes a GPADL (first part of its page list).
    pub const GPADL_HEADER: Self = Self(8);
    /// Guest continues a GPADL's page list.
    pub const GPADL_BODY: Self = Self(9);
    /// Host answers a complete GPADL.
    pub const GPADL_CREATED: Self = Self(10);
    /// Guest withdraws a GPADL.
    pub const GPADL_TEARDOWN: Self = Self(11);
    /// Host confirms GPADL_TEARDOWN.
    pub const GPADL_TORNDOWN: Self = Self(12);
    /// Guest releases the relid of a rescinded channel.
    pub const RELID_RELEASED: Self = Self(13);
    /// Guest opens the connection at a protocol version.
    pub const INITIATE_CONTACT: Self = Self(14);
    /// Host answers INITIATE_CONTACT.
    pub const VERSION_RESPONSE: Self = Self(15);
    /// Guest closes the connection.
    pub const UNLOAD: Self = Self(16);
    /// Host confirms UNLOAD.
    pub const UNLOAD_RESPONSE: Self = Self(17);
    /// Guest asks for a hv_sock connection (not offered by this host).
    pub const TL_CONNECT_REQUEST: Self = Self(21);
    /// Guest moves a channel's interrupts to another VP (4.1+).
    pub const MODIFY_CHANNEL: Self = Self(22);
    /// Host answers MODIFYCHANNEL (5.3+).
    pub const MODIFY_CHANNEL_RESPONSE: Self = Self(24);

    /// The name Linux gives the type (`CHANNELMSG_*` without the prefix).
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 25] = [
            "INVALID",
            "OFFERCHANNEL",
            "RESCIND_CHANNELOFFER",
            "REQUESTOFFERS",
            "ALLOFFERS_DELIVERED",
            "OPENCHANNEL",
            "OPENCHANNEL_RESULT",
            "CLOSECHANNEL",
            "GPADL_HEADER",
            "GPADL_BODY",
            "GPADL_CREATED",
            "GPADL_TEARDOWN",
            "GPADL_TORNDOWN",
            "RELID_RELEASED",
            "INITIATE_CONTACT",
            "VERSION_RESPONSE",
            "UNLOAD",
            "UNLOAD_RESPONSE",
            "18",
            "19",
            "20",
            "TL_CONNECT_REQUEST",
            "MODIFYCHANNEL",
            "TL_CONNECT_RESULT",
            "MODIFYCHANNEL_RESPONSE",
        ];
        NAMES.get(self.0 as usize).copied().unwrap_or("UNKNOWN")
    }
}

impl fmt::Debug for ChannelMessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ChannelMessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A VMBus protocol version: major in the high 16 bits, minor in the low 16.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32);

impl Version {
    /// Windows 8.1 (3.0): the oldest version this host speaks.
    pub const WIN8_1: Self = Self(3 << 16);
    /// Windows 10 (4.0).
    pub const WIN10: Self = Self(4 << 16);
    /// Windows 10 (4.1): MODIFYCHANNEL.
    pub const WIN10_V4_1: Self = Self(4 << 16 | 1);
    /// 5.0: INITIATE_CONTACT on connection 4 names the SINT; VERSION_RESPONSE names the
    /// connection for later messages.
    pub const WIN10_V5: Self = Self(5 << 16);
    /// 5.1.
    pub const WIN10_V5_1: Self = Self(5 << 16 | 1);
    /// 5.2.
    pub const WIN10_V5_2: Self = Self(5 << 16 | 2);
    /// 5.3: MODIFYCHANNEL_RESPONSE.
    pub const WIN10_V5_3: Self = Self(5 << 16 | 3);
    /// Every version this host speaks, newest first.
    pub const ALL: [Self; 7] = [
        Self::WIN10_V5_3,
        Self::WIN10_V5_2,
        Self::WIN10_V5_1,
        Self::WIN10_V5,
        Self::WIN10_V4_1,
        Self::WIN10,
        Self::WIN8_1,
    ];

    /// Major number.
    pub const fn major(self) -> u32 {
        self.0 >> 16
    }

    /// Minor number.
    pub const fn minor(self) -> u32 {
        self.0 & 0xFFFF
    }

    /// Whether INITIATE_CONTACT carries the SINT and VERSION_RESPONSE the connection id for
    /// later messages (5.0+).
    pub const fn names_sint_and_connection(self) -> bool {
        self.0 >= Self::WIN10_V5.0
    }

    /// Whether the guest may send MODIFYCHANNEL (4.1+).
    pub const fn has_modify_channel(self) -> bool {
        self.0 >= Self::WIN10_V4_1.0
    }

    /// Whether the host answers MODIFYCHANNEL with MODIFYCHANNEL_RESPONSE (5.3+).
    pub const fn has_modify_channel_response(self) -> bool {
        self.0 >= Self::WIN10_V5_3.0
    }

    /// Parses `X.Y` into one of [`Version::ALL`].
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('.')?;
        let v = Self(a.parse::<u32>().ok()? << 16 | b.parse::<u32>().ok()?);
        Self::ALL.contains(&v).then_some(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

/// A GUID in its Windows byte layout (`guid_t`): the first three fields little-endian.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Guid {
    /// First 32 bits.
    pub data1: u32,
    /// Next 16 bits.
    pub data2: u16,
    /// Next 16 bits.
    pub data3: u16,
    /// Last 64 bits, in order.
    pub data4: [u8; 8],
}

impl Guid {
    /// The GUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` as one 128-bit number.
    pub const fn from_u128(v: u128) -> Self {
        Self {
            data1: (v >> 96) as u32,
            data2: (v >> 80) as u16,
            data3: (v >> 64) as u16,
            data4: (v as u64).to_be_bytes(),
        }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1, self.data2, self.data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// `struct vmbus_channel_message_header`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ChannelMessageHeader {
    /// [`ChannelMessageType`].
    pub msgtype: u32,
    /// Zero.
    pub padding: u32,
}

impl ChannelMessageHeader {
    /// A header of type `t`.
    pub const fn new(t: ChannelMessageType) -> Self {
        Self {
            msgtype: t.0,
            padding: 0,
        }
    }
}

/// `struct vmbus_channel_initiate_contact` (40 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct InitiateContact {
    /// INITIATE_CONTACT.
    pub header: ChannelMessageHeader,
    /// The protocol version asked for ([`Version`]).
    pub vmbus_version_requested: u32,
    /// The VP the host is to send its messages to.
    pub target_vcpu: u32,
    /// Before 5.0: the GPA of the interrupt page. From 5.0: byte 0 is the SINT the guest takes
    /// messages on, byte 1 its VTL.
    pub interrupt_page_or_sint: u64,
    /// Monitor page (host to guest).
    pub monitor_page1: u64,
    /// Monitor page (guest to host).
    pub monitor_page2: u64,
}

/// `struct vmbus_channel_version_response` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct VersionResponse {
    /// VERSION_RESPONSE.
    pub header: ChannelMessageHeader,
    /// 1 when the requested version is accepted.
    pub version_supported: u8,
    /// 0: connected.
    pub connection_state: u8,
    /// Zero.
    pub padding: u16,
    /// From 5.0: the connection id the guest posts later messages to.
    pub msg_conn_id: u32,
}

/// `struct vmbus_channel_offer` (176 bytes): what a channel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct ChannelOffer {
    /// The device class (the GUID a guest driver binds to).
    pub if_type: Guid,
    /// This device (unique per offer: Linux names the device after it).
    pub if_instance: Guid,
    /// Zero.
    pub reserved1: u64,
    /// Zero.
    pub reserved2: u64,
    /// `VMBUS_CHANNEL_*` flags (0 for an ordinary device channel).
    pub chn_flags: u16,
    /// MMIO space the device wants, in MiB (0).
    pub mmio_megabytes: u16,
    /// Driver-defined bytes (pipe mode in the first u32 for pipes).
    pub user_def: [u8; MAX_USER_DEFINED_BYTES],
    /// 0 for a primary channel.
    pub sub_channel_index: u16,
    /// Zero.
    pub reserved3: u16,
}

/// `struct vmbus_channel_offer_channel` (196 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct OfferChannel {
    /// OFFERCHANNEL.
    pub header: ChannelMessageHeader,
    /// The channel.
    pub offer: ChannelOffer,
    /// The channel's id in every later message, and its event flag number.
    pub child_relid: u32,
    /// Monitor id (unused: `monitor_allocated` is 0).
    pub monitorid: u8,
    /// Bit 0: a monitor page bit is allocated (0 here: the guest signals with HvSignalEvent).
    pub monitor_allocated: u8,
    /// Bit 0: the channel has its own connection id and event flag (1 here).
    pub is_dedicated_interrupt: u16,
    /// The connection id the guest signals with HvSignalEvent.
    pub connection_id: u32,
}

impl OfferChannel {
    /// An all-zero offer message with its header set.
    pub fn new_zeroed_offer() -> Self {
        let mut o = <Self as zerocopy::FromZeros>::new_zeroed();
        o.header = ChannelMessageHeader::new(ChannelMessageType::OFFER_CHANNEL);
        o
    }
}

/// `struct vmbus_channel_rescind_offer`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct RescindOffer {
    /// RESCIND_CHANNELOFFER.
    pub header: ChannelMessageHeader,
    /// The channel withdrawn.
    pub child_relid: u32,
}

/// `struct vmbus_channel_open_channel` (148 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct OpenChannel {
    /// OPENCHANNEL.
    pub header: ChannelMessageHeader,
    /// The channel.
    pub child_relid: u32,
    /// Echoed in OPENCHANNEL_RESULT.
    pub openid: u32,
    /// The GPADL holding both rings.
    pub ringbuffer_gpadlhandle: u32,
    /// The VP the host signals the channel on.
    pub target_vp: u32,
    /// Page (within the GPADL) where the host-to-guest ring starts.
    pub downstream_ringbuffer_pageoffset: u32,
    /// Driver-defined bytes.
    pub userdata: [u8; MAX_USER_DEFINED_BYTES],
}

/// `struct vmbus_channel_open_result` (20 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct OpenResult {
    /// OPENCHANNEL_RESULT.
    pub header: ChannelMessageHeader,
    /// The channel.
    pub child_relid: u32,
    /// From OPENCHANNEL.
    pub openid: u32,
    /// 0: open; anything else: refused.
    pub status: u32,
}

/// `struct vmbus_channel_close_channel`, `struct vmbus_channel_relid_released` and
/// `struct vmbus_channel_rescind_offer` share this layout: a header and a relid.
pub type CloseChannel = RescindOffer;

/// `struct vmbus_channel_gpadl_header`'s fixed part (20 bytes); `range_buflen` bytes of
/// [`GpaRange`]s with their page numbers follow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct GpadlHeader {
    /// GPADL_HEADER.
    pub header: ChannelMessageHeader,
    /// The channel the GPADL belongs to.
    pub child_relid: u32,
    /// The guest-chosen GPADL id.
    pub gpadl: u32,
    /// Bytes of ranges (each an 8-byte [`GpaRange`] and 8 bytes per page number).
    pub range_buflen: u16,
    /// Number of ranges.
    pub rangecount: u16,
}

/// `struct gpa_range`'s fixed part (8 bytes); its page numbers (u64 each) follow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct GpaRange {
    /// Bytes the range covers.
    pub byte_count: u32,
    /// Where they start within the first page.
    pub byte_offset: u32,
}

/// `struct vmbus_channel_gpadl_body`'s fixed part (16 bytes); page numbers follow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct GpadlBody {
    /// GPADL_BODY.
    pub header: ChannelMessageHeader,
    /// Sequence number (Linux leaves it 0; not checked).
    pub msgnumber: u32,
    /// The GPADL continued.
    pub gpadl: u32,
}

/// `struct vmbus_channel_gpadl_created` (20 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct GpadlCreated {
    /// GPADL_CREATED.
    pub header: ChannelMessageHeader,
    /// From GPADL_HEADER.
    pub child_relid: u32,
    /// From GPADL_HEADER.
    pub gpadl: u32,
    /// 0: created; anything else: refused.
    pub creation_status: u32,
}

/// `struct vmbus_channel_gpadl_teardown` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct GpadlTeardown {
    /// GPADL_TEARDOWN.
    pub header: ChannelMessageHeader,
    /// The channel.
    pub child_relid: u32,
    /// The GPADL.
    pub gpadl: u32,
}

/// `struct vmbus_channel_gpadl_torndown` (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct GpadlTorndown {
    /// GPADL_TORNDOWN.
    pub header: ChannelMessageHeader,
    /// The GPADL.
    pub gpadl: u32,
}

/// `struct vmbus_channel_modifychannel` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct ModifyChannel {
    /// MODIFYCHANNEL.
    pub header: ChannelMessageHeader,
    /// The channel.
    pub child_relid: u32,
    /// The VP to signal from now on.
    pub target_vp: u32,
}

/// `struct vmbus_channel_modifychannel_response` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct ModifyChannelResponse {
    /// MODIFYCHANNEL_RESPONSE.
    pub header: ChannelMessageHeader,
    /// The channel.
    pub child_relid: u32,
    /// 0: done.
    pub status: u32,
}

const _: () = assert!(size_of::<ChannelMessageHeader>() == 8);
const _: () = assert!(size_of::<InitiateContact>() == 40);
const _: () = assert!(size_of::<VersionResponse>() == 16);
const _: () = assert!(size_of::<Guid>() == 16);
const _: () = assert!(size_of::<ChannelOffer>() == 176);
const _: () = assert!(size_of::<OfferChannel>() == 196);
const _: () = assert!(size_of::<RescindOffer>() == 12);
const _: () = assert!(size_of::<OpenChannel>() == 148);
const _: () = assert!(size_of::<OpenResult>() == 20);
const _: () = assert!(size_of::<GpadlHeader>() == 20);
const _: () = assert!(size_of::<GpaRange>() == 8);
const _: () = assert!(size_of::<GpadlBody>() == 16);
const _: () = assert!(size_of::<GpadlCreated>() == 20);
const _: () = assert!(size_of::<GpadlTeardown>() == 16);
const _: () = assert!(size_of::<GpadlTorndown>() == 12);
const _: () = assert!(size_of::<ModifyChannel>() == 16);
const _: () = assert!(size_of::<ModifyChannelResponse>() == 16);
const _: () = assert!(size_of::<OfferChannel>() <= MAX_MESSAGE_SIZE);

/// A header-only message of type `t`.
pub fn header_only(t: ChannelMessageType) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(ChannelMessageHeader::new(t).as_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_linux() {
        let mut ic = InitiateContact::default();
        ic.header.msgtype = ChannelMessageType::INITIATE_CONTACT.0;
        ic.vmbus_version_requested = Version::WIN10_V5_3.0;
        ic.target_vcpu = 1;
        ic.interrupt_page_or_sint = 2;
        ic.monitor_page1 = 0x1000;
        let b = ic.as_bytes();
        assert_eq!(&b[0..4], &14u32.to_le_bytes());
        assert_eq!(&b[8..12], &0x0005_0003u32.to_le_bytes());
        assert_eq!(&b[12..16], &1u32.to_le_bytes());
        assert_eq!(b[16], 2, "msg_sint is the first byte of the union");
        assert_eq!(&b[24..32], &0x1000u64.to_le_bytes());
        let r = VersionResponse {
            header: ChannelMessageHeader::new(ChannelMessageType::VERSION_RESPONSE),
            version_supported: 1,
            connection_state: 0,
            padding: 0,
            msg_conn_id: 1,
        };
        assert_eq!(
            r.as_bytes(),
            &[15, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn offer_fields_sit_where_linux_reads_them() {
        let mut o = OfferChannel::new_zeroed_offer();
        o.child_relid = 0x0102_0304;
        o.is_dedicated_interrupt = 1;
        o.connection_id = 0x00AB_CDEF;
        o.offer.sub_channel_index = 7;
        let b = o.as_bytes();
        // header 8 + offer 176 = 184: child_relid, then monitorid, monitor_allocated, the
        // dedicated-interrupt u16 and the connection id.
        assert_eq!(&b[184..188], &0x0102_0304u32.to_le_bytes());
        assert_eq!(&b[190..192], &1u16.to_le_bytes());
        assert_eq!(&b[192..196], &0x00AB_CDEFu32.to_le_bytes());
        assert_eq!(&b[8 + 172..8 + 174], &7u16.to_le_bytes());
    }

    #[test]
    fn guid_prints_and_encodes_like_windows() {
        // Linux's HV_SHUTDOWN_GUID: GUID_INIT(0x0e0b6031, 0x5213, 0x4934, 0x81, 0x8b, 0x38,
        // 0xd9, 0x0c, 0xed, 0x39, 0xdb).
        let g = Guid::from_u128(0x0e0b6031_5213_4934_818b_38d90ced39db);
        assert_eq!(g.to_string(), "0e0b6031-5213-4934-818b-38d90ced39db");
        assert_eq!(
            g.as_bytes(),
            &[
                0x31, 0x60, 0x0b, 0x0e, 0x13, 0x52, 0x34, 0x49, 0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed,
                0x39, 0xdb
            ]
        );
    }

    #[test]
    fn versions_order_parse_and_print() {
        assert!(Version::WIN10_V5_3 > Version::WIN10_V5 && Version::WIN10_V5 > Version::WIN10_V4_1);
        assert_eq!(Version::WIN10_V5_3.to_string(), "5.3");
        assert_eq!(Version::parse("4.1"), Some(Version::WIN10_V4_1));
        assert_eq!(Version::parse("2.4"), None, "older than 3.0: not spoken");
        assert_eq!(Version::parse("5"), None);
        assert!(Version::WIN10_V5.names_sint_and_connection());
        assert!(!Version::WIN10_V4_1.names_sint_and_connection());
        assert!(Version::WIN10_V4_1.has_modify_channel() && !Version::WIN10.has_modify_channel());
        assert!(
            Version::WIN10_V5_3.has_modify_channel_response()
                && !Version::WIN10_V5_2.has_modify_channel_response()
        );
        assert_eq!(ChannelMessageType(17).name(), "UNLOAD_RESPONSE");
        assert_eq!(ChannelMessageType(99).name(), "UNKNOWN");
    }
}
