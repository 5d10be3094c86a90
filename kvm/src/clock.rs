//! The partition reference clock on the guest's TSC: what makes userspace mode's reference TSC
//! page valid (docs/timers.md, "The reference TSC page").
//!
//! The guest computes reference time from its own TSC with the page's scale and offset; the
//! model answers TIME_REF_COUNT and runs the synthetic timers from its [`ReferenceClock`]. The
//! two agree exactly when that clock is the same formula applied to the same TSC:
//! [`TscReferenceClock`] reads the host's TSC and adds the offset KVM runs the guest's TSC at,
//! so at every instant it computes the guest's TSC, and its reading is
//! `((guest TSC x scale) >> 64) + offset`, which it hands to the model as
//! [`ReferenceClock::tsc_parameters`].
//!
//! Knowing the guest's TSC from the host takes three facts, checked by [`GuestTsc::probe`]:
//!
//! * the host's TSC is stable: the host kernel's clock source is `tsc` (the condition KVM puts
//!   on its own master clock and its kernel-mode TSC page);
//! * KVM's offset of each vCPU, read exactly with `KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_CTRL,
//!   KVM_VCPU_TSC_OFFSET)` (Linux 5.16; kvm-ioctls has no wrapper, hence one raw ioctl), the
//!   same for every vCPU (KVM matches the offsets of vCPUs created together);
//! * no TSC scaling: guest TSC = host TSC + offset. A host-initiated read of IA32_TSC
//!   (`KVM_GET_MSRS`, which KVM computes from the host TSC at that moment) must fall between
//!   host TSC + offset read just before and just after it.
//!
//! The frequency is `KVM_GET_TSC_KHZ` x 1000, the value HV_X64_MSR_TSC_FREQUENCY reports.
//! Anything missing gives a [`TscUnusable`] that says why; the VMM then keeps the monotonic
//! [`synic::SystemReferenceClock`] and the page says "read TIME_REF_COUNT" (sequence 0).
//!
//! A restore writes the guest's TSC back (IA32_TSC), which moves KVM's offset: the VMM
//! restores the vCPUs first and [`crate::VmSynic::restore`] calls [`TscReferenceClock::follow`]
//! before the model rewrites the page. A guest that writes its own TSC (IA32_TSC,
//! IA32_TSC_ADJUST) moves it under the page unnoticed, as a TSC write on Hyper-V would without
//! the hypervisor's help; Linux and Windows do not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kvm_bindings::{
    kvm_device_attr, kvm_msr_entry, Msrs, KVMIO, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::VcpuFd;
use synic::{ReferenceClock, TscParameters};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

/// `IA32_TIME_STAMP_COUNTER`.
const IA32_TSC: u32 = 0x10;

/// Where the host kernel names its clock source.
const HOST_CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

// KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xe2, struct kvm_device_attr) (Linux's kvm.h).
ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);

/// Why the guest's TSC cannot back the reference TSC page.
#[derive(Debug, thiserror::Error)]
pub enum TscUnusable {
    /// No vCPU was given.
    #[error("no vCPUs to read the guest TSC of")]
    NoVcpus,
    /// The host kernel does not keep time with the TSC (so neither does KVM's master clock).
    #[error(
        "the host's clock source is {0:?}, not \"tsc\": the host TSC is not known to be stable"
    )]
    HostClocksource(String),
    /// A KVM ioctl failed (`KVM_GET_DEVICE_ATTR` fails with ENXIO on kernels before 5.16).
    #[error("KVM {op} on vCPU {vcpu} failed: {source}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The vCPU.
        vcpu: usize,
        /// What the kernel said.
        source: errno::Error,
    },
    /// The guest TSC is too slow for a page (TscScale must be below 1).
    #[error("the guest TSC runs at {khz} kHz: too slow for the reference TSC page")]
    TooSlow {
        /// `KVM_GET_TSC_KHZ`.
        khz: u32,
    },
    /// vCPUs run their TSCs at different frequencies or offsets.
    #[error("vCPU {vcpu}'s TSC ({khz} kHz, offset {offset:#x}) differs from vCPU 0's ({first_khz} kHz, offset {first_offset:#x})")]
    VcpusDiffer {
        /// The vCPU that differs.
        vcpu: usize,
        /// Its frequency.
        khz: u32,
        /// Its offset.
        offset: u64,
        /// vCPU 0's frequency.
        first_khz: u32,
        /// vCPU 0's offset.
        first_offset: u64,
    },
    /// The guest TSC is not host TSC + offset (KVM scales it).
    #[error("vCPU 0's TSC is not the host's plus its offset (scaled?): IA32_TSC read {guest:#x}, expected {low:#x}..={high:#x}")]
    Scaled {
        /// What KVM returned for IA32_TSC.
        guest: u64,
        /// Host TSC + offset just before the read.
        low: u64,
        /// Host TSC + offset just after it.
        high: u64,
    },
}

/// The host's TSC, read in order with the code before it (`lfence; rdtsc`, as the kernel's
/// `rdtsc_ordered`), so a reading taken after a vCPU exited is never earlier than what the
/// guest read before the exit.
pub fn host_tsc() -> u64 {
    // SAFETY: LFENCE and RDTSC read no memory and write only EDX:EAX. Both exist on every
    // x86-64 CPU (LFENCE is SSE2, part of the x86-64 baseline); RDTSC would fault in user mode
    // only with CR4.TSD set, which Linux sets only for a process that asked for it
    // (prctl(PR_SET_TSC)), not this one.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        core::arch::x86_64::_rdtsc()
    }
}

/// How KVM runs the guest's TSC: guest TSC = host TSC + [`offset`](Self::offset), at
/// [`tsc_hz`](Self::tsc_hz). From [`GuestTsc::probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTsc {
    tsc_hz: u64,
    khz: u32,
    offset: u64,
}

fn kvm_fail(op: &'static str, vcpu: usize) -> impl FnOnce(errno::Error) -> TscUnusable {
    move |source| TscUnusable::Kvm { op, vcpu, source }
}

/// KVM's TSC offset of a vCPU (`KVM_VCPU_TSC_OFFSET`): guest TSC = host TSC + offset.
fn vcpu_tsc_offset(vcpu: &VcpuFd, n: usize) -> Result<u64, TscUnusable> {
    let mut offset = 0u64;
    let attr = kvm_device_attr {
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr: std::ptr::addr_of_mut!(offset) as u64,
        flags: 0,
    };
    // SAFETY: `vcpu` is an open vCPU fd; `attr` is a fully initialised kvm_device_attr that
    // lives across the call, and its `addr` points at `offset`, a u64 on this stack frame that
    // also lives across the call: for this group and attribute KVM writes exactly one u64
    // there (put_user of a u64) and nothing else.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_GET_DEVICE_ATTR(), &attr) };
    if ret != 0 {
        return Err(kvm_fail("KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)", n)(
            errno::Error::last(),
        ));
    }
    Ok(offset)
}

/// IA32_TSC of a vCPU as KVM computes it now (host-initiated `KVM_GET_MSRS`).
fn vcpu_tsc(vcpu: &VcpuFd, n: usize) -> Result<u64, TscUnusable> {
    let entry = kvm_msr_entry {
        index: IA32_TSC,
        ..Default::default()
    };
    let fail = kvm_fail("KVM_GET_MSRS(IA32_TSC)", n);
    // One entry: always within the wrapper's bound.
    let Ok(mut msrs) = Msrs::from_entries(&[entry]) else {
        return Err(fail(errno::Error::new(libc::E2BIG)));
    };
    match vcpu.get_msrs(&mut msrs) {
        Ok(1) => Ok(msrs.as_slice()[0].data),
        Ok(_) => Err(fail(errno::Error::new(libc::EINVAL))),
        Err(e) => Err(fail(e)),
    }
}

/// The host kernel's clock source (`tsc` when the host TSC is stable; KVM's master clock, and
/// so its kernel-mode reference TSC page, needs the same).
pub fn host_clocksource() -> String {
    std::fs::read_to_string(HOST_CLOCKSOURCE)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

impl GuestTsc {
    /// Reads how KVM runs the TSC of `vcpus` (every vCPU of the VM, created and not running)
    /// and checks it can back the page (module docs): a stable host TSC, one frequency and one
    /// offset for all, no scaling. Probe once the vCPUs' TSCs are what they will run with: a
    /// later host write of IA32_TSC moves KVM's offset ([`crate::VmSynic::restore`] follows
    /// the one a restore makes, nothing else does).
    pub fn probe(vcpus: &[&VcpuFd]) -> Result<Self, TscUnusable> {
        let clocksource = host_clocksource();
        if clocksource != "tsc" {
            return Err(TscUnusable::HostClocksource(clocksource));
        }
        let mut first: Option<GuestTsc> = None;
        for (n, vcpu) in vcpus.iter().enumerate() {
            let khz = vcpu.get_tsc_khz().map_err(kvm_fail("KVM_GET_TSC_KHZ", n))?;
            let offset = vcpu_tsc_offset(vcpu, n)?;
            match first {
                None => {
                    let tsc_hz = u64::from(khz) * 1000;
                    if TscParameters::for_frequency(tsc_hz, 0).is_none() {
                        return Err(TscUnusable::TooSlow { khz });
                    }
                    first = Some(GuestTsc {
                        tsc_hz,
                        khz,
                        offset,
                    });
                }
                Some(f) if (f.khz, f.offset) != (khz, offset) => {
                    return Err(TscUnusable::VcpusDiffer {
                        vcpu: n,
                        khz,
                        offset,
                        first_khz: f.khz,
                        first_offset: f.offset,
                    });
                }
                Some(_) => {}
            }
        }
        let tsc = first.ok_or(TscUnusable::NoVcpus)?;
        tsc.check_unscaled(vcpus[0])?;
        Ok(tsc)
    }

    /// IA32_TSC of vCPU 0, read by KVM between two host TSC readings, must lie between them
    /// plus the offset. A scaled TSC misses by its whole scaled-away part (the host TSC counts
    /// since boot: far beyond the few microseconds of the bracket).
    fn check_unscaled(&self, vcpu: &VcpuFd) -> Result<(), TscUnusable> {
        let low = host_tsc().wrapping_add(self.offset);
        let guest = vcpu_tsc(vcpu, 0)?;
        let high = host_tsc().wrapping_add(self.offset);
        if guest.wrapping_sub(low) <= high.wrapping_sub(low) {
            Ok(())
        } else {
            Err(TscUnusable::Scaled { guest, low, high })
        }
    }

    /// The guest TSC's frequency (Hz): `KVM_GET_TSC_KHZ` x 1000.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// KVM's offset: guest TSC = host TSC + this (wrapping).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The guest's TSC now.
    pub fn now(&self) -> u64 {
        host_tsc().wrapping_add(self.offset)
    }
}

/// The partition reference clock on the guest's TSC ([`GuestTsc`]): reads 0 when created,
/// counts 100 ns units at the guest TSC's frequency, and offers the model its
/// [`TscParameters`] so the reference TSC page is valid. Lock-free: one host TSC read and a
/// 64x64-bit multiply per reading.
#[derive(Debug)]
pub struct TscReferenceClock {
    parameters: TscParameters,
    khz: u32,
    /// Guest TSC = host TSC + this.
    offset: AtomicU64,
    /// Whether the page may use [`Self::parameters`] (cleared when a [`follow`](Self::follow)
    /// finds the TSC unusable).
    valid: AtomicBool,
}

impl TscReferenceClock {
    /// A clock reading 0 now on `tsc`.
    pub fn new(tsc: GuestTsc) -> Self {
        // The probe refused TSCs too slow for a scale; 1 GHz is only a placeholder that is
        // never reached.
        let unshifted = TscParameters::for_frequency(tsc.tsc_hz, 0).unwrap_or(TscParameters {
            scale: 1 << 58,
            offset: 0,
        });
        let at_start = unshifted.reference_time(tsc.now());
        Self {
            parameters: unshifted.shifted(at_start.wrapping_neg()),
            khz: tsc.khz,
            offset: AtomicU64::new(tsc.offset),
            valid: AtomicBool::new(true),
        }
    }

    /// The guest's TSC now, as this clock computes it.
    pub fn guest_tsc(&self) -> u64 {
        host_tsc().wrapping_add(self.offset.load(Ordering::Acquire))
    }

    /// KVM's offset this clock uses.
    pub fn guest_tsc_offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }

    /// The TSC frequency (Hz) the scale was made for.
    pub fn tsc_hz(&self) -> u64 {
        u64::from(self.khz) * 1000
    }

    /// Whether the reference TSC page may be valid.
    pub fn is_valid(&self) -> bool {
        self.valid.load(Ordering::Acquire)
    }

    /// Follows KVM's offset again after the guest's TSC was written from the host (a restore
    /// writes IA32_TSC back: the offset moves). The reading jumps with the guest's TSC; the
    /// partition's restore sets the reference time right afterwards. If the TSC cannot back
    /// the page any more (another frequency, vCPUs that differ, ...), the clock keeps counting
    /// with its old offset and the page turns to sequence 0; the error says why.
    pub fn follow(&self, vcpus: &[&VcpuFd]) -> Result<(), TscUnusable> {
        let probed = GuestTsc::probe(vcpus).and_then(|tsc| {
            if tsc.khz == self.khz {
                Ok(tsc)
            } else {
                Err(TscUnusable::VcpusDiffer {
                    vcpu: 0,
                    khz: tsc.khz,
                    offset: tsc.offset,
                    first_khz: self.khz,
                    first_offset: self.guest_tsc_offset(),
                })
            }
        });
        match probed {
            Ok(tsc) => {
                self.offset.store(tsc.offset, Ordering::Release);
                self.valid.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                self.valid.store(false, Ordering::Release);
                Err(e)
            }
        }
    }
}

impl ReferenceClock for TscReferenceClock {
    fn now(&self) -> u64 {
        self.parameters.reference_time(self.guest_tsc())
    }

    fn tsc_parameters(&self) -> Option<TscParameters> {
        self.is_valid().then_some(self.parameters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_device_attr_is_linuxs_ioctl_number() {
        // _IOW('\xAE', 0xe2, struct kvm_device_attr): 24 bytes.
        assert_eq!(KVM_GET_DEVICE_ATTR(), 0x4018_AEE2);
    }

    #[test]
    fn host_tsc_moves_forward() {
        let a = host_tsc();
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = host_tsc();
        assert!(b > a, "{a} -> {b}");
    }

    #[test]
    fn a_clock_on_a_fake_guest_tsc_reads_zero_at_creation_and_counts_its_frequency() {
        let tsc = GuestTsc {
            tsc_hz: 2_000_000_000,
            khz: 2_000_000,
            offset: 12345u64.wrapping_sub(host_tsc()),
        };
        let c = TscReferenceClock::new(tsc);
        let p = c.tsc_parameters().unwrap();
        let g = c.guest_tsc();
        assert_eq!(p.reference_time(g), c.parameters.reference_time(g));
        // Read 0 at creation, a few microseconds ago at most.
        assert!(c.now() < 10_000, "{}", c.now());
        // The page formula on the guest TSC gives the reading, for any later TSC.
        let later = g + 2_000_000_000;
        let second = p.reference_time(later) - p.reference_time(g);
        assert!((9_999_999..=10_000_000).contains(&second), "{second}");
    }
}
