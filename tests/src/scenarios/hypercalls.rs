//! Cross-vCPU traffic through hypercalls: vCPU 0 posts messages and signals events whose
//! ports are SINTs of vCPU 1, and sees the status codes of bad calls.

use synic::hypercall::{HVCALL_POST_MESSAGE, HVCALL_SIGNAL_EVENT};

use crate::guest::{control, PostInput};
use crate::harness::{run, VmSpec};
use crate::layout::{state, tag, vector, MESSAGE_TYPE};
use crate::{Eoi, Setup, SintValue, SynicGuest};

/// HV_STATUS codes the guest sees.
pub mod status {
    /// HV_STATUS_SUCCESS.
    pub const SUCCESS: u64 = 0;
    /// HV_STATUS_INVALID_HYPERCALL_CODE.
    pub const INVALID_HYPERCALL_CODE: u64 = 2;
    /// HV_STATUS_INVALID_HYPERCALL_INPUT.
    pub const INVALID_HYPERCALL_INPUT: u64 = 3;
    /// HV_STATUS_INVALID_ALIGNMENT.
    pub const INVALID_ALIGNMENT: u64 = 4;
    /// HV_STATUS_INVALID_PARAMETER.
    pub const INVALID_PARAMETER: u64 = 5;
    /// HV_STATUS_INVALID_CONNECTION_ID.
    pub const INVALID_CONNECTION_ID: u64 = 0x12;
}

const MSG_CONN: u32 = 0x11;
const EVT_CONN: u32 = 0x22;
const MSG_SINT: u8 = 2;
const EVT_SINT: u8 = 3;
const EVT_BASE: u32 = 10;
const EVT_COUNT: u32 = 4;
const TAG_A: u64 = 0xA000;
const TAG_B: u64 = 0xB000;

/// vCPU 0 calls HvPostMessage on a connection whose port is SINT 2 of vCPU 1 (two messages,
/// 240 and 16 bytes) and HvSignalEvent on an event port on SINT 3 of vCPU 1 (flags 0, 1 and 3
/// of the port: fast and memory forms), then the error cases: unknown connection, message type
/// 0 or hypervisor-only, payload of 241 bytes, misaligned input, reserved connection-id bits,
/// HvPostMessage with the Fast bit, unknown event connection, a flag beyond the port, reserved
/// bits in the fast HvSignalEvent input, an unknown call code. vCPU 1 takes the messages and
/// flags in its handlers. The same codes in both modes: in kernel mode KVM passes everything
/// but HvSignalEvent with flag 0 to the VMM, and answers that one itself from its
/// KVM_HYPERV_EVENTFD table.
pub fn cross_vcpu_post_and_signal(setup: Setup) {
    use status::*;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(MSG_SINT), MSG_SINT, Eoi::Apic)
        .unwrap();
    g.flags_isr(vector(EVT_SINT), EVT_SINT).unwrap();
    let mut receiver = g.label();
    g.jump_unless_cpu(0, receiver).unwrap();

    // vCPU 0: the caller.
    g.enable_hypercalls().unwrap();
    g.step(1).unwrap();
    g.wait_sync(0).unwrap();
    let mut want = Vec::new();
    let mut call = |g: &mut SynicGuest, expect: u64, emit: &dyn Fn(&mut SynicGuest)| {
        emit(g);
        g.report_rax().unwrap();
        want.push(expect);
    };
    call(&mut g, SUCCESS, &|g| {
        g.post_message(PostInput::new(MSG_CONN, 240, TAG_A))
            .unwrap()
    });
    call(&mut g, SUCCESS, &|g| {
        g.post_message(PostInput::new(MSG_CONN, 16, TAG_B)).unwrap()
    });
    call(&mut g, SUCCESS, &|g| {
        g.signal_event_fast(EVT_CONN, 0).unwrap()
    });
    call(&mut g, SUCCESS, &|g| {
        g.signal_event_fast(EVT_CONN, 1).unwrap()
    });
    call(&mut g, SUCCESS, &|g| {
        g.signal_event_memory(EVT_CONN, 3, 8).unwrap()
    });
    call(&mut g, INVALID_CONNECTION_ID, &|g| {
        g.post_message(PostInput::new(0x99, 16, 0)).unwrap()
    });
    call(&mut g, INVALID_PARAMETER, &|g| {
        g.post_message(PostInput {
            message_type: 0,
            ..PostInput::new(MSG_CONN, 16, 0)
        })
        .unwrap()
    });
    call(&mut g, INVALID_PARAMETER, &|g| {
        g.post_message(PostInput {
            message_type: 0x8000_0001,
            ..PostInput::new(MSG_CONN, 16, 0)
        })
        .unwrap()
    });
    call(&mut g, INVALID_PARAMETER, &|g| {
        g.post_message(PostInput::new(MSG_CONN, 241, 0)).unwrap()
    });
    call(&mut g, INVALID_ALIGNMENT, &|g| {
        g.post_message(PostInput {
            offset: 4,
            ..PostInput::new(MSG_CONN, 16, 0)
        })
        .unwrap()
    });
    call(&mut g, INVALID_HYPERCALL_INPUT, &|g| {
        g.post_message(PostInput::new(MSG_CONN | 1 << 24, 16, 0))
            .unwrap()
    });
    call(&mut g, INVALID_HYPERCALL_INPUT, &|g| {
        g.hypercall_raw(control(HVCALL_POST_MESSAGE, true), u64::from(MSG_CONN))
            .unwrap()
    });
    call(&mut g, INVALID_CONNECTION_ID, &|g| {
        g.signal_event_fast(0x98, 1).unwrap()
    });
    call(&mut g, INVALID_PARAMETER, &|g| {
        g.signal_event_fast(EVT_CONN, EVT_COUNT as u16).unwrap()
    });
    call(&mut g, INVALID_HYPERCALL_INPUT, &|g| {
        let input = u64::from(EVT_CONN) | 1 << 32 | 1 << 48;
        g.hypercall_raw(control(HVCALL_SIGNAL_EVENT, true), input)
            .unwrap()
    });
    call(&mut g, INVALID_HYPERCALL_CODE, &|g| {
        g.hypercall_raw(0x0FFF, 0).unwrap()
    });
    g.wait_sync(1).unwrap();
    g.exit_ok().unwrap();

    // vCPU 1: the receiver.
    g.bind(&mut receiver).unwrap();
    g.synic_up(&[
        (MSG_SINT, SintValue::vector(vector(MSG_SINT))),
        (EVT_SINT, SintValue::vector(vector(EVT_SINT))),
    ])
    .unwrap();
    g.set_sync(0).unwrap();
    g.wait_messages(2).unwrap();
    g.wait_counter(state::FLAG_BITS, 3).unwrap();
    g.settle().unwrap();
    g.set_sync(1).unwrap();
    g.halt().unwrap();

    let f = run(
        VmSpec::new(setup, 2),
        &g.build().unwrap(),
        |host, vcpu, _| {
            assert_eq!(vcpu, 0);
            host.add_message_port(MSG_CONN, 1, MSG_SINT);
            host.add_event_port(EVT_CONN, 1, EVT_SINT, EVT_BASE, EVT_COUNT);
        },
    );
    let results = f.values(0, tag::HYPERCALL);
    assert_eq!(results, want, "hypercall status codes, in call order");
    f.assert_exited_ok();
    let v = f.view();
    let log = v.messages(1);
    assert_eq!(log.len(), 2, "{log:#?}");
    for (m, (size, tag)) in log.iter().zip([(240u8, TAG_A), (16, TAG_B)]) {
        assert_eq!(
            (m.sint, m.message_type, m.payload_size, m.sender),
            (MSG_SINT, MESSAGE_TYPE, size, u64::from(MSG_CONN)),
            "{m:?}"
        );
        for n in 0..usize::from(size) / 8 {
            assert_eq!(m.qword(n), tag + n as u64, "payload qword {n}");
        }
    }
    assert_eq!(
        v.flags_seen(1, EVT_SINT),
        vec![EVT_BASE, EVT_BASE + 1, EVT_BASE + 3]
    );
    assert!(v.messages(0).is_empty() && v.counter(0, state::FLAG_BITS) == 0);
}

/// QEMU's hyperv-testdev protocol driven by the guest (vCPU 0) at port 0x3000, every target on
/// vCPU 1: a SINT route created, raised (one interrupt, no message), destroyed and raised again
/// (refused: no interrupt); a message connection created, posted to (the message reaches
/// SINT 2 of vCPU 1), destroyed, posted to (INVALID_CONNECTION_ID); an event connection
/// created, signalled (flag = the connection id on SINT 3 of vCPU 1), destroyed, signalled
/// (INVALID_CONNECTION_ID).
pub fn test_device_protocol(setup: Setup) {
    use status::*;
    use synic_kvm::testdev::TestDevCommand as Cmd;
    const ROUTE_SINT: u8 = 4;
    const CONN_MSG: u32 = 0x21;
    const CONN_EVT: u32 = 0x23;
    let sint = crate::harness::sint_index;
    let mut g = SynicGuest::new().unwrap();
    g.toolkit()
        .isr(vector(ROUTE_SINT), synic_vmm::guest::Isr::QUIET)
        .unwrap();
    g.message_isr(vector(MSG_SINT), MSG_SINT, Eoi::Apic)
        .unwrap();
    g.flags_isr(vector(EVT_SINT), EVT_SINT).unwrap();
    let mut receiver = g.label();
    g.jump_unless_cpu(0, receiver).unwrap();

    // vCPU 0 drives the device.
    let testdev = |g: &mut SynicGuest, c: Cmd| g.testdev(c.encode()).unwrap();
    g.enable_hypercalls().unwrap();
    g.wait_sync(0).unwrap();
    let route = |s| (1, sint(s));
    let (vp, rs) = route(ROUTE_SINT);
    testdev(
        &mut g,
        Cmd::SintRouteCreate {
            vp_index: vp,
            sint: rs,
        },
    );
    testdev(
        &mut g,
        Cmd::SintRouteSet {
            vp_index: vp,
            sint: rs,
        },
    );
    g.wait_sync(1).unwrap(); // vCPU 1 took the interrupt
    testdev(
        &mut g,
        Cmd::SintRouteDestroy {
            vp_index: vp,
            sint: rs,
        },
    );
    testdev(
        &mut g,
        Cmd::SintRouteSet {
            vp_index: vp,
            sint: rs,
        },
    );
    let msg_conn = Cmd::MsgConnCreate {
        conn_id: CONN_MSG,
        vp_index: 1,
        sint: sint(MSG_SINT),
    };
    testdev(&mut g, msg_conn);
    g.post_message(PostInput::new(CONN_MSG, 32, TAG_A)).unwrap();
    g.report_rax().unwrap();
    testdev(&mut g, Cmd::MsgConnDestroy { conn_id: CONN_MSG });
    g.post_message(PostInput::new(CONN_MSG, 32, TAG_B)).unwrap();
    g.report_rax().unwrap();
    let evt_conn = Cmd::EvtConnCreate {
        conn_id: CONN_EVT,
        vp_index: 1,
        sint: sint(EVT_SINT),
    };
    testdev(&mut g, evt_conn);
    g.signal_event_fast(CONN_EVT, 0).unwrap();
    g.report_rax().unwrap();
    testdev(&mut g, Cmd::EvtConnDestroy { conn_id: CONN_EVT });
    g.signal_event_fast(CONN_EVT, 0).unwrap();
    g.report_rax().unwrap();
    g.wait_sync(2).unwrap();
    g.exit_ok().unwrap();

    // vCPU 1 receives.
    g.bind(&mut receiver).unwrap();
    g.synic_up(&[
        (ROUTE_SINT, SintValue::vector(vector(ROUTE_SINT))),
        (MSG_SINT, SintValue::vector(vector(MSG_SINT))),
        (EVT_SINT, SintValue::vector(vector(EVT_SINT))),
    ])
    .unwrap();
    g.set_sync(0).unwrap();
    g.toolkit().wait_for_irqs(vector(ROUTE_SINT), 1).unwrap();
    g.set_sync(1).unwrap();
    g.wait_messages(1).unwrap();
    g.wait_counter(state::FLAG_BITS, 1).unwrap();
    g.settle().unwrap();
    g.set_sync(2).unwrap();
    g.halt().unwrap();

    let f = run(VmSpec::new(setup, 2), &g.build().unwrap(), |_, _, _| {});
    assert_eq!(
        f.values(0, tag::HYPERCALL),
        vec![
            SUCCESS,
            INVALID_CONNECTION_ID,
            SUCCESS,
            INVALID_CONNECTION_ID
        ],
        "post, post after destroy, signal, signal after destroy"
    );
    f.assert_exited_ok();
    let v = f.view();
    assert_eq!(
        v.toolkit_irqs(1, vector(ROUTE_SINT)),
        1,
        "one raise through the route, none after it was destroyed"
    );
    let log = v.messages(1);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(
        (
            log[0].sint,
            log[0].payload_size,
            log[0].sender,
            log[0].qword(3)
        ),
        (MSG_SINT, 32, u64::from(CONN_MSG), TAG_A + 3)
    );
    assert_eq!(v.flags_seen(1, EVT_SINT), vec![CONN_EVT]);
    assert_eq!(
        f.host.testdev_counts(),
        (7, 1, 0),
        "7 commands carried out, the raise of a destroyed route refused"
    );
}
