//! Hostile guests pointing SIMP and SIEFP where they should not: outside RAM, beyond the
//! physical address width, non-canonical, at the last page of the 64-bit space, at the last
//! page of RAM, both on one page, on the hypercall page. The host never panics, writes only
//! the pages the registers enable, answers each write as its profile says (#GP or accepted),
//! refuses posts and signals to pages that are not RAM (handing the message back), and once
//! the guest behaves every host message arrives once, in order.

#[path = "hostile/common.rs"]
mod common;

use synic::{Error, FlagOutcome, Posted};
use synic_e2e::layout::{state, tag, vector, MEM_SIZE};
use synic_e2e::scenarios::messages::{assert_host_message, assert_sequence};
use synic_e2e::{run, Eoi, Setup, SintValue, SynicGuest, VmSpec};
use synic_msr::index;
use synic_vmm::guest::layout::HYPERCALL_PAGE;
use vm_memory::{Bytes, GuestAddress};

use common::{assert_wrote_only, clear_dirty, dirty_pages, tlfs, Record, SIEFP0, SIMP0};

/// Page addresses that are no guest RAM, from just past the end of RAM to the last page of the
/// 64-bit space.
const NOT_RAM: [u64; 8] = [
    MEM_SIZE,
    0xFFFF_F000,
    1 << 32,
    1 << 51,
    (1 << 52) - 0x1000,
    1 << 52,
    0xFFFF_8000_0000_0000,
    0xFFFF_FFFF_FFFF_F000,
];

const MSG: u8 = 1;
const FLAGS: u8 = 2;

/// What the host's post and signal got while the pages pointed at `NOT_RAM[k]`.
#[derive(Clone, Debug)]
struct Outcome {
    post: Result<Posted, Error>,
    signal: Result<FlagOutcome, Error>,
}

/// For each address in [`NOT_RAM`] the guest enables SIMP and SIEFP there (then reads them
/// back) and the host posts message `k` and signals flag `k`; then the guest moves the pages
/// back. TLFS: an address of 52 bits or more is #GP and leaves the register alone; every other
/// write is stored. A stored page that is not RAM refuses the post (`PageNotInRam` naming the
/// page, the message handed back) and the signal. At the end the host re-posts and re-signals
/// what was refused, and the guest receives every message once, in acceptance order, and
/// every flag.
fn pages_outside_ram_refuse_and_keep_every_message(setup: Setup) {
    let n = NOT_RAM.len() as u64;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(MSG), MSG, Eoi::Apic).unwrap();
    g.flags_isr(vector(FLAGS), FLAGS).unwrap();
    g.synic_up(&[
        (MSG, SintValue::vector(vector(MSG))),
        (FLAGS, SintValue::vector(vector(FLAGS))),
    ])
    .unwrap();
    g.step(0).unwrap();
    for (k, gpa) in NOT_RAM.iter().enumerate() {
        g.wrmsr(index::SIMP, gpa | 1).unwrap();
        g.rdmsr_report(index::SIMP).unwrap();
        g.wrmsr(index::SIEFP, gpa | 1).unwrap();
        g.rdmsr_report(index::SIEFP).unwrap();
        g.step(1 + k as u32).unwrap();
        g.enable_simp().unwrap();
        g.enable_siefp().unwrap();
    }
    g.step(100).unwrap();
    g.wait_messages(n).unwrap();
    g.wait_counter(state::FLAG_BITS, n).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();

    let outcomes = Record::<Outcome>::new();
    let accepted = Record::<u64>::new();
    let (out, acc) = (outcomes.clone(), accepted.clone());
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        move |host, _, step| {
            let mem = host.memory();
            match step {
                0 => clear_dirty(mem),
                100 => {
                    assert_wrote_only(mem, &[SIMP0, SIEFP0], "while the pages were hostile");
                    // The guest behaves again: everything refused goes out now.
                    for (k, o) in out.get().iter().enumerate() {
                        if o.post.is_err() {
                            host.post(0, MSG, k as u64).expect("re-post to a good page");
                            acc.push(k as u64);
                        }
                        if o.signal.is_err() {
                            host.signal(0, FLAGS, k as u32).expect("re-signal");
                        }
                    }
                }
                k => {
                    let k = u64::from(k - 1);
                    let post = host.post(0, MSG, k);
                    if post.is_ok() {
                        acc.push(k);
                    }
                    let signal = host.signal(0, FLAGS, k as u32);
                    out.push(Outcome { post, signal });
                }
            }
        },
    );
    f.assert_exited_ok();

    let reads = f.values(0, tag::MSR);
    let outcomes = outcomes.get();
    assert_eq!(outcomes.len(), NOT_RAM.len());
    let mut gps = Vec::new();
    for (k, (&gpa, o)) in NOT_RAM.iter().zip(&outcomes).enumerate() {
        let refused = tlfs(setup) && gpa >> 52 != 0;
        let (simp, siefp) = if refused {
            gps.extend([index::SIMP, index::SIEFP]);
            (SIMP0 | 1, SIEFP0 | 1)
        } else {
            (gpa | 1, gpa | 1)
        };
        assert_eq!(
            (reads[2 * k], reads[2 * k + 1]),
            (simp, siefp),
            "SIMP/SIEFP read back after writing {gpa:#x}"
        );
        if refused {
            assert!(
                o.post.is_ok() && o.signal == Ok(FlagOutcome::Set),
                "{gpa:#x}: {o:?}"
            );
        } else {
            assert_eq!(o.post, Err(Error::PageNotInRam { gpa }), "{gpa:#x}");
            assert_eq!(o.signal, Err(Error::PageNotInRam { gpa }), "{gpa:#x}");
        }
    }
    assert_eq!(f.gps(0), gps, "#GPs, in order");

    let v = f.view();
    assert_sequence(&v.messages(0), MSG, accepted.get());
    assert_eq!(v.flags_seen(0, FLAGS), (0..n as u32).collect::<Vec<_>>());
    let c = f.host.partition().counters(synic::VpIndex(0)).unwrap();
    assert_eq!(c.sints[usize::from(MSG)].queued, 0);
}

/// The last page of RAM, both pages on one page, and the message page on the hypercall page:
/// legal if unwise. The three are overlay pages (TLFS "GPA Overlay Pages"): at one address the
/// page enabled there first is the one visible, the others wait under it; the host writes only
/// where the pages are enabled and gives the RAM back when they leave.
///
/// 1. SIMP = the last page of RAM, SIEFP = the page below: a message and a flag land there
///    (the guest's handlers look at its usual pages and find nothing). The guest moves SIMP
///    back: the message comes along in the page, and the guest takes it from its slot.
/// 2. SIEFP = vCPU 0's message page: the event-flags page waits under the message page. A
///    flag is refused (`PageShadowed`) and nothing is written into the slots; messages to
///    SINT 1 and 2 are delivered as usual. The two pages at the top of RAM hold their own
///    bytes (zero) again.
/// 3. SIMP = the hypercall page, which the VMM filled with its code and 0xCC: the message page
///    waits under the hypercall page, so a message to SINT 15 queues and nothing is written
///    there (no MessagePending either); a hypercall still works (unknown call code: status 2).
///
/// Then the guest moves both pages back: the queued message and three more arrive by interrupt.
fn legal_but_odd_pages(setup: Setup) {
    const TOP: u64 = MEM_SIZE - 0x1000;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(MSG), MSG, Eoi::Apic).unwrap();
    g.message_isr(vector(15), 15, Eoi::Apic).unwrap();
    g.flags_isr(vector(FLAGS), FLAGS).unwrap();
    g.synic_up(&[
        (MSG, SintValue::vector(vector(MSG))),
        (FLAGS, SintValue::vector(vector(FLAGS))),
        (15, SintValue::vector(vector(15))),
    ])
    .unwrap();
    g.enable_hypercalls().unwrap();
    g.step(0).unwrap();
    // 1.
    g.wrmsr(index::SIMP, TOP | 1).unwrap();
    g.wrmsr(index::SIEFP, (TOP - 0x1000) | 1).unwrap();
    g.step(1).unwrap();
    g.enable_simp().unwrap();
    g.take_if_present(MSG).unwrap();
    // 2.
    g.wrmsr_area(index::SIEFP, synic_e2e::layout::SIMP, 1)
        .unwrap();
    g.step(2).unwrap();
    g.take_if_present(MSG).unwrap();
    g.take_if_present(FLAGS).unwrap();
    g.step(3).unwrap();
    // 3.
    g.wrmsr(index::SIMP, HYPERCALL_PAGE | 1).unwrap();
    g.step(4).unwrap();
    g.hypercall_raw(0x0FFF, 0).unwrap();
    g.report_rax().unwrap();
    // Back to normal: the event-flags page (uncovered on the message page's address when the
    // message page left) first, then the message page.
    g.enable_siefp().unwrap();
    g.enable_simp().unwrap();
    g.step(5).unwrap();
    g.wait_messages(7).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();

    let results = Record::<String>::new();
    let r = results.clone();
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        move |host, _, step| {
            let mem = host.memory();
            let slot = |page: u64, sint: u8| {
                let mut b = [0u8; 256];
                mem.read_slice(&mut b, GuestAddress(page + 256 * u64::from(sint)))
                    .unwrap();
                synic_e2e::Logged::from_bytes(&b)
            };
            let flag_byte = |page: u64, sint: u8, flag: u32| -> u8 {
                let at = page + 256 * u64::from(sint) + u64::from(flag / 8);
                mem.read_obj(GuestAddress(at)).unwrap()
            };
            match step {
                0 => clear_dirty(mem),
                1 => {
                    assert_eq!(host.post(0, MSG, 100), Ok(Posted::Delivered));
                    assert_eq!(host.signal(0, FLAGS, 7), Ok(FlagOutcome::Set));
                    let mut m = slot(TOP, MSG);
                    m.sint = MSG;
                    assert_host_message(&m, MSG, 100, 240);
                    assert_eq!(flag_byte(TOP - 0x1000, FLAGS, 7), 0x80);
                    // The bitmap does see host writes (so the checks are not vacuous).
                    assert_eq!(dirty_pages(mem), [TOP - 0x1000, TOP]);
                    assert_wrote_only(mem, &[TOP, TOP - 0x1000], "last page of RAM");
                    clear_dirty(mem);
                    r.push("1".into());
                }
                2 => {
                    // The guest took message 100, which came back with its page.
                    assert_eq!(host.post(0, MSG, 0), Ok(Posted::Delivered));
                    assert_eq!(
                        host.signal(0, FLAGS, 9),
                        Err(Error::PageShadowed { gpa: SIMP0 })
                    );
                    assert_eq!(slot(SIMP0, FLAGS).message_type, 0, "no flag in the slot");
                    assert_eq!(host.post(0, FLAGS, 1), Ok(Posted::Delivered));
                    for page in [TOP, TOP - 0x1000] {
                        let mut bytes = vec![0u8; 0x1000];
                        mem.read_slice(&mut bytes, GuestAddress(page)).unwrap();
                        assert!(bytes.iter().all(|&b| b == 0), "RAM at {page:#x} given back");
                    }
                    assert_wrote_only(mem, &[SIMP0, TOP, TOP - 0x1000], "SIEFP on SIMP");
                    r.push("2".into());
                }
                3 => {
                    let c = host.partition().counters(synic::VpIndex(0)).unwrap();
                    assert_eq!(c.sints[usize::from(FLAGS)].queued, 0);
                    clear_dirty(mem);
                }
                4 => {
                    let mut code = [0u8; 16];
                    mem.read_slice(&mut code, GuestAddress(HYPERCALL_PAGE))
                        .unwrap();
                    assert_eq!(host.post(0, 15, 200), Ok(Posted::Queued));
                    let mut after = [0u8; 16];
                    mem.read_slice(&mut after, GuestAddress(HYPERCALL_PAGE))
                        .unwrap();
                    assert_eq!(code, after, "the hypercall code is untouched");
                    let m = slot(HYPERCALL_PAGE, 15);
                    assert_eq!((m.message_type, m.flags), (0xCCCC_CCCC, 0xCC), "{m:?}");
                    // Only the message page's old address: it holds the RAM it hid again.
                    assert_wrote_only(mem, &[SIMP0], "SIMP on the hypercall page");
                    r.push("4".into());
                }
                _ => {
                    for seq in 2..5 {
                        host.post(0, MSG, seq).unwrap();
                    }
                }
            }
        },
    );
    f.assert_exited_ok();
    assert_eq!(results.get(), ["1", "2", "4"]);
    assert_eq!(
        f.values(0, tag::HYPERCALL),
        [2],
        "the hypercall page still works"
    );
    assert!(f.gps(0).is_empty(), "{:x?}", f.gps(0));
    let v = f.view();
    let log = v.messages(0);
    assert_eq!(log.len(), 7, "{log:#?}");
    assert_host_message(&log[0], MSG, 100, 240);
    assert_host_message(&log[1], MSG, 0, 240);
    assert_host_message(&log[2], FLAGS, 1, 240);
    let rest: Vec<_> = log[3..].iter().filter(|m| m.sint == MSG).copied().collect();
    assert_sequence(&rest, MSG, 2..5);
    let last: Vec<_> = log[3..].iter().filter(|m| m.sint == 15).copied().collect();
    assert_sequence(&last, 15, [200]);
}

userspace_setups! {
    pages_outside_ram => pages_outside_ram_refuse_and_keep_every_message;
    legal_but_odd_pages => legal_but_odd_pages;
}
