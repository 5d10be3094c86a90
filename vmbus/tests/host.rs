//! The whole host — device thread, SynIC partition, hypercall connections, rings, services —
//! against a simulated Linux guest (`synic_vmbus::sim`): no KVM, no real guest.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synic::hypercall::HvStatus;
use synic_vmbus::host::{MAX_BACKLOG, MESSAGE_QUEUE};
use synic_vmbus::protocol::{ChannelMessageType, GpadlCreated, Version};
use synic_vmbus::sim::{messages as m, SimGuest};
use synic_vmbus::{HvEventFds, IcKind, KvpPool, RequestError, VmbusConfig, VmbusHost, VmbusLog};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::FromBytes;

const T: Duration = Duration::from_secs(5);

fn attach(g: &SimGuest, config: VmbusConfig) -> VmbusHost {
    VmbusHost::attach(g.partition.clone(), g.connections.clone(), config).unwrap()
}

fn connected(version: Version) -> (SimGuest, VmbusHost) {
    let mut g = SimGuest::new(2);
    let host = attach(&g, VmbusConfig::default());
    assert!(g.connect(version));
    g.open_all();
    (g, host)
}

/// A hang guard for waits on another thread's progress (never a timing check).
const HANG: Duration = Duration::from_secs(60);

/// Waits until the host has signalled channel `relid` (its flag in the guest's event-flags
/// page): the host's progress as the guest sees it, instead of a sleep.
fn wait_for_signal(g: &SimGuest, relid: u32) {
    let end = Instant::now() + HANG;
    while !g.take_flags().contains(&relid) {
        assert!(Instant::now() < end, "channel {relid} was never signalled");
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn no_errors(log: &VmbusLog) {
    let errors: Vec<String> = log
        .log
        .entries()
        .filter(|e| e.error)
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn services_answer_through_the_simulated_guest() {
    let (mut g, host) = connected(Version::WIN10_V5_3);
    g.hostname = "guest-0badcafe".into();
    assert_eq!(g.offers.len(), 4);
    let g = g.spawn();
    let h = host.handle();
    for kind in IcKind::ALL {
        let n = h.wait_ready(kind, T).unwrap();
        assert_eq!(n.framework.to_string(), "3.0", "{kind}");
    }
    for i in 1..=1000u64 {
        let r = h.heartbeat(T).unwrap();
        assert_eq!(r.sequence, i);
    }
    assert_eq!(
        h.kvp_get(KvpPool::Auto, "FullyQualifiedDomainName", T)
            .unwrap(),
        Some("guest-0badcafe".into())
    );
    assert_eq!(h.kvp_get(KvpPool::Auto, "NoSuchItem", T).unwrap(), None);
    h.kvp_set(KvpPool::External, "Colour", "blue", T).unwrap();
    assert_eq!(
        h.kvp_get(KvpPool::External, "Colour", T).unwrap(),
        Some("blue".into())
    );
    let t = h.time_sample(T).unwrap();
    assert_eq!(t.service.to_string(), "4.0");
    h.shutdown("test over", T).unwrap();
    let g = g.join();
    let log = host.finish();
    no_errors(&log);
    assert_eq!(g.services.heartbeats, 1000);
    assert_eq!(g.services.shutdowns, 1);
    assert_eq!(g.services.time_samples.len(), 1);
    assert_eq!(g.services.time_samples[0].0, t.host_time);
    assert_eq!(g.services.negotiated.len(), 4);
    let hb = &log.channels[0].stats;
    assert_eq!((hb.packets_to_guest, hb.packets_from_guest), (1001, 1001));
    assert_eq!(hb.transactions, 1000);
    assert_eq!(log.negotiated, Some(Version::WIN10_V5_3));
}

#[test]
fn every_version_3_0_to_5_3_carries_the_services() {
    for v in Version::ALL {
        let (g, host) = connected(v);
        let g = g.spawn();
        let h = host.handle();
        h.wait_ready(IcKind::Heartbeat, T).unwrap();
        h.heartbeat(T).unwrap();
        let g = g.join();
        let log = host.finish();
        no_errors(&log);
        assert_eq!(g.services.heartbeats, 1, "{v}");
        assert_eq!(log.negotiated, Some(v));
    }
}

#[test]
fn a_guest_that_closes_and_reopens_gets_a_fresh_negotiation() {
    let (mut g, host) = connected(Version::WIN10_V5_3);
    let hb = g.relid_of(IcKind::Heartbeat).unwrap();
    while g.services.negotiated.len() < 4 {
        g.service();
    }
    g.close(hb);
    assert_eq!(g.open(hb, 4), 0);
    let g = g.spawn();
    let h = host.handle();
    h.heartbeat(T).unwrap();
    let g = g.join();
    let log = host.finish();
    no_errors(&log);
    assert_eq!(log.channels[0].stats.opens, 2);
    assert_eq!(g.services.heartbeats, 1);
}

#[test]
fn unload_in_the_middle_closes_channels_and_fails_requests_in_flight() {
    let (mut g, host) = connected(Version::WIN10_V5_3);
    while g.services.negotiated.len() < 4 {
        g.service();
    }
    let h = host.handle();
    let hb = g.relid_of(IcKind::Heartbeat).unwrap();
    g.take_flags();
    // A heartbeat the guest never answers, in flight: the host wrote it and signalled.
    let pending = std::thread::spawn({
        let h = h.clone();
        move || h.heartbeat(T)
    });
    let hb_conn = g.channels[&hb].connection_id;
    wait_for_signal(&g, hb);
    g.unload();
    assert!(matches!(
        pending.join().unwrap(),
        Err(RequestError::Closed(why)) if why.contains("unloaded")
    ));
    // The channel's event connection went with it.
    assert_eq!(g.signal(hb_conn), HvStatus::InvalidConnectionId);
    // Connect again: the services come back.
    assert!(g.connect(Version::WIN10_V5_3));
    g.open_all();
    let g = g.spawn();
    h.heartbeat(T).unwrap();
    g.join();
    no_errors(&host.finish());
}

#[test]
fn rescind_closes_the_channel_and_the_guest_releases_it() {
    let (g, host) = connected(Version::WIN10_V5_3);
    let g = g.spawn();
    let h = host.handle();
    h.wait_ready(IcKind::TimeSync, T).unwrap();
    h.rescind(IcKind::TimeSync, T).unwrap();
    assert_eq!(
        h.time_sample(T),
        Err(RequestError::NotOffered(IcKind::TimeSync))
    );
    // The other services carry on.
    h.heartbeat(T).unwrap();
    // The guest releases the channel when it sees the rescind (its own progress, not a
    // sleep); the host handles messages in order, so once REQUESTOFFERS is answered the
    // RELID_RELEASED before it was handled too.
    let mut g = g.join();
    let end = Instant::now() + HANG;
    while g.rescinded.is_empty() {
        assert!(Instant::now() < end, "the guest never saw the rescind");
        g.service();
    }
    g.send(&m::header(ChannelMessageType::REQUEST_OFFERS));
    g.expect(ChannelMessageType::ALL_OFFERS_DELIVERED);
    assert_eq!(g.rescinded, [3]);
    let log = host.finish();
    no_errors(&log);
    assert!(log
        .log
        .entries()
        .any(|e| e.text.contains("RELID_RELEASED channel 3") && !e.error));
    assert_eq!(log.channels.len(), 3, "channel 3 is gone");
}

#[test]
fn a_hostile_ring_closes_only_its_channel() {
    let (mut g, host) = connected(Version::WIN10_V5_3);
    while g.services.negotiated.len() < 4 {
        g.service();
    }
    let hb = g.relid_of(IcKind::Heartbeat).unwrap();
    // The guest's outbound heartbeat ring gets an unaligned write index, and a signal.
    let conn = g.channels[&hb].connection_id;
    let header = 0x100 << 12; // the first ring page the simulated guest allocated
    g.mem.write_obj(12u32, GuestAddress(header)).unwrap();
    assert_eq!(g.signal(conn), HvStatus::Success);
    let g = g.spawn();
    let h = host.handle();
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(
        h.heartbeat(Duration::from_millis(300)),
        Err(RequestError::Timeout)
    ));
    h.time_sample(T).unwrap();
    g.join();
    let log = host.finish();
    let closed: Vec<_> = log
        .log
        .entries()
        .filter(|e| e.error && e.text.contains("channel 1 closed"))
        .collect();
    assert_eq!(closed.len(), 1, "{:#?}", log.log);
    assert!(closed[0].text.contains("write_index"), "{}", closed[0]);
}

#[test]
fn gpadls_on_synic_pages_or_outside_ram_are_refused() {
    let mut g = SimGuest::new(2);
    let host = attach(&g, VmbusConfig::default());
    assert!(g.connect(Version::WIN10_V5_3));
    let simp1 = synic_vmbus::sim::guest::simp(1) >> 12;
    let outside = (synic_vmbus::sim::guest::RAM as u64 >> 12) + 1;
    for (id, bad) in [(1, simp1), (2, outside)] {
        let mut pfns: Vec<u64> = (0x200..0x208).collect();
        pfns[5] = bad;
        for msg in m::gpadl(1, id, &pfns) {
            assert_eq!(g.send(&msg), HvStatus::Success);
        }
        let c = g.expect(ChannelMessageType::GPADL_CREATED);
        let c = GpadlCreated::read_from_bytes(&c).unwrap();
        assert_ne!({ c.creation_status }, 0, "page {bad:#x}");
    }
    let log = host.finish();
    let refused: Vec<String> = log
        .log
        .entries()
        .filter(|e| e.error)
        .map(|e| e.text.clone())
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(
        refused[0].contains("message page of VP 1"),
        "{}",
        refused[0]
    );
    assert!(refused[1].contains("not guest RAM"), "{}", refused[1]);
}

#[test]
fn a_guest_that_never_frees_its_slot_gets_backpressure_and_loses_nothing() {
    let mut g = SimGuest::new(1);
    let host = attach(&g, VmbusConfig::default());
    assert!(g.connect(Version::WIN10_V5_3));
    // The guest stops taking messages and keeps asking for offers: each gets an
    // ALLOFFERS_DELIVERED (the channels were offered already).
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..2000 {
        match g.post(g.msg_conn, &m::header(ChannelMessageType::REQUEST_OFFERS)) {
            HvStatus::Success => accepted += 1,
            HvStatus::InsufficientBuffers => {
                refused += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            s => panic!("{s}"),
        }
        if refused > 200 {
            break;
        }
    }
    assert!(refused > 0, "the host pushed back");
    // What was accepted is bounded: the SynIC queue, the backlog and the message queue.
    // The slot, the SynIC queue (64), the backlog and the message queue.
    assert!(
        accepted <= 1 + 64 + MAX_BACKLOG + MESSAGE_QUEUE,
        "{accepted} accepted"
    );
    // Now the guest drains: every reply arrives, in order, none lost or duplicated (counted
    // by what arrives, not by a quiet period). A GPADL sent once they are all in is a marker:
    // the host answers in order, so a surplus reply would come before its GPADL_CREATED.
    let kind = |msg: &[u8]| u32::from_le_bytes(msg[..4].try_into().unwrap());
    let all_offers = ChannelMessageType::ALL_OFFERS_DELIVERED.0;
    for n in 0..accepted {
        let msg = g.recv(HANG).expect("the host's replies");
        assert_eq!(kind(&msg), all_offers, "reply {n}");
    }
    for msg in m::gpadl(1, 77, &(0x200..0x202).collect::<Vec<u64>>()) {
        assert_eq!(g.send(&msg), HvStatus::Success);
    }
    let next = g.recv(HANG).expect("the marker's reply");
    assert_eq!(
        kind(&next),
        ChannelMessageType::GPADL_CREATED.0,
        "one ALLOFFERS_DELIVERED per REQUESTOFFERS, then the marker's reply"
    );
    no_errors(&host.finish());
}

#[test]
fn the_exchange_log_stays_bounded_under_guest_control() {
    let mut g = SimGuest::new(1);
    let host = attach(
        &g,
        VmbusConfig {
            log_capacity: 16,
            ..VmbusConfig::default()
        },
    );
    assert!(g.connect(Version::WIN10_V5_3));
    for _ in 0..1000 {
        // A type the host does not take: refused, logged.
        g.send(&m::header(ChannelMessageType(99)));
    }
    // Messages are handled in order: once this is answered, so are the others.
    g.send(&m::header(ChannelMessageType::REQUEST_OFFERS));
    g.expect(ChannelMessageType::ALL_OFFERS_DELIVERED);
    let log = host.finish();
    assert_eq!(log.log.entries().len(), 16);
    // Contact, its answer, REQUESTOFFERS, 4 offers and ALLOFFERS, 1000 refusals, then
    // REQUESTOFFERS and ALLOFFERS.
    assert_eq!(log.log.total(), 1010);
    assert_eq!(log.log.errors(), 1000);
    assert_eq!(log.log.dropped(), 1010 - 16);
}

#[test]
fn api_requests_are_bounded() {
    let mut g = SimGuest::new(1);
    let host = attach(&g, VmbusConfig::default());
    assert!(g.connect(Version::WIN10_V5_3));
    // The services never open: every request waits until its deadline or the host stops.
    let h = host.handle();
    let waiting: Vec<_> = (0..synic_vmbus::host::MAX_WAITING_REQUESTS)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || loop {
                // A probe below may hold a place for a moment: then come back.
                match h.heartbeat(HANG) {
                    Err(RequestError::Busy) => std::thread::yield_now(),
                    other => return other,
                }
            })
        })
        .collect();
    // Probe until the bound is reached (however long the threads take to get there): a probe
    // that gets in expires at once, Busy means the bound's worth of requests is waiting.
    let end = Instant::now() + HANG;
    loop {
        match h.heartbeat(Duration::ZERO) {
            Err(RequestError::Busy) => break,
            Err(RequestError::Timeout) => assert!(Instant::now() < end, "never Busy"),
            other => panic!("{other:?}"),
        }
    }
    // At the bound: still Busy, with any timeout.
    assert_eq!(h.heartbeat(T), Err(RequestError::Busy));
    host.finish();
    for w in waiting {
        assert_eq!(w.join().unwrap(), Err(RequestError::Stopped));
    }
}

/// KVM's eventfd table, faked: records assignments and checks that the guest had not heard
/// OPENCHANNEL_RESULT when its channel's eventfd was assigned.
#[derive(Default)]
struct FakeKvm {
    fds: Mutex<Vec<(u32, RawFd, bool)>>,
    results_seen: Mutex<usize>,
    opens_at_assign: Mutex<Vec<usize>>,
}

impl HvEventFds for FakeKvm {
    fn assign(&self, connection_id: u32, fd: RawFd) -> std::io::Result<()> {
        self.fds.lock().unwrap().push((connection_id, fd, true));
        let seen = *self.results_seen.lock().unwrap();
        self.opens_at_assign.lock().unwrap().push(seen);
        Ok(())
    }

    fn deassign(&self, connection_id: u32, fd: RawFd) {
        let mut fds = self.fds.lock().unwrap();
        if let Some(e) = fds
            .iter_mut()
            .find(|e| e.0 == connection_id && e.1 == fd && e.2)
        {
            e.2 = false;
        }
    }
}

impl FakeKvm {
    /// What KVM does for HvSignalEvent on an assigned connection id: signal the eventfd.
    fn signal(&self, connection_id: u32) -> bool {
        let fds = self.fds.lock().unwrap();
        let Some(&(_, fd, _)) = fds.iter().find(|e| e.0 == connection_id && e.2) else {
            return false;
        };
        // SAFETY: the fd is the channel's eventfd, assigned and not yet deassigned: the host
        // keeps it open until it deassigns it, which takes this lock.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = fd.try_clone_to_owned().unwrap();
        let mut f = std::fs::File::from(owned);
        std::io::Write::write_all(&mut f, &1u64.to_ne_bytes()).unwrap();
        true
    }
}

#[test]
fn kernel_mode_eventfds_are_assigned_before_the_open_result_and_carry_every_signal() {
    let kvm = Arc::new(FakeKvm::default());
    let mut g = SimGuest::new(1);
    let host = attach(
        &g,
        VmbusConfig {
            eventfds: Some(kvm.clone()),
            ..VmbusConfig::default()
        },
    );
    assert!(g.connect(Version::WIN10_V5_3));
    let relids: Vec<u32> = g.offers.keys().copied().collect();
    for (n, relid) in relids.into_iter().enumerate() {
        assert_eq!(g.open(relid, 4), 0);
        *kvm.results_seen.lock().unwrap() = n + 1;
    }
    assert_eq!(
        *kvm.opens_at_assign.lock().unwrap(),
        [0, 1, 2, 3],
        "each eventfd was assigned before the guest heard its OPENCHANNEL_RESULT"
    );
    // From now on the guest's signals go to the eventfds, never to the connections.
    let k = kvm.clone();
    g.signal_hook = Some(Box::new(move |conn| k.signal(conn)));
    let g = g.spawn();
    let h = host.handle();
    for _ in 0..100 {
        h.heartbeat(T).unwrap();
    }
    let mut g = g.join();
    g.close(1);
    std::thread::sleep(Duration::from_millis(50));
    let log = host.finish();
    no_errors(&log);
    let fds = kvm.fds.lock().unwrap();
    assert_eq!(fds.len(), 4);
    assert!(
        fds.iter().all(|e| !e.2),
        "every eventfd deassigned: {fds:?}"
    );
    assert!(log.channels[0].stats.signals_from_guest >= 1);
}
