//! Synthetic timers on real KVM: real guest code programs STIMERn through MSR exits and takes
//! the expiries in its interrupt handlers (TLFS order: copy, free, EOI, MessagePending -> EOM).
//!
//! The timers are this library's in every setup (served by synic-kvm's timer thread): in
//! userspace mode in both register profiles, and in kernel mode, where synic-kvm takes the
//! STIMER MSRs from KVM's in-kernel SynIC with the MSR filter so that the library is the only
//! writer of message slots (the kernel-mode variants skip loudly without
//! KVM_CAP_HYPERV_SYNIC2; kvm-lab runs them). Every period is reported, exactly on schedule,
//! and a busy slot delays an expiry but never drops it (docs/timers.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use iced_x86::code_asm::*;
use synic::{Posted, VpIndex};
use synic_e2e::layout::{self, state, tag, vector};
use synic_e2e::{run, Eoi, Finished, Logged, Setup, SintValue, SynicGuest, VmSpec};
use synic_msr::{index, StimerConfig};
use synic_vmm::guest::Isr;

/// 1 ms in 100 ns units.
const PERIOD: u64 = 10_000;
const SINT: u8 = 2;
const HVMSG_TIMER_EXPIRED: u32 = synic::MessageType::TIMER_EXPIRED.0;

fn config_msr(timer: u32) -> u32 {
    index::STIMER0_CONFIG + 2 * timer
}

fn count_msr(timer: u32) -> u32 {
    index::STIMER0_COUNT + 2 * timer
}

/// One expiry message as the guest logged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expiry {
    timer: u64,
    expiration: u64,
    delivery: u64,
    pending: bool,
}

/// An expiry message as the guest logged it.
fn parse(m: &Logged) -> Expiry {
    assert_eq!(m.message_type, HVMSG_TIMER_EXPIRED, "{m:?}");
    assert_eq!((m.sint, m.payload_size), (SINT, 24), "{m:?}");
    Expiry {
        timer: m.qword(0),
        expiration: m.qword(1),
        delivery: m.qword(2),
        pending: m.pending(),
    }
}

/// The expiries the guest took, in order, plus (`with_slot`) one still in the slot when it
/// stopped (the model counted it as signalled).
fn expiries(f: &Finished, with_slot: bool) -> Vec<Expiry> {
    let v = f.view();
    let mut log = v.messages(0);
    let left = v.slot(0, layout::SIMP, SINT);
    if with_slot && log_complete(f) && left.message_type != 0 {
        log.push(left);
    }
    log.iter().map(parse).collect()
}

/// Whether the guest's log holds every message it took (it keeps the first `LOG_CAP`).
fn log_complete(f: &Finished) -> bool {
    f.view().counter(0, state::MESSAGES) <= layout::LOG_CAP
}

/// Asserts that every expiry is due at `first + k x PERIOD` for strictly increasing k (the
/// phase is kept, periods may be missing) and never delivered early. Returns how many periods
/// were never reported.
fn assert_on_grid(got: &[Expiry], first: u64) -> u64 {
    let mut last = None;
    for e in got {
        assert!(e.expiration >= first, "{e:?}");
        let since = e.expiration - first;
        assert_eq!(since % PERIOD, 0, "off the phase grid: {e:?}");
        let k = since / PERIOD;
        assert!(last.is_none_or(|l| k > l), "not increasing: {e:?}");
        assert!(e.delivery >= e.expiration, "delivered early: {e:?}");
        last = Some(k);
    }
    last.map_or(0, |l| l + 1 - got.len() as u64)
}

/// Every period, in order — except periods the model skipped because the guest fell more
/// than `MAX_CATCH_UP_PERIODS` behind (only seen on a guest far too slow for a 1 ms timer,
/// e.g. under kvm-lab's emulation): each gap must be such a skip.
fn assert_periods(setup: Setup, label: &str, f: &Finished, got: &[Expiry], first: u64) {
    let lost = assert_on_grid(got, first);
    let total = got.len() as u64 + lost;
    let c = f.host.partition().stimer_counters(VpIndex(0)).unwrap()[0];
    eprintln!("{label}, {setup:?}: {lost} of {total} periods skipped by the catch-up cap; {c:?}");
    if log_complete(f) {
        assert_eq!(lost, c.skipped, "every missing period is a counted skip");
    } else {
        assert!(lost <= c.skipped, "every missing period is a counted skip");
    }
    let cap = synic::MAX_CATCH_UP_PERIODS;
    for pair in got.windows(2) {
        if pair[1].expiration != pair[0].expiration + PERIOD {
            assert!(
                pair[1].delivery - pair[1].expiration >= (cap - 1) * PERIOD,
                "a gap without a backlog past the cap: {pair:?}"
            );
        }
    }
}

/// RAX = TIME_REF_COUNT, stored in scratch slot `n`. Clobbers RAX, RCX, RDX.
fn read_time(g: &mut SynicGuest, n: u64) {
    g.toolkit().rdmsr_rax(index::TIME_REF_COUNT).unwrap();
    g.store_rax(n).unwrap();
}

/// WRMSR `msr` = RAX. Clobbers RCX, RDX.
fn wrmsr_rax(g: &mut SynicGuest, msr: u32) {
    g.emit(|a| {
        a.mov(rdx, rax)?;
        a.shr(rdx, 32)?;
        a.mov(ecx, msr)?;
        a.wrmsr()
    })
    .unwrap();
}

/// One vCPU; a generous limit (the guests take about a second here, minutes under kvm-lab's
/// emulation; a lost timer interrupt still ends the run at the limit).
fn spec(setup: Setup) -> VmSpec {
    VmSpec {
        limit: std::time::Duration::from_secs(120),
        ..VmSpec::new(setup, 1)
    }
}

/// A guest with the message handler on SINT 2 and its SynIC up.
fn message_guest() -> SynicGuest {
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    g.synic_up(&[(SINT, SintValue::vector(vector(SINT)))])
        .unwrap();
    g
}

fn stats(label: &str, got: &[Expiry]) {
    let mut late: Vec<u64> = got.iter().map(|e| e.delivery - e.expiration).collect();
    late.sort_unstable();
    let us = |t: u64| t as f64 / 10.0;
    eprintln!(
        "{label}: {} expiries; delivery - expiration: median {:.1} us, p99 {:.1} us, max {:.1} us",
        late.len(),
        us(late[late.len() / 2]),
        us(late[late.len() * 99 / 100]),
        us(late[late.len() - 1]),
    );
}

/// A periodic 1 ms timer for 1 000 ticks: every tick arrives, each reports exactly its own
/// period (start + n ms, no drift), none early.
fn periodic_1ms_1000_ticks(setup: Setup) {
    let mut g = message_guest();
    read_time(&mut g, 0);
    g.wrmsr(count_msr(0), PERIOD).unwrap();
    g.wrmsr(
        config_msr(0),
        StimerConfig::new(true, true, false, false, SINT).0,
    )
    .unwrap();
    read_time(&mut g, 1);
    g.wait_messages(1_000).unwrap();
    g.wrmsr(config_msr(0), 0).unwrap();
    read_time(&mut g, 2);
    g.exit_ok().unwrap();
    let f = run(spec(setup), &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    let got = expiries(&f, true);
    // A guest that has fallen behind takes the backlog's next expiry (its EOM brings it at
    // once) before its wait loop looks at the count again: 1 000 or more.
    assert!(got.len() >= 1_000, "{} expiries", got.len());
    assert!(got.iter().all(|e| e.timer == 0));
    let v = f.view();
    let (before, after, end) = (v.scratch(0, 0), v.scratch(0, 1), v.scratch(0, 2));
    // The first period started at the enabling write, between the two reads around it.
    let start = got[0].expiration - PERIOD;
    assert!(
        before <= start && start <= after,
        "{before} <= {start} <= {after}"
    );
    assert_periods(setup, "periodic 1 ms", &f, &got, start + PERIOD);
    assert!(end >= start + 1_000 * PERIOD);
    stats(&format!("periodic 1 ms, {setup:?}"), &got);
    eprintln!(
        "  1 000 ticks took {:.3} ms of reference time; EOMs {}",
        (got[999].delivery - start) as f64 / 1e4,
        v.counter(0, state::EOMS)
    );
}

/// One-shot: COUNT is an absolute reference time; the expiry reports it, and the timer
/// disables itself. A COUNT already in the past expires at once.
fn one_shot_absolute_and_past(setup: Setup) {
    let mut g = message_guest();
    g.toolkit().rdmsr_rax(index::TIME_REF_COUNT).unwrap();
    g.emit(|a| a.add(rax, 20_000)).unwrap(); // 2 ms from now
    g.store_rax(0).unwrap();
    wrmsr_rax(&mut g, count_msr(0));
    g.wrmsr(
        config_msr(0),
        StimerConfig::new(true, false, false, false, SINT).0,
    )
    .unwrap();
    g.wait_messages(1).unwrap();
    g.rdmsr_report(config_msr(0)).unwrap();
    g.wrmsr(count_msr(0), 1).unwrap();
    read_time(&mut g, 1);
    g.wrmsr(
        config_msr(0),
        StimerConfig::new(true, false, false, false, SINT).0,
    )
    .unwrap();
    g.wait_messages(2).unwrap();
    g.rdmsr_report(config_msr(0)).unwrap();
    g.exit_ok().unwrap();
    let f = run(spec(setup), &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    let got = expiries(&f, false);
    assert_eq!(got.len(), 2, "{got:?}");
    let due = f.view().scratch(0, 0);
    assert_eq!(got[0].expiration, due);
    assert!(got[0].delivery >= due, "{got:?}");
    assert_eq!(got[1].expiration, 1);
    assert!(got[1].delivery >= f.view().scratch(0, 1), "{got:?}");
    for config in f.values(0, tag::MSR) {
        assert!(
            !StimerConfig(config).enabled(),
            "a one-shot disables itself: {config:#x}"
        );
    }
    assert_eq!(f.values(0, tag::MSR).len(), 2);
}

/// AutoEnable: CONFIG written without Enable does not start the timer; a non-zero COUNT
/// write enables it; COUNT = 0 stops it.
fn auto_enable_on_count_write(setup: Setup) {
    let mut g = message_guest();
    g.wrmsr(
        config_msr(0),
        StimerConfig::new(false, true, false, true, SINT).0,
    )
    .unwrap();
    g.rdmsr_report(config_msr(0)).unwrap();
    read_time(&mut g, 0);
    g.wrmsr(count_msr(0), PERIOD).unwrap();
    g.rdmsr_report(config_msr(0)).unwrap();
    g.wait_messages(5).unwrap();
    g.wrmsr(count_msr(0), 0).unwrap();
    g.rdmsr_report(config_msr(0)).unwrap();
    g.exit_ok().unwrap();
    let f = run(spec(setup), &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    let enabled: Vec<bool> = f
        .values(0, tag::MSR)
        .into_iter()
        .map(|c| StimerConfig(c).enabled())
        .collect();
    assert_eq!(enabled, vec![false, true, false]);
    let got = expiries(&f, true);
    assert!(got.len() >= 5, "{got:?}");
    assert!(got[0].expiration >= f.view().scratch(0, 0) + PERIOD);
    assert_periods(setup, "auto-enable", &f, &got, got[0].expiration);
}

/// A host message fills SINT 2's slot; the guest (interrupts off) starts a periodic 1 ms timer
/// on that SINT, spins 5.5 periods without taking anything, then takes messages by polling
/// (free the slot, EOM if MessagePending). Whatever the threads' scheduling:
///
/// * the first expiry waited for the slot (delivered after the spin) and was not dropped;
/// * non-lazy: expiries report periods 1, 2, 3, ... in order; one delivered while later
///   periods were already due carries MessagePending (so the guest's EOM brings the next);
/// * lazy: each expiry reports exactly the latest period due when it was delivered (the
///   first one, after the busy slot, period 5 or later).
fn busy_slot_retry(setup: Setup, lazy: bool) {
    let start = Arc::new(AtomicU64::new(0));
    let mut g = message_guest();
    g.step(1).unwrap(); // the host fills the slot
    g.wrmsr(count_msr(0), PERIOD).unwrap();
    g.wrmsr(
        config_msr(0),
        StimerConfig::new(true, true, lazy, false, SINT).0,
    )
    .unwrap();
    g.step(2).unwrap(); // the host reads the timer's start from the model
                        // Spin (interrupts off) until 5.5 periods have passed.
    g.emit(|a| {
        let mut spin = a.create_label();
        a.mov(ecx, index::TIME_REF_COUNT)?;
        a.rdmsr()?;
        a.shl(rdx, 32)?;
        a.mov(eax, eax)?;
        a.or(rax, rdx)?;
        a.lea(rbx, qword_ptr(rax + 55_000))?;
        a.set_label(&mut spin)?;
        a.mov(ecx, index::TIME_REF_COUNT)?;
        a.rdmsr()?;
        a.shl(rdx, 32)?;
        a.mov(eax, eax)?;
        a.or(rax, rdx)?;
        a.cmp(rax, rbx)?;
        a.jb(spin)
    })
    .unwrap();
    read_time(&mut g, 1);
    let timer_messages = if lazy { 2 } else { 5 };
    for _ in 0..=timer_messages {
        g.poll_message(SINT).unwrap();
    }
    g.wrmsr(config_msr(0), 0).unwrap();
    g.exit_ok().unwrap();
    let recorded = Arc::clone(&start);
    let f = run(
        spec(setup),
        &g.build().unwrap(),
        move |host, _, step| match step {
            1 => {
                let posted = host.post(0, SINT, 1);
                assert_eq!(posted, Ok(Posted::Delivered));
            }
            _ => {
                let t = host.synic().with_vp(0, |vp| vp.save().timers[0]).unwrap();
                assert!(t.armed);
                recorded.store(t.start, Ordering::SeqCst);
            }
        },
    );
    f.assert_exited_ok();
    let start = start.load(Ordering::SeqCst);
    let spun = f.view().scratch(0, 1);
    let log = f.view().messages(0);
    assert_eq!(log.len(), timer_messages + 1, "{log:#?}");
    assert_eq!(
        f.view().counter(0, state::POLLED),
        timer_messages as u64 + 1
    );
    assert_eq!(
        log[0].message_type,
        layout::MESSAGE_TYPE,
        "the host message first"
    );
    let got: Vec<Expiry> = log[1..].iter().map(parse).collect();
    let due_at = |t: u64| (t - start) / PERIOD;
    let n = |e: &Expiry| {
        assert_eq!((e.expiration - start) % PERIOD, 0, "off the phase: {e:?}");
        (e.expiration - start) / PERIOD
    };
    assert!(
        got[0].delivery >= spun,
        "the first expiry waited for the slot: {got:?}"
    );
    let counters = f.host.partition().stimer_counters(VpIndex(0)).unwrap()[0];
    if lazy {
        for e in &got {
            assert_eq!(n(e), due_at(e.delivery), "not the latest period: {e:?}");
        }
        assert!(n(&got[0]) >= 5, "{got:?}");
        assert!(got.windows(2).all(|w| n(&w[1]) > n(&w[0])), "{got:?}");
        assert!(counters.skipped >= 4, "{counters:?}");
    } else {
        for (i, e) in got.iter().enumerate() {
            assert_eq!(
                n(e),
                i as u64 + 1,
                "period {} missing or out of order: {got:?}",
                i + 1
            );
            assert!(e.delivery >= e.expiration, "{e:?}");
            if due_at(e.delivery) > n(e) {
                assert!(e.pending, "later periods were due: {e:?}");
            }
        }
        assert!(
            got[0].pending,
            "periods 2..=5 were due when period 1 was delivered"
        );
        assert_eq!(counters.skipped, 0);
    }
    eprintln!("busy slot, lazy = {lazy}, {setup:?}: start {start}, spin end {spun}: {got:?}; {counters:?}");
}

/// Direct mode: STIMER1 raises vector 0x60 every ms, no SINT, no message. 200 interrupts
/// take 200 periods of reference time (none lost); CPUID advertises direct mode.
fn direct_mode_1ms(setup: Setup) {
    const VECTOR: u8 = 0x60;
    let mut g = SynicGuest::new().unwrap();
    g.toolkit().isr(VECTOR, Isr::QUIET).unwrap();
    g.lapic_enable().unwrap();
    g.emit(|a| {
        a.mov(eax, 0x4000_0003u32)?;
        a.xor(ecx, ecx)?;
        a.cpuid()
    })
    .unwrap();
    g.toolkit().report_reg(tag::VALUE, rdx).unwrap();
    read_time(&mut g, 0);
    g.wrmsr(count_msr(1), PERIOD).unwrap();
    g.wrmsr(
        config_msr(1),
        StimerConfig::new_direct(true, true, VECTOR).0,
    )
    .unwrap();
    g.toolkit().wait_for_irqs(VECTOR, 200).unwrap();
    // Interrupts are off from here: the count and the time belong together.
    read_time(&mut g, 1);
    g.wrmsr(config_msr(1), 0).unwrap();
    g.report_toolkit_irqs(VECTOR).unwrap();
    g.store_rax(2).unwrap();
    g.exit_ok().unwrap();
    let f = run(spec(setup), &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    let features = f.values(0, tag::VALUE)[0];
    assert_eq!(f.values(0, tag::VALUE).len(), 2);
    assert_ne!(
        features & (1 << 19),
        0,
        "CPUID 0x4000_0003 EDX bit 19: {features:#x}"
    );
    let v = f.view();
    let irqs = v.scratch(0, 2);
    let periods = (v.scratch(0, 1) - v.scratch(0, 0)) / PERIOD;
    assert!(irqs >= 200, "{irqs}");
    assert!(v.messages(0).is_empty(), "direct mode sends no message");
    // Every period was raised (none skipped), as one interrupt each: the APIC could only
    // merge two raises if the vCPU did not run for a whole period.
    let c = f.host.partition().stimer_counters(VpIndex(0)).unwrap()[1];
    assert_eq!(c.skipped, 0, "{c:?}");
    assert!(c.signalled >= irqs, "{c:?}");
    eprintln!(
        "direct mode 1 ms, {setup:?}: {irqs} interrupts taken in {periods} periods, {} raised",
        c.signalled
    );
}

/// TIME_REF_COUNT counts 100 ns units of real time and never goes backwards.
fn time_ref_count_counts_real_time(setup: Setup) {
    let mut g = SynicGuest::new().unwrap();
    read_time(&mut g, 0);
    g.settle().unwrap(); // the host sleeps at least 2 x 5 ms
    read_time(&mut g, 1);
    g.exit_ok().unwrap();
    let f = run(spec(setup), &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    let (a, b) = (f.view().scratch(0, 0), f.view().scratch(0, 1));
    assert!(
        b >= a + 100_000,
        "10 ms of sleep is 100 000 units: {a} -> {b}"
    );
}

/// Host messages posted beside a 1 kHz message-mode timer on the same SINT: 10^5, or
/// `SYNIC_SHARED_SINT_MESSAGES` (experiments only: CI runs the default).
fn shared_sint_messages() -> u64 {
    std::env::var("SYNIC_SHARED_SINT_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// One writer per message slot: a periodic 1 ms message-mode STIMER0 on SINT 2 while a host
/// thread posts 10^5 sequence-numbered messages to the same SINT (retrying while the queue is
/// full). The guest checks every host message's sequence number as it takes it and counts the
/// expiries. Every host message arrives once and in order, every expiry the timer signalled
/// arrives (none overwritten by a host message, none overwriting one), and the expiries the
/// guest logged keep the period's phase. Kernel mode too: there the timers are the library's
/// (their MSRs taken from KVM by the MSR filter), so KVM never writes into the slot.
fn stimer_and_host_share_a_sint(setup: Setup) {
    let messages = shared_sint_messages();
    let mut g = message_guest();
    g.wrmsr(count_msr(0), PERIOD).unwrap();
    g.wrmsr(
        config_msr(0),
        StimerConfig::new(true, true, false, false, SINT).0,
    )
    .unwrap();
    g.step(1).unwrap(); // the host starts posting
    g.wait_counter(state::NEXT_SEQ, messages).unwrap();
    g.wrmsr(config_msr(0), 0).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();
    let poster: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<u64>>>> = Arc::default();
    let p = Arc::clone(&poster);
    let spec = VmSpec {
        limit: std::time::Duration::from_secs(600),
        ..VmSpec::new(setup, 1)
    };
    let f = run(spec, &g.build().unwrap(), move |host, _, _| {
        let partition = Arc::clone(host.partition());
        let handle = std::thread::spawn(move || {
            let mut full = 0u64;
            for seq in 0..messages {
                let mut msg = synic_e2e::harness::host_message(SINT, seq, 16);
                loop {
                    match partition.post_message(VpIndex(0), u32::from(SINT), msg) {
                        Ok(_) => break,
                        Err(e) if matches!(e.error, synic::Error::QueueFull { .. }) => {
                            // Wait for the guest to drain some (spinning would starve its
                            // vCPU on a loaded host, or under the lab's emulation).
                            full += 1;
                            msg = e.message;
                            std::thread::sleep(std::time::Duration::from_micros(50));
                        }
                        Err(e) => panic!("post {seq}: {}", e.error),
                    }
                }
            }
            full
        });
        *p.lock().unwrap() = Some(handle);
    });
    let full = poster
        .lock()
        .unwrap()
        .take()
        .expect("the guest reached step 1")
        .join()
        .expect("the poster");
    f.assert_exited_ok();
    let v = f.view();
    assert_eq!(
        v.counter(0, state::SEQ_ERRORS),
        0,
        "host messages lost, duplicated or reordered"
    );
    assert_eq!(v.counter(0, state::NEXT_SEQ), messages);
    let c = f.host.partition().stimer_counters(VpIndex(0)).unwrap()[0];
    let taken = v.counter(0, state::TIMER_MESSAGES);
    let left_in_slot = u64::from(v.slot(0, layout::SIMP, SINT).message_type == HVMSG_TIMER_EXPIRED);
    assert_eq!(
        taken + left_in_slot,
        c.signalled,
        "every expiry signalled arrived: {c:?}"
    );
    assert!(c.signalled > 0, "the timer ran: {c:?}");
    assert_eq!(
        v.counter(0, state::MESSAGES),
        messages + taken,
        "nothing else, nothing twice"
    );
    let logged: Vec<Expiry> = v
        .messages(0)
        .iter()
        .filter(|m| m.message_type == HVMSG_TIMER_EXPIRED)
        .map(parse)
        .collect();
    if let Some(first) = logged.first() {
        assert_on_grid(&logged, first.expiration);
    }
    eprintln!(
        "shared SINT, {setup:?}: {messages} host messages in order ({full} retries on a full queue), {taken} expiries taken of {} signalled, {} periods skipped past the catch-up cap, {} handler entries the platform made up (ignored), {} EOMs",
        c.signalled,
        c.skipped,
        v.counter(0, state::NESTED),
        v.counter(0, state::EOMS)
    );
}

macro_rules! setups {
    ($($name:ident => $scenario:expr, [$($setup:ident),*];)*) => {
        $(
            mod $name {
                use super::*;
                $(
                    #[test]
                    #[allow(non_snake_case)]
                    fn $setup() {
                        let setup = setup_named(stringify!($setup));
                        if setup.available(concat!("timers::", stringify!($name), "::", stringify!($setup))) {
                            ($scenario)(setup);
                        }
                    }
                )*
            }
        )*
    };
}

fn setup_named(name: &str) -> Setup {
    match name {
        "userspace" => Setup::USERSPACE,
        "userspace_kvm_profile" => Setup::USERSPACE_KVM,
        _ => Setup::KERNEL,
    }
}

setups! {
    periodic_1ms_timer_delivers_1000_ticks_on_schedule => periodic_1ms_1000_ticks, [userspace, userspace_kvm_profile, kernel];
    one_shot_fires_at_its_absolute_time_and_disables_itself => one_shot_absolute_and_past, [userspace, userspace_kvm_profile, kernel];
    auto_enable_starts_the_timer_on_a_count_write => auto_enable_on_count_write, [userspace, userspace_kvm_profile, kernel];
    busy_slot_non_lazy_reports_every_missed_period => |s| busy_slot_retry(s, false), [userspace, userspace_kvm_profile, kernel];
    busy_slot_lazy_reports_the_latest_period => |s| busy_slot_retry(s, true), [userspace, userspace_kvm_profile, kernel];
    direct_mode_raises_the_vector_every_period => direct_mode_1ms, [userspace, userspace_kvm_profile, kernel];
    time_ref_count_counts_100ns_of_real_time => time_ref_count_counts_real_time, [userspace, userspace_kvm_profile, kernel];
    a_timer_and_the_host_share_a_sint_and_nothing_is_overwritten => stimer_and_host_share_a_sint, [userspace, userspace_kvm_profile, kernel];
}
