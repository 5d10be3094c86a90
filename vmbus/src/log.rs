//! The exchange log: control messages both ways and channel events, with times. The guest
//! decides how many messages it sends, so the log keeps the last [`DEFAULT_LOG_CAPACITY`]
//! entries (configurable) and counts everything: a guest cannot grow it without bound.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// Entries kept by default.
pub const DEFAULT_LOG_CAPACITY: usize = 1024;

/// Which way something went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the guest (HvPostMessage, a ring packet).
    GuestToHost,
    /// To the guest (a posted message, a ring packet).
    HostToGuest,
    /// The host's own action (a channel opened or closed, a request given up).
    Host,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Time since the host was attached.
    pub at: Duration,
    /// Direction.
    pub direction: Direction,
    /// What happened.
    pub text: String,
    /// Whether this was refused or failed.
    pub error: bool,
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::GuestToHost => "guest -> host",
            Direction::HostToGuest => "host -> guest",
            Direction::Host => "host",
        };
        let mark = if self.error { " [refused]" } else { "" };
        write!(
            f,
            "[{:8.3} s] {dir}: {}{mark}",
            self.at.as_secs_f64(),
            self.text
        )
    }
}

/// A bounded log: the last `capacity` entries, and counts of all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeLog {
    entries: VecDeque<Exchange>,
    capacity: usize,
    total: u64,
    errors: u64,
}

impl Default for ExchangeLog {
    fn default() -> Self {
        Self::new(DEFAULT_LOG_CAPACITY)
    }
}

impl ExchangeLog {
    /// An empty log keeping at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            entries: VecDeque::with_capacity(capacity.min(DEFAULT_LOG_CAPACITY)),
            capacity,
            total: 0,
            errors: 0,
        }
    }

    /// Adds an entry, dropping the oldest when full.
    pub fn push(&mut self, e: Exchange) {
        self.total += 1;
        self.errors += u64::from(e.error);
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }

    /// The entries kept, oldest first.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &Exchange> {
        self.entries.iter()
    }

    /// Entries ever added.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Entries ever added that were errors.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Entries dropped to keep the bound.
    pub fn dropped(&self) -> u64 {
        self.total - self.entries.len() as u64
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(i: u64, error: bool) -> Exchange {
        Exchange {
            at: Duration::from_millis(i),
            direction: Direction::GuestToHost,
            text: format!("message {i}"),
            error,
        }
    }

    #[test]
    fn log_keeps_the_last_entries_at_its_bound_and_counts_all() {
        let mut log = ExchangeLog::new(DEFAULT_LOG_CAPACITY);
        for i in 0..DEFAULT_LOG_CAPACITY as u64 {
            log.push(e(i, i % 10 == 0));
        }
        assert_eq!(log.entries().len(), DEFAULT_LOG_CAPACITY);
        assert_eq!(log.dropped(), 0);
        // One past the bound: the oldest goes, the count goes on.
        for i in 0..3 * DEFAULT_LOG_CAPACITY as u64 {
            log.push(e(DEFAULT_LOG_CAPACITY as u64 + i, false));
        }
        assert_eq!(log.entries().len(), DEFAULT_LOG_CAPACITY);
        assert_eq!(log.total(), 4 * DEFAULT_LOG_CAPACITY as u64);
        assert_eq!(log.dropped(), 3 * DEFAULT_LOG_CAPACITY as u64);
        assert_eq!(log.errors(), DEFAULT_LOG_CAPACITY as u64 / 10 + 1);
        let first = log.entries().next().unwrap();
        assert_eq!(first.text, format!("message {}", 3 * DEFAULT_LOG_CAPACITY));
        assert!(log.to_owned().capacity() == DEFAULT_LOG_CAPACITY);
    }

    #[test]
    fn display_marks_refusals() {
        let s = e(1500, true).to_string();
        assert!(
            s.starts_with("[   1.500 s] guest -> host: message 1500"),
            "{s}"
        );
        assert!(s.ends_with("[refused]"));
        assert_eq!(ExchangeLog::new(0).capacity(), 1);
    }
}
