//! Connections whose port is a SINT of one of the partition's own VPs.

use std::fmt;
use std::sync::Arc;

use vm_memory::GuestAddressSpace;

use super::{EventConnection, HvStatus, MessageConnection, PostMessage};
use crate::message::{HvMessage, MessageType};
use crate::{Partition, SintIndex, VpIndex};

/// A message port on `sint` of `vp`: every message posted to the connection is queued for that
/// SINT (the sender field carries the connection id). A full queue answers
/// `INSUFFICIENT_BUFFERS` and the message stays with the caller, who retries (TLFS).
pub struct MessagePort<M: GuestAddressSpace> {
    partition: Arc<Partition<M>>,
    vp: VpIndex,
    sint: SintIndex,
}

impl<M: GuestAddressSpace> MessagePort<M> {
    /// A port delivering to `sint` of `vp`.
    pub fn new(partition: Arc<Partition<M>>, vp: VpIndex, sint: SintIndex) -> Self {
        Self {
            partition,
            vp,
            sint,
        }
    }
}

impl<M: GuestAddressSpace> fmt::Debug for MessagePort<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessagePort")
            .field("vp", &self.vp)
            .field("sint", &self.sint)
            .finish()
    }
}

impl<M> MessageConnection for MessagePort<M>
where
    M: GuestAddressSpace + Send + Sync,
{
    fn post(&self, _caller: VpIndex, message: &PostMessage) -> HvStatus {
        let msg = match HvMessage::new(
            MessageType(message.message_type),
            u64::from(message.connection_id),
            message.payload(),
        ) {
            Ok(m) => m,
            Err(e) => return e.hv_status(),
        };
        match self.partition.post_message(self.vp, self.sint, msg) {
            Ok(_) => HvStatus::Success,
            Err(e) => e.error.hv_status(),
        }
    }
}

/// An event port on `sint` of `vp`: relative flag `n` (`n < flag_count`) sets flag
/// `base_flag + n` of that SINT's event-flags area.
pub struct EventPort<M: GuestAddressSpace> {
    partition: Arc<Partition<M>>,
    vp: VpIndex,
    sint: SintIndex,
    base_flag: u32,
    flag_count: u32,
}

impl<M: GuestAddressSpace> EventPort<M> {
    /// A port setting flags `base_flag..base_flag + flag_count` of `sint` on `vp`. Flags past
    /// 2047 are refused when signalled (`INVALID_PARAMETER`), never wrapped.
    pub fn new(
        partition: Arc<Partition<M>>,
        vp: VpIndex,
        sint: SintIndex,
        base_flag: u32,
        flag_count: u32,
    ) -> Self {
        Self {
            partition,
            vp,
            sint,
            base_flag,
            flag_count,
        }
    }
}

impl<M: GuestAddressSpace> fmt::Debug for EventPort<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPort")
            .field("vp", &self.vp)
            .field("sint", &self.sint)
            .field("base_flag", &self.base_flag)
            .field("flag_count", &self.flag_count)
            .finish()
    }
}

impl<M> EventConnection for EventPort<M>
where
    M: GuestAddressSpace + Send + Sync,
{
    fn signal(&self, _caller: VpIndex, flag_number: u16) -> HvStatus {
        // TLFS: a flag number beyond the port's flag count is INVALID_PARAMETER.
        if u32::from(flag_number) >= self.flag_count {
            return HvStatus::InvalidParameter;
        }
        let Some(flag) = self.base_flag.checked_add(u32::from(flag_number)) else {
            return HvStatus::InvalidParameter;
        };
        match self.partition.signal_event(self.vp, self.sint, flag) {
            Ok(_) => HvStatus::Success,
            Err(e) => e.hv_status(),
        }
    }
}
