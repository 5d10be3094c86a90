//! Where the end-to-end guests keep things: per-vCPU SynIC pages, counters and message logs,
//! and the ports the harness adds.
//!
//! ```text
//! 0x0050_0000 + cpu * 0x1_0000   the vCPU's area (AREA_SIZE)
//!     +0x0000  SIMP page              +0x4000  state page (counters, below)
//!     +0x1000  SIEFP page             +0x5000  event flags harvested, 16 x 256 bytes
//!     +0x2000  hypercall input page   +0x6000  a second message page (page moves)
//!     +0x3000  hypercall output page
//! 0x0100_0000 + cpu * 0x10_0000  the vCPU's message log: LOG_CAP entries of 256 bytes
//! ```
//!
//! The areas start at the toolkit's first free page (`synic_vmm::guest::layout::FREE_PAGES`);
//! the guest computes its own area from R15 (its vCPU index), so one program serves every vCPU.

use synic_vmm::guest::layout::FREE_PAGES;

/// First vCPU's area.
pub const AREA_BASE: u64 = FREE_PAGES;
/// Bytes per vCPU area (a power of two: the guest shifts its index by [`AREA_SHIFT`]).
pub const AREA_SIZE: u64 = 1 << AREA_SHIFT;
/// log2 of [`AREA_SIZE`].
pub const AREA_SHIFT: u32 = 16;
/// Offset of the message page in an area.
pub const SIMP: u64 = 0x0000;
/// Offset of the event-flags page.
pub const SIEFP: u64 = 0x1000;
/// Offset of the hypercall input page.
pub const HC_INPUT: u64 = 0x2000;
/// Offset of the hypercall output page.
pub const HC_OUTPUT: u64 = 0x3000;
/// Offset of the state page.
pub const STATE: u64 = 0x4000;
/// Offset of the harvested event flags (what the flag ISR took from the SIEFP page).
pub const FLAGS_SEEN: u64 = 0x5000;
/// Offset of a second message page.
pub const SIMP_ALT: u64 = 0x6000;

/// First vCPU's message log.
pub const LOG_BASE: u64 = 0x100_0000;
/// log2 of a log's size.
pub const LOG_SHIFT: u32 = 20;
/// Entries per log; messages past it are counted but not copied.
pub const LOG_CAP: u64 = (1 << LOG_SHIFT) / 256;

/// A page of flags the vCPUs of one program synchronise on (u64 each; 0 = not yet).
pub const SYNC_PAGE: u64 = LOG_BASE - 0x1000;

/// Guest RAM the harness gives every VM: room for 32 areas and logs.
pub const MEM_SIZE: u64 = 64 << 20;

/// vCPU `cpu`'s area.
pub const fn area(cpu: u32) -> u64 {
    AREA_BASE + ((cpu as u64) << AREA_SHIFT)
}

/// vCPU `cpu`'s message log.
pub const fn log(cpu: u32) -> u64 {
    LOG_BASE + ((cpu as u64) << LOG_SHIFT)
}

/// Counters in the state page (u64 each), written by the guest's handlers.
pub mod state {
    /// Messages taken from a slot (= log entries written or skipped).
    pub const MESSAGES: u64 = 0x00;
    /// EOM writes done because MessagePending was set after the slot was freed.
    pub const EOMS: u64 = 0x08;
    /// Message interrupts that found their slot empty.
    pub const EMPTY_IRQS: u64 = 0x10;
    /// Messages whose MessagePending flag was seen (after freeing the slot).
    pub const PENDING_SEEN: u64 = 0x18;
    /// Event-flag interrupts.
    pub const FLAG_IRQS: u64 = 0x20;
    /// Event flags harvested (bits taken from the SIEFP page).
    pub const FLAG_BITS: u64 = 0x28;
    /// Messages taken by polling (not by an interrupt).
    pub const POLLED: u64 = 0x30;
    /// Messages of type HVMSG_TIMER_EXPIRED taken.
    pub const TIMER_MESSAGES: u64 = 0x38;
    /// Host messages (type [`super::MESSAGE_TYPE`]) whose first payload qword was not the
    /// sequence number expected (one past the previous one): a message lost, duplicated,
    /// reordered or overwritten. Counted across every SINT of the vCPU.
    pub const SEQ_ERRORS: u64 = 0x40;
    /// The next host sequence number expected.
    pub const NEXT_SEQ: u64 = 0x48;
    /// Handlers running now (0 or 1: every handler is an interrupt gate, so IF stays clear
    /// until `iretq`).
    pub const DEPTH: u64 = 0x50;
    /// Handler entries while another handler ran: deliveries the platform made up (the lab's
    /// emulated SVM delivers an injected vector once more inside the ISR,
    /// docs/kernel-mode-lab.md). Each returned at once, touching nothing and sending no EOI.
    pub const NESTED: u64 = 0x58;
    /// Per SINT: messages taken (16 x u64).
    pub const SINT_MESSAGES: u64 = 0x100;
    /// Per SINT: event-flag interrupts (16 x u64).
    pub const SINT_FLAG_IRQS: u64 = 0x180;
    /// Per SINT: message interrupts, empty or not (16 x u64).
    pub const SINT_MSG_IRQS: u64 = 0x200;
    /// Scratch values a program stores for the host to read (16 x u64).
    pub const SCRATCH: u64 = 0x300;
}

/// Ports the harness adds to every VM.
pub mod ports {
    /// A 32-bit OUT of a step number runs the scenario's host action for that step on the
    /// vCPU's thread, before the guest resumes.
    pub const STEP: u16 = 0x3200;
    /// Any OUT keeps the vCPU's thread out of the guest until the host's SynIC machinery is
    /// quiet ([`super::SETTLE_MS`]): time for a late interrupt from another thread.
    pub const SETTLE: u16 = 0x3204;
}

/// A settle OUT lasts until a whole period of this many ms passes with no SynIC activity on
/// the host side (raises, acks, posts, deliveries, flags: the timer thread's and kernel mode's
/// ack pump's included) and no ack in flight between the routing layer and the model — at
/// least one period, at most [`SETTLE_MAX_PERIODS`]. On a loaded machine a late thread makes
/// the settle longer instead of being missed.
pub const SETTLE_MS: u64 = 5;

/// The most periods one settle OUT lasts (a periodic timer keeps the host busy for good).
pub const SETTLE_MAX_PERIODS: u32 = 100;

/// Report tags the e2e programs use (above the toolkit's).
pub mod tag {
    use synic_vmm::guest::tag::USER;
    /// A value read from an MSR.
    pub const MSR: u32 = USER;
    /// A hypercall's RAX.
    pub const HYPERCALL: u32 = USER + 1;
    /// A program-specific value.
    pub const VALUE: u32 = USER + 2;
    /// The program reached a numbered checkpoint (the value).
    pub const CHECKPOINT: u32 = USER + 3;
}

/// Message type of the messages e2e hosts post (any guest type will do).
pub const MESSAGE_TYPE: u32 = 0x100;

/// The vector an e2e program gives SINT `sint` (0x50..=0x5F).
pub const fn vector(sint: u8) -> u8 {
    0x50 + sint
}
