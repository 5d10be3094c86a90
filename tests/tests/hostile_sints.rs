//! SINT vectors below 16 (the exception vectors): the guest tries every way to get one, and the
//! host ends up with one anyway (a restore from a hostile source writes registers as the host).
//! The right #GPs, no interrupt ever fired on an exception vector, messages still land in the
//! slot, and once the guest programs a real vector messages interrupt again.

#[path = "hostile/common.rs"]
mod common;

use synic::Posted;
use synic_e2e::layout::{tag, vector};
use synic_e2e::scenarios::messages::assert_sequence;
use synic_e2e::{run, Eoi, Setup, SintValue, SynicGuest, VmSpec};
use synic_msr::{index, Origin};

use common::{tlfs, Record};

const SINT: u8 = 3;

/// Writes of vectors 0, 1 and 15 to SINT3, unmasked and masked (also with AutoEOI and
/// Polling): TLFS refuses all (#GP, register unchanged); KVM refuses only unmasked ones and
/// stores masked ones. A masked SINT with vector 7 still receives a message in its slot (the
/// guest polls it); the host then writes SINT3 = vector 5, unmasked (as a restore would):
/// the next message lands in the slot but no interrupt is fired on vector 5. The guest
/// programs vector 0x53 and three more messages arrive by interrupt, in order.
fn vectors_below_16_never_interrupt(setup: Setup) {
    let attempts: Vec<u64> = [0u64, 1, 15]
        .into_iter()
        .flat_map(|v| [v, 0x1_0000 | v, 0x7_0000 | v])
        .collect();
    let sint_msr = index::SINT0 + u32::from(SINT);
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    g.synic_up(&[]).unwrap();
    for &value in &attempts {
        g.wrmsr(sint_msr, value).unwrap();
        g.rdmsr_report(sint_msr).unwrap();
    }
    g.wrmsr(sint_msr, 0x1_0007).unwrap();
    g.step(1).unwrap();
    g.poll_message(SINT).unwrap();
    g.step(2).unwrap();
    g.rdmsr_report(sint_msr).unwrap();
    g.poll_message(SINT).unwrap();
    g.set_sint(SINT, SintValue::vector(vector(SINT))).unwrap();
    g.step(3).unwrap();
    g.wait_messages(5).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();

    let raised = Record::<u64>::new();
    let r = raised.clone();
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        move |host, _, step| {
            let counters = || host.synic().route_counters();
            match step {
                1 => {
                    r.push(counters().raised);
                    assert_eq!(host.post(0, SINT, 0), Ok(Posted::Delivered));
                    r.push(counters().raised);
                }
                2 => {
                    host.synic()
                        .with_vp(0, |vp| vp.wrmsr(sint_msr, 0x05, Origin::Host))
                        .unwrap()
                        .expect("a host write stores any vector");
                    let before = counters();
                    assert_eq!(host.post(0, SINT, 1), Ok(Posted::Delivered));
                    let after = counters();
                    r.push(after.raised - before.raised);
                    r.push(after.suppressed - before.suppressed);
                }
                _ => {
                    for seq in 2..5 {
                        host.post(0, SINT, seq).unwrap();
                    }
                }
            }
        },
    );
    f.assert_exited_ok();

    // What the guest read back after each attempt, and which attempts were #GP.
    let reads = f.values(0, tag::MSR);
    let mut current = 0x1_0000; // the reset value: masked, vector 0
    let mut gps = Vec::new();
    for (&value, &read) in attempts.iter().zip(&reads) {
        let masked = value & 0x1_0000 != 0;
        if tlfs(setup) || !masked {
            gps.push(index::SINT0 + u32::from(SINT));
        } else {
            current = value;
        }
        assert_eq!(read, current, "SINT3 after writing {value:#x}");
    }
    // The masked vector 7 write: KVM stores it; TLFS refuses it too.
    if tlfs(setup) {
        gps.push(index::SINT0 + u32::from(SINT));
    }
    assert_eq!(f.gps(0), gps, "#GP on every refused write, nothing else");
    assert_eq!(
        reads[attempts.len()],
        0x05,
        "the host's write is what the guest reads"
    );
    // Masked: a message, no interrupt. Host-written vector 5: a message, nothing fired.
    let r = raised.get();
    assert_eq!(r[0], r[1], "a masked SINT raised an interrupt");
    assert_eq!((r[2], r[3]), (0, 1), "vector 5: raised, suppressed");
    let v = f.view();
    assert_sequence(&v.messages(0), SINT, 0..5);
    assert_eq!(v.counter(0, synic_e2e::layout::state::POLLED), 2);
    assert_eq!(v.counter(0, synic_e2e::layout::state::EMPTY_IRQS), 0);
}

userspace_setups! {
    vectors_below_16 => vectors_below_16_never_interrupt;
}
