//! The hyperv test device's authority (issue 17.1), at value level on a real KVM VM (its SINT
//! routes are real routing-table entries): every command goes through [`TestDev::write`], the
//! exact bytes of a guest's port write, so these are a hostile guest's attempts.
//!
//! * The device destroys only connections and routes it created: never one the host
//!   registered (a channel, an eventfd, a port), never the other kind under the same id, never
//!   a route the SynIC built.
//! * It holds at most [`MAX_TESTDEV_CONNECTIONS`] connections and [`MAX_TESTDEV_ROUTES`]
//!   routes; what it refuses at the bound does not reach the registry or the table.
//!
//! The real-guest side (and the device being off by default) is in
//! `vmm/tests/kvm_testdev.rs`.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use synic::hypercall::{validate_post_message, HvStatus, Hypercall, PostMessageInput, SignalEvent};
use synic::{SintIndex, VpIndex};
use synic_kvm::testdev::{
    TestDev, TestDevCommand as Cmd, TestDevStats, MAX_TESTDEV_CONNECTIONS, MAX_TESTDEV_ROUTES,
};
use synic_kvm::{Capabilities, HostMessageConnection, ModeRequest, VmSynic, VmSynicBuilder};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Mem = Arc<GuestMemoryMmap<()>>;

/// A userspace-mode SynIC of `vcpus` VPs whose build-time routes are `routed` of every VP.
fn synic(test: &str, vcpus: u32, routed: &[SintIndex]) -> Option<Arc<VmSynic<Mem>>> {
    if !synic::testing::kvm_available(test) {
        return None;
    }
    let kvm = Kvm::new().expect("opening /dev/kvm");
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    let mode = Capabilities::probe(&kvm, &vm)
        .choose_mode(ModeRequest::Userspace)
        .unwrap();
    synic_kvm::setup_vm(&vm, mode).unwrap();
    let memory =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    Some(
        VmSynicBuilder::new(mode, vcpus)
            .routed_sints(routed)
            .build(vm, memory)
            .unwrap(),
    )
}

fn sint(n: u32) -> SintIndex {
    SintIndex::new(n).unwrap()
}

/// The guest's write of `cmd` to the device's port.
fn guest_writes(dev: &TestDev<Mem>, cmd: Cmd) {
    dev.write(&cmd.encode().to_le_bytes());
}

/// Issues `cmd` and says whether the device carried it out (true) or refused it (false).
fn carried_out(dev: &TestDev<Mem>, cmd: Cmd) -> bool {
    let before = dev.stats();
    guest_writes(dev, cmd);
    let after = dev.stats();
    assert_eq!(after.malformed, before.malformed, "{cmd:?} is well formed");
    assert_eq!(
        (after.done - before.done) + (after.refused - before.refused),
        1,
        "{cmd:?} was counted once"
    );
    after.done > before.done
}

/// What HvPostMessage to `id` from VP 0 answers (8-byte payload `tag`).
fn post(synic: &VmSynic<Mem>, id: u32, tag: u64) -> HvStatus {
    let mut input = PostMessageInput {
        connection_id: id,
        reserved: 0,
        message_type: 1,
        payload_size: 8,
        payload: [0; 240],
    };
    input.payload[..8].copy_from_slice(&tag.to_le_bytes());
    let message = validate_post_message(&input).unwrap();
    synic
        .connections()
        .dispatch(VpIndex(0), &Hypercall::PostMessage(message))
}

/// What HvSignalEvent to `id` (flag 0) from VP 0 answers.
fn signal(synic: &VmSynic<Mem>, id: u32) -> HvStatus {
    let call = Hypercall::SignalEvent(SignalEvent {
        connection_id: id,
        flag_number: 0,
    });
    synic.connections().dispatch(VpIndex(0), &call)
}

#[test]
fn a_guest_cannot_destroy_connections_the_host_registered() {
    let Some(synic) = synic(
        "a_guest_cannot_destroy_connections_the_host_registered",
        1,
        &SintIndex::ALL,
    ) else {
        return;
    };
    let dev = TestDev::new(Arc::clone(&synic));
    // The host's: VMBus's message connection id, an eventfd, and a port of each kind.
    const HOST_MSG: u32 = 1;
    const HOST_EVENTFD: u32 = 0x78;
    const HOST_MSG_PORT: u32 = 0x79;
    const HOST_EVT_PORT: u32 = 0x7A;
    let (conn, host_rx) = HostMessageConnection::new(4);
    synic.add_message_connection(HOST_MSG, conn).unwrap();
    let eventfd = EventFd::new(EFD_NONBLOCK).unwrap();
    synic
        .add_event_eventfd(HOST_EVENTFD, eventfd.try_clone().unwrap())
        .unwrap();
    synic
        .add_message_port(HOST_MSG_PORT, VpIndex(0), sint(2))
        .unwrap();
    synic
        .add_event_port(HOST_EVT_PORT, VpIndex(0), sint(3), 0, 1)
        .unwrap();

    // Straight destroys of every host connection, as both kinds.
    for id in [HOST_MSG, HOST_EVENTFD, HOST_MSG_PORT, HOST_EVT_PORT] {
        assert!(
            !carried_out(&dev, Cmd::MsgConnDestroy { conn_id: id }),
            "message {id:#x}"
        );
        assert!(
            !carried_out(&dev, Cmd::EvtConnDestroy { conn_id: id }),
            "event {id:#x}"
        );
    }
    // A create under a host id fails (in use) and gives the device no claim on it.
    let over_host = Cmd::MsgConnCreate {
        conn_id: HOST_MSG,
        vp_index: 0,
        sint: sint(2),
    };
    assert!(!carried_out(&dev, over_host));
    assert!(!carried_out(
        &dev,
        Cmd::MsgConnDestroy { conn_id: HOST_MSG }
    ));
    // The device's own event connection under the host's message id: created (separate id
    // spaces), and destroying it leaves the host's message connection alone; afterwards
    // neither kind of destroy reaches the host's connection.
    let own_event = Cmd::EvtConnCreate {
        conn_id: HOST_MSG,
        vp_index: 0,
        sint: sint(3),
    };
    assert!(carried_out(&dev, own_event));
    assert!(!carried_out(
        &dev,
        Cmd::MsgConnDestroy { conn_id: HOST_MSG }
    ));
    assert!(carried_out(&dev, Cmd::EvtConnDestroy { conn_id: HOST_MSG }));
    assert!(!carried_out(
        &dev,
        Cmd::EvtConnDestroy { conn_id: HOST_MSG }
    ));
    assert_eq!(signal(&synic, HOST_MSG), HvStatus::InvalidConnectionId);

    // Every host connection still works.
    assert_eq!(post(&synic, HOST_MSG, 0xAB), HvStatus::Success);
    let got = host_rx
        .try_recv()
        .expect("the host's connection took the message");
    assert_eq!(got.message.payload(), 0xABu64.to_le_bytes());
    assert_eq!(signal(&synic, HOST_EVENTFD), HvStatus::Success);
    assert_eq!(
        eventfd.read().unwrap(),
        1,
        "the host's eventfd was signalled"
    );
    // The ports answer for their (disabled) SynIC, not "no such connection".
    assert_ne!(
        post(&synic, HOST_MSG_PORT, 1),
        HvStatus::InvalidConnectionId
    );
    assert_ne!(signal(&synic, HOST_EVT_PORT), HvStatus::InvalidConnectionId);
    assert!(synic.remove_message_connection(HOST_MSG_PORT).is_some());
    assert!(synic.remove_event_connection(HOST_EVT_PORT).is_some());

    assert_eq!(
        dev.stats(),
        TestDevStats {
            done: 2,
            refused: 12,
            malformed: 0
        }
    );
}

#[test]
fn the_device_holds_at_most_64_connections() {
    let Some(synic) = synic(
        "the_device_holds_at_most_64_connections",
        1,
        &SintIndex::ALL,
    ) else {
        return;
    };
    let dev = TestDev::new(Arc::clone(&synic));
    assert_eq!(MAX_TESTDEV_CONNECTIONS, 64);
    // 40 message and 24 event connections: the bound counts both kinds together.
    let msg = |id: u32| Cmd::MsgConnCreate {
        conn_id: id,
        vp_index: 0,
        sint: sint(2),
    };
    let evt = |id: u32| Cmd::EvtConnCreate {
        conn_id: id,
        vp_index: 0,
        sint: sint(3),
    };
    for id in 0..40 {
        assert!(carried_out(&dev, msg(id)), "message connection {id}");
    }
    for id in 100..124 {
        assert!(carried_out(&dev, evt(id)), "event connection {id}");
    }
    // At the bound: a 65th of either kind is refused and never registered.
    assert!(!carried_out(&dev, msg(40)));
    assert!(!carried_out(&dev, evt(124)));
    assert_eq!(post(&synic, 40, 0), HvStatus::InvalidConnectionId);
    assert_eq!(signal(&synic, 124), HvStatus::InvalidConnectionId);
    // Every one of the 64 is registered.
    for id in 0..40 {
        assert_ne!(post(&synic, id, 0), HvStatus::InvalidConnectionId, "{id}");
    }
    for id in 100..124 {
        assert_ne!(signal(&synic, id), HvStatus::InvalidConnectionId, "{id}");
    }
    // Refusals do not hold a place: hammering at the bound changes nothing.
    for id in 200..=255 {
        assert!(!carried_out(&dev, msg(id)));
    }
    // Destroying one makes room for exactly one.
    assert!(carried_out(&dev, Cmd::MsgConnDestroy { conn_id: 7 }));
    assert_eq!(post(&synic, 7, 0), HvStatus::InvalidConnectionId);
    assert!(carried_out(&dev, evt(124)));
    assert!(!carried_out(&dev, msg(40)));
    // Destroying everything empties the registry of the device's connections.
    for id in (0..40).filter(|&id| id != 7) {
        assert!(carried_out(&dev, Cmd::MsgConnDestroy { conn_id: id }));
    }
    for id in 100..=124 {
        assert!(carried_out(&dev, Cmd::EvtConnDestroy { conn_id: id }));
    }
    for id in 0..=255 {
        assert_eq!(post(&synic, id, 0), HvStatus::InvalidConnectionId, "{id}");
        assert_eq!(signal(&synic, id), HvStatus::InvalidConnectionId, "{id}");
    }
    let s = dev.stats();
    assert_eq!(
        (s.done, s.refused, s.malformed),
        (64 + 2 + 64, 2 + 56 + 1, 0)
    );
}

#[test]
fn the_device_holds_at_most_64_routes_and_removes_only_its_own() {
    // Five VPs: 80 (VP, SINT) pairs, more than the bound. The SynIC routes SINT 0 of every VP
    // at build time; the device routes the rest itself.
    let Some(synic) = synic(
        "the_device_holds_at_most_64_routes_and_removes_only_its_own",
        5,
        &[sint(0)],
    ) else {
        return;
    };
    let dev = TestDev::new(Arc::clone(&synic));
    assert_eq!(MAX_TESTDEV_ROUTES, 64);
    let create = |vp: u32, s: u32| Cmd::SintRouteCreate {
        vp_index: vp,
        sint: sint(s),
    };
    let destroy = |vp: u32, s: u32| Cmd::SintRouteDestroy {
        vp_index: vp,
        sint: sint(s),
    };
    let set = |vp: u32, s: u32| Cmd::SintRouteSet {
        vp_index: vp,
        sint: sint(s),
    };
    let host_gsis: Vec<_> = (0..5)
        .map(|vp| {
            synic
                .sint_gsi(VpIndex(vp), sint(0))
                .expect("built-time route")
        })
        .collect();
    // The SynIC's own routes are not the guest's to destroy or raise.
    for vp in 0..5 {
        assert!(!carried_out(&dev, destroy(vp, 0)));
        assert!(!carried_out(&dev, set(vp, 0)));
    }
    // A VP that does not exist.
    assert!(!carried_out(&dev, create(5, 1)));
    let pairs: Vec<(u32, u32)> = (0..5)
        .flat_map(|vp| (0..16).map(move |s| (vp, s)))
        .collect();
    let (held, beyond) = pairs.split_at(MAX_TESTDEV_ROUTES);
    for &(vp, s) in held {
        assert!(carried_out(&dev, create(vp, s)), "route {vp}/{s}");
        assert!(synic.sint_gsi(VpIndex(vp), sint(s)).is_some());
    }
    // At the bound: refused, and nothing reaches the routing table.
    for &(vp, s) in beyond {
        assert!(!carried_out(&dev, create(vp, s)), "route {vp}/{s}");
        if s != 0 {
            assert_eq!(synic.sint_gsi(VpIndex(vp), sint(s)), None);
        }
    }
    // A route held twice is refused; one of the device's may be raised.
    assert!(!carried_out(&dev, create(0, 1)));
    assert!(carried_out(&dev, set(0, 1)));
    // Destroying everything it holds removes what it added and leaves the SynIC's own.
    for &(vp, s) in held {
        assert!(carried_out(&dev, destroy(vp, s)), "route {vp}/{s}");
        let gsi = synic.sint_gsi(VpIndex(vp), sint(s));
        if s == 0 {
            assert_eq!(
                gsi,
                Some(host_gsis[vp as usize]),
                "the SynIC's route {vp}/0 stays"
            );
        } else {
            assert_eq!(gsi, None, "the device's route {vp}/{s} is gone");
        }
    }
    // The last VP's SINT 0 route was never the device's: it is still there.
    assert_eq!(synic.sint_gsi(VpIndex(4), sint(0)), Some(host_gsis[4]));
    // With nothing held, the whole bound is free again.
    for &(vp, s) in beyond {
        assert!(carried_out(&dev, create(vp, s)), "route {vp}/{s}");
    }
    let s = dev.stats();
    assert_eq!(
        (s.done, s.refused),
        (64 + 1 + 64 + 16, 10 + 1 + 16 + 1),
        "{s:?}"
    );
}
