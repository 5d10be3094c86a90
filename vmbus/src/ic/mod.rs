//! Integration components (ICs): the ICMSG framework the Hyper-V utility services speak over a
//! channel, and the messages of four of them — heartbeat, shutdown, time sync and key-value
//! pair exchange (KVP). Pure message building and parsing; the host's device thread
//! (`crate::host`) sends them.
//!
//! Every IC packet (VM_PKT_DATA_INBAND) is a pipe header, an [`IcMsgHeader`] and the service's
//! data. The host sends requests (`icflags` TRANSACTION | REQUEST); the guest answers in place
//! (same length, `icflags` TRANSACTION | RESPONSE, a status). The first exchange on every IC
//! is NEGOTIATE: the host lists the framework versions and the service versions it speaks,
//! the guest answers with one of each (or none).
//!
//! Responses are guest input: lengths, flags, versions and statuses are checked, strings are
//! decoded within their fields; a bad answer is an [`IcError`], never a panic.

// zerocopy's derives emit helper items the lint cannot see a `Debug` for; every type here
// derives `Debug`.
#![allow(missing_debug_implementations)]

use std::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::protocol::Guid;

/// Size of the pipe header and the IC message header together (`ICMSG_HDR`).
pub const ICMSG_HDR: usize = size_of::<PipeHeader>() + size_of::<IcMsgHeader>();

/// `icmsgtype` of version negotiation.
pub const ICMSGTYPE_NEGOTIATE: u16 = 0;
/// `icmsgtype` of a heartbeat.
pub const ICMSGTYPE_HEARTBEAT: u16 = 1;
/// `icmsgtype` of a KVP exchange.
pub const ICMSGTYPE_KVPEXCHANGE: u16 = 2;
/// `icmsgtype` of a shutdown request.
pub const ICMSGTYPE_SHUTDOWN: u16 = 3;
/// `icmsgtype` of a time sample.
pub const ICMSGTYPE_TIMESYNC: u16 = 4;

/// `icflags`: part of a transaction.
pub const ICMSGHDRFLAG_TRANSACTION: u8 = 1;
/// `icflags`: a request.
pub const ICMSGHDRFLAG_REQUEST: u8 = 2;
/// `icflags`: a response.
pub const ICMSGHDRFLAG_RESPONSE: u8 = 4;

/// Status: done.
pub const HV_S_OK: u32 = 0;
/// Status: failed.
pub const HV_E_FAIL: u32 = 0x8000_4005;
/// Status: no such item (KVP: end of an enumeration, key not found).
pub const HV_S_CONT: u32 = 0x8007_0103;

/// Most versions a negotiation may list (Linux's `IC_VERSION_NEGOTIATION_MAX_VER_COUNT`).
pub const MAX_NEGOTIATION_VERSIONS: usize = 100;

/// `struct vmbuspipe_hdr`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct PipeHeader {
    /// Zero.
    pub flags: u32,
    /// Bytes after this header.
    pub msgsize: u32,
}

/// `struct ic_version`.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C, packed)]
pub struct IcVersion {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
}

impl IcVersion {
    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }
}

impl fmt::Display for IcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (self.major, self.minor);
        write!(f, "{a}.{b}")
    }
}

impl fmt::Debug for IcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IcVersion({self})")
    }
}

/// `struct icmsg_hdr` (20 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct IcMsgHeader {
    /// Framework version of this message.
    pub icverframe: IcVersion,
    /// `ICMSGTYPE_*`.
    pub icmsgtype: u16,
    /// Service version of this message.
    pub icvermsg: IcVersion,
    /// Bytes of service data.
    pub icmsgsize: u16,
    /// The responder's status.
    pub status: u32,
    /// The requester's transaction number.
    pub ictransaction_id: u8,
    /// `ICMSGHDRFLAG_*`.
    pub icflags: u8,
    /// Zero.
    pub reserved: [u8; 2],
}

/// `struct icmsg_negotiate`'s fixed part; `icframe_vercnt + icmsg_vercnt` [`IcVersion`]s
/// follow (framework versions first).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct NegotiateHeader {
    /// Framework versions listed.
    pub icframe_vercnt: u16,
    /// Service versions listed.
    pub icmsg_vercnt: u16,
    /// Zero.
    pub reserved: u32,
}

const _: () = assert!(size_of::<PipeHeader>() == 8);
const _: () = assert!(size_of::<IcMsgHeader>() == 20);
const _: () = assert!(ICMSG_HDR == 28);
const _: () = assert!(size_of::<NegotiateHeader>() == 8);

/// The framework versions this host speaks, newest first (`UTIL_FW_VERSION`,
/// `UTIL_WS2K8_FW_VERSION`).
pub const FRAMEWORK_VERSIONS: [IcVersion; 2] = [IcVersion::new(3, 0), IcVersion::new(1, 0)];

/// The integration services this host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IcKind {
    /// Heartbeat: the guest adds one to a sequence number.
    Heartbeat,
    /// Shutdown: the guest powers off (or restarts) in an orderly way.
    Shutdown,
    /// Time synchronisation: the host's time and the partition reference time.
    TimeSync,
    /// Key-value pair exchange with the guest's KVP daemon.
    Kvp,
}

impl IcKind {
    /// Every kind, in offer order.
    pub const ALL: [Self; 4] = [Self::Heartbeat, Self::Shutdown, Self::TimeSync, Self::Kvp];

    /// The device class GUID (Linux's `HV_*_GUID`).
    pub const fn interface(self) -> Guid {
        Guid::from_u128(match self {
            Self::Heartbeat => 0x57164f39_9115_4e78_ab55_382f3bd5422d,
            Self::Shutdown => 0x0e0b6031_5213_4934_818b_38d90ced39db,
            Self::TimeSync => 0x9527e630_d0ae_497b_adce_e80ab0175caf,
            Self::Kvp => 0xa9a0f4e7_5a45_4d96_b827_8a841e8c03e6,
        })
    }

    /// This host's instance GUID for the service (any value unique in the VM).
    pub const fn instance(self) -> Guid {
        Guid::from_u128(match self {
            Self::Heartbeat => 0x5c1c0001_7e57_4b0b_9a11_000000000001,
            Self::Shutdown => 0x5c1c0001_7e57_4b0b_9a11_000000000002,
            Self::TimeSync => 0x5c1c0001_7e57_4b0b_9a11_000000000003,
            Self::Kvp => 0x5c1c0001_7e57_4b0b_9a11_000000000004,
        })
    }

    /// The service versions this host offers, newest first.
    pub fn versions(self) -> &'static [IcVersion] {
        const HB: [IcVersion; 2] = [IcVersion::new(3, 0), IcVersion::new(1, 0)];
        const SD: [IcVersion; 4] = [
            IcVersion::new(3, 2),
            IcVersion::new(3, 1),
            IcVersion::new(3, 0),
            IcVersion::new(1, 0),
        ];
        const TS: [IcVersion; 3] = [
            IcVersion::new(4, 0),
            IcVersion::new(3, 0),
            IcVersion::new(1, 0),
        ];
        const KVP: [IcVersion; 3] = [
            IcVersion::new(4, 0),
            IcVersion::new(3, 0),
            IcVersion::new(1, 0),
        ];
        match self {
            Self::Heartbeat => &HB,
            Self::Shutdown => &SD,
            Self::TimeSync => &TS,
            Self::Kvp => &KVP,
        }
    }

    /// The service's `icmsgtype`.
    pub const fn message_type(self) -> u16 {
        match self {
            Self::Heartbeat => ICMSGTYPE_HEARTBEAT,
            Self::Shutdown => ICMSGTYPE_SHUTDOWN,
            Self::TimeSync => ICMSGTYPE_TIMESYNC,
            Self::Kvp => ICMSGTYPE_KVPEXCHANGE,
        }
    }

    /// A short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Shutdown => "shutdown",
            Self::TimeSync => "timesync",
            Self::Kvp => "kvp",
        }
    }

    /// The kind whose interface GUID is `g`.
    pub fn from_interface(g: Guid) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.interface() == g)
    }
}

impl fmt::Display for IcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong with an IC exchange.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IcError {
    /// The answer is shorter than its layout.
    #[error("answer of {len} bytes, needs {need}")]
    Short {
        /// Its length.
        len: usize,
        /// What it needs.
        need: usize,
    },
    /// The answer is not a response to this request (flags, type).
    #[error("not a response: icflags {flags:#x}, icmsgtype {msgtype}")]
    NotAResponse {
        /// `icflags`.
        flags: u8,
        /// `icmsgtype`.
        msgtype: u16,
    },
    /// The guest answered with a failure status.
    #[error("the guest answered status {0:#x}")]
    Status(u32),
    /// The guest speaks none of the versions offered.
    #[error("no common version (the guest answered {framework} framework and {service} service versions)")]
    NoCommonVersion {
        /// Framework versions in the answer.
        framework: u16,
        /// Service versions in the answer.
        service: u16,
    },
    /// The guest chose a version the host did not offer.
    #[error("the guest chose framework {framework} / service {service}, not offered")]
    NotOffered {
        /// Its framework version.
        framework: IcVersion,
        /// Its service version.
        service: IcVersion,
    },
    /// The heartbeat answer does not carry the sequence number plus one.
    #[error("heartbeat answered sequence {got}, expected {want}")]
    Sequence {
        /// What came back.
        got: u64,
        /// Sent plus one.
        want: u64,
    },
}

/// Framework and service version agreed on an IC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Framework version.
    pub framework: IcVersion,
    /// Service version.
    pub service: IcVersion,
}

/// Builds a request packet: pipe header, IC header (`versions` as negotiated; both 1.0 for a
/// negotiation), `data`.
pub fn request(msgtype: u16, versions: Negotiated, transaction: u8, data: &[u8]) -> Vec<u8> {
    let header = IcMsgHeader {
        icverframe: versions.framework,
        icmsgtype: msgtype,
        icvermsg: versions.service,
        icmsgsize: u16::try_from(data.len()).unwrap_or(u16::MAX),
        status: 0,
        ictransaction_id: transaction,
        icflags: ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_REQUEST,
        reserved: [0; 2],
    };
    let pipe = PipeHeader {
        flags: 0,
        msgsize: (size_of::<IcMsgHeader>() + data.len()) as u32,
    };
    let mut out = Vec::with_capacity(ICMSG_HDR + data.len());
    out.extend_from_slice(pipe.as_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The NEGOTIATE request for `kind`: this host's framework versions, then its service
/// versions.
pub fn negotiate_request(kind: IcKind, transaction: u8) -> Vec<u8> {
    let service = kind.versions();
    let head = NegotiateHeader {
        icframe_vercnt: FRAMEWORK_VERSIONS.len() as u16,
        icmsg_vercnt: service.len() as u16,
        reserved: 0,
    };
    let mut data = head.as_bytes().to_vec();
    for v in FRAMEWORK_VERSIONS.iter().chain(service) {
        data.extend_from_slice(v.as_bytes());
    }
    let initial = Negotiated {
        framework: IcVersion::new(1, 0),
        service: IcVersion::new(1, 0),
    };
    request(ICMSGTYPE_NEGOTIATE, initial, transaction, &data)
}

/// A response's IC header and service data (bounded by the packet, not by `icmsgsize`).
#[derive(Clone, Copy, Debug)]
pub struct Response<'a> {
    /// The header.
    pub header: IcMsgHeader,
    /// The bytes after it.
    pub data: &'a [u8],
}

/// Splits a guest answer to a request of `msgtype`.
pub fn response(payload: &[u8], msgtype: u16) -> Result<Response<'_>, IcError> {
    if payload.len() < ICMSG_HDR {
        return Err(IcError::Short {
            len: payload.len(),
            need: ICMSG_HDR,
        });
    }
    let (header, data) = IcMsgHeader::read_from_prefix(&payload[size_of::<PipeHeader>()..])
        .map_err(|_| IcError::Short {
            len: payload.len(),
            need: ICMSG_HDR,
        })?;
    let (flags, t) = (header.icflags, header.icmsgtype);
    if flags & ICMSGHDRFLAG_RESPONSE == 0 || t != msgtype {
        return Err(IcError::NotAResponse { flags, msgtype: t });
    }
    Ok(Response { header, data })
}

/// Reads the guest's answer to [`negotiate_request`] for `kind`.
pub fn negotiate_response(kind: IcKind, payload: &[u8]) -> Result<Negotiated, IcError> {
    let r = response(payload, ICMSGTYPE_NEGOTIATE)?;
    let (head, rest) = NegotiateHeader::read_from_prefix(r.data).map_err(|_| IcError::Short {
        len: payload.len(),
        need: ICMSG_HDR + size_of::<NegotiateHeader>(),
    })?;
    let (fw, sv) = (head.icframe_vercnt, head.icmsg_vercnt);
    // The guest answers with exactly one of each when it found a match, none otherwise.
    if fw != 1 || sv != 1 {
        return Err(IcError::NoCommonVersion {
            framework: fw,
            service: sv,
        });
    }
    let need = ICMSG_HDR + size_of::<NegotiateHeader>() + 8;
    let (pair, _) = <[IcVersion; 2]>::read_from_prefix(rest).map_err(|_| IcError::Short {
        len: payload.len(),
        need,
    })?;
    let chosen = Negotiated {
        framework: pair[0],
        service: pair[1],
    };
    if !FRAMEWORK_VERSIONS.contains(&chosen.framework) || !kind.versions().contains(&chosen.service)
    {
        return Err(IcError::NotOffered {
            framework: chosen.framework,
            service: chosen.service,
        });
    }
    let status = r.header.status;
    if status != HV_S_OK {
        return Err(IcError::Status(status));
    }
    Ok(chosen)
}

/// `struct heartbeat_msg_data` (40 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct HeartbeatData {
    /// The host's sequence number; the guest answers it plus one.
    pub seq_num: u64,
    /// Zero.
    pub reserved: [u32; 8],
}

/// A heartbeat request carrying `seq`.
pub fn heartbeat_request(v: Negotiated, transaction: u8, seq: u64) -> Vec<u8> {
    let data = HeartbeatData {
        seq_num: seq,
        reserved: [0; 8],
    };
    request(ICMSGTYPE_HEARTBEAT, v, transaction, data.as_bytes())
}

/// Checks a heartbeat answer to sequence number `seq`.
pub fn heartbeat_response(payload: &[u8], seq: u64) -> Result<(), IcError> {
    let r = response(payload, ICMSGTYPE_HEARTBEAT)?;
    let status = r.header.status;
    if status != HV_S_OK {
        return Err(IcError::Status(status));
    }
    let (got, _) = u64::read_from_prefix(r.data).map_err(|_| IcError::Short {
        len: payload.len(),
        need: ICMSG_HDR + 8,
    })?;
    let want = seq.wrapping_add(1);
    if got != want {
        return Err(IcError::Sequence { got, want });
    }
    Ok(())
}

/// `struct shutdown_msg_data` (2060 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct ShutdownData {
    /// A Windows shutdown reason code (`SHTDN_REASON_*`).
    pub reason_code: u32,
    /// Seconds the guest has.
    pub timeout_seconds: u32,
    /// 0: shut down; 1: forced; 2: restart (3 forced); 4: hibernate.
    pub flags: u32,
    /// A message for the guest's users, UTF-16LE.
    pub display_message: [u8; 2048],
}

/// `SHTDN_REASON_FLAG_PLANNED`: what the shutdown IC sends for a planned power-off.
pub const SHTDN_REASON_FLAG_PLANNED: u32 = 0x8000_0000;

/// A shutdown request (`flags` 0: an orderly power-off) saying `message`.
pub fn shutdown_request(v: Negotiated, transaction: u8, message: &str) -> Vec<u8> {
    let mut data = ShutdownData {
        reason_code: SHTDN_REASON_FLAG_PLANNED,
        timeout_seconds: 60,
        flags: 0,
        display_message: [0; 2048],
    };
    utf16_into(message, &mut data.display_message);
    request(ICMSGTYPE_SHUTDOWN, v, transaction, data.as_bytes())
}

/// Checks a shutdown answer.
pub fn shutdown_response(payload: &[u8]) -> Result<(), IcError> {
    let r = response(payload, ICMSGTYPE_SHUTDOWN)?;
    match r.header.status {
        HV_S_OK => Ok(()),
        s => Err(IcError::Status(s)),
    }
}

/// `ICTIMESYNCFLAG_SYNC`: set the guest's clock.
pub const ICTIMESYNCFLAG_SYNC: u8 = 1;
/// `ICTIMESYNCFLAG_SAMPLE`: a sample for the guest's clock discipline (its PTP clock).
pub const ICTIMESYNCFLAG_SAMPLE: u8 = 2;

/// `struct ictimesync_ref_data` (service 4.0+, 22 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct TimeSyncRefData {
    /// The host's UTC time, in 100 ns units since 1601-01-01.
    pub parenttime: u64,
    /// The partition reference time (TIME_REF_COUNT) when `parenttime` was read.
    pub vmreferencetime: u64,
    /// `ICTIMESYNCFLAG_*`.
    pub flags: u8,
    /// Leap-second flags.
    pub leapflags: u8,
    /// Clock stratum.
    pub stratum: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// `struct ictimesync_data` (service before 4.0, 25 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct TimeSyncData {
    /// The host's UTC time, in 100 ns units since 1601-01-01.
    pub parenttime: u64,
    /// Unused.
    pub childtime: u64,
    /// Unused.
    pub roundtriptime: u64,
    /// `ICTIMESYNCFLAG_*`.
    pub flags: u8,
}

/// 100 ns units from 1601-01-01 to 1970-01-01 (Linux's `WLTIMEDELTA`).
pub const WINDOWS_EPOCH_OFFSET: u64 = 116_444_736_000_000_000;

/// A time-sync request: `host_time` (100 ns since 1601) and `reference_time` (100 ns of
/// partition reference time), in the layout the negotiated service version uses.
pub fn timesync_request(
    v: Negotiated,
    transaction: u8,
    host_time: u64,
    reference_time: u64,
    flags: u8,
) -> Vec<u8> {
    if v.service.major >= 4 {
        let d = TimeSyncRefData {
            parenttime: host_time,
            vmreferencetime: reference_time,
            flags,
            leapflags: 0,
            stratum: 2,
            reserved: [0; 3],
        };
        request(ICMSGTYPE_TIMESYNC, v, transaction, d.as_bytes())
    } else {
        let d = TimeSyncData {
            parenttime: host_time,
            childtime: 0,
            roundtriptime: 0,
            flags,
        };
        request(ICMSGTYPE_TIMESYNC, v, transaction, d.as_bytes())
    }
}

/// Checks a time-sync answer.
pub fn timesync_response(payload: &[u8]) -> Result<(), IcError> {
    let r = response(payload, ICMSGTYPE_TIMESYNC)?;
    match r.header.status {
        HV_S_OK => Ok(()),
        s => Err(IcError::Status(s)),
    }
}

/// Writes `s` as UTF-16LE with a NUL into `out`, truncated to fit; returns the bytes used.
pub fn utf16_into(s: &str, out: &mut [u8]) -> usize {
    let mut at = 0;
    for unit in s.encode_utf16() {
        if at + 4 > out.len() {
            break;
        }
        out[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        at += 2;
    }
    if at + 2 <= out.len() {
        out[at..at + 2].fill(0);
        at += 2;
    }
    at
}

/// Reads UTF-16LE from the first `size` bytes of `field` (bounded by the field), up to the
/// first NUL; unpaired surrogates become U+FFFD.
pub fn utf16_from(field: &[u8], size: u32) -> String {
    let n = (size as usize).min(field.len()) & !1;
    let units: Vec<u16> = field[..n]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

mod kvp;

pub use kvp::{
    kvp_request, kvp_response, KvpMessage, KvpOperation, KvpPool, KvpValue, KVP_MAX_KEY_SIZE,
    KVP_MAX_VALUE_SIZE, REG_SZ,
};

#[cfg(test)]
mod tests;
