//! Key-value pair exchange (KVP): the host gets, sets, deletes and enumerates items in the
//! guest's pools; `hv_kvp_daemon` answers for Linux. Keys and values are UTF-16LE on the wire.

// zerocopy's derives emit helper items the lint cannot see a `Debug` for; every type here
// derives `Debug`.
#![allow(missing_debug_implementations)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::{
    request, response, utf16_from, utf16_into, IcError, Negotiated, HV_S_CONT, HV_S_OK,
    ICMSGTYPE_KVPEXCHANGE, ICMSG_HDR,
};

/// Bytes of a KVP key (UTF-16LE, NUL included).
pub const KVP_MAX_KEY_SIZE: usize = 512;
/// Bytes of a KVP value.
pub const KVP_MAX_VALUE_SIZE: usize = 2048;
/// `REG_SZ`: a string value.
pub const REG_SZ: u32 = 1;

/// A KVP pool (`enum hv_kvp_exchg_pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KvpPool {
    /// Set by the host, read by the guest.
    External = 0,
    /// Set by the guest, read by the host.
    Guest = 1,
    /// The guest's intrinsic items (host name, OS, addresses), enumerated by the host.
    Auto = 2,
    /// Set by the host about itself (its name, ...).
    AutoExternal = 3,
    /// Internal.
    AutoInternal = 4,
}

/// A KVP operation (`enum hv_kvp_exchg_op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KvpOperation {
    /// Read a key's value.
    Get = 0,
    /// Write a key's value.
    Set = 1,
    /// Remove a key.
    Delete = 2,
    /// Read the item at an index.
    Enumerate = 3,
}

/// `struct hv_kvp_exchg_msg_value` (2572 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct KvpValue {
    /// `REG_SZ` etc.
    pub value_type: u32,
    /// Bytes of `key` used, NUL included.
    pub key_size: u32,
    /// Bytes of `value` used, NUL included.
    pub value_size: u32,
    /// UTF-16LE.
    pub key: [u8; KVP_MAX_KEY_SIZE],
    /// UTF-16LE.
    pub value: [u8; KVP_MAX_VALUE_SIZE],
}

/// A KVP exchange message (`struct hv_kvp_msg` as far as the host uses it): the header
/// (`operation`, `pool`, padding) and a body holding an enumeration's index and item, or a
/// get's or set's item alone at its start.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct KvpMessage {
    /// `KvpOperation`.
    pub operation: u8,
    /// `KvpPool`.
    pub pool: u8,
    /// Zero.
    pub pad: u16,
    /// The body: an enumeration's index then its item, or a get's/set's item alone.
    pub body: [u8; 4 + size_of::<KvpValue>()],
}

const _: () = assert!(size_of::<KvpValue>() == 2572);
const _: () = assert!(size_of::<KvpMessage>() == 2580);

/// A KVP request: `operation` on `pool`; `index` for an enumeration, `key` (and `value` for
/// a set) otherwise. The packet is sized for the guest's answer in place.
pub fn kvp_request(
    v: Negotiated,
    transaction: u8,
    operation: KvpOperation,
    pool: KvpPool,
    index: u32,
    key: &str,
    value: &str,
) -> Vec<u8> {
    let mut item = KvpValue::new_zeroed();
    item.value_type = REG_SZ;
    item.key_size = utf16_into(key, &mut item.key) as u32;
    item.value_size = utf16_into(value, &mut item.value) as u32;
    let mut msg = KvpMessage::new_zeroed();
    msg.operation = operation as u8;
    msg.pool = pool as u8;
    match operation {
        KvpOperation::Enumerate => {
            msg.body[..4].copy_from_slice(&index.to_le_bytes());
            msg.body[4..].copy_from_slice(item.as_bytes());
        }
        // Get, set and delete keep their item at the start of the body (the delete's key
        // size and key overlay the item's first fields; Linux reads them from there).
        KvpOperation::Delete => {
            msg.body[..4].copy_from_slice(&item.key_size.to_le_bytes());
            msg.body[4..4 + KVP_MAX_KEY_SIZE].copy_from_slice(&item.key);
        }
        KvpOperation::Get | KvpOperation::Set => {
            msg.body[..size_of::<KvpValue>()].copy_from_slice(item.as_bytes());
        }
    }
    request(ICMSGTYPE_KVPEXCHANGE, v, transaction, msg.as_bytes())
}

/// A KVP answer: `None` when the guest has no such item (`HV_S_CONT`), else the key and value
/// it returned.
pub fn kvp_response(
    payload: &[u8],
    operation: KvpOperation,
) -> Result<Option<(String, String)>, IcError> {
    let r = response(payload, ICMSGTYPE_KVPEXCHANGE)?;
    match r.header.status {
        HV_S_OK => {}
        HV_S_CONT => return Ok(None),
        s => return Err(IcError::Status(s)),
    }
    if matches!(operation, KvpOperation::Set | KvpOperation::Delete) {
        return Ok(Some((String::new(), String::new())));
    }
    let (msg, _) = KvpMessage::read_from_prefix(r.data).map_err(|_| IcError::Short {
        len: payload.len(),
        need: ICMSG_HDR + size_of::<KvpMessage>(),
    })?;
    let at = if operation == KvpOperation::Enumerate {
        4
    } else {
        0
    };
    let (item, _) = KvpValue::read_from_prefix(&msg.body[at..]).map_err(|_| IcError::Short {
        len: payload.len(),
        need: ICMSG_HDR + size_of::<KvpMessage>(),
    })?;
    Ok(Some((
        utf16_from(&item.key, item.key_size),
        utf16_from(&item.value, item.value_size),
    )))
}
