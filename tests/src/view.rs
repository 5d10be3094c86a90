//! The host's view of what an e2e guest recorded: counters, the message log, harvested event
//! flags and the slots themselves, read from guest memory after (or during) a run.

use synic_vmm::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{self, state};

/// One message as the guest copied it out of its slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// The SINT whose slot it came from (recorded by the handler).
    pub sint: u8,
    /// message_type.
    pub message_type: u32,
    /// payload_size.
    pub payload_size: u8,
    /// message_flags when the guest copied it (bit 0 = MessagePending).
    pub flags: u8,
    /// sender / port id.
    pub sender: u64,
    /// All 240 payload bytes.
    pub payload: [u8; 240],
}

impl std::fmt::Debug for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logged")
            .field("sint", &self.sint)
            .field("type", &format_args!("{:#x}", self.message_type))
            .field("size", &self.payload_size)
            .field("flags", &self.flags)
            .field("sender", &format_args!("{:#x}", self.sender))
            .field("qword0", &format_args!("{:#x}", self.qword(0)))
            .finish()
    }
}

impl Logged {
    /// Decodes a 256-byte log entry (a slot copy with the SINT in reserved byte 6).
    pub fn from_bytes(b: &[u8; 256]) -> Self {
        let mut payload = [0u8; 240];
        payload.copy_from_slice(&b[16..]);
        Self {
            sint: b[6],
            message_type: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            payload_size: b[4],
            flags: b[5],
            sender: u64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
            payload,
        }
    }

    /// Payload qword `n` (0..30).
    pub fn qword(&self, n: usize) -> u64 {
        let at = n * 8;
        u64::from_le_bytes(self.payload[at..at + 8].try_into().unwrap_or_default())
    }

    /// Whether MessagePending was set when the guest copied the message.
    pub fn pending(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Reads one e2e guest's records out of guest memory.
#[derive(Debug, Clone, Copy)]
pub struct GuestView<'a> {
    mem: &'a GuestMemory,
}

impl<'a> GuestView<'a> {
    /// A view of `mem`.
    pub fn new(mem: &'a GuestMemory) -> Self {
        Self { mem }
    }

    fn u64_at(&self, gpa: u64) -> u64 {
        self.mem
            .read_obj::<u64>(GuestAddress(gpa))
            .unwrap_or(u64::MAX)
    }

    /// State counter `offset` ([`state`]) of vCPU `cpu`.
    pub fn counter(&self, cpu: u32, offset: u64) -> u64 {
        self.u64_at(layout::area(cpu) + layout::STATE + offset)
    }

    /// Per-SINT counter: `base` is [`state::SINT_MESSAGES`], [`state::SINT_FLAG_IRQS`] or
    /// [`state::SINT_MSG_IRQS`].
    pub fn sint_counter(&self, cpu: u32, base: u64, sint: u8) -> u64 {
        self.counter(cpu, base + u64::from(sint) * 8)
    }

    /// Scratch value `n` stored by the program ([`crate::SynicGuest::store_rax`]).
    pub fn scratch(&self, cpu: u32, n: u64) -> u64 {
        self.counter(cpu, state::SCRATCH + n * 8)
    }

    /// How many interrupts of `vector` vCPU `cpu`'s toolkit ISR counted.
    pub fn toolkit_irqs(&self, cpu: u32, vector: u8) -> u64 {
        use synic_vmm::guest::layout as tk;
        self.u64_at(tk::percpu(cpu) + tk::IRQ_COUNTERS + u64::from(vector) * 8)
    }

    /// The messages vCPU `cpu` took, in the order it took them.
    pub fn messages(&self, cpu: u32) -> Vec<Logged> {
        let count = self.counter(cpu, state::MESSAGES).min(layout::LOG_CAP);
        (0..count)
            .map(|i| {
                let mut b = [0u8; 256];
                let at = layout::log(cpu) + i * 256;
                // The log lies in RAM by construction; a failed read leaves zeros, which
                // no check accepts.
                let _ = self.mem.read_slice(&mut b, GuestAddress(at));
                Logged::from_bytes(&b)
            })
            .collect()
    }

    /// The event flags of SINT `sint` that vCPU `cpu`'s handler took, as flag numbers.
    pub fn flags_seen(&self, cpu: u32, sint: u8) -> Vec<u32> {
        let mut b = [0u8; 256];
        let at = layout::area(cpu) + layout::FLAGS_SEEN + u64::from(sint) * 256;
        let _ = self.mem.read_slice(&mut b, GuestAddress(at));
        (0..2048u32)
            .filter(|&n| b[(n / 8) as usize] & (1 << (n % 8)) != 0)
            .collect()
    }

    /// The raw 256 bytes of SINT `sint`'s slot in vCPU `cpu`'s message page at `page_offset`
    /// ([`layout::SIMP`] or [`layout::SIMP_ALT`]).
    pub fn slot(&self, cpu: u32, page_offset: u64, sint: u8) -> Logged {
        let mut b = [0u8; 256];
        let at = layout::area(cpu) + page_offset + u64::from(sint) * 256;
        let _ = self.mem.read_slice(&mut b, GuestAddress(at));
        b[6] = sint;
        Logged::from_bytes(&b)
    }
}
