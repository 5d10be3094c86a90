//! The reference TSC page from a real guest (issue 16): the guest enables HV_X64_MSR_REFERENCE_TSC
//! and then alternates 10^5 times between a page-computed reference time (TLFS: sequence,
//! scale, offset, RDTSC, sequence again) and a TIME_REF_COUNT read. The host checks that the
//! interleaved series never goes backwards and that every MSR reading is within the read gap
//! (the time between the page readings around it) plus 1 us of the page reading before it,
//! and prints the gap statistics.
//!
//! Userspace mode: the page is the library's, its clock synic-kvm's `TscReferenceClock`, and
//! every TIME_REF_COUNT read is an exit (counted). Kernel mode: KVM fills the page and answers
//! the MSR from the same formula (the kvmclock's parameters).

use iced_x86::code_asm::*;
use synic_kvm::cpuid::{EAX_REFERENCE_TSC, HV_LEAF_FEATURES};
use synic_msr::index::{REFERENCE_TSC, TIME_REF_COUNT};
use vm_memory::{Bytes, GuestAddress};

use crate::guest::area_address;
use crate::harness::{run, VmSpec};
use crate::layout::{self, tag};
use crate::{Mode, Setup, SynicGuest};

/// Page-vs-MSR pairs the guest reads.
pub const READS: u64 = 100_000;
/// Where the guest lays the reference TSC page: a spare page of its area.
const PAGE: u64 = 0x7000;
/// Where the guest stores its readings: page time, MSR time, page time, ... (2 x READS + 1
/// qwords), past vCPU 0's message log.
const SAMPLES: u64 = layout::LOG_BASE + (16 << 20);
/// 1 us in reference time units.
const US: u64 = 10;

/// A TLFS reference-time read from the page at RSI into RAX; on sequence 0 it reads
/// TIME_REF_COUNT instead and counts that in R12. Clobbers RCX, RDX, R8, R9, R10.
fn page_time(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut retry = a.create_label();
    let mut fallback = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut retry)?;
    a.mov(r8d, dword_ptr(rsi))?;
    a.test(r8d, r8d)?;
    a.jz(fallback)?;
    a.mov(r9, qword_ptr(rsi + 8))?;
    a.mov(r10, qword_ptr(rsi + 16))?;
    a.lfence()?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mul(r9)?;
    a.add(rdx, r10)?;
    a.cmp(dword_ptr(rsi), r8d)?;
    a.jne(retry)?;
    a.mov(rax, rdx)?;
    a.jmp(done)?;
    a.set_label(&mut fallback)?;
    a.inc(r12)?;
    msr_time(a)?;
    a.set_label(&mut done)?;
    a.nop()
}

/// TIME_REF_COUNT into RAX. Clobbers RCX, RDX.
fn msr_time(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(ecx, TIME_REF_COUNT)?;
    a.rdmsr()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)
}

/// What the run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Agreement {
    /// MSR readings checked.
    pub reads: u64,
    /// Read gaps (page reading before an MSR reading to the page reading after it), 100 ns.
    pub gap: [u64; 4],
    /// MSR reading minus the page reading before it: min, p50, p99, max (100 ns).
    pub lead: [u64; 4],
}

fn quartets(mut v: Vec<u64>) -> [u64; 4] {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    [v[0], at(0.5), at(0.99), v[v.len() - 1]]
}

/// Checks the interleaved readings `p0 m0 p1 m1 ... pN`: never backwards, and every `m` within
/// the read gap plus 1 us of the `p` before it. Returns the statistics.
pub fn check_readings(samples: &[u64]) -> Agreement {
    assert!(samples.len() % 2 == 1 && samples.len() >= 3);
    for (n, w) in samples.windows(2).enumerate() {
        assert!(
            w[1] >= w[0],
            "reading {n} ({}) {:#x} then {:#x}: backwards by {} x 100 ns",
            if n % 2 == 0 {
                "page, then MSR"
            } else {
                "MSR, then page"
            },
            w[0],
            w[1],
            w[0] - w[1]
        );
    }
    let (mut gaps, mut leads) = (Vec::new(), Vec::new());
    for (n, t) in samples.windows(3).step_by(2).enumerate() {
        let (page, msr, next) = (t[0], t[1], t[2]);
        let gap = next - page;
        let lead = msr.abs_diff(page);
        assert!(
            lead <= gap + US,
            "read {n}: TIME_REF_COUNT {msr:#x} is {lead} x 100 ns from the page's {page:#x}, \
             more than the read gap {gap} + 1 us"
        );
        gaps.push(gap);
        leads.push(lead);
    }
    Agreement {
        reads: gaps.len() as u64,
        gap: quartets(gaps),
        lead: quartets(leads),
    }
}

/// The scenario with [`READS`] pairs (the e2e suite's test, every setup).
pub fn page_agrees_with_time_ref_count_over_10e5_reads(setup: Setup) {
    page_agrees_with_time_ref_count(setup, READS);
}

/// The scenario (module docs) over `reads` pairs.
pub fn page_agrees_with_time_ref_count(setup: Setup, reads: u64) -> Agreement {
    let mut g = SynicGuest::new().unwrap();
    g.report_cpuid_eax(HV_LEAF_FEATURES).unwrap();
    g.wrmsr_area(REFERENCE_TSC, PAGE, 1).unwrap();
    g.rdmsr_report(REFERENCE_TSC).unwrap();
    // The head as the guest sees it: sequence, scale, offset.
    for (offset, dword) in [(0u64, true), (8, false), (16, false)] {
        g.emit(|a| {
            area_address(a, rax, PAGE + offset)?;
            if dword {
                a.mov(eax, dword_ptr(rax))
            } else {
                a.mov(rax, qword_ptr(rax))
            }
        })
        .unwrap();
        g.report_rax_as(tag::VALUE).unwrap();
    }
    g.emit(|a| {
        let mut top = a.create_label();
        area_address(a, rsi, PAGE)?;
        a.mov(rdi, SAMPLES)?;
        a.mov(r11, reads)?;
        a.xor(r12d, r12d)?;
        page_time(a)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.set_label(&mut top)?;
        msr_time(a)?;
        a.mov(qword_ptr(rdi + 8), rax)?;
        page_time(a)?;
        a.mov(qword_ptr(rdi + 16), rax)?;
        a.add(rdi, 16)?;
        a.dec(r11)?;
        a.jnz(top)?;
        a.mov(rax, r12)
    })
    .unwrap();
    g.report_rax_as(tag::VALUE).unwrap();
    g.exit_ok().unwrap();
    let spec = VmSpec {
        limit: std::time::Duration::from_secs(match setup.mode {
            Mode::Userspace => 120,
            Mode::Kernel => 600,
        }),
        ..VmSpec::new(setup, 1)
    };
    let f = run(spec, &g.build().unwrap(), |_, _, _| {});
    f.assert_exited_ok();
    assert!(f.gps(0).is_empty(), "no #GP: {:?}", f.gps(0));
    let values = f.values(0, tag::VALUE);
    let (cpuid, seq, scale, offset, fallbacks) =
        (values[0], values[1], values[2], values[3], values[4]);
    assert_ne!(
        cpuid as u32 & EAX_REFERENCE_TSC,
        0,
        "AccessPartitionReferenceTsc"
    );
    let page_msr = f.values(0, tag::MSR)[0];
    assert_eq!(page_msr & 0xFFF, 1, "REFERENCE_TSC reads back enabled");
    let synic = f.host.synic();
    if setup.mode == Mode::Userspace {
        // The library's page: valid exactly when its clock runs on the guest TSC.
        let params = f.host.partition().reference_tsc_parameters();
        match params {
            Some(p) => {
                assert_ne!(seq, 0);
                assert_eq!((scale, offset as i64), (p.scale, p.offset));
            }
            None => {
                eprintln!(
                    "reference_tsc: this host cannot run the clock on the guest TSC: the page \
                     is at sequence 0 and every reading below is TIME_REF_COUNT"
                );
                assert!(std::env::var_os("SYNIC_REQUIRE_TSC_PAGE").is_none());
                assert_eq!(seq, 0);
            }
        }
        let exits = synic.stats().time_ref_count_reads;
        assert_eq!(exits, reads + fallbacks, "one exit per TIME_REF_COUNT read");
    }
    assert_ne!(
        seq, 0,
        "{setup:?}: the page says 'read the MSR' (KVM without a master clock?)"
    );
    assert_eq!(fallbacks, 0, "every page read found the page valid");
    let count = usize::try_from(2 * reads + 1).unwrap();
    let mut samples = vec![0u64; count];
    let mut bytes = vec![0u8; count * 8];
    f.host
        .memory()
        .read_slice(&mut bytes, GuestAddress(SAMPLES))
        .unwrap();
    for (s, b) in samples.iter_mut().zip(bytes.chunks_exact(8)) {
        *s = u64::from_le_bytes(b.try_into().unwrap());
    }
    let agreement = check_readings(&samples);
    eprintln!(
        "reference_tsc {setup:?}: {} page/MSR pairs, never backwards; read gap min/p50/p99/max \
         {:.1}/{:.1}/{:.1}/{:.1} us; |MSR - page before| min/p50/p99/max \
         {:.1}/{:.1}/{:.1}/{:.1} us; page sequence {seq}, scale {scale:#x}",
        agreement.reads,
        agreement.gap[0] as f64 / 10.0,
        agreement.gap[1] as f64 / 10.0,
        agreement.gap[2] as f64 / 10.0,
        agreement.gap[3] as f64 / 10.0,
        agreement.lead[0] as f64 / 10.0,
        agreement.lead[1] as f64 / 10.0,
        agreement.lead[2] as f64 / 10.0,
        agreement.lead[3] as f64 / 10.0,
    );
    agreement
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_accepts_an_interleaved_series_and_measures_it() {
        let a = check_readings(&[100, 105, 110, 110, 130]);
        assert_eq!(a.reads, 2);
        assert_eq!(a.gap, [10, 10, 10, 20]);
        assert_eq!(a.lead, [0, 0, 0, 5]);
    }

    #[test]
    #[should_panic(expected = "backwards")]
    fn the_checker_refuses_a_reading_that_goes_back() {
        check_readings(&[100, 99, 110]);
    }

    #[test]
    #[should_panic(expected = "backwards")]
    fn the_checker_refuses_a_page_reading_before_the_msr() {
        check_readings(&[100, 120, 110]);
    }
}
