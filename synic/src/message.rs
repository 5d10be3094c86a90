//! The TLFS message and page layouts as zerocopy types.
//!
//! A SynIC message is 256 bytes: a 16-byte header and a 240-byte payload. The message page holds
//! one message slot per SINT; the event-flags page holds 2048 flags per SINT. Sizes and field
//! offsets are checked at compile time, so the model cannot drift from the guest's view.

// zerocopy's derives emit helper items the lint cannot see a `Debug` for; every type here has a
// `Debug` implementation of its own.
#![allow(missing_debug_implementations)]

use core::fmt;
use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::error::Error;
use crate::SintIndex;

/// Size of one message (one slot of the message page).
pub const MESSAGE_SIZE: usize = 256;
/// Size of the message header.
pub const MESSAGE_HEADER_SIZE: usize = 16;
/// Largest payload a message carries.
pub const MAX_PAYLOAD_SIZE: usize = 240;
/// Size of the message page and of the event-flags page.
pub const PAGE_SIZE: usize = 4096;
/// Number of event flags per SINT; valid flag numbers are `0..FLAGS_PER_SINT`.
pub const FLAGS_PER_SINT: u32 = 2048;
/// Bytes of event flags per SINT.
pub const FLAG_BYTES_PER_SINT: usize = FLAGS_PER_SINT as usize / 8;

/// A message type (`HV_MESSAGE_TYPE`). 0 marks an empty slot; bit 31 set marks the types only
/// the hypervisor may send.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(transparent)]
pub struct MessageType(pub u32);

impl MessageType {
    /// `HvMessageTypeNone`: the slot is empty and the hypervisor may write it.
    pub const NONE: MessageType = MessageType(0);
    /// Bit 31: hypervisor-only message types.
    pub const HYPERVISOR_BIT: u32 = 0x8000_0000;
    /// `HvMessageTimerExpired`, sent by a synthetic timer.
    pub const TIMER_EXPIRED: MessageType = MessageType(0x8000_0010);

    /// True for `HvMessageTypeNone`.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// True for types only the hypervisor may send (bit 31 set).
    pub const fn is_hypervisor(self) -> bool {
        self.0 & Self::HYPERVISOR_BIT != 0
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageType({:#x})", self.0)
    }
}

/// The header's flags byte. Bit 0 is MessagePending; bits 7:1 are reserved.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(transparent)]
pub struct MessageFlags(pub u8);

impl MessageFlags {
    /// MessagePending: more messages are queued for this SINT; write EOM after freeing the slot.
    pub const PENDING: u8 = 1;

    /// True when MessagePending is set.
    pub const fn pending(self) -> bool {
        self.0 & Self::PENDING != 0
    }
}

impl fmt::Debug for MessageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageFlags")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("pending", &self.pending())
            .finish()
    }
}

/// The 16-byte message header (`HV_MESSAGE_HEADER`).
#[derive(Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MessageHeader {
    /// Offset 0: the message type; the guest clears it to free the slot.
    pub message_type: MessageType,
    /// Offset 4: payload bytes that are meaningful, at most 240.
    pub payload_size: u8,
    /// Offset 5: MessagePending and reserved bits.
    pub message_flags: MessageFlags,
    /// Offset 6: reserved.
    pub reserved: [u8; 2],
    /// Offset 8: the sender partition or port id, as the message type defines.
    pub sender: u64,
}

impl fmt::Debug for MessageHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageHeader")
            .field("message_type", &self.message_type)
            .field("payload_size", &self.payload_size)
            .field("message_flags", &self.message_flags)
            .field("sender", &format_args!("{:#x}", self.sender))
            .finish()
    }
}

/// One 256-byte SynIC message (`HV_MESSAGE`), exactly as it sits in a message-page slot.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvMessage {
    /// The header.
    pub header: MessageHeader,
    /// The payload; only the first `header.payload_size` bytes are meaningful.
    pub payload: [u8; MAX_PAYLOAD_SIZE],
}

impl Default for HvMessage {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl HvMessage {
    /// A message of `message_type` from `sender` carrying `payload`.
    ///
    /// Fails when the payload is longer than 240 bytes. The type is checked when the message is
    /// posted, where it is known whether hypervisor-only types are allowed.
    pub fn new(message_type: MessageType, sender: u64, payload: &[u8]) -> Result<Self, Error> {
        if payload.len() > MAX_PAYLOAD_SIZE {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
            });
        }
        let mut message = Self::new_zeroed();
        message.header.message_type = message_type;
        // Checked above: the length fits in 0..=240.
        message.header.payload_size = payload.len() as u8;
        message.header.sender = sender;
        message.payload[..payload.len()].copy_from_slice(payload);
        Ok(message)
    }

    /// The meaningful payload bytes. A `payload_size` above 240 (hostile or corrupt data) is
    /// clamped, never a panic.
    pub fn payload_bytes(&self) -> &[u8] {
        let len = usize::from(self.header.payload_size).min(MAX_PAYLOAD_SIZE);
        &self.payload[..len]
    }

    /// Checks the message as something a host may post: a type other than None, hypervisor-only
    /// types only when `allow_hypervisor_types`, a payload size of at most 240.
    pub fn validate(&self, allow_hypervisor_types: bool) -> Result<(), Error> {
        let ty = self.header.message_type;
        if ty.is_none() {
            return Err(Error::MessageTypeNone);
        }
        if ty.is_hypervisor() && !allow_hypervisor_types {
            return Err(Error::HypervisorMessageType { message_type: ty.0 });
        }
        if usize::from(self.header.payload_size) > MAX_PAYLOAD_SIZE {
            return Err(Error::PayloadTooLarge {
                size: usize::from(self.header.payload_size),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for HvMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HvMessage")
            .field("header", &self.header)
            .field("payload", &self.payload_bytes())
            .finish()
    }
}

/// The message page (SIMP): one slot per SINT.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MessagePage {
    /// Slot `n` belongs to SINT `n`.
    pub slots: [HvMessage; 16],
}

impl fmt::Debug for MessagePage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.slots
                    .iter()
                    .filter(|m| !m.header.message_type.is_none()),
            )
            .finish()
    }
}

/// The 2048 event flags of one SINT: flag `n` is bit `n % 8` of byte `n / 8`.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SintEventFlags {
    /// The flag bits.
    pub bytes: [u8; FLAG_BYTES_PER_SINT],
}

impl SintEventFlags {
    /// Whether flag `flag` is set; flags beyond 2047 read as clear.
    pub fn is_set(&self, flag: u32) -> bool {
        match self.bytes.get((flag / 8) as usize) {
            Some(byte) if flag < FLAGS_PER_SINT => byte & (1 << (flag % 8)) != 0,
            _ => false,
        }
    }
}

impl fmt::Debug for SintEventFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..FLAGS_PER_SINT).filter(|&n| self.is_set(n)))
            .finish()
    }
}

/// The event-flags page (SIEFP): 2048 flags per SINT.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EventFlagsPage {
    /// Entry `n` belongs to SINT `n`.
    pub sints: [SintEventFlags; 16],
}

impl fmt::Debug for EventFlagsPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.sints
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.bytes.iter().any(|&b| b != 0)),
            )
            .finish()
    }
}

/// The payload of an `HVMSG_TIMER_EXPIRED` message (`HV_TIMER_MESSAGE_PAYLOAD`, 24 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TimerMessagePayload {
    /// The synthetic timer (0..=3) that expired.
    pub timer_index: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// When the timer was due (100 ns reference time). A periodic timer's n-th expiry is due
    /// at its start + n x period.
    pub expiration_time: u64,
    /// When the message was written into the slot (100 ns reference time).
    pub delivery_time: u64,
}

impl TimerMessagePayload {
    /// The payload of a message, if it is a timer-expired message with a 24-byte payload.
    pub fn of(message: &HvMessage) -> Option<Self> {
        if message.header.message_type != MessageType::TIMER_EXPIRED {
            return None;
        }
        Self::read_from_bytes(message.payload_bytes()).ok()
    }

    /// The whole message, as a synthetic timer sends it (sender 0).
    pub fn message(&self) -> HvMessage {
        let mut message = HvMessage::new_zeroed();
        message.header.message_type = MessageType::TIMER_EXPIRED;
        message.header.payload_size = size_of::<Self>() as u8;
        message.payload[..size_of::<Self>()].copy_from_slice(self.as_bytes());
        message
    }
}

/// The head of the reference TSC page (`HV_REFERENCE_TSC_PAGE`, 24 bytes at offset 0; the
/// rest of the page is reserved). Reference time = ((TSC x `tsc_scale`) >> 64) + `tsc_offset`
/// while `tsc_sequence` is non-zero and unchanged across the read; 0 means "read
/// TIME_REF_COUNT instead".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ReferenceTscPage {
    /// TscSequence: 0 = not valid; changes whenever the hypervisor rewrites the page.
    pub tsc_sequence: u32,
    /// Reserved.
    pub reserved: u32,
    /// TscScale (0.64 fixed point, 100 ns units per tick).
    pub tsc_scale: u64,
    /// TscOffset (100 ns units).
    pub tsc_offset: i64,
}

/// Offset of `TscSequence` in the reference TSC page.
pub(crate) const TSC_SEQUENCE_OFFSET: usize = offset_of!(ReferenceTscPage, tsc_sequence);
/// Offset of `TscScale` in the reference TSC page.
pub(crate) const TSC_SCALE_OFFSET: usize = offset_of!(ReferenceTscPage, tsc_scale);
/// Offset of `TscOffset` in the reference TSC page.
pub(crate) const TSC_OFFSET_OFFSET: usize = offset_of!(ReferenceTscPage, tsc_offset);

/// Offset of SINT `sint`'s slot in the message page.
pub const fn slot_offset(sint: SintIndex) -> usize {
    sint.as_usize() * MESSAGE_SIZE
}

/// Offset in the message page of a slot's `message_type`.
pub(crate) const TYPE_OFFSET: usize = offset_of!(MessageHeader, message_type);
/// Offset in the message page of a slot's flags byte.
pub(crate) const FLAGS_OFFSET: usize = offset_of!(MessageHeader, message_flags);

/// Offset of the 8-byte word holding `flag` of `sint` in the event-flags page, and the bit in it.
/// The caller has checked `flag < FLAGS_PER_SINT`.
pub(crate) const fn flag_word(sint: SintIndex, flag: u32) -> (usize, u64) {
    let offset = sint.as_usize() * FLAG_BYTES_PER_SINT + (flag as usize / 64) * 8;
    (offset, 1u64 << (flag % 64))
}

const _: () = assert!(size_of::<MessageHeader>() == MESSAGE_HEADER_SIZE);
const _: () = assert!(size_of::<HvMessage>() == MESSAGE_SIZE);
const _: () = assert!(size_of::<MessagePage>() == PAGE_SIZE);
const _: () = assert!(size_of::<SintEventFlags>() == FLAG_BYTES_PER_SINT);
const _: () = assert!(size_of::<EventFlagsPage>() == PAGE_SIZE);
const _: () = assert!(size_of::<TimerMessagePayload>() == 24);
const _: () = assert!(offset_of!(TimerMessagePayload, expiration_time) == 8);
const _: () = assert!(offset_of!(TimerMessagePayload, delivery_time) == 16);
const _: () = assert!(TYPE_OFFSET == 0);
const _: () = assert!(size_of::<ReferenceTscPage>() == 24);
const _: () = assert!(TSC_SEQUENCE_OFFSET == 0);
const _: () = assert!(TSC_SCALE_OFFSET == 8);
const _: () = assert!(TSC_OFFSET_OFFSET == 16);
const _: () = assert!(offset_of!(MessageHeader, payload_size) == 4);
const _: () = assert!(FLAGS_OFFSET == 5);
const _: () = assert!(offset_of!(MessageHeader, sender) == 8);
const _: () = assert!(offset_of!(HvMessage, payload) == MESSAGE_HEADER_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_message_matches_the_tlfs_layout() {
        let p = TimerMessagePayload {
            timer_index: 2,
            reserved: 0,
            expiration_time: 0x1122_3344_5566_7788,
            delivery_time: 0x99AA_BBCC_DDEE_FF00,
        };
        let m = p.message();
        let bytes = m.as_bytes();
        assert_eq!(&bytes[0..4], &0x8000_0010u32.to_le_bytes());
        assert_eq!(bytes[4], 24);
        assert_eq!(&bytes[16..20], &2u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &[0; 4]);
        assert_eq!(&bytes[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &0x99AA_BBCC_DDEE_FF00u64.to_le_bytes());
        assert!(bytes[40..].iter().all(|&b| b == 0));
        assert_eq!(TimerMessagePayload::of(&m), Some(p));
        assert_eq!(TimerMessagePayload::of(&HvMessage::default()), None);
    }

    #[test]
    fn message_layout_matches_the_tlfs_bytes() {
        let m =
            HvMessage::new(MessageType(0x1234_5678), 0xAABB_CCDD_EEFF_0011, &[9, 8, 7]).unwrap();
        let bytes = m.as_bytes();
        assert_eq!(&bytes[0..4], &0x1234_5678u32.to_le_bytes());
        assert_eq!(bytes[4], 3);
        assert_eq!(bytes[5], 0);
        assert_eq!(&bytes[8..16], &0xAABB_CCDD_EEFF_0011u64.to_le_bytes());
        assert_eq!(&bytes[16..19], &[9, 8, 7]);
        assert!(bytes[19..].iter().all(|&b| b == 0));
    }

    #[test]
    fn payload_longer_than_240_is_refused() {
        let err = HvMessage::new(MessageType(1), 0, &[0; 241]).unwrap_err();
        assert_eq!(err, Error::PayloadTooLarge { size: 241 });
        assert!(HvMessage::new(MessageType(1), 0, &[0; 240]).is_ok());
    }

    #[test]
    fn validate_checks_type_and_size() {
        let mut m = HvMessage::new(MessageType(1), 0, &[]).unwrap();
        assert_eq!(m.validate(false), Ok(()));
        m.header.message_type = MessageType::NONE;
        assert_eq!(m.validate(true), Err(Error::MessageTypeNone));
        m.header.message_type = MessageType::TIMER_EXPIRED;
        assert_eq!(
            m.validate(false),
            Err(Error::HypervisorMessageType {
                message_type: 0x8000_0010
            })
        );
        assert_eq!(m.validate(true), Ok(()));
        m.header.payload_size = 241;
        assert_eq!(m.validate(true), Err(Error::PayloadTooLarge { size: 241 }));
        // A hostile size never makes the accessor panic.
        m.header.payload_size = 255;
        assert_eq!(m.payload_bytes().len(), MAX_PAYLOAD_SIZE);
    }

    #[test]
    fn flag_word_addresses_bit_n_mod_8_of_byte_n_div_8() {
        for sint in SintIndex::ALL {
            for flag in [0, 1, 7, 8, 63, 64, 1000, 2047] {
                let (offset, bit) = flag_word(sint, flag);
                let mut page = EventFlagsPage::new_zeroed();
                let word =
                    u64::from_le_bytes(page.as_bytes()[offset..offset + 8].try_into().unwrap());
                page.as_mut_bytes()[offset..offset + 8]
                    .copy_from_slice(&(word | bit).to_le_bytes());
                let byte = sint.as_usize() * 256 + flag as usize / 8;
                assert_eq!(page.as_bytes()[byte], 1 << (flag % 8));
                assert!(page.sints[sint.as_usize()].is_set(flag));
            }
        }
        assert!(!SintEventFlags::new_zeroed().is_set(4096));
    }
}
