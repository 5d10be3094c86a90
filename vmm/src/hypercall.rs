//! Hypercalls without in-kernel Hyper-V: the bytes of the hypercall page, the register ABI, and
//! the per-vCPU [`HypercallHandler`] hook.
//!
//! The page the guest enables through the HYPERCALL MSR holds `out 0xEB, al; ret`
//! ([`crate::layout::ports::HYPERCALL_TRAP`]). The port write exits to userspace with RCX, RDX
//! and R8 untouched; the vCPU loop reads them, calls the handler, writes RAX and resumes after
//! the `out`, so the `ret` returns to the caller. In kernel mode the same handler receives
//! `KVM_EXIT_HYPERV_HCALL` exits.

use kvm_bindings::kvm_regs;

use crate::layout::ports::HYPERCALL_TRAP;

/// Hypercall status codes (RAX bits 15:0).
pub mod status {
    /// HV_STATUS_SUCCESS.
    pub const SUCCESS: u16 = 0;
    /// HV_STATUS_INVALID_HYPERCALL_CODE.
    pub const INVALID_HYPERCALL_CODE: u16 = 2;
    /// HV_STATUS_INVALID_HYPERCALL_INPUT.
    pub const INVALID_HYPERCALL_INPUT: u16 = 3;
    /// HV_STATUS_INVALID_ALIGNMENT.
    pub const INVALID_ALIGNMENT: u16 = 4;
    /// HV_STATUS_INVALID_PARAMETER.
    pub const INVALID_PARAMETER: u16 = 5;
    /// HV_STATUS_ACCESS_DENIED.
    pub const ACCESS_DENIED: u16 = 6;
    /// HV_STATUS_INVALID_VP_INDEX.
    pub const INVALID_VP_INDEX: u16 = 0xE;
    /// HV_STATUS_INVALID_PORT_ID.
    pub const INVALID_PORT_ID: u16 = 0x11;
    /// HV_STATUS_INVALID_CONNECTION_ID.
    pub const INVALID_CONNECTION_ID: u16 = 0x12;
    /// HV_STATUS_INSUFFICIENT_BUFFERS.
    pub const INSUFFICIENT_BUFFERS: u16 = 0x13;
    /// HV_STATUS_INVALID_SYNIC_STATE.
    pub const INVALID_SYNIC_STATE: u16 = 0x18;
}

/// HvPostMessage call code.
pub const HVCALL_POST_MESSAGE: u16 = 0x005C;
/// HvSignalEvent call code.
pub const HVCALL_SIGNAL_EVENT: u16 = 0x005D;

/// The code at the start of the hypercall page: `out HYPERCALL_TRAP, al; ret`.
pub const HYPERCALL_PAGE_CODE: [u8; 3] = [0xE6, HYPERCALL_TRAP as u8, 0xC3];

/// The full 4 KiB page: the trap, then `int3` so a stray jump into the page faults loudly.
pub fn hypercall_page() -> [u8; 4096] {
    let mut page = [0xCC; 4096];
    page[..HYPERCALL_PAGE_CODE.len()].copy_from_slice(&HYPERCALL_PAGE_CODE);
    page
}

/// The hypercall input value (RCX on x64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HypercallInput(pub u64);

impl HypercallInput {
    /// Call code, bits 15:0.
    pub const fn call_code(self) -> u16 {
        (self.0 & 0xFFFF) as u16
    }
    /// Fast (register) calling convention, bit 16.
    pub const fn fast(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Variable header size in 8-byte units, bits 26:17.
    pub const fn var_header_size(self) -> u16 {
        ((self.0 >> 17) & 0x3FF) as u16
    }
    /// Rep count, bits 43:32.
    pub const fn rep_count(self) -> u16 {
        ((self.0 >> 32) & 0xFFF) as u16
    }
    /// Rep start index, bits 59:48.
    pub const fn rep_start(self) -> u16 {
        ((self.0 >> 48) & 0xFFF) as u16
    }
    /// Reserved bits (31:27, 47:44, 63:60) that are set.
    pub const fn reserved_bits(self) -> u64 {
        self.0 & (0xF800_0000 | (0xF << 44) | (0xF << 60))
    }
}

/// One hypercall as the guest issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hypercall {
    /// The input value.
    pub input: HypercallInput,
    /// Input page GPA, or the first fast parameter (RDX on x64).
    pub param0: u64,
    /// Output page GPA, or the second fast parameter (R8 on x64).
    pub param1: u64,
}

impl Hypercall {
    /// Reads the hypercall registers: RCX, RDX, R8 in 64-bit mode; EDX:EAX, EBX:ECX, EDI:ESI
    /// in 32-bit mode (TLFS x86 ABI).
    pub fn from_regs(regs: &kvm_regs, long_mode: bool) -> Hypercall {
        let pair = |hi: u64, lo: u64| (hi << 32) | (lo & 0xFFFF_FFFF);
        if long_mode {
            Hypercall {
                input: HypercallInput(regs.rcx),
                param0: regs.rdx,
                param1: regs.r8,
            }
        } else {
            Hypercall {
                input: HypercallInput(pair(regs.rdx, regs.rax)),
                param0: pair(regs.rbx, regs.rcx),
                param1: pair(regs.rdi, regs.rsi),
            }
        }
    }

    /// The call a `KVM_EXIT_HYPERV_HCALL` exit describes (kernel mode): `input` and KVM's
    /// `params[0..2]`.
    ///
    /// KVM tries HvSignalEvent itself first and exits to userspace only when no
    /// `KVM_HYPERV_EVENTFD` matches. For the memory form it has already read the 8-byte input
    /// and hands over that value in `params[0]` (not the GPA) with the Fast bit still clear, so
    /// the call is returned here in its fast form: the guest's input read once, by KVM.
    pub fn from_kvm_exit(input: u64, params: [u64; 2]) -> Hypercall {
        let mut input = HypercallInput(input);
        if input.call_code() == HVCALL_SIGNAL_EVENT {
            input.0 |= 1 << 16;
        }
        Hypercall {
            input,
            param0: params[0],
            param1: params[1],
        }
    }
}

/// Writes a hypercall result: RAX in 64-bit mode, EDX:EAX in 32-bit mode.
pub fn write_result(regs: &mut kvm_regs, long_mode: bool, result: u64) {
    if long_mode {
        regs.rax = result;
    } else {
        regs.rax = result & 0xFFFF_FFFF;
        regs.rdx = result >> 32;
    }
}

/// The result value for a status and a count of completed reps (RAX bits 43:32).
pub const fn result(status: u16, reps_completed: u16) -> u64 {
    (status as u64) | (((reps_completed & 0xFFF) as u64) << 32)
}

/// Handles the hypercalls of one vCPU, on that vCPU's thread. Returns the RAX value.
pub trait HypercallHandler: Send {
    /// The guest issued `call`.
    fn hypercall(&mut self, call: &Hypercall) -> u64;
}

/// The handler of a VM without a SynIC model: every call is `HV_STATUS_INVALID_HYPERCALL_CODE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoHypercalls;

impl HypercallHandler for NoHypercalls {
    fn hypercall(&mut self, _call: &Hypercall) -> u64 {
        result(status::INVALID_HYPERCALL_CODE, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_value_fields_decode() {
        let v = HypercallInput(0x005C | 1 << 16 | 3 << 17 | 0x123 << 32 | 0x456 << 48);
        assert_eq!(v.call_code(), HVCALL_POST_MESSAGE);
        assert!(v.fast());
        assert_eq!(v.var_header_size(), 3);
        assert_eq!(v.rep_count(), 0x123);
        assert_eq!(v.rep_start(), 0x456);
        assert_eq!(v.reserved_bits(), 0);
        assert_eq!(
            HypercallInput(1 << 27 | 1 << 44 | 1 << 63).reserved_bits(),
            1 << 27 | 1 << 44 | 1 << 63
        );
    }

    #[test]
    fn register_abi_64_and_32_bit() {
        let regs = kvm_regs {
            rax: 0xAAAA_AAAA_0000_0001,
            rbx: 0x2,
            rcx: 0x5D,
            rdx: 0x1000,
            rsi: 0x4,
            rdi: 0x3,
            r8: 0x2000,
            ..Default::default()
        };
        let c = Hypercall::from_regs(&regs, true);
        assert_eq!((c.input.0, c.param0, c.param1), (0x5D, 0x1000, 0x2000));
        let c = Hypercall::from_regs(&regs, false);
        assert_eq!(c.input.0, 0x1000_0000_0001);
        assert_eq!(c.param0, 0x2_0000_005D);
        assert_eq!(c.param1, 0x3_0000_0004);
        let mut out = regs;
        write_result(&mut out, false, result(status::INVALID_PARAMETER, 2));
        assert_eq!((out.rax, out.rdx), (5, 2));
        write_result(&mut out, true, 7);
        assert_eq!(out.rax, 7);
    }

    #[test]
    fn kvm_exit_signal_event_is_the_fast_form_of_the_value_kvm_read() {
        // Memory-form HvSignalEvent: KVM read the input, params[0] is the value.
        let c = Hypercall::from_kvm_exit(u64::from(HVCALL_SIGNAL_EVENT), [0x3_0000_0007, 0]);
        assert!(c.input.fast());
        assert_eq!(c.input.call_code(), HVCALL_SIGNAL_EVENT);
        assert_eq!(c.param0, 0x3_0000_0007);
        // Already fast: unchanged.
        let fast = u64::from(HVCALL_SIGNAL_EVENT) | 1 << 16;
        assert_eq!(Hypercall::from_kvm_exit(fast, [7, 0]).input.0, fast);
        // HvPostMessage keeps its memory form and GPAs.
        let c = Hypercall::from_kvm_exit(u64::from(HVCALL_POST_MESSAGE), [0x1000, 0x2000]);
        assert!(!c.input.fast());
        assert_eq!((c.param0, c.param1), (0x1000, 0x2000));
    }

    #[test]
    fn page_starts_with_trap_then_ret() {
        let p = hypercall_page();
        assert_eq!(&p[..3], &[0xE6, 0xEB, 0xC3]);
        assert!(p[3..].iter().all(|&b| b == 0xCC));
        assert_eq!(
            NoHypercalls.hypercall(&Hypercall::from_regs(&kvm_regs::default(), true)),
            2
        );
    }
}
