//! The demo's host side for one vCPU: a device thread that posts messages and sets event
//! flags in windows, and checks the guest's replies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use synic::{Error as SynicError, FlagOutcome, HvMessage, MessageType, VpIndex};

use super::diag::Anomalies;
use super::guest::{EVENT_FLAGS, EVT_SINT, HOST_MESSAGE_TYPE, MSG_SINT, REPLY_MESSAGE_TYPE};
use crate::synic_vm::SynicPartition;
use synic_kvm::{GuestEvent, GuestMessage};

/// How many of each kind one device thread sends, and how.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Messages (and so message replies) in all.
    pub messages: u64,
    /// Events (and so event replies) in all.
    pub events: u64,
    /// The first this many messages, then this many events, go one at a time (latency).
    pub latency_samples: u64,
    /// Messages in flight afterwards.
    pub message_window: u64,
    /// Events in flight afterwards (below 64: flags are `seq % 64`).
    pub event_window: u64,
    /// A fault to inject (tests of the checks themselves).
    pub fault: Option<super::Fault>,
}

/// Shared progress counters (all device threads add to them).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub exchanged: AtomicU64,
    /// Set when the VM stopped early: the devices give up instead of waiting for the
    /// deadline.
    pub abort: AtomicBool,
}

/// What one device thread saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceResult {
    pub messages_sent: u64,
    pub events_sent: u64,
    /// Distinct message replies (by seq).
    pub replies: u64,
    /// Every message reply, duplicates included.
    pub replies_in: u64,
    pub reply_duplicated: u64,
    /// The first few duplicated replies: (seq, how many replies had arrived before it).
    pub duplicate_replies: Vec<(u64, u64)>,
    pub reply_out_of_order: u64,
    pub reply_bad: u64,
    pub event_replies: u64,
    pub event_reply_out_of_order: u64,
    /// Flags that were still set when the host set them again (would coalesce: a lost event).
    pub events_coalesced: u64,
    /// Round trips with one in flight.
    pub message_latency: Vec<Duration>,
    pub event_latency: Vec<Duration>,
    /// When the pipelined phase started and ended.
    pub pipelined: Option<(Instant, Instant)>,
    /// Why the thread stopped early, if it did.
    pub error: Option<String>,
}

pub(crate) struct Device {
    pub partition: Arc<SynicPartition>,
    pub vp: VpIndex,
    pub plan: Plan,
    pub messages: Receiver<GuestMessage>,
    pub events: Receiver<GuestEvent>,
    pub epoch: Instant,
    pub deadline: Instant,
    pub progress: Arc<Progress>,
    pub anomalies: Arc<Anomalies>,
}

/// Duplicated replies listed in a [`DeviceResult`] (the rest are only counted).
const DUPLICATES_LISTED: usize = 8;

impl Device {
    pub fn run(self) -> DeviceResult {
        let mut r = DeviceResult::default();
        let p = self.plan;
        let mut seen = vec![false; usize::try_from(p.messages).unwrap_or(0)];
        let mut next_reply = 0u64; // expected message reply seq
        let mut event_sent_at = [self.epoch; EVENT_FLAGS as usize];
        let latency_messages = p.latency_samples.min(p.messages);
        let latency_events = p.latency_samples.min(p.events);
        let mut pipelined_start = None;
        // Replies the guest will send: one per message it receives (distinct, and in all with
        // duplicates). Done when both arrived: an unexpected duplicate then cannot end the
        // run before the last distinct reply is in.
        let (expected_distinct, expected_replies) = match p.fault {
            Some(super::Fault::SkipMessage(_)) => {
                (p.messages.saturating_sub(1), p.messages.saturating_sub(1))
            }
            Some(super::Fault::DuplicateMessage(_)) => (p.messages, p.messages + 1),
            Some(super::Fault::PhantomInterrupt(_)) | None => (p.messages, p.messages),
        };
        loop {
            if r.replies >= expected_distinct
                && r.replies_in >= expected_replies
                && r.event_replies >= p.events
            {
                break;
            }
            let now = Instant::now();
            if self.progress.abort.load(Ordering::Relaxed) {
                r.error = Some(format!(
                    "the VM stopped: {}/{} message and {}/{} event replies",
                    r.replies, p.messages, r.event_replies, p.events
                ));
                break;
            }
            if now >= self.deadline {
                r.error = Some(format!(
                    "time limit: {}/{} message and {}/{} event replies",
                    r.replies, p.messages, r.event_replies, p.events
                ));
                break;
            }
            // Phase 1 (latency): messages one at a time, then events one at a time.
            // Phase 2: both streams pipelined.
            let messages_done_latency = r.replies >= latency_messages;
            let events_done_latency = r.event_replies >= latency_events;
            let latency_done = messages_done_latency && events_done_latency;
            if latency_done && pipelined_start.is_none() {
                pipelined_start = Some(now);
            }
            let (message_limit, mw) = if latency_done {
                (p.messages, p.message_window)
            } else {
                (latency_messages, 1)
            };
            // In flight: messages sent that no distinct reply answered yet. Counting every
            // reply instead would let one duplicate make this negative (it once wrapped and
            // stopped the host for good).
            while r.messages_sent < message_limit && r.messages_sent.saturating_sub(r.replies) < mw
            {
                match self.post(r.messages_sent) {
                    Ok(true) => r.messages_sent += 1,
                    Ok(false) => break, // queue full: wait for a reply
                    Err(e) => {
                        r.error = Some(e);
                        return r;
                    }
                }
            }
            let (event_limit, ew) = if latency_done {
                (p.events, p.event_window)
            } else if messages_done_latency {
                (latency_events, 1)
            } else {
                (0, 1)
            };
            while r.events_sent < event_limit && r.events_sent - r.event_replies < ew {
                let flag = r.events_sent % EVENT_FLAGS;
                event_sent_at[flag as usize] = Instant::now();
                match self.partition.signal_event(self.vp, EVT_SINT, flag as u32) {
                    Ok(FlagOutcome::Set) => r.events_sent += 1,
                    Ok(FlagOutcome::AlreadySet) => {
                        r.events_coalesced += 1;
                        r.events_sent += 1;
                    }
                    Err(e) => {
                        r.error = Some(format!("signal_event: {e}"));
                        return r;
                    }
                }
            }
            // Short enough to notice an abort soon.
            let wait = self
                .deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(100));
            select! {
                recv(self.messages) -> m => match m {
                    Ok(m) => {
                        r.replies_in += 1;
                        self.check_reply(&m, &mut r, &mut seen, &mut next_reply, latency_messages);
                    }
                    Err(_) => { r.error = Some("message connection closed".into()); return r; }
                },
                recv(self.events) -> ev => match ev {
                    Ok(ev) => {
                        let expected = r.event_replies % EVENT_FLAGS;
                        if u64::from(ev.flag_number) != expected {
                            r.event_reply_out_of_order += 1;
                        }
                        if r.event_replies < latency_events {
                            let sent = event_sent_at[usize::from(ev.flag_number) % EVENT_FLAGS as usize];
                            r.event_latency.push(ev.at.saturating_duration_since(sent));
                        }
                        r.event_replies += 1;
                        self.progress.exchanged.fetch_add(2, Ordering::Relaxed);
                    }
                    Err(_) => { r.error = Some("event connection closed".into()); return r; }
                },
                default(wait) => {}
            }
        }
        r.pipelined = pipelined_start.map(|s| (s, Instant::now()));
        r
    }

    /// Posts message `seq` (or, with a fault injected, skips or doubles it); `Ok(false)` when
    /// the queue is full.
    fn post(&self, seq: u64) -> Result<bool, String> {
        match self.plan.fault {
            Some(super::Fault::SkipMessage(s)) if s == seq => return Ok(true),
            Some(super::Fault::DuplicateMessage(s)) if s == seq => {
                if !self.post_one(seq)? {
                    return Ok(false);
                }
                // The copy may meet a full queue: retry until it is in.
                while !self.post_one(seq)? {
                    if Instant::now() >= self.deadline {
                        return Err("time limit while injecting a duplicate".into());
                    }
                    std::thread::yield_now();
                }
                return Ok(true);
            }
            _ => {}
        }
        self.post_one(seq)
    }

    fn post_one(&self, seq: u64) -> Result<bool, String> {
        let ts = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        payload[8..].copy_from_slice(&ts.to_le_bytes());
        let msg = HvMessage::new(MessageType(HOST_MESSAGE_TYPE), 0, &payload)
            .map_err(|e| format!("message: {e}"))?;
        match self
            .partition
            .post_message(self.vp, u32::from(MSG_SINT), msg)
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.error, SynicError::QueueFull { .. }) => Ok(false),
            Err(e) => Err(format!("post_message: {e}")),
        }
    }

    fn check_reply(
        &self,
        m: &GuestMessage,
        r: &mut DeviceResult,
        seen: &mut [bool],
        next: &mut u64,
        latency_messages: u64,
    ) {
        let payload = m.message.payload();
        let (Some(seq), Some(ts)) = (le_u64(payload, 0), le_u64(payload, 8)) else {
            r.reply_bad += 1;
            return;
        };
        let slot = usize::try_from(seq).ok().and_then(|i| seen.get_mut(i));
        let Some(slot) = slot.filter(|_| m.message.message_type == REPLY_MESSAGE_TYPE) else {
            r.reply_bad += 1;
            return;
        };
        if *slot {
            r.reply_duplicated += 1;
            if r.duplicate_replies.len() < DUPLICATES_LISTED {
                r.duplicate_replies.push((seq, r.replies_in - 1));
            }
            self.anomalies.seen(format_args!(
                "vCPU {}: the host got the reply to message {seq} again",
                self.vp.0
            ));
            return;
        }
        *slot = true;
        r.replies += 1;
        if seq != *next {
            r.reply_out_of_order += 1;
        }
        *next = (*next).max(seq + 1);
        if seq < latency_messages {
            let sent = self.epoch + Duration::from_nanos(ts);
            r.message_latency.push(m.at.saturating_duration_since(sent));
        }
        self.progress.exchanged.fetch_add(2, Ordering::Relaxed);
    }
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}
