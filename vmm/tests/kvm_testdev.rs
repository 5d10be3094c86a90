//! The hyperv test device against a hostile real guest (issue 17.1, and the queue bound of
//! 17.2): it is off unless the VMM asks for it; with it on, the guest cannot destroy the
//! host's connections through it, holds at most `MAX_TESTDEV_CONNECTIONS` (64) connections,
//! and fills its own SINT queue through one of them only up to the partition's capacity.
//! The value-level rules are in `kvm/tests/testdev_authority.rs`.

mod common;

use common::{drain, kvm_available, synic_rig, RUN_LIMIT};
use iced_x86::code_asm::*;
use synic::{SintIndex, VpIndex, DEFAULT_QUEUE_CAPACITY};
use synic_kvm::testdev::{TestDevCommand, MAX_TESTDEV_CONNECTIONS};
use synic_kvm::HostMessageConnection;
use synic_vmm::devices::Report;
use synic_vmm::guest::{layout, tag, GuestBuilder, SynicSetup};
use synic_vmm::layout::ports;
use synic_vmm::synic_vm::SynicVmBuilder;
use synic_vmm::StopReason;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const SIMP: u64 = layout::FREE_PAGES;
const SIEFP: u64 = layout::FREE_PAGES + 0x1000;
const INPUT: u64 = layout::FREE_PAGES + 0x2000;
const MSG_SINT: u8 = 2;
const EVT_SINT: u8 = 3;
const HC: u64 = layout::HYPERCALL_PAGE;
const POST: u64 = 0x5C;
const SIGNAL_FAST: u64 = 0x5D | 1 << 16;
const SUCCESS: u64 = 0;
const INVALID_CONNECTION_ID: u64 = 0x12;
const INSUFFICIENT_BUFFERS: u64 = 0x13;

fn sint(n: u8) -> SintIndex {
    SintIndex::new(u32::from(n)).unwrap()
}

/// APIC on, hypercall page, SynIC on with SINT 2 and 3 unmasked; interrupts stay off for the
/// whole program, so nothing takes the slots.
fn prologue(g: &mut GuestBuilder) {
    g.lapic_enable().unwrap();
    g.enable_hypercall_page(HC).unwrap();
    g.synic_enable(&SynicSetup {
        simp: SIMP,
        siefp: SIEFP,
        sints: vec![(MSG_SINT, 0x50), (EVT_SINT, 0x51)],
    })
    .unwrap();
}

fn testdev(g: &mut GuestBuilder, cmd: TestDevCommand) {
    let a = g.asm();
    a.mov(dx, u32::from(ports::HV_TESTDEV)).unwrap();
    a.mov(eax, cmd.encode()).unwrap();
    a.out(dx, eax).unwrap();
}

fn msg_create(conn_id: u32) -> TestDevCommand {
    TestDevCommand::MsgConnCreate {
        conn_id,
        vp_index: 0,
        sint: sint(MSG_SINT),
    }
}

/// HvPostMessage to `conn` (type 1, 8-byte payload `payload`); the status is in RAX.
/// Clobbers RAX, RBX, RCX, RDX, R8.
fn post(g: &mut GuestBuilder, conn: u32, payload: u64) {
    let a = g.asm();
    a.mov(rbx, INPUT).unwrap();
    a.mov(dword_ptr(rbx), conn).unwrap();
    a.mov(dword_ptr(rbx + 4), 0u32).unwrap();
    a.mov(dword_ptr(rbx + 8), 1u32).unwrap();
    a.mov(dword_ptr(rbx + 12), 8u32).unwrap();
    a.mov(rax, payload).unwrap();
    a.mov(qword_ptr(rbx + 16), rax).unwrap();
    g.hypercall(HC, POST, INPUT, 0).unwrap();
}

fn user(n: u32, value: u64) -> Report {
    Report {
        vcpu: 0,
        tag: tag::USER + n,
        value,
    }
}

#[test]
fn the_test_device_is_off_unless_the_vmm_asks_for_it() {
    if !kvm_available() {
        return;
    }
    // The guest speaks the protocol at port 0x3000 anyway: nothing is created.
    let mut g = GuestBuilder::new().unwrap();
    prologue(&mut g);
    testdev(&mut g, msg_create(5));
    post(&mut g, 5, 1);
    g.report_reg(tag::USER, rax).unwrap();
    testdev(
        &mut g,
        TestDevCommand::EvtConnCreate {
            conn_id: 9,
            vp_index: 0,
            sint: sint(EVT_SINT),
        },
    );
    g.hypercall(HC, SIGNAL_FAST, 9, 0).unwrap();
    g.report_reg(tag::USER + 1, rax).unwrap();
    g.exit(0).unwrap();
    let program = g.build().unwrap();

    let rig = synic_rig(SynicVmBuilder::new(), 1);
    let (running, reports) = rig.start(&program);
    assert!(running.testdev().is_none(), "no test device by default");
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
    assert_eq!(
        drain(&reports),
        vec![
            user(0, INVALID_CONNECTION_ID),
            user(1, INVALID_CONNECTION_ID)
        ],
        "post and signal to what the guest asked the absent device for"
    );
}

#[test]
fn a_guest_cannot_destroy_host_connections_through_the_test_device() {
    if !kvm_available() {
        return;
    }
    const HOST_MSG: u32 = 0x77;
    const HOST_EVENTFD: u32 = 0x78;
    let mut g = GuestBuilder::new().unwrap();
    prologue(&mut g);
    testdev(&mut g, TestDevCommand::MsgConnDestroy { conn_id: HOST_MSG });
    testdev(
        &mut g,
        TestDevCommand::EvtConnDestroy {
            conn_id: HOST_EVENTFD,
        },
    );
    // Taking the id over: refused (in use), and no claim to destroy it afterwards.
    testdev(&mut g, msg_create(HOST_MSG));
    testdev(&mut g, TestDevCommand::MsgConnDestroy { conn_id: HOST_MSG });
    post(&mut g, HOST_MSG, 0xC0FFEE);
    g.report_reg(tag::USER, rax).unwrap();
    g.hypercall(HC, SIGNAL_FAST, u64::from(HOST_EVENTFD), 0)
        .unwrap();
    g.report_reg(tag::USER + 1, rax).unwrap();
    g.exit(0).unwrap();
    let program = g.build().unwrap();

    let rig = synic_rig(SynicVmBuilder::new().testdev(true), 1);
    let synic = rig.vm.synic().clone();
    let (conn, messages) = HostMessageConnection::new(4);
    synic.add_message_connection(HOST_MSG, conn).unwrap();
    let eventfd = EventFd::new(EFD_NONBLOCK).unwrap();
    synic
        .add_event_eventfd(HOST_EVENTFD, eventfd.try_clone().unwrap())
        .unwrap();
    let (running, reports) = rig.start(&program);
    let testdev = running.testdev().unwrap().clone();
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
    assert_eq!(
        drain(&reports),
        vec![user(0, SUCCESS), user(1, SUCCESS)],
        "post and signal to the host's connections after the guest tried to destroy them"
    );
    let m = messages.try_recv().expect("the host's connection took it");
    assert_eq!(m.message.payload(), 0xC0FFEEu64.to_le_bytes());
    assert_eq!(
        eventfd.read().unwrap(),
        1,
        "the host's eventfd was signalled"
    );
    let s = testdev.stats();
    assert_eq!((s.done, s.refused, s.malformed), (0, 4, 0), "{s:?}");
}

#[test]
fn a_guest_holds_at_most_64_connections_and_fills_its_queue_only_to_capacity() {
    if !kvm_available() {
        return;
    }
    let bound = MAX_TESTDEV_CONNECTIONS as u32;
    let posts = DEFAULT_QUEUE_CAPACITY as u64 + 2;
    let mut g = GuestBuilder::new().unwrap();
    prologue(&mut g);
    // One create past the bound.
    for id in 0..=bound {
        testdev(&mut g, msg_create(id));
    }
    post(&mut g, bound - 1, 1);
    g.report_reg(tag::USER, rax).unwrap();
    post(&mut g, bound, 1);
    g.report_reg(tag::USER + 1, rax).unwrap();
    // Then post to connection 0 (back to SINT 2 of this VP, whose slot nobody takes) until
    // the queue refuses: count the answers (R12 successes, R13 INSUFFICIENT_BUFFERS).
    {
        let a = g.asm();
        a.xor(r12, r12).unwrap();
        a.xor(r13, r13).unwrap();
        a.mov(r9, posts).unwrap();
    }
    let mut top = g.asm().create_label();
    let mut refused = g.asm().create_label();
    let mut next = g.asm().create_label();
    g.asm().set_label(&mut top).unwrap();
    post(&mut g, 0, 2);
    {
        let a = g.asm();
        a.cmp(rax, SUCCESS as i32).unwrap();
        a.jne(refused).unwrap();
        a.inc(r12).unwrap();
        a.jmp(next).unwrap();
        a.set_label(&mut refused).unwrap();
        a.cmp(rax, INSUFFICIENT_BUFFERS as i32).unwrap();
        a.jne(next).unwrap();
        a.inc(r13).unwrap();
        a.set_label(&mut next).unwrap();
        a.dec(r9).unwrap();
        a.jnz(top).unwrap();
    }
    g.report_reg(tag::USER + 2, r12).unwrap();
    g.report_reg(tag::USER + 3, r13).unwrap();
    g.exit(0).unwrap();
    let program = g.build().unwrap();

    let rig = synic_rig(SynicVmBuilder::new().testdev(true), 1);
    let synic = rig.vm.synic().clone();
    let (running, reports) = rig.start(&program);
    let testdev = running.testdev().unwrap().clone();
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
    // The slot plus the queue's capacity take messages (the post to connection 63 is the
    // slot's), then the queue is full.
    let taken = DEFAULT_QUEUE_CAPACITY as u64;
    assert_eq!(
        drain(&reports),
        vec![
            user(0, SUCCESS),
            user(1, INVALID_CONNECTION_ID),
            user(2, taken),
            user(3, posts - taken),
        ],
        "the 64th connection works, the 65th does not exist; the queue holds {taken}"
    );
    let s = testdev.stats();
    assert_eq!(
        (s.done, s.refused, s.malformed),
        (u64::from(bound), 1, 0),
        "{s:?}"
    );
    let c = synic.partition().counters(VpIndex(0)).unwrap().sints[usize::from(MSG_SINT)];
    assert_eq!((c.delivered, c.queued), (1, taken), "{c:?}");
    assert_eq!(c.rejected_full, posts - taken, "{c:?}");
}
