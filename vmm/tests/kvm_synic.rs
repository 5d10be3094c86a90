//! Real-KVM tests of the SynIC wiring (`synic_vm`): a guest enables its SynIC through MSRs,
//! takes host-posted messages on a SINT (MessagePending and EOM included), posts back with
//! HvPostMessage, signals events, drives the hyperv-testdev protocol, and survives a save and
//! restore into a new VM.
//!
//! The mode is chosen automatically: userspace mode on this machine; the same binary tests
//! kernel mode where `KVM_CAP_HYPERV_SYNIC2` exists (run it under `kvm-lab`). Every wait has a
//! wall-clock limit, so a lost interrupt fails the test instead of hanging it.

mod common;

use std::time::Duration;

use common::{drain, kvm_available, next_report, synic_rig, RUN_LIMIT};
use iced_x86::code_asm::*;
use synic::{HvMessage, MessageType, VpIndex};
use synic_kvm::testdev::TestDevCommand;
use synic_kvm::{HostEventConnection, HostMessageConnection, SynicMode};
use synic_vmm::devices::Report;
use synic_vmm::guest::synic::{apic_eoi, count_irq, release_slot};
use synic_vmm::guest::{layout, tag, GuestBuilder, Isr, SynicSetup};
use synic_vmm::layout::ports;
use synic_vmm::synic_vm::SynicVmBuilder;
use synic_vmm::StopReason;

const SIMP: u64 = layout::FREE_PAGES;
const SIEFP: u64 = layout::FREE_PAGES + 0x1000;
const INPUT: u64 = layout::FREE_PAGES + 0x2000;
/// Test data: message count at +0, payloads (first 8 bytes) at +0x10, types at +0x100.
const DATA: u64 = layout::FREE_PAGES + 0x3000;
const MSG_SINT: u8 = 2;
const MSG_VECTOR: u8 = 0x50;
const EVT_SINT: u8 = 3;
const EVT_VECTOR: u8 = 0x51;
const RAW_SINT: u8 = 5;
const RAW_VECTOR: u8 = 0x52;
const HC: u64 = layout::HYPERCALL_PAGE;
const POST: u64 = 0x5C;
const SIGNAL_FAST: u64 = 0x5D | 1 << 16;

fn setup() -> SynicSetup {
    SynicSetup {
        simp: SIMP,
        siefp: SIEFP,
        sints: vec![
            (MSG_SINT, MSG_VECTOR),
            (EVT_SINT, EVT_VECTOR),
            (RAW_SINT, RAW_VECTOR),
        ],
    }
}

/// The common prologue: APIC on, hypercall page, SynIC enabled.
fn prologue(g: &mut GuestBuilder) {
    g.lapic_enable().unwrap();
    g.enable_hypercall_page(HC).unwrap();
    g.synic_enable(&setup()).unwrap();
}

/// The message ISR, at `isr` (a label the program may also call with a hand-made frame):
/// records the slot's type and first payload qword in DATA, frees the slot (EOM if
/// MessagePending), EOIs.
fn emit_message_isr_at(g: &mut GuestBuilder, mut isr: CodeLabel) {
    let slot = setup().slot(MSG_SINT);
    let a = g.asm();
    let mut eoi = a.create_label();
    a.set_label(&mut isr).unwrap();
    for r in [rax, rcx, rdx, rbx] {
        a.push(r).unwrap();
    }
    count_irq(a, MSG_VECTOR).unwrap();
    a.mov(rbx, slot).unwrap();
    a.mov(eax, dword_ptr(rbx)).unwrap();
    a.test(eax, eax).unwrap();
    a.jz(eoi).unwrap();
    a.mov(rcx, qword_ptr(DATA)).unwrap();
    a.mov(rdx, qword_ptr(rbx + 16)).unwrap();
    a.mov(qword_ptr(rcx * 8 + (DATA + 0x10) as i32), rdx)
        .unwrap();
    a.mov(qword_ptr(rcx * 8 + (DATA + 0x100) as i32), rax)
        .unwrap();
    a.inc(qword_ptr(DATA)).unwrap();
    release_slot(a, rbx).unwrap();
    a.set_label(&mut eoi).unwrap();
    apic_eoi(a).unwrap();
    for r in [rbx, rdx, rcx, rax] {
        a.pop(r).unwrap();
    }
    a.iretq().unwrap();
    g.gate(MSG_VECTOR, isr).unwrap();
}

fn emit_message_isr(g: &mut GuestBuilder) {
    let isr = g.asm().create_label();
    emit_message_isr_at(g, isr);
}

/// Writes an HvPostMessage input at INPUT: connection, type, 8-byte payload `payload_reg`.
fn post_input(g: &mut GuestBuilder, conn: u32, message_type: u32, payload: AsmRegister64) {
    let a = g.asm();
    a.mov(rbx, INPUT).unwrap();
    a.mov(dword_ptr(rbx), conn).unwrap();
    a.mov(dword_ptr(rbx + 4), 0u32).unwrap();
    a.mov(dword_ptr(rbx + 8), message_type).unwrap();
    a.mov(dword_ptr(rbx + 12), 8u32).unwrap();
    a.mov(qword_ptr(rbx + 16), payload).unwrap();
}

fn testdev(g: &mut GuestBuilder, cmd: TestDevCommand) {
    let a = g.asm();
    a.mov(dx, u32::from(ports::HV_TESTDEV)).unwrap();
    a.mov(eax, cmd.encode()).unwrap();
    a.out(dx, eax).unwrap();
}

fn user(vcpu: u32, n: u32, value: u64) -> Report {
    Report {
        vcpu,
        tag: tag::USER + n,
        value,
    }
}

#[test]
fn guest_takes_host_messages_with_eom_redelivery_and_posts_and_signals_back() {
    if !kvm_available() {
        return;
    }
    let slot = setup().slot(MSG_SINT);
    let mut g = GuestBuilder::new().unwrap();
    prologue(&mut g);
    g.report(tag::USER, 0).unwrap(); // ready
                                     // Interrupts stay off until the host has queued behind a busy slot (MessagePending set),
                                     // so the EOM path runs for the 2nd and 3rd message whatever the timing.
    let mut poll = g.asm().create_label();
    g.asm().set_label(&mut poll).unwrap();
    g.asm().pause().unwrap();
    g.asm().mov(rbx, slot).unwrap();
    g.asm().test(byte_ptr(rbx + 5), 1).unwrap();
    g.asm().jz(poll).unwrap();
    g.wait_for_irqs(MSG_VECTOR, 3).unwrap();
    for i in 0..3u64 {
        g.asm().mov(rax, qword_ptr(DATA + 0x10 + 8 * i)).unwrap();
        g.report_reg(tag::USER + 1, rax).unwrap();
    }
    g.asm().mov(rax, qword_ptr(DATA + 0x10)).unwrap();
    post_input(&mut g, 0x77, 0x99, rax);
    g.hypercall(HC, POST, INPUT, 0).unwrap();
    g.report_reg(tag::USER + 2, rax).unwrap();
    g.hypercall(HC, SIGNAL_FAST, 0x78, 0).unwrap();
    g.report_reg(tag::USER + 3, rax).unwrap();
    g.exit(0).unwrap();
    emit_message_isr(&mut g);
    let program = g.build().unwrap();

    let rig = synic_rig(SynicVmBuilder::new(), 1);
    let synic = rig.vm.synic().clone();
    let (mconn, messages) = HostMessageConnection::new(4);
    synic.add_message_connection(0x77, mconn).unwrap();
    let (econn, events) = HostEventConnection::new(0x78, 4);
    synic.add_event_connection(0x78, econn).unwrap();
    let (running, reports) = rig.start(&program);
    assert_eq!(next_report(&reports), user(0, 0, 0));
    for seq in [10u64, 11, 12] {
        let msg = HvMessage::new(MessageType(0x42), 0, &seq.to_le_bytes()).unwrap();
        synic
            .partition()
            .post_message(VpIndex(0), u32::from(MSG_SINT), msg)
            .expect("post accepted");
    }
    for seq in [10u64, 11, 12] {
        assert_eq!(
            next_report(&reports),
            user(0, 1, seq),
            "in order, once each"
        );
    }
    assert_eq!(
        next_report(&reports),
        user(0, 2, 0),
        "HvPostMessage: SUCCESS"
    );
    assert_eq!(
        next_report(&reports),
        user(0, 3, 0),
        "HvSignalEvent: SUCCESS"
    );
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
    assert!(drain(&reports).is_empty());

    let m = messages
        .try_recv()
        .expect("the guest's message reached the host");
    assert_eq!(m.caller, VpIndex(0));
    assert_eq!(m.message.message_type, 0x99);
    assert_eq!(m.message.payload(), 10u64.to_le_bytes());
    assert!(messages.try_recv().is_err(), "exactly one");
    let e = events
        .try_recv()
        .expect("the guest's event reached the host");
    assert_eq!(
        (e.caller, e.connection_id, e.flag_number),
        (VpIndex(0), 0x78, 0)
    );
    assert!(events.try_recv().is_err());

    let c = synic.partition().counters(VpIndex(0)).unwrap();
    let s = c.sints[usize::from(MSG_SINT)];
    assert_eq!((s.posted, s.delivered, s.queued), (3, 3, 0), "{s:?}");
    assert_eq!(
        s.pending_sets, 2,
        "messages 2 and 3 waited behind a busy slot"
    );
    if synic.mode() == SynicMode::Userspace {
        assert_eq!(c.eoms, 2, "one EOM per MessagePending seen");
        assert_eq!(synic.stats().hypercall_pages_filled, 1);
        assert_eq!(synic.hypercall_page(), Some(HC));
    }
    assert_eq!(synic.stats().hypercalls, 2);
    assert_eq!(synic.stats().synic_exit_errors, 0);
}

#[test]
fn hyperv_testdev_routes_connections_and_insufficient_buffers() {
    if !kvm_available() {
        return;
    }
    let s0 = |n: u8| synic::SintIndex::new(u32::from(n)).unwrap();
    let mut g = GuestBuilder::new().unwrap();
    g.isr(RAW_VECTOR, Isr::QUIET).unwrap();
    g.isr(EVT_VECTOR, Isr::QUIET).unwrap();
    prologue(&mut g);
    // cmd 1 + 3: a SINT route raised by the device.
    let route = |cmd| match cmd {
        1 => TestDevCommand::SintRouteCreate {
            vp_index: 0,
            sint: s0(RAW_SINT),
        },
        2 => TestDevCommand::SintRouteDestroy {
            vp_index: 0,
            sint: s0(RAW_SINT),
        },
        _ => TestDevCommand::SintRouteSet {
            vp_index: 0,
            sint: s0(RAW_SINT),
        },
    };
    testdev(&mut g, route(1));
    testdev(&mut g, route(3));
    g.wait_for_irqs(RAW_VECTOR, 1).unwrap();
    g.report(tag::USER, 0).unwrap();
    testdev(&mut g, route(2));
    testdev(&mut g, route(3)); // refused: no route any more
                               // cmd 4: a message connection posting back to SINT2.
    testdev(
        &mut g,
        TestDevCommand::MsgConnCreate {
            conn_id: 5,
            vp_index: 0,
            sint: s0(MSG_SINT),
        },
    );
    g.asm().mov(rax, 0x1234u64).unwrap();
    post_input(&mut g, 5, 0x33, rax);
    g.hypercall(HC, POST, INPUT, 0).unwrap();
    g.report_reg(tag::USER + 1, rax).unwrap();
    g.wait_for_irqs(MSG_VECTOR, 1).unwrap();
    g.asm().mov(rax, qword_ptr(DATA + 0x10)).unwrap();
    g.report_reg(tag::USER + 2, rax).unwrap();
    g.asm().mov(rax, qword_ptr(DATA + 0x100)).unwrap();
    g.report_reg(tag::USER + 3, rax).unwrap();
    // cmd 6: an event connection setting flag 9 of SINT3.
    testdev(
        &mut g,
        TestDevCommand::EvtConnCreate {
            conn_id: 9,
            vp_index: 0,
            sint: s0(EVT_SINT),
        },
    );
    g.hypercall(HC, SIGNAL_FAST, 9, 0).unwrap();
    g.report_reg(tag::USER + 4, rax).unwrap();
    g.wait_for_irqs(EVT_VECTOR, 1).unwrap();
    g.asm()
        .mov(rax, qword_ptr(setup().flags(EVT_SINT)))
        .unwrap();
    g.report_reg(tag::USER + 5, rax).unwrap();
    // Interrupts are off: nothing reads the slot. Queue capacity 2: slot + 2 queued, then
    // INSUFFICIENT_BUFFERS.
    for _ in 0..4 {
        g.asm().mov(rax, 0x5555u64).unwrap();
        post_input(&mut g, 5, 0x34, rax);
        g.hypercall(HC, POST, INPUT, 0).unwrap();
        g.report_reg(tag::USER + 6, rax).unwrap();
    }
    // cmd 5 / 7: gone.
    testdev(&mut g, TestDevCommand::MsgConnDestroy { conn_id: 5 });
    g.hypercall(HC, POST, INPUT, 0).unwrap();
    g.report_reg(tag::USER + 7, rax).unwrap();
    testdev(&mut g, TestDevCommand::EvtConnDestroy { conn_id: 9 });
    g.hypercall(HC, SIGNAL_FAST, 9, 0).unwrap();
    g.report_reg(tag::USER + 8, rax).unwrap();
    g.exit(0).unwrap();
    emit_message_isr(&mut g);
    let program = g.build().unwrap();

    let rig = synic_rig(SynicVmBuilder::new().queue_capacity(2).testdev(true), 1);
    let synic = rig.vm.synic().clone();
    let (running, reports) = rig.start(&program);
    let testdev = running.testdev().unwrap().clone();
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
    assert_eq!(
        drain(&reports),
        vec![
            user(0, 0, 0),
            user(0, 1, 0),
            user(0, 2, 0x1234),
            user(0, 3, 0x33),
            user(0, 4, 0),
            user(0, 5, 1 << 9),
            user(0, 6, 0),
            user(0, 6, 0),
            user(0, 6, 0),
            user(0, 6, 0x13),
            user(0, 7, 0x12),
            user(0, 8, 0x12),
        ]
    );
    let stats = testdev.stats();
    assert_eq!((stats.done, stats.refused), (7, 1), "{stats:?}");
    assert_eq!(stats.malformed, 0);
    let c = synic.partition().counters(VpIndex(0)).unwrap();
    assert_eq!(c.sints[usize::from(MSG_SINT)].rejected_full, 1);
    assert_eq!(c.sints[usize::from(MSG_SINT)].queued, 2);
}

#[test]
fn synic_state_saved_from_one_vm_restores_into_another_and_delivery_continues() {
    if !kvm_available() {
        return;
    }
    let slot = setup().slot(MSG_SINT);
    // Phase 1: enable, then wait with interrupts off until the host has queued behind the
    // slot, and stop there.
    let mut g = GuestBuilder::new().unwrap();
    prologue(&mut g);
    g.report(tag::USER, 0).unwrap();
    let mut poll = g.asm().create_label();
    g.asm().set_label(&mut poll).unwrap();
    g.asm().pause().unwrap();
    g.asm().mov(rbx, slot).unwrap();
    g.asm().test(byte_ptr(rbx + 5), 1).unwrap();
    g.asm().jz(poll).unwrap();
    g.report(tag::USER + 1, 0).unwrap();
    g.halt().unwrap();
    let phase1 = g.build().unwrap();
    let rig = synic_rig(SynicVmBuilder::new(), 1);
    let mode = rig.vm.mode();
    let old = rig.vm.synic().clone();
    let (running, reports) = rig.start(&phase1);
    assert_eq!(next_report(&reports), user(0, 0, 0));
    for seq in [20u64, 21, 22] {
        let msg = HvMessage::new(MessageType(0x42), 0, &seq.to_le_bytes()).unwrap();
        old.partition()
            .post_message(VpIndex(0), u32::from(MSG_SINT), msg)
            .unwrap();
    }
    assert_eq!(next_report(&reports), user(0, 1, 0));
    let memory = running.vm().memory().clone();
    assert_eq!(running.stop().reason, StopReason::Requested);
    let state = old.save().expect("save");
    assert_eq!(state.vps[0].queues[usize::from(MSG_SINT)].len(), 2);
    // Kernel mode: KVM's registers came along, as the guest programmed them.
    match (&state.kernel, mode) {
        (None, SynicMode::Userspace) => {}
        (Some(k), SynicMode::Kernel) => {
            let reg = |msr: u32| k.vcpus[0].iter().find(|r| r.0 == msr).map(|r| r.1);
            let sint = synic_msr::index::SINT0 + u32::from(MSG_SINT);
            assert_eq!(reg(sint), Some(u64::from(MSG_VECTOR)), "{k:x?}");
            assert_eq!(reg(synic_msr::index::SIMP), Some(SIMP | 1));
            assert_eq!(reg(synic_msr::index::SCONTROL), Some(1));
            assert_eq!(reg(synic_msr::index::HYPERCALL), Some(HC | 1));
            assert!(k.clock_ns > 0);
        }
        other => panic!("state does not match the mode: {other:?}"),
    }

    // Phase 2, a new VM: memory copied, state restored. The slot already holds message 20 (its
    // interrupt went to the old VM), so the program runs its ISR once by hand, then takes 21
    // and 22 as real interrupts through the restored routes.
    let mut g = GuestBuilder::new().unwrap();
    g.lapic_enable().unwrap();
    // An interrupt frame by hand (SS, RSP, RFLAGS, CS, RIP), then the ISR: software INT n
    // is not usable on every KVM (this machine's PVM fails to emulate it).
    let isr = g.asm().create_label();
    let a = g.asm();
    a.mov(rax, rsp).unwrap();
    a.push(0x10).unwrap();
    a.push(rax).unwrap();
    a.pushfq().unwrap();
    a.push(0x08).unwrap();
    a.call(isr).unwrap();
    g.wait_for_irqs(MSG_VECTOR, 3).unwrap();
    for i in 0..3u64 {
        g.asm().mov(rax, qword_ptr(DATA + 0x10 + 8 * i)).unwrap();
        g.report_reg(tag::USER + 2, rax).unwrap();
    }
    g.exit(0).unwrap();
    emit_message_isr_at(&mut g, isr);
    let phase2 = g.build().unwrap();
    let mut rig = synic_rig(SynicVmBuilder::new(), 1);
    let mut ram = vec![0u8; 64 << 20];
    use vm_memory::{Bytes, GuestAddress};
    memory.read_slice(&mut ram, GuestAddress(0)).unwrap();
    // The new program is loaded over the old one after the copy.
    rig.vm
        .vm()
        .memory()
        .write_slice(&ram, GuestAddress(0))
        .unwrap();
    let new = rig.vm.synic().clone();
    rig.vm.restore(&state).expect("restore");
    if mode == SynicMode::Userspace {
        // Kernel mode: HYPERCALL is KVM's, restored with the registers above.
        assert_eq!(new.hypercall_page(), Some(HC), "HYPERCALL restored");
    }
    let (running, reports) = {
        phase2.load(rig.vm.vm_mut()).unwrap();
        (rig.vm.start().unwrap(), rig.reports)
    };
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
    assert_eq!(
        drain(&reports),
        vec![user(0, 2, 20), user(0, 2, 21), user(0, 2, 22)]
    );
    let c = new.partition().counters(VpIndex(0)).unwrap();
    assert_eq!(c.sints[usize::from(MSG_SINT)].queued, 0);
}

#[test]
fn hv_signal_event_on_an_eventfd_connection_in_either_mode() {
    if !kvm_available() {
        return;
    }
    const CONN: u64 = 0x5A;
    let mut g = GuestBuilder::new().unwrap();
    prologue(&mut g);
    // Flag 0 fast, three times; flag 1 fast (not a flag of an eventfd connection); flag 0 in
    // the memory form.
    for n in 0..3 {
        g.hypercall(HC, SIGNAL_FAST, CONN, 0).unwrap();
        g.report_reg(tag::USER + n, rax).unwrap();
    }
    g.hypercall(HC, SIGNAL_FAST, CONN | 1 << 32, 0).unwrap();
    g.report_reg(tag::USER + 3, rax).unwrap();
    g.asm().mov(rbx, INPUT).unwrap();
    g.asm().mov(qword_ptr(rbx), CONN as i32).unwrap();
    g.hypercall(HC, 0x5D, INPUT, 0).unwrap();
    g.report_reg(tag::USER + 4, rax).unwrap();
    g.exit(0).unwrap();
    let program = g.build().unwrap();

    let rig = synic_rig(SynicVmBuilder::new(), 1);
    let mode = rig.vm.mode();
    let synic = rig.vm.synic().clone();
    let fd = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    let conn = synic.add_event_eventfd(CONN as u32, fd).unwrap();
    assert!(
        synic
            .add_event_eventfd(CONN as u32, conn.eventfd().try_clone().unwrap())
            .is_err(),
        "one connection per id"
    );
    let (running, reports) = rig.start(&program);
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
    let statuses: Vec<u64> = drain(&reports).iter().map(|r| r.value).collect();
    assert_eq!(
        statuses,
        vec![0, 0, 0, 0x11, 0],
        "SUCCESS x3, INVALID_PORT_ID, SUCCESS"
    );
    assert_eq!(conn.eventfd().read().unwrap(), 4, "four flag-0 signals");
    let handled_here = conn.signalled_here();
    let hypercalls = synic.stats().hypercalls;
    match mode {
        // Every call exits to the VMM.
        SynicMode::Userspace => assert_eq!((handled_here, hypercalls), (4, 5)),
        // KVM signals flag 0 itself; only flag 1 reaches the VMM.
        SynicMode::Kernel => assert_eq!((handled_here, hypercalls), (0, 1)),
    }
    assert!(synic.remove_event_connection(CONN as u32).is_some());
    assert!(synic.remove_event_connection(CONN as u32).is_none());
}

#[test]
fn restore_with_downtime_moves_the_reference_time_by_exactly_the_downtime() {
    if !kvm_available() {
        return;
    }
    const DOWNTIME: Duration = Duration::from_secs(5);
    let mut g = GuestBuilder::new().unwrap();
    g.exit(0).unwrap();
    let program = g.build().unwrap();
    let rig = synic_rig(SynicVmBuilder::new(), 1);
    let old = rig.vm.synic().clone();
    let (running, _reports) = rig.start(&program);
    assert_eq!(
        running.wait(Some(RUN_LIMIT)).reason,
        StopReason::DebugExit(0)
    );
    let state = old.save().expect("save");
    let saved = state.partition.reference_time;

    let mut new = synic_rig(SynicVmBuilder::new(), 1);
    new.vm
        .restore_with_downtime(&state, DOWNTIME)
        .expect("restore");
    let now = new.vm.synic().partition().reference_time();
    let jump = now - saved; // 100 ns units; never negative (would panic)
    let want = DOWNTIME.as_nanos() as u64 / 100;
    assert!(
        (want..want + 10_000_000).contains(&jump),
        "TIME_REF_COUNT jumped by {jump} x 100 ns, downtime {want}"
    );
    if let Some(k) = &state.kernel {
        // Kernel mode: KVM's clock (its TIME_REF_COUNT source) moved by the downtime too.
        let clock = new.vm.vm().vm_fd().get_clock().unwrap().clock;
        let jump = clock - k.clock_ns;
        let want = DOWNTIME.as_nanos() as u64;
        assert!(
            (want..want + 1_000_000_000).contains(&jump),
            "kvmclock jumped by {jump} ns, downtime {want}"
        );
    }
}
