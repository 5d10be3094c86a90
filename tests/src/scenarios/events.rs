//! Event flags: an interrupt only on a 0 -> 1 transition, flags taken atomically by the guest.

use synic::FlagOutcome;
use synic_vmm::guest::Isr;

use crate::harness::{run, VmSpec};
use crate::layout::{state, vector};
use crate::{Setup, SintValue, SynicGuest};

/// SINT 6 has a handler that only counts (the guest leaves its flags set); SINT 7 has the
/// e2e flag handler (takes the flags). Host steps:
///
/// 1. set flag 7 of SINT 6 (Set): one interrupt.
/// 2. set flag 7 again (AlreadySet): no interrupt — the first one was already EOI'd, so a
///    second raise would show.
/// 3. set flag 8 (Set): an interrupt.
/// 4. after the guest cleared flag 7 itself (locked BTR), set it again (Set): an interrupt.
/// 5. set flags 0, 300 and 2047 of SINT 7 (and 300 twice): the handler takes all three, in
///    one interrupt or more, and nothing else.
pub fn event_flags_interrupt_only_on_0_to_1(setup: Setup) {
    const COUNTED: u8 = 6;
    const TAKEN: u8 = 7;
    let mut g = SynicGuest::new().unwrap();
    g.toolkit().isr(vector(COUNTED), Isr::QUIET).unwrap();
    g.flags_isr(vector(TAKEN), TAKEN).unwrap();
    g.synic_up(&[
        (COUNTED, SintValue::vector(vector(COUNTED))),
        (TAKEN, SintValue::vector(vector(TAKEN))),
    ])
    .unwrap();
    for step in 1..=3 {
        g.step(step).unwrap();
        g.settle().unwrap();
        g.report_toolkit_irqs(vector(COUNTED)).unwrap();
    }
    // Flag 7 of SINT 6 is bit 7 of byte 6 * 256 of the event-flags page.
    g.clear_event_flag(COUNTED, 7).unwrap();
    g.step(4).unwrap();
    g.settle().unwrap();
    g.report_toolkit_irqs(vector(COUNTED)).unwrap();
    g.step(5).unwrap();
    g.wait_counter(state::FLAG_BITS, 3).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        |host, _, step| {
            use FlagOutcome::{AlreadySet, Set};
            let signal = |sint, flag, want| {
                assert_eq!(
                    host.signal(0, sint, flag),
                    Ok(want),
                    "step {step}: flag {flag}"
                );
            };
            match step {
                1 => signal(COUNTED, 7, Set),
                2 => signal(COUNTED, 7, AlreadySet),
                3 => signal(COUNTED, 8, Set),
                4 => signal(COUNTED, 7, Set),
                5 => {
                    signal(TAKEN, 0, Set);
                    signal(TAKEN, 300, Set);
                    signal(TAKEN, 300, AlreadySet);
                    signal(TAKEN, 2047, Set);
                }
                _ => panic!("unexpected step {step}"),
            }
        },
    );
    f.assert_exited_ok();
    assert_eq!(
        f.values(0, crate::layout::tag::VALUE),
        vec![1, 1, 2, 3],
        "interrupts of SINT 6 after each step"
    );
    let v = f.view();
    assert_eq!(v.flags_seen(0, TAKEN), vec![0, 300, 2047]);
    assert_eq!(v.counter(0, state::FLAG_BITS), 3);
    let irqs = v.sint_counter(0, state::SINT_FLAG_IRQS, TAKEN);
    assert!(
        (1..=3).contains(&irqs),
        "{irqs} interrupts for three 0 -> 1 transitions"
    );
    let c = f.host.partition().counters(synic::VpIndex(0)).unwrap();
    assert_eq!(c.sints[usize::from(COUNTED)].flags_set, 3);
    assert_eq!(c.sints[usize::from(COUNTED)].flags_coalesced, 1);
    assert_eq!(c.sints[usize::from(TAKEN)].flags_set, 3);
}
