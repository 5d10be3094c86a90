//! Per-VP and per-SINT statistics.
//!
//! Counters are host statistics, not guest state: they are not part of saved state and survive
//! a VP reset. Per-SINT counters live under the SINT's lock (plain integers, no atomics on the
//! hot path); a snapshot takes each SINT lock briefly.

use synic_msr::index::SINT_COUNT;

/// What happened on one SINT of one VP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SintCounters {
    /// Messages accepted by `post_message` (delivered at once or queued).
    pub posted: u64,
    /// Messages written into the slot.
    pub delivered: u64,
    /// Messages waiting in the queue now (not yet in the slot).
    pub queued: u64,
    /// Posts refused because the queue was full (the message went back to the caller).
    pub rejected_full: u64,
    /// Times the host turned MessagePending on (at delivery or on a busy slot); setting an
    /// already-set bit is not counted.
    pub pending_sets: u64,
    /// Acks from the routing layer (kernel mode's resamplefd).
    pub acks: u64,
    /// Acks that delivered nothing (nothing queued, or the slot was still busy).
    pub spurious_acks: u64,
    /// Event flags turned from 0 to 1 (each raised the SINT unless masked or polling).
    pub flags_set: u64,
    /// Event flags signalled while already set (coalesced, no interrupt).
    pub flags_coalesced: u64,
    /// Delivery attempts that found the enabled page outside guest RAM.
    pub page_errors: u64,
}

/// Statistics of one VP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpCounters {
    /// EOM writes (userspace mode; each retries every SINT).
    pub eoms: u64,
    /// Per SINT, indexed by SINT number.
    pub sints: [SintCounters; SINT_COUNT],
}

impl VpCounters {
    /// The sum over all SINTs.
    pub fn total(&self) -> SintCounters {
        let mut t = SintCounters::default();
        for s in &self.sints {
            t.posted += s.posted;
            t.delivered += s.delivered;
            t.queued += s.queued;
            t.rejected_full += s.rejected_full;
            t.pending_sets += s.pending_sets;
            t.acks += s.acks;
            t.spurious_acks += s.spurious_acks;
            t.flags_set += s.flags_set;
            t.flags_coalesced += s.flags_coalesced;
            t.page_errors += s.page_errors;
        }
        t
    }
}
