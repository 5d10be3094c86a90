//! Message delivery: every SINT, busy slots and MessagePending/EOM redelivery, masked and
//! polling SINTs, a disabled message page.

use synic::Posted;

use crate::harness::{host_message, run, VmSpec};
use crate::layout::{state, vector, MESSAGE_TYPE};
use crate::{Eoi, Logged, Setup, SintValue, SynicGuest};

fn all_sints() -> Vec<(u8, SintValue)> {
    (0..16).map(|s| (s, SintValue::vector(vector(s)))).collect()
}

/// Checks that `got` is exactly the host message `(sint, seq)` of `size` bytes.
pub fn assert_host_message(got: &Logged, sint: u8, seq: u64, size: usize) {
    let want = host_message(sint, seq, size);
    assert_eq!(
        (got.sint, got.message_type, got.payload_size, got.sender),
        (sint, MESSAGE_TYPE, size as u8, want.header.sender),
        "header of message {seq} on SINT {sint}: {got:?}"
    );
    assert_eq!(
        &got.payload[..size],
        want.payload_bytes(),
        "payload of message {seq} on SINT {sint}"
    );
}

/// One message to each of the 16 SINTs, each with its own vector: every one arrives once, in
/// its own slot, through its own interrupt, byte for byte.
pub fn message_to_each_sint(setup: Setup) {
    let mut g = SynicGuest::new().unwrap();
    for s in 0..16 {
        g.message_isr(vector(s), s, Eoi::Apic).unwrap();
    }
    g.synic_up(&all_sints()).unwrap();
    g.step(1).unwrap();
    g.wait_messages(16).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        |host, _, step| {
            assert_eq!(step, 1);
            for s in 0..16u8 {
                let posted = host.post_sized(0, s, 100 + u64::from(s), 16 + usize::from(s) * 14);
                assert_eq!(posted, Ok(Posted::Delivered), "SINT {s}");
            }
        },
    );
    f.assert_exited_ok();
    let v = f.view();
    let mut log = v.messages(0);
    assert_eq!(log.len(), 16, "{log:#?}");
    log.sort_by_key(|m| m.sint);
    for (s, m) in (0..16u8).zip(&log) {
        assert_host_message(m, s, 100 + u64::from(s), 16 + usize::from(s) * 14);
        assert!(!m.pending(), "nothing was queued behind SINT {s}");
        assert_eq!(v.sint_counter(0, state::SINT_MSG_IRQS, s), 1, "SINT {s}");
    }
    assert_eq!(v.counter(0, state::EMPTY_IRQS), 0);
    assert_eq!(v.counter(0, state::EOMS), 0);
}

/// Asserts that `log` holds exactly the host messages `seqs` on `sint`, in order.
pub fn assert_sequence(log: &[Logged], sint: u8, seqs: impl IntoIterator<Item = u64>) {
    let seqs: Vec<u64> = seqs.into_iter().collect();
    let got: Vec<(u8, u64)> = log.iter().map(|m| (m.sint, m.qword(0))).collect();
    let want: Vec<(u8, u64)> = seqs.iter().map(|&s| (sint, s)).collect();
    assert_eq!(got, want, "messages lost, duplicated or reordered");
    for (m, &seq) in log.iter().zip(&seqs) {
        assert_host_message(m, sint, seq, 240);
    }
}

/// Eight messages posted at once to one SINT: the first fills the slot, the other seven queue
/// behind it with MessagePending set; the guest's handler (copy, free, EOI, test
/// MessagePending, EOM) drains them in order through EOM-driven redelivery.
///
/// Userspace mode: only the EOM retries, so the guest writes exactly seven EOMs. Kernel mode:
/// KVM also acks the SINT when the guest EOIs its vector, so a retry may come before the EOM
/// (the guest then sees the flag of the next message); the messages are the same.
pub fn busy_slot_redelivers_on_eom(setup: Setup) {
    const SINT: u8 = 3;
    const N: u64 = 8;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    g.synic_up(&[(SINT, SintValue::vector(vector(SINT)))])
        .unwrap();
    g.step(1).unwrap();
    g.wait_messages(N).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();
    let f = run(VmSpec::new(setup, 1), &g.build().unwrap(), |host, _, _| {
        // The guest runs with interrupts off here: the slot stays busy while we post.
        for seq in 0..N {
            let want = if seq == 0 {
                Posted::Delivered
            } else {
                Posted::Queued
            };
            assert_eq!(host.post(0, SINT, seq), Ok(want), "post {seq}");
        }
    });
    f.assert_exited_ok();
    let v = f.view();
    let log = v.messages(0);
    assert_sequence(&log, SINT, 0..N);
    // MessagePending is set on every message that had another queued behind it.
    let pending: Vec<bool> = log.iter().map(Logged::pending).collect();
    let mut want = vec![true; N as usize - 1];
    want.push(false);
    assert_eq!(pending, want);
    assert_eq!(v.counter(0, state::EMPTY_IRQS), 0);
    assert_eq!(v.sint_counter(0, state::SINT_MSG_IRQS, SINT), N);
    let c = f.host.partition().counters(synic::VpIndex(0)).unwrap();
    let sc = c.sints[usize::from(SINT)];
    assert_eq!((sc.posted, sc.delivered, sc.queued), (N, N, 0), "{sc:?}");
    match setup.mode {
        crate::Mode::Userspace => {
            assert_eq!(v.counter(0, state::EOMS), N - 1);
            assert_eq!(c.eoms, N - 1);
        }
        crate::Mode::Kernel => assert!(v.counter(0, state::EOMS) <= N),
    }
}

/// A masked SINT and a polling SINT, three messages each: the messages land in the slots
/// (queued ones behind MessagePending) and the guest polls them out, using EOM to get the next;
/// a masked SINT raises no interrupt. A polling SINT raises none in userspace mode; KVM's
/// in-kernel SynIC ignores the Polling bit, so in kernel mode each delivery interrupts.
/// The vectors have counting handlers that leave the slots alone, so the guest is the same.
pub fn masked_and_polling_sints_deliver_without_interrupts(setup: Setup) {
    const MASKED: u8 = 4;
    const POLLING: u8 = 5;
    const N: u64 = 3;
    let mut g = SynicGuest::new().unwrap();
    for s in [MASKED, POLLING] {
        g.toolkit()
            .isr(vector(s), synic_vmm::guest::Isr::QUIET)
            .unwrap();
    }
    let masked = SintValue {
        masked: true,
        ..SintValue::vector(vector(MASKED))
    };
    let polling = SintValue {
        polling: true,
        ..SintValue::vector(vector(POLLING))
    };
    g.synic_up(&[(MASKED, masked), (POLLING, polling)]).unwrap();
    g.step(1).unwrap();
    g.settle().unwrap();
    g.report_slot_type(MASKED).unwrap();
    g.report_slot_type(POLLING).unwrap();
    for _ in 0..N {
        g.poll_message(MASKED).unwrap();
        g.poll_message(POLLING).unwrap();
        g.settle().unwrap();
    }
    g.exit_ok().unwrap();
    let f = run(VmSpec::new(setup, 1), &g.build().unwrap(), |host, _, _| {
        for seq in 0..N {
            for s in [MASKED, POLLING] {
                let want = if seq == 0 {
                    Posted::Delivered
                } else {
                    Posted::Queued
                };
                assert_eq!(host.post(0, s, seq), Ok(want), "SINT {s}, post {seq}");
            }
        }
    });
    f.assert_exited_ok();
    let v = f.view();
    assert_eq!(
        f.values(0, crate::layout::tag::VALUE),
        vec![u64::from(MESSAGE_TYPE); 2],
        "both messages sit in their slots before the guest looks"
    );
    let log = v.messages(0);
    let by_sint = |s: u8| -> Vec<Logged> { log.iter().filter(|m| m.sint == s).copied().collect() };
    assert_sequence(&by_sint(MASKED), MASKED, 0..N);
    assert_sequence(&by_sint(POLLING), POLLING, 0..N);
    assert_eq!(v.counter(0, state::POLLED), 2 * N);
    assert_eq!(v.counter(0, state::EOMS), 2 * (N - 1));
    assert_eq!(
        v.toolkit_irqs(0, vector(MASKED)),
        0,
        "a masked SINT never interrupts"
    );
    let polling_irqs = v.toolkit_irqs(0, vector(POLLING));
    match setup.mode {
        crate::Mode::Userspace => assert_eq!(polling_irqs, 0, "polling SINT interrupted"),
        crate::Mode::Kernel => assert_eq!(polling_irqs, N, "KVM ignores Polling"),
    }
}

/// Messages posted while the message page is disabled queue (and, TLFS profile, a post while
/// SCONTROL is off is refused); enabling SIMP delivers them in order.
pub fn simp_disabled_queues_until_enabled(setup: Setup) {
    const SINT: u8 = 2;
    const N: u64 = 3;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    g.lapic_enable().unwrap();
    g.set_sint(SINT, SintValue::vector(vector(SINT))).unwrap();
    g.step(1).unwrap(); // SCONTROL as reset left it
    g.enable_scontrol().unwrap();
    g.step(2).unwrap(); // SCONTROL on, SIMP off
    g.settle().unwrap();
    g.report_counter(state::MESSAGES).unwrap();
    g.enable_simp().unwrap();
    let tlfs = setup.profile == synic_msr::Profile::Tlfs;
    let total = if tlfs { N } else { N + 1 };
    g.wait_messages(total).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        move |host, _, step| {
            if step == 1 {
                // TLFS: no messages are queued to a disabled SynIC. KVM never looks at SCONTROL
                // (and activation left it at 1 anyway).
                let r = host.post(0, SINT, 100);
                if tlfs {
                    let e = r.expect_err("TLFS: SCONTROL off refuses posts");
                    assert_eq!(
                        e,
                        synic::Error::SynicDisabled {
                            vp: synic::VpIndex(0)
                        }
                    );
                } else {
                    assert_eq!(r, Ok(Posted::Queued));
                }
            } else {
                for seq in 0..N {
                    assert_eq!(host.post(0, SINT, seq), Ok(Posted::Queued), "post {seq}");
                }
            }
        },
    );
    f.assert_exited_ok();
    assert_eq!(
        f.values(0, crate::layout::tag::VALUE),
        vec![0],
        "nothing is delivered while SIMP is disabled"
    );
    let log = f.view().messages(0);
    let seqs: Vec<u64> = if tlfs {
        (0..N).collect()
    } else {
        std::iter::once(100).chain(0..N).collect()
    };
    assert_sequence(&log, SINT, seqs);
}

/// AutoEOI: the handler does not EOI. Kernel mode: KVM's LAPIC EOIs on delivery, so the
/// queued second message interrupts at once. Userspace mode: the in-kernel LAPIC cannot
/// AutoEOI, and the VMM says so (CPUID 0x4000_0004 EAX bit 9, "AutoEOI deprecated"); on a LAPIC
/// that keeps the vector in service the second interrupt waits until the guest EOIs. (This
/// host's PVM LAPIC keeps nothing in service — its ISR reads 0 even inside a handler — so there
/// the second interrupt comes at once: the guest reads the ISR bit to tell which LAPIC it has.)
pub fn auto_eoi_per_mode(setup: Setup) {
    const SINT: u8 = 8;
    let v = vector(SINT);
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(v, SINT, Eoi::Auto).unwrap();
    g.report_cpuid_eax(0x4000_0004).unwrap();
    let auto = SintValue {
        auto_eoi: true,
        ..SintValue::vector(v)
    };
    g.synic_up(&[(SINT, auto)]).unwrap();
    g.step(1).unwrap();
    // Up to ~1 s for the second message without an EOI (the retry is the guest's EOM exit:
    // slow under emulation).
    g.wait_counter_bounded(state::MESSAGES, 2, 200).unwrap();
    g.report_lapic_bit(0x100, v).unwrap(); // ISR
    g.report_counter(state::MESSAGES).unwrap();
    g.eoi().unwrap();
    g.wait_messages(2).unwrap();
    g.settle().unwrap();
    g.report_counter(state::MESSAGES).unwrap();
    g.exit_ok().unwrap();
    let f = run(VmSpec::new(setup, 1), &g.build().unwrap(), |host, _, _| {
        assert_eq!(host.post(0, SINT, 0), Ok(Posted::Delivered));
        assert_eq!(host.post(0, SINT, 1), Ok(Posted::Queued));
    });
    f.assert_exited_ok();
    let values = f.values(0, crate::layout::tag::VALUE);
    let [cpuid, in_service, before_eoi, after_eoi] = values[..] else {
        panic!("reports: {values:?}");
    };
    let deprecating_auto_eoi = cpuid & (1 << 9) != 0;
    match setup.mode {
        crate::Mode::Userspace => {
            assert!(deprecating_auto_eoi, "userspace mode must advertise it");
            let want = if in_service == 1 { 1 } else { 2 };
            assert_eq!(before_eoi, want, "in service: {in_service}");
        }
        crate::Mode::Kernel => {
            assert!(!deprecating_auto_eoi);
            assert_eq!(
                (in_service, before_eoi),
                (0, 2),
                "AutoEOI: nothing in service"
            );
        }
    }
    assert_eq!(after_eoi, 2);
    assert_sequence(&f.view().messages(0), SINT, 0..2);
}

/// A handler entered while another runs (the lab's emulated SVM delivers an injected vector
/// once more inside the ISR, IF clear: docs/kernel-mode-lab.md) touches nothing: the slot
/// keeps its message for the real delivery, no EOI is sent, and the entry is counted. Without
/// the handlers' depth check the nested entry would take the message and the outer handler
/// would take it again: the duplicates the shared-SINT stress saw in the lab.
pub fn nested_delivery_touches_nothing(setup: Setup) {
    const SINT: u8 = 4;
    let v = vector(SINT);
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(v, SINT, Eoi::Apic).unwrap();
    g.synic_up(&[(SINT, SintValue::vector(v))]).unwrap();
    g.interrupts_off(true).unwrap();
    g.step(1).unwrap(); // message 0 into the slot; its interrupt waits for IF
    g.report_slot_type(SINT).unwrap();
    g.nested_delivery(v).unwrap();
    g.report_slot_type(SINT).unwrap();
    g.report_counter(state::MESSAGES).unwrap();
    g.report_counter(state::NESTED).unwrap();
    g.interrupts_off(false).unwrap();
    g.wait_messages(1).unwrap();
    g.settle().unwrap();
    g.report_counter(state::NESTED).unwrap();
    g.exit_ok().unwrap();
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        |host, _, step| {
            assert_eq!(step, 1);
            assert_eq!(host.post(0, SINT, 0), Ok(Posted::Delivered));
        },
    );
    f.assert_exited_ok();
    let values = f.values(0, crate::layout::tag::VALUE);
    assert_eq!(
        values,
        vec![u64::from(MESSAGE_TYPE), u64::from(MESSAGE_TYPE), 0, 1, 1],
        "slot type before and after the nested entry, messages taken then, nested entries \
         then and at the end"
    );
    let v = f.view();
    assert_eq!(v.counter(0, state::MESSAGES), 1);
    assert_eq!(v.counter(0, state::SEQ_ERRORS), 0);
    assert_sequence(&v.messages(0), SINT, 0..1);
}
