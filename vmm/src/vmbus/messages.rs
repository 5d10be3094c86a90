//! VMBus channel-management messages: the layouts the guest and host exchange in SynIC message
//! payloads (public: Linux's `include/linux/hyperv.h` describes them), as zerocopy types.

use std::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The SynIC message type the host uses for VMBus channel messages.
pub const HV_MESSAGE_VMBUS: u32 = 1;
/// The connection id the guest posts channel messages to before protocol 5.0 (and, from 5.0
/// on, after the host names it in VERSION_RESPONSE).
pub const VMBUS_MESSAGE_CONNECTION_ID: u32 = 1;
/// The connection id a guest speaking protocol 5.0+ posts INITIATE_CONTACT to.
pub const VMBUS_MESSAGE_CONNECTION_ID_4: u32 = 4;
/// The SINT VMBus messages arrive on before protocol 5.0 (5.0+ names it in INITIATE_CONTACT).
pub const VMBUS_MESSAGE_SINT: u8 = 2;

/// A channel message type (`enum vmbus_channel_message_type`), the first u32 of the payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelMessageType(pub u32);

impl ChannelMessageType {
    /// Guest asks for the channel offers.
    pub const REQUEST_OFFERS: Self = Self(3);
    /// Host: every offer was sent.
    pub const ALL_OFFERS_DELIVERED: Self = Self(4);
    /// Guest opens the connection at a protocol version.
    pub const INITIATE_CONTACT: Self = Self(14);
    /// Host answers INITIATE_CONTACT.
    pub const VERSION_RESPONSE: Self = Self(15);
    /// Guest closes the connection.
    pub const UNLOAD: Self = Self(16);
    /// Host confirms UNLOAD.
    pub const UNLOAD_RESPONSE: Self = Self(17);

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

const _: () = assert!(size_of::<ChannelMessageHeader>() == 8);
const _: () = assert!(size_of::<InitiateContact>() == 40);
const _: () = assert!(size_of::<VersionResponse>() == 16);

/// A VMBus protocol version: major in the high 16 bits, minor in the low 16.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32);

impl Version {
    /// Windows Server 2008 (0.13).
    pub const WS2008: Self = Self(13);
    /// Windows 7 (1.1).
    pub const WIN7: Self = Self(1 << 16 | 1);
    /// Windows 8 (2.4).
    pub const WIN8: Self = Self(2 << 16 | 4);
    /// Windows 8.1 (3.0).
    pub const WIN8_1: Self = Self(3 << 16);
    /// Windows 10 (4.0).
    pub const WIN10: Self = Self(4 << 16);
    /// Windows 10 (4.1).
    pub const WIN10_V4_1: Self = Self(4 << 16 | 1);
    /// 5.0: INITIATE_CONTACT on connection 4 names the SINT; VERSION_RESPONSE names the
    /// connection for later messages.
    pub const WIN10_V5: Self = Self(5 << 16);
    /// 5.1.
    pub const WIN10_V5_1: Self = Self(5 << 16 | 1);
    /// 5.2.
    pub const WIN10_V5_2: Self = Self(5 << 16 | 2);
    /// 5.3.
    pub const WIN10_V5_3: Self = Self(5 << 16 | 3);
    /// Every version this host speaks, newest first.
    pub const ALL: [Self; 10] = [
        Self::WIN10_V5_3,
        Self::WIN10_V5_2,
        Self::WIN10_V5_1,
        Self::WIN10_V5,
        Self::WIN10_V4_1,
        Self::WIN10,
        Self::WIN8_1,
        Self::WIN8,
        Self::WIN7,
        Self::WS2008,
    ];

    /// Major number.
    pub const fn major(self) -> u32 {
        self.0 >> 16
    }

    /// Minor number.
    pub const fn minor(self) -> u32 {
        self.0 & 0xFFFF
    }

    /// Whether INITIATE_CONTACT carries the SINT and VERSION_RESPONSE the connection id (5.0+).
    pub const fn names_sint_and_connection(self) -> bool {
        self.0 >= Self::WIN10_V5.0
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

/// A header-only message of type `t`.
pub fn header_only(t: ChannelMessageType) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(
        ChannelMessageHeader {
            msgtype: t.0,
            padding: 0,
        }
        .as_bytes(),
    );
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
            header: ChannelMessageHeader {
                msgtype: 15,
                padding: 0,
            },
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
    fn versions_order_and_print() {
        assert!(Version::WIN10_V5_3 > Version::WIN10_V5 && Version::WIN10_V5 > Version::WIN10_V4_1);
        assert_eq!(Version::WIN10_V5_3.to_string(), "5.3");
        assert_eq!(Version::WS2008.to_string(), "0.13");
        assert!(Version::WIN10_V5.names_sint_and_connection());
        assert!(!Version::WIN10_V4_1.names_sint_and_connection());
        assert_eq!(ChannelMessageType(17).name(), "UNLOAD_RESPONSE");
        assert_eq!(ChannelMessageType(99).name(), "UNKNOWN");
    }
}
