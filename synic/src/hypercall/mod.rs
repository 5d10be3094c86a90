//! The SynIC hypercalls: HvPostMessage (0x005C) and HvSignalEvent (0x005D).
//!
//! [`decode`] turns the hypercall registers into a validated [`Hypercall`], copying memory input
//! out of guest memory exactly once and validating only the copy (another vCPU may rewrite the
//! input page while this one is in the hypercall). [`Connections`] maps connection ids to the
//! handlers a VMM registers; [`handle`] does decode and dispatch and returns the RAX value.
//!
//! Status codes follow the TLFS; where the TLFS is silent the choice follows KVM and is
//! written down in `docs/hypercalls.md`. [`MessagePort`] and [`EventPort`] are ready-made
//! connections whose port is a SINT of a VP in this partition.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use synic_msr::VpIndex;

mod ports;
pub use ports::{EventPort, MessagePort};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Call code of HvPostMessage.
pub const HVCALL_POST_MESSAGE: u16 = 0x005C;
/// Call code of HvSignalEvent.
pub const HVCALL_SIGNAL_EVENT: u16 = 0x005D;
pub use crate::message::MAX_PAYLOAD_SIZE as MAX_PAYLOAD;
/// Mask of the 24-bit connection id inside a `HV_CONNECTION_ID`.
pub const CONNECTION_ID_MASK: u32 = 0x00FF_FFFF;

/// A hypercall status (`HV_STATUS`), returned in RAX bits 15:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum HvStatus {
    /// The call succeeded.
    Success = 0,
    /// Unknown call code.
    InvalidHypercallCode = 2,
    /// Reserved bits set in the control value or the input, or a rep/variable-header count on
    /// a simple call.
    InvalidHypercallInput = 3,
    /// Input GPA not 8-byte aligned, crossing a page, or not guest RAM.
    InvalidAlignment = 4,
    /// A parameter out of range (message type, payload size, flag number).
    InvalidParameter = 5,
    /// The caller lacks the privilege.
    AccessDenied = 6,
    /// The target VP does not exist or cannot take SynIC traffic.
    InvalidVpIndex = 0xE,
    /// The connection's port is gone or of the wrong type.
    InvalidPortId = 0x11,
    /// No such connection.
    InvalidConnectionId = 0x12,
    /// The target queue is full; retry later.
    InsufficientBuffers = 0x13,
    /// The target SynIC is not in a state that accepts the request (e.g. masked SINT).
    InvalidSynicState = 0x18,
}

impl HvStatus {
    /// The numeric code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The status for a numeric code, if it is one this crate knows.
    pub const fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            2 => Self::InvalidHypercallCode,
            3 => Self::InvalidHypercallInput,
            4 => Self::InvalidAlignment,
            5 => Self::InvalidParameter,
            6 => Self::AccessDenied,
            0xE => Self::InvalidVpIndex,
            0x11 => Self::InvalidPortId,
            0x12 => Self::InvalidConnectionId,
            0x13 => Self::InsufficientBuffers,
            0x18 => Self::InvalidSynicState,
            _ => return None,
        })
    }

    /// The hypercall result value for RAX: the status with zero reps completed.
    pub const fn rax(self) -> u64 {
        self as u64
    }
}

impl fmt::Display for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Success => "HV_STATUS_SUCCESS",
            Self::InvalidHypercallCode => "HV_STATUS_INVALID_HYPERCALL_CODE",
            Self::InvalidHypercallInput => "HV_STATUS_INVALID_HYPERCALL_INPUT",
            Self::InvalidAlignment => "HV_STATUS_INVALID_ALIGNMENT",
            Self::InvalidParameter => "HV_STATUS_INVALID_PARAMETER",
            Self::AccessDenied => "HV_STATUS_ACCESS_DENIED",
            Self::InvalidVpIndex => "HV_STATUS_INVALID_VP_INDEX",
            Self::InvalidPortId => "HV_STATUS_INVALID_PORT_ID",
            Self::InvalidConnectionId => "HV_STATUS_INVALID_CONNECTION_ID",
            Self::InsufficientBuffers => "HV_STATUS_INSUFFICIENT_BUFFERS",
            Self::InvalidSynicState => "HV_STATUS_INVALID_SYNIC_STATE",
        };
        write!(f, "{name} ({:#x})", *self as u16)
    }
}

/// The hypercall input value (RCX on x64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallControl(pub u64);

impl HypercallControl {
    /// Bits 31:27, 47:44 and 63:60 are reserved.
    pub const RESERVED: u64 = 0xF000_F000_F800_0000;

    /// A control value for a simple call.
    pub const fn simple(code: u16, fast: bool) -> Self {
        Self(code as u64 | (fast as u64) << 16)
    }
    /// Bits 15:0.
    pub const fn call_code(self) -> u16 {
        self.0 as u16
    }
    /// Bit 16: parameters in registers instead of memory.
    pub const fn fast(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Bits 26:17: variable header size in 8-byte units.
    pub const fn var_header_size(self) -> u16 {
        ((self.0 >> 17) & 0x3FF) as u16
    }
    /// Bits 43:32.
    pub const fn rep_count(self) -> u16 {
        ((self.0 >> 32) & 0xFFF) as u16
    }
    /// Bits 59:48.
    pub const fn rep_start(self) -> u16 {
        ((self.0 >> 48) & 0xFFF) as u16
    }
}

/// The registers of a hypercall: RCX, RDX, R8 on x64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HypercallRegs {
    /// Control value (RCX).
    pub control: u64,
    /// Input GPA, or the first fast parameter (RDX).
    pub input: u64,
    /// Output GPA, or the second fast parameter (R8).
    pub output: u64,
}

/// HvPostMessage's memory input, exactly as the guest lays it out (256 bytes).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PostMessageInput {
    /// `HV_CONNECTION_ID`: id in bits 23:0, bits 31:24 reserved.
    pub connection_id: u32,
    /// RsvdZ.
    pub reserved: u32,
    /// Message type: non-zero, bit 31 clear.
    pub message_type: u32,
    /// Payload bytes that count, at most 240.
    pub payload_size: u32,
    /// The payload.
    pub payload: [u8; MAX_PAYLOAD],
}

const _: () = assert!(core::mem::size_of::<PostMessageInput>() == 256);

impl fmt::Debug for PostMessageInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostMessageInput")
            .field("connection_id", &format_args!("{:#x}", self.connection_id))
            .field("reserved", &self.reserved)
            .field("message_type", &format_args!("{:#x}", self.message_type))
            .field("payload_size", &self.payload_size)
            .finish_non_exhaustive()
    }
}

/// A validated HvPostMessage.
#[derive(Clone, PartialEq, Eq)]
pub struct PostMessage {
    /// The 24-bit connection id.
    pub connection_id: u32,
    /// Message type (non-zero, bit 31 clear).
    pub message_type: u32,
    payload_len: u8,
    payload: [u8; MAX_PAYLOAD],
}

impl PostMessage {
    /// The payload: exactly `PayloadSize` bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload[..usize::from(self.payload_len)]
    }
}

impl fmt::Debug for PostMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostMessage")
            .field("connection_id", &format_args!("{:#x}", self.connection_id))
            .field("message_type", &format_args!("{:#x}", self.message_type))
            .field("payload_len", &self.payload_len)
            .finish()
    }
}

/// A validated HvSignalEvent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalEvent {
    /// The 24-bit connection id.
    pub connection_id: u32,
    /// Flag number relative to the port's base flag.
    pub flag_number: u16,
}

/// A decoded, validated SynIC hypercall.
#[derive(Clone, Debug, PartialEq, Eq)]
// Lives on the stack for one hypercall; boxing the 250-byte message would put an allocation on
// the message path for no benefit.
#[allow(clippy::large_enum_variant)]
pub enum Hypercall {
    /// HvPostMessage.
    PostMessage(PostMessage),
    /// HvSignalEvent.
    SignalEvent(SignalEvent),
}

/// Validates HvPostMessage's input, as copied out of guest memory.
pub fn validate_post_message(input: &PostMessageInput) -> Result<PostMessage, HvStatus> {
    if input.connection_id & !CONNECTION_ID_MASK != 0 || input.reserved != 0 {
        return Err(HvStatus::InvalidHypercallInput);
    }
    if input.message_type == 0 || input.message_type & 0x8000_0000 != 0 {
        return Err(HvStatus::InvalidParameter);
    }
    let len = u8::try_from(input.payload_size)
        .ok()
        .filter(|&n| usize::from(n) <= MAX_PAYLOAD)
        .ok_or(HvStatus::InvalidParameter)?;
    Ok(PostMessage {
        connection_id: input.connection_id,
        message_type: input.message_type,
        payload_len: len,
        payload: input.payload,
    })
}

/// Validates HvSignalEvent's 8-byte input (`ConnectionId | FlagNumber << 32 | RsvdZ << 48`).
pub fn validate_signal_event(input: u64) -> Result<SignalEvent, HvStatus> {
    // Bits 31:24 (connection id reserved) and 63:48 (RsvdZ).
    if input & 0xFFFF_0000_FF00_0000 != 0 {
        return Err(HvStatus::InvalidHypercallInput);
    }
    Ok(SignalEvent {
        connection_id: (input as u32) & CONNECTION_ID_MASK,
        flag_number: (input >> 32) as u16,
    })
}

/// Copies `buf.len()` bytes of hypercall input from `gpa`: 8-byte aligned, inside one page,
/// in guest RAM, or `InvalidAlignment` (KVM's answer for an unreadable input GPA too).
fn read_input<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, buf: &mut [u8]) -> Result<(), HvStatus> {
    let len = buf.len() as u64;
    if !gpa.is_multiple_of(8) || (gpa % 4096) + len > 4096 {
        return Err(HvStatus::InvalidAlignment);
    }
    mem.read_slice(buf, GuestAddress(gpa))
        .map_err(|_| HvStatus::InvalidAlignment)
}

/// Decodes and validates a hypercall from its registers, reading memory input once.
pub fn decode<M: GuestMemory + ?Sized>(
    mem: &M,
    regs: &HypercallRegs,
) -> Result<Hypercall, HvStatus> {
    let control = HypercallControl(regs.control);
    if control.0 & HypercallControl::RESERVED != 0 {
        return Err(HvStatus::InvalidHypercallInput);
    }
    let code = control.call_code();
    if code != HVCALL_POST_MESSAGE && code != HVCALL_SIGNAL_EVENT {
        return Err(HvStatus::InvalidHypercallCode);
    }
    // Both are simple calls: no reps, no variable header.
    if control.rep_count() != 0 || control.rep_start() != 0 || control.var_header_size() != 0 {
        return Err(HvStatus::InvalidHypercallInput);
    }
    match code {
        HVCALL_POST_MESSAGE => {
            // 256 bytes of input do not fit in the two fast registers.
            if control.fast() {
                return Err(HvStatus::InvalidHypercallInput);
            }
            let mut raw = PostMessageInput::new_zeroed();
            read_input(mem, regs.input, raw.as_mut_bytes())?;
            validate_post_message(&raw).map(Hypercall::PostMessage)
        }
        _ => {
            let input = if control.fast() {
                regs.input
            } else {
                let mut raw = [0u8; 8];
                read_input(mem, regs.input, &mut raw)?;
                u64::from_le_bytes(raw)
            };
            validate_signal_event(input).map(Hypercall::SignalEvent)
        }
    }
}

/// The receiving end of a message connection (a port, in TLFS terms).
pub trait MessageConnection: Send + Sync {
    /// Takes a message posted by `caller`. Returns `Success`, or e.g. `InsufficientBuffers`
    /// when it cannot take more now, or `InvalidSynicState` when its target cannot receive.
    fn post(&self, caller: VpIndex, message: &PostMessage) -> HvStatus;
}

/// The receiving end of an event connection.
pub trait EventConnection: Send + Sync {
    /// Signals relative flag `flag_number` on behalf of `caller`. Returns `Success`, or
    /// `InvalidParameter` for a flag beyond the port's flag count, `InvalidSynicState` when the
    /// target SINT is masked, and so on.
    fn signal(&self, caller: VpIndex, flag_number: u16) -> HvStatus;
}

/// Why a connection could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The id has bits above 23 set.
    #[error("connection id {0:#x} does not fit in 24 bits")]
    InvalidId(u32),
    /// A connection of that kind is already registered under the id.
    #[error("connection id {0:#x} is already registered")]
    InUse(u32),
}

/// The connections a VMM registers, by connection id; message and event connections have
/// separate id spaces (as in the TLFS, where a connection's port has one type).
#[derive(Default)]
pub struct Connections {
    messages: RwLock<HashMap<u32, Arc<dyn MessageConnection>>>,
    events: RwLock<HashMap<u32, Arc<dyn EventConnection>>>,
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn ids<T: ?Sized>(m: &RwLock<HashMap<u32, Arc<T>>>) -> Vec<u32> {
            let mut v: Vec<u32> = m
                .read()
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default();
            v.sort_unstable();
            v
        }
        f.debug_struct("Connections")
            .field("messages", &ids(&self.messages))
            .field("events", &ids(&self.events))
            .finish()
    }
}

fn check_id(id: u32) -> Result<(), ConnectionError> {
    if id & !CONNECTION_ID_MASK != 0 {
        Err(ConnectionError::InvalidId(id))
    } else {
        Ok(())
    }
}

impl Connections {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a message connection under `id`.
    pub fn add_message(
        &self,
        id: u32,
        connection: Arc<dyn MessageConnection>,
    ) -> Result<(), ConnectionError> {
        check_id(id)?;
        let mut map = self.messages.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&id) {
            return Err(ConnectionError::InUse(id));
        }
        map.insert(id, connection);
        Ok(())
    }

    /// Removes the message connection `id`, returning it.
    pub fn remove_message(&self, id: u32) -> Option<Arc<dyn MessageConnection>> {
        self.messages
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }

    /// Registers an event connection under `id`.
    pub fn add_event(
        &self,
        id: u32,
        connection: Arc<dyn EventConnection>,
    ) -> Result<(), ConnectionError> {
        check_id(id)?;
        let mut map = self.events.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&id) {
            return Err(ConnectionError::InUse(id));
        }
        map.insert(id, connection);
        Ok(())
    }

    /// Removes the event connection `id`, returning it.
    pub fn remove_event(&self, id: u32) -> Option<Arc<dyn EventConnection>> {
        self.events
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }

    /// Dispatches a validated hypercall from `caller` to its connection.
    pub fn dispatch(&self, caller: VpIndex, call: &Hypercall) -> HvStatus {
        // Clone the handler out so no registry lock is held while it runs (a handler may
        // register or remove connections, as the test device does).
        match call {
            Hypercall::PostMessage(m) => {
                let conn = self
                    .messages
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&m.connection_id)
                    .cloned();
                match conn {
                    Some(c) => c.post(caller, m),
                    None => HvStatus::InvalidConnectionId,
                }
            }
            Hypercall::SignalEvent(e) => {
                let conn = self
                    .events
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&e.connection_id)
                    .cloned();
                match conn {
                    Some(c) => c.signal(caller, e.flag_number),
                    None => HvStatus::InvalidConnectionId,
                }
            }
        }
    }
}

/// Decodes, validates and dispatches a hypercall from `caller`; returns the RAX value.
pub fn handle<M: GuestMemory + ?Sized>(
    mem: &M,
    regs: &HypercallRegs,
    caller: VpIndex,
    connections: &Connections,
) -> u64 {
    match decode(mem, regs) {
        Ok(call) => connections.dispatch(caller, &call).rax(),
        Err(status) => status.rax(),
    }
}

#[cfg(test)]
mod tests;
