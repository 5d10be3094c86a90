//! One SINT's FIFO of accepted messages that are not yet in the slot, allocated on demand.
//!
//! A VP has 16 queues and most of them are empty nearly all the time: a message that finds its
//! slot free goes straight into it and never touches the queue. So an empty queue holds no
//! allocation at all, a queue grows in small steps (at most a quarter of its length, at least
//! [`GROWTH_MIN`] messages, never past the configured capacity), gives capacity back when it
//! shrinks to a quarter of what it holds, and frees everything when it drains. Host memory
//! then follows the messages actually queued (docs/synic-design.md, "Host memory").

use std::collections::{vec_deque, VecDeque};

use crate::message::HvMessage;

/// The smallest growth step, in messages (1 KiB): a queue that starts filling allocates room
/// for this many at once.
const GROWTH_MIN: usize = 4;

/// A FIFO of messages with on-demand storage.
#[derive(Debug, Default)]
pub(crate) struct MessageQueue {
    messages: VecDeque<HvMessage>,
}

impl MessageQueue {
    /// An empty queue; allocates nothing.
    pub(crate) const fn new() -> Self {
        Self {
            messages: VecDeque::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub(crate) fn front(&self) -> Option<&HvMessage> {
        self.messages.front()
    }

    pub(crate) fn iter(&self) -> vec_deque::Iter<'_, HvMessage> {
        self.messages.iter()
    }

    /// Room for one more message, growing by a small step; `limit` is the queue capacity (the
    /// caller checks it before pushing, so the storage never exceeds it by more than the one
    /// message being added).
    fn reserve_one(&mut self, limit: usize) {
        let len = self.messages.len();
        if len < self.messages.capacity() {
            return;
        }
        let step = (len / 4).max(GROWTH_MIN);
        let target = (len + step).min(limit.max(len + 1));
        self.messages.reserve_exact(target - len);
    }

    /// Appends `message`; `limit` bounds the storage the queue grows to.
    pub(crate) fn push_back(&mut self, message: HvMessage, limit: usize) {
        self.reserve_one(limit);
        self.messages.push_back(message);
    }

    /// Inserts saved messages ahead of what is queued (restore), oldest first.
    pub(crate) fn prepend(&mut self, saved: &[HvMessage], limit: usize) {
        for (i, m) in saved.iter().enumerate() {
            self.reserve_one(limit);
            self.messages.insert(i, *m);
        }
    }

    /// Removes the newest message (a post that failed after pushing).
    pub(crate) fn pop_back(&mut self) -> Option<HvMessage> {
        let m = self.messages.pop_back();
        self.give_back();
        m
    }

    /// Removes the oldest message.
    pub(crate) fn pop_front(&mut self) -> Option<HvMessage> {
        let m = self.messages.pop_front();
        self.give_back();
        m
    }

    /// Takes every message out (VP reset); the storage is freed.
    pub(crate) fn take_all(&mut self) -> VecDeque<HvMessage> {
        std::mem::take(&mut self.messages)
    }

    /// Frees the storage of a drained queue; halves a queue that holds less than a quarter of
    /// its room.
    fn give_back(&mut self) {
        let (len, room) = (self.messages.len(), self.messages.capacity());
        if len == 0 {
            if room != 0 {
                self.messages = VecDeque::new();
            }
        } else if room > 4 * len && room > 2 * GROWTH_MIN {
            self.messages.shrink_to((2 * len).max(GROWTH_MIN));
        }
    }

    /// Messages of storage currently allocated (for tests).
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.messages.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageType;

    fn m(id: u8) -> HvMessage {
        HvMessage::new(MessageType(1), 0, &[id]).unwrap()
    }

    #[test]
    fn an_empty_queue_allocates_nothing_and_a_drained_one_frees_its_storage() {
        let mut q = MessageQueue::new();
        assert_eq!(q.room(), 0);
        q.push_back(m(1), 64);
        assert!(q.room() >= 1 && q.room() <= 2 * GROWTH_MIN);
        assert_eq!(q.pop_front().map(|x| x.payload[0]), Some(1));
        assert_eq!(q.room(), 0);
        q.push_back(m(2), 64);
        assert_eq!(q.pop_back().map(|x| x.payload[0]), Some(2));
        assert_eq!(q.room(), 0);
    }

    #[test]
    fn growth_is_bounded_by_the_capacity_and_a_quarter_of_the_length() {
        for limit in [1, 3, 4, 5, 64, 4096] {
            let mut q = MessageQueue::new();
            for i in 0..limit {
                q.push_back(m(i as u8), limit);
                let len = q.len();
                // VecDeque may round its allocation up a little; what we ask for is bounded.
                assert!(
                    q.room() <= (len + (len / 4).max(GROWTH_MIN)).min(limit.max(len)) + 1,
                    "limit {limit}, len {len}, room {}",
                    q.room()
                );
            }
            for i in 0..limit {
                assert_eq!(q.pop_front().map(|x| x.payload[0]), Some(i as u8));
                let len = q.len();
                assert!(len == 0 || q.room() <= (4 * len).max(2 * GROWTH_MIN));
            }
            assert_eq!(q.room(), 0);
        }
    }

    #[test]
    fn prepend_puts_saved_messages_first_in_order() {
        let mut q = MessageQueue::new();
        q.push_back(m(9), 8);
        q.prepend(&[m(1), m(2)], 8);
        let order: Vec<u8> = q.iter().map(|x| x.payload[0]).collect();
        assert_eq!(order, [1, 2, 9]);
        assert_eq!(q.take_all().len(), 3);
        assert_eq!(q.room(), 0);
    }
}
