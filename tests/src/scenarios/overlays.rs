//! Overlay pages as a real guest sees them (TLFS "GPA Overlay Pages"): SIMP and SIEFP (and,
//! in userspace mode, the hypercall page) hide the RAM they are enabled on, give it back
//! untouched when disabled, and carry their content to wherever they are enabled next; a
//! message page enabled over stale data works at once.
//!
//! In kernel mode KVM owns the registers and the library swaps the pages at
//! `KVM_EXIT_HYPERV_SYNIC`, before the vCPU runs again: the guest's very next instruction must
//! see the result. KVM owns the hypercall page there and writes into RAM directly, so that part
//! runs in userspace mode only.

use iced_x86::code_asm::*;
use synic::Posted;
use synic_msr::index::{GUEST_OS_ID, HYPERCALL, SIEFP, SIMP};

use crate::guest::area_address;
use crate::harness::{run, VmSpec};
use crate::layout::{self, tag, vector};
use crate::{Eoi, Mode, Setup, SintValue, SynicGuest};

/// Spare pages of the vCPU's area the pages are laid over.
const SPARE: [u64; 5] = [0x7000, 0x8000, 0x9000, 0xA000, 0xB000];

/// What the guest stores into an overlay, at two places of the page.
const MARK: u64 = 0x0123_4567_89AB_CDEF;
const MARK_AT: [u64; 2] = [0x808, 0xFF8];

/// The pattern the guest fills the RAM page at `offset` with.
fn pattern(offset: u64) -> u64 {
    0xA5A5_0000_0000_5A5A ^ offset << 16
}

/// Fills the area page at `offset` with the qword `value`. Clobbers RAX, RCX, RDI.
fn fill(g: &mut SynicGuest, offset: u64, value: u64) {
    g.emit(|a| {
        area_address(a, rdi, offset)?;
        a.mov(rax, value)?;
        a.mov(ecx, 512u32)?;
        a.cld()?;
        a.rep().stosq()
    })
    .unwrap();
}

/// Stores `value` at area offset `offset` (a guest store). Clobbers RAX, RDI.
fn store(g: &mut SynicGuest, offset: u64, value: u64) {
    g.emit(|a| {
        area_address(a, rdi, offset)?;
        a.mov(rax, value)?;
        a.mov(qword_ptr(rdi), rax)
    })
    .unwrap();
}

/// Reports (under [`tag::VALUE`]) the qword at area offset `offset`. Clobbers RAX.
fn report_qword(g: &mut SynicGuest, offset: u64) {
    g.emit(|a| {
        area_address(a, rax, offset)?;
        a.mov(rax, qword_ptr(rax))
    })
    .unwrap();
    g.report_rax_as(tag::VALUE).unwrap();
}

/// Reports (under [`tag::VALUE`]) how many of the 512 qwords of the area page at `offset` are
/// not `value`. Clobbers RAX, RCX, RDX, RSI, R8.
fn report_mismatches(g: &mut SynicGuest, offset: u64, value: u64) {
    g.emit(|a| {
        let mut top = a.create_label();
        area_address(a, rsi, offset)?;
        a.mov(r8, value)?;
        a.xor(eax, eax)?;
        a.mov(ecx, 512u32)?;
        a.set_label(&mut top)?;
        a.xor(edx, edx)?;
        a.cmp(qword_ptr(rsi), r8)?;
        a.setne(dl)?;
        a.add(rax, rdx)?;
        a.add(rsi, 8)?;
        a.dec(ecx)?;
        a.jnz(top)
    })
    .unwrap();
    g.report_rax_as(tag::VALUE).unwrap();
}

/// SIMP, then SIEFP, each over RAM the guest filled with a pattern:
///
/// 1. enabled on page P: the guest reads zeros (the overlay's content after VP reset), not the
///    pattern; it writes two marks into it;
/// 2. disabled: P reads the exact pattern again;
/// 3. enabled on page Q: the marks are there, the rest is zero;
/// 4. moved back to P while enabled: P shows the marks, Q its own pattern again;
/// 5. disabled: P's pattern again.
///
/// Userspace mode, then the hypercall page: enabled over a pattern the guest sees the VMM's code
/// page (no qword of the pattern left); disabled, the exact pattern. No #GP anywhere.
pub fn overlay_pages_hide_and_give_back_ram(setup: Setup) {
    let mut g = SynicGuest::new().unwrap();
    let mut want = Vec::new();
    for (msr, p, q) in [(SIMP, SPARE[0], SPARE[1]), (SIEFP, SPARE[2], SPARE[3])] {
        fill(&mut g, p, pattern(p));
        fill(&mut g, q, pattern(q));
        // 1.
        g.wrmsr_area(msr, p, 1).unwrap();
        report_mismatches(&mut g, p, 0);
        want.push(0);
        for at in MARK_AT {
            store(&mut g, p + at, MARK ^ at);
        }
        // 2.
        g.wrmsr_area(msr, p, 0).unwrap();
        report_mismatches(&mut g, p, pattern(p));
        want.push(0);
        // 3.
        g.wrmsr_area(msr, q, 1).unwrap();
        for at in MARK_AT {
            report_qword(&mut g, q + at);
            want.push(MARK ^ at);
        }
        report_mismatches(&mut g, q, 0);
        want.push(MARK_AT.len() as u64);
        // 4.
        g.wrmsr_area(msr, p, 1).unwrap();
        report_qword(&mut g, p + MARK_AT[0]);
        want.push(MARK ^ MARK_AT[0]);
        report_mismatches(&mut g, q, pattern(q));
        want.push(0);
        // 5.
        g.wrmsr_area(msr, p, 0).unwrap();
        report_mismatches(&mut g, p, pattern(p));
        want.push(0);
    }
    if setup.mode == Mode::Userspace {
        let h = SPARE[4];
        fill(&mut g, h, pattern(h));
        g.wrmsr(GUEST_OS_ID, 0x8100_0000_0000_0001).unwrap();
        g.wrmsr_area(HYPERCALL, h, 1).unwrap();
        report_mismatches(&mut g, h, pattern(h));
        want.push(512);
        g.wrmsr_area(HYPERCALL, h, 0).unwrap();
        report_mismatches(&mut g, h, pattern(h));
        want.push(0);
    }
    g.exit_ok().unwrap();
    let f = run(VmSpec::new(setup, 1), &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    assert!(f.gps(0).is_empty(), "#GP on {:x?}", f.gps(0));
    assert_eq!(f.values(0, tag::VALUE), want, "what the guest read");
}

/// The wedge of a SynIC that writes into guest RAM directly (KVM's, Propolis'): a message page
/// enabled over stale data shows a busy slot, the host queues behind it and waits for an EOM
/// that never comes. Here the guest fills its message page with 0xFF (every slot "busy", with
/// MessagePending) before enabling it: it reads an empty slot, and a message posted right after
/// is delivered (by interrupt). Then it disables the page, scribbles 0xEE over the RAM (it is
/// the guest's again) and enables it once more: its slots come back as they were, and the next
/// message is delivered too.
pub fn message_after_enabling_simp_on_a_stale_page_is_delivered(setup: Setup) {
    const SINT: u8 = 3;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    g.lapic_enable().unwrap();
    g.set_sint(SINT, SintValue::vector(vector(SINT))).unwrap();
    fill(&mut g, layout::SIMP, u64::MAX);
    g.enable_simp().unwrap();
    g.enable_siefp().unwrap();
    g.enable_scontrol().unwrap();
    g.report_slot_type(SINT).unwrap();
    g.step(1).unwrap();
    g.wait_messages(1).unwrap();
    g.wrmsr_area(SIMP, layout::SIMP, 0).unwrap();
    report_mismatches(&mut g, layout::SIMP, u64::MAX);
    fill(&mut g, layout::SIMP, 0xEEEE_EEEE_EEEE_EEEE);
    g.enable_simp().unwrap();
    g.report_slot_type(SINT).unwrap();
    g.step(2).unwrap();
    g.wait_messages(2).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        |host, _, step| {
            assert_eq!(
                host.post(0, SINT, u64::from(step)),
                Ok(Posted::Delivered),
                "step {step}: the slot is free"
            );
        },
    );
    f.assert_exited_ok();
    assert_eq!(
        f.values(0, tag::VALUE),
        [0, 0, 0],
        "empty slot over 0xFF, the 0xFF page given back, the slot empty again"
    );
    super::messages::assert_sequence(&f.view().messages(0), SINT, [1, 2]);
}
