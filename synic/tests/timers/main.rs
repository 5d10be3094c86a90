//! Synthetic timers on a fake reference clock: one test per timer rule, drift properties over
//! thousands of periods, save/restore, and a threaded run against a guest thread.

#[path = "../common/mod.rs"]
mod common;

mod drift;
mod rules;
mod state;
mod stress;

use synic::{TimerMessagePayload, TimerPoll, VpIndex};
use synic_msr::{index, Origin, StimerConfig};

use common::*;

/// STIMERn_CONFIG and STIMERn_COUNT.
pub fn config_msr(timer: u32) -> u32 {
    index::STIMER0_CONFIG + 2 * timer
}

pub fn count_msr(timer: u32) -> u32 {
    index::STIMER0_COUNT + 2 * timer
}

/// A message-mode config: enabled, `periodic`, `lazy`, delivering to `sint`.
pub fn message_config(periodic: bool, lazy: bool, sint: u8) -> u64 {
    StimerConfig::new(true, periodic, lazy, false, sint).0
}

impl Harness {
    /// The guest programs timer `timer`: COUNT first, then CONFIG (the usual order).
    pub fn start_timer(&mut self, vp: usize, timer: u32, config: u64, count: u64) {
        self.wrmsr(vp, count_msr(timer), count);
        self.wrmsr(vp, config_msr(timer), config);
    }

    /// The timer thread's poll with the clock at `now`.
    pub fn poll_at(&self, now: u64) -> TimerPoll {
        self.clock.set(now);
        self.partition.poll_timers()
    }

    /// The guest reads STIMERn_CONFIG.
    pub fn timer_config(&self, vp: usize, timer: u32) -> StimerConfig {
        StimerConfig(
            self.vps[vp]
                .rdmsr(config_msr(timer), Origin::Guest)
                .unwrap(),
        )
    }

    /// The expiry message in `sint`'s slot, if the slot holds one (left in place).
    pub fn timer_in_slot(&self, vp: usize, sint: u8) -> Option<TimerMessagePayload> {
        TimerMessagePayload::of(&self.slot(vp, sint))
    }

    /// The guest's ISR on one slot: take the message, free the slot, EOM if MessagePending
    /// was set. Returns the timer payload (None if the slot held another kind of message) and
    /// whether the guest wrote EOM; None when the slot was empty.
    pub fn take(&mut self, vp: usize, sint: u8) -> Option<(Option<TimerMessagePayload>, bool)> {
        let (bytes, pending) = guest_take_slot(&self.mem, simp_gpa(vp) + 256 * u64::from(sint))?;
        let m: synic::HvMessage = zerocopy::FromBytes::read_from_bytes(&bytes[..]).unwrap();
        if pending {
            self.eom(vp);
        }
        Some((TimerMessagePayload::of(&m), pending))
    }

    pub fn timer_counters(&self, vp: u32, timer: usize) -> synic::StimerCounters {
        self.partition.stimer_counters(VpIndex(vp)).unwrap()[timer]
    }
}
