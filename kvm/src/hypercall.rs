//! Hypercalls on KVM: the register ABI, the hypercall page userspace mode writes, and the
//! values `KVM_EXIT_HYPERV_HCALL` carries in kernel mode.
//!
//! Without in-kernel Hyper-V, `VMCALL` never reaches userspace, so in userspace mode the page the
//! guest enables through the HYPERCALL MSR holds `out PORT, al; ret` ([`hypercall_page`]). The
//! port write exits to userspace with RCX, RDX and R8 untouched (an 8-bit port needs no register
//! but AL, which the ABI clobbers anyway: RAX returns the result). The vCPU loop reads the
//! registers ([`call_from_regs`]), the SynIC answers, the loop writes RAX ([`write_result`]) and
//! resumes after the `out`, so the `ret` returns to the caller. [`crate::VcpuSynic::hypercall_trap`]
//! does all of it. In kernel mode KVM fills the page and exits with `KVM_EXIT_HYPERV_HCALL`
//! ([`call_from_kvm_exit`]).

use kvm_bindings::{kvm_regs, kvm_sregs};
use synic::hypercall::{HypercallControl, HypercallRegs, HVCALL_SIGNAL_EVENT};

/// The default hypercall trap port (`out 0xEB, al`): unused on PCs (QEMU and Linux leave
/// 0xEB alone; it was a POST-delay port).
pub const DEFAULT_TRAP_PORT: u8 = 0xEB;

/// The code at the start of the hypercall page for trap port `port`: `out port, al; ret`.
pub const fn hypercall_page_code(port: u8) -> [u8; 3] {
    [0xE6, port, 0xC3]
}

/// The full 4 KiB page: the trap, then `int3` so a stray jump into the page faults loudly.
pub fn hypercall_page(port: u8) -> [u8; 4096] {
    let mut page = [0xCC; 4096];
    let code = hypercall_page_code(port);
    page[..code.len()].copy_from_slice(&code);
    page
}

/// Whether the vCPU runs 64-bit code (EFER.LMA and CS.L): the hypercall ABI then uses RCX,
/// RDX, R8 and RAX; otherwise EDX:EAX, EBX:ECX, EDI:ESI and EDX:EAX.
pub fn long_mode(sregs: &kvm_sregs) -> bool {
    const EFER_LMA: u64 = 1 << 10;
    sregs.efer & EFER_LMA != 0 && sregs.cs.l == 1
}

/// The privilege level the vCPU runs at (CS.RPL, which equals CPL outside real mode). Only
/// CPL 0 may call the hypervisor.
pub fn cpl(sregs: &kvm_sregs) -> u8 {
    (sregs.cs.selector & 3) as u8
}

/// Reads the hypercall registers: RCX, RDX, R8 in 64-bit mode; EDX:EAX, EBX:ECX, EDI:ESI in
/// 32-bit mode (TLFS x86 ABI).
pub fn call_from_regs(regs: &kvm_regs, long_mode: bool) -> HypercallRegs {
    let pair = |hi: u64, lo: u64| (hi << 32) | (lo & 0xFFFF_FFFF);
    if long_mode {
        HypercallRegs {
            control: regs.rcx,
            input: regs.rdx,
            output: regs.r8,
        }
    } else {
        HypercallRegs {
            control: pair(regs.rdx, regs.rax),
            input: pair(regs.rbx, regs.rcx),
            output: pair(regs.rdi, regs.rsi),
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

/// The call a `KVM_EXIT_HYPERV_HCALL` exit describes (kernel mode): `input` and KVM's
/// `params[0..2]`.
///
/// KVM tries HvSignalEvent itself first and exits to userspace only when no
/// `KVM_HYPERV_EVENTFD` matches. For the memory form it has already read the 8-byte input and
/// hands over that value in `params[0]` (not the GPA) with the Fast bit still clear, so the call
/// is returned here in its fast form: the guest's input read once, by KVM.
pub fn call_from_kvm_exit(input: u64, params: [u64; 2]) -> HypercallRegs {
    let mut control = HypercallControl(input);
    if control.call_code() == HVCALL_SIGNAL_EVENT {
        control.0 |= 1 << 16;
    }
    HypercallRegs {
        control: control.0,
        input: params[0],
        output: params[1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synic::hypercall::HVCALL_POST_MESSAGE;
    use synic::HvStatus;

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
        let c = call_from_regs(&regs, true);
        assert_eq!((c.control, c.input, c.output), (0x5D, 0x1000, 0x2000));
        let c = call_from_regs(&regs, false);
        assert_eq!(c.control, 0x1000_0000_0001);
        assert_eq!(c.input, 0x2_0000_005D);
        assert_eq!(c.output, 0x3_0000_0004);
        let mut out = regs;
        write_result(&mut out, false, HvStatus::InvalidParameter.rax() | 2 << 32);
        assert_eq!((out.rax, out.rdx), (5, 2));
        write_result(&mut out, true, 7);
        assert_eq!(out.rax, 7);
    }

    #[test]
    fn mode_and_privilege_come_from_efer_and_cs() {
        let mut s = kvm_sregs::default();
        assert!(!long_mode(&s));
        s.efer = 1 << 10;
        s.cs.l = 1;
        assert!(long_mode(&s));
        s.cs.l = 0; // compatibility mode: the 32-bit ABI
        assert!(!long_mode(&s));
        s.cs.selector = 0x2B;
        assert_eq!(cpl(&s), 3);
        s.cs.selector = 0x08;
        assert_eq!(cpl(&s), 0);
    }

    #[test]
    fn kvm_exit_signal_event_is_the_fast_form_of_the_value_kvm_read() {
        // Memory-form HvSignalEvent: KVM read the input, params[0] is the value.
        let c = call_from_kvm_exit(u64::from(HVCALL_SIGNAL_EVENT), [0x3_0000_0007, 0]);
        assert!(HypercallControl(c.control).fast());
        assert_eq!(HypercallControl(c.control).call_code(), HVCALL_SIGNAL_EVENT);
        assert_eq!(c.input, 0x3_0000_0007);
        // Already fast: unchanged.
        let fast = u64::from(HVCALL_SIGNAL_EVENT) | 1 << 16;
        assert_eq!(call_from_kvm_exit(fast, [7, 0]).control, fast);
        // HvPostMessage keeps its memory form and GPAs.
        let c = call_from_kvm_exit(u64::from(HVCALL_POST_MESSAGE), [0x1000, 0x2000]);
        assert!(!HypercallControl(c.control).fast());
        assert_eq!((c.input, c.output), (0x1000, 0x2000));
    }

    #[test]
    fn page_starts_with_trap_then_ret() {
        let p = hypercall_page(DEFAULT_TRAP_PORT);
        assert_eq!(&p[..3], &[0xE6, 0xEB, 0xC3]);
        assert!(p[3..].iter().all(|&b| b == 0xCC));
        assert_eq!(hypercall_page_code(0x80), [0xE6, 0x80, 0xC3]);
    }
}
