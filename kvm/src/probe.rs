//! What this host's KVM can do for the SynIC, and the one mode decision.
//!
//! [`Capabilities::probe`] asks `/dev/kvm` for the capability bits *and* tries what the bits
//! cannot tell on the VM itself (an irqfd, and a resample irqfd, which only work with the full
//! in-kernel irqchip): call it after `KVM_CREATE_IRQCHIP`. [`Capabilities::choose_mode`] then
//! picks [`SynicMode::Kernel`] or [`SynicMode::Userspace`] for a [`ModeRequest`], or names the
//! first missing capability.

use kvm_bindings::{KVM_CAP_HYPERV_ENFORCE_CPUID, KVM_CAP_HYPERV_EVENTFD, KVM_CAP_HYPERV_SYNIC2};
use kvm_ioctls::{Cap, Kvm, VmFd};
use synic_routing::RoutingBackend;
use vmm_sys_util::errno;

use crate::error::{Error, Result};

/// How the SynIC is provided to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SynicMode {
    /// KVM's in-kernel SynIC (`KVM_CAP_HYPERV_SYNIC2`): the kernel owns the SynIC MSRs and
    /// reports changes as `KVM_EXIT_HYPERV`; SINTs are HV_SINT routes. The synthetic timers
    /// and the EOM ack are the library's, through an MSR filter (writes of EOM exit to
    /// userspace and retry queued messages on the vCPU's own thread, as in userspace mode).
    Kernel,
    /// Every Hyper-V MSR exits to userspace (`KVM_CAP_X86_USER_SPACE_MSR` plus an MSR filter)
    /// and the library owns the semantics; SINTs are delivered as MSIs.
    Userspace,
}

impl SynicMode {
    /// The model's name for this mode.
    pub fn model(self) -> synic::Mode {
        match self {
            SynicMode::Kernel => synic::Mode::Kernel,
            SynicMode::Userspace => synic::Mode::Userspace,
        }
    }
}

/// Which [`SynicMode`] to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ModeRequest {
    /// Kernel mode where the host can do it, otherwise userspace mode.
    #[default]
    Auto,
    /// Force userspace mode.
    Userspace,
    /// Require kernel mode (an error where the host lacks it).
    Kernel,
}

/// The capabilities the SynIC looks at, as this host and VM report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `KVM_CAP_IRQCHIP`.
    pub irqchip: bool,
    /// `KVM_CAP_IRQ_ROUTING`: the routing table size (0 = absent).
    pub irq_routing: u32,
    /// `KVM_CAP_IRQFD`, and a trial registration on the VM worked.
    pub irqfd: bool,
    /// `KVM_CAP_IRQFD_RESAMPLE`, and a trial resample registration on the VM worked (needs the
    /// full in-kernel irqchip of `KVM_CREATE_IRQCHIP`, not a split one). Reported for VMMs
    /// that use resamplefds themselves; neither mode needs it (kernel mode's acks are EOM
    /// exits).
    pub irqfd_resample: bool,
    /// `KVM_CAP_SIGNAL_MSI` (direct-mode synthetic timers in userspace mode).
    pub signal_msi: bool,
    /// `KVM_CAP_EXT_CPUID` (`KVM_SET_CPUID2`, for the Hyper-V leaves).
    pub ext_cpuid: bool,
    /// `KVM_CAP_X86_USER_SPACE_MSR`.
    pub user_space_msr: bool,
    /// `KVM_CAP_X86_MSR_FILTER`.
    pub msr_filter: bool,
    /// `KVM_CAP_HYPERV_SYNIC2`.
    pub hyperv_synic2: bool,
    /// `KVM_CAP_HYPERV_EVENTFD`.
    pub hyperv_eventfd: bool,
    /// `KVM_CAP_HYPERV_ENFORCE_CPUID`.
    pub hyperv_enforce_cpuid: bool,
    /// `KVM_CAP_SYNC_REGS` covers general and system registers.
    pub sync_regs: bool,
}

/// One requirement: whether it is met, its capability name, what it is for.
type Requirement = (bool, &'static str, &'static str);

impl Capabilities {
    /// Asks `kvm` for the capability bits and tries irqfd registrations on `vm` (create the
    /// in-kernel irqchip first).
    pub fn probe(kvm: &Kvm, vm: &VmFd) -> Capabilities {
        let routing = RoutingBackend::probe(vm);
        let raw = |cap: u32| kvm.check_extension_raw(libc::c_ulong::from(cap)) > 0;
        Capabilities {
            irqchip: kvm.check_extension(Cap::Irqchip),
            irq_routing: routing.routing_table_size,
            irqfd: routing.irqfd,
            irqfd_resample: routing.irqfd_resample,
            signal_msi: kvm.check_extension(Cap::SignalMsi),
            ext_cpuid: kvm.check_extension(Cap::ExtCpuid),
            user_space_msr: kvm.check_extension(Cap::X86UserSpaceMsr),
            msr_filter: kvm.check_extension(Cap::X86MsrFilter),
            hyperv_synic2: raw(KVM_CAP_HYPERV_SYNIC2),
            hyperv_eventfd: raw(KVM_CAP_HYPERV_EVENTFD),
            hyperv_enforce_cpuid: raw(KVM_CAP_HYPERV_ENFORCE_CPUID),
            sync_regs: {
                let want = kvm_bindings::KVM_SYNC_X86_REGS | kvm_bindings::KVM_SYNC_X86_SREGS;
                u32::try_from(kvm.check_extension_int(Cap::SyncRegs)).unwrap_or(0) & want == want
            },
        }
    }

    /// Probes this host without a VM of the caller's: opens `/dev/kvm` and tries a scratch VM
    /// with an in-kernel irqchip (for tests and tools that ask "can this host run kernel
    /// mode?").
    pub fn probe_host() -> Result<Capabilities> {
        let kvm = open_kvm()?;
        let vm = kvm
            .create_vm()
            .map_err(crate::error::kvm_err("KVM_CREATE_VM"))?;
        vm.create_irq_chip()
            .map_err(crate::error::kvm_err("KVM_CREATE_IRQCHIP"))?;
        Ok(Self::probe(&kvm, &vm))
    }

    fn common(&self) -> [Requirement; 4] {
        [
            (
                self.irqchip,
                "KVM_CAP_IRQCHIP",
                "the in-kernel local APIC that takes SINT interrupts",
            ),
            (
                self.irq_routing > 0,
                "KVM_CAP_IRQ_ROUTING",
                "SINT routes (MSI or HV_SINT)",
            ),
            (
                self.irqfd,
                "KVM_CAP_IRQFD",
                "raising SINTs through eventfds (create the in-kernel irqchip before probing)",
            ),
            (
                self.ext_cpuid,
                "KVM_CAP_EXT_CPUID",
                "the Hyper-V CPUID leaves",
            ),
        ]
    }

    fn userspace(&self) -> [Requirement; 3] {
        [
            (
                self.user_space_msr,
                "KVM_CAP_X86_USER_SPACE_MSR",
                "userspace SynIC mode (Hyper-V MSR exits)",
            ),
            (
                self.msr_filter,
                "KVM_CAP_X86_MSR_FILTER",
                "userspace SynIC mode (forcing Hyper-V MSRs to exit)",
            ),
            (
                self.signal_msi,
                "KVM_CAP_SIGNAL_MSI",
                "direct-mode synthetic timers in userspace SynIC mode",
            ),
        ]
    }

    fn kernel(&self) -> [Requirement; 5] {
        [
            (
                self.user_space_msr,
                "KVM_CAP_X86_USER_SPACE_MSR",
                "kernel SynIC mode (the synthetic-timer MSRs exit to the library)",
            ),
            (
                self.msr_filter,
                "KVM_CAP_X86_MSR_FILTER",
                "kernel SynIC mode (taking the synthetic-timer MSRs from KVM)",
            ),
            (
                self.hyperv_synic2,
                "KVM_CAP_HYPERV_SYNIC2",
                "kernel SynIC mode (no in-kernel Hyper-V: built without CONFIG_KVM_HYPERV?)",
            ),
            (
                self.hyperv_eventfd,
                "KVM_CAP_HYPERV_EVENTFD",
                "kernel SynIC mode's guest events on eventfds",
            ),
            (
                self.hyperv_enforce_cpuid,
                "KVM_CAP_HYPERV_ENFORCE_CPUID",
                "kernel SynIC mode offering only the enlightenments it advertises",
            ),
        ]
    }

    fn first_missing(reqs: &[Requirement]) -> Option<Error> {
        reqs.iter()
            .find(|(present, _, _)| !present)
            .map(|&(_, cap, needed_for)| Error::MissingCapability { cap, needed_for })
    }

    /// Picks the mode for `request`, or names the first capability it lacks: what every mode
    /// needs first, then the mode's own. [`ModeRequest::Auto`] takes kernel mode when all of
    /// its capabilities are there, else userspace mode.
    pub fn choose_mode(&self, request: ModeRequest) -> Result<SynicMode> {
        if let Some(e) = Self::first_missing(&self.common()) {
            return Err(e);
        }
        let kernel = || Self::first_missing(&self.kernel()).map_or(Ok(SynicMode::Kernel), Err);
        let userspace =
            || Self::first_missing(&self.userspace()).map_or(Ok(SynicMode::Userspace), Err);
        match request {
            ModeRequest::Kernel => kernel(),
            ModeRequest::Userspace => userspace(),
            ModeRequest::Auto => kernel().or_else(|_| userspace()),
        }
    }
}

/// Opens `/dev/kvm`, turning the common failures into errors that say what to do.
pub fn open_kvm() -> Result<Kvm> {
    if !std::path::Path::new("/dev/kvm").exists() {
        return Err(Error::KvmMissing);
    }
    Kvm::new().map_err(|e: errno::Error| match e.errno() {
        libc::ENOENT => Error::KvmMissing,
        libc::EACCES | libc::EPERM => Error::KvmPermission,
        _ => Error::KvmOpen(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Capabilities {
        Capabilities {
            irqchip: true,
            irq_routing: 4096,
            irqfd: true,
            irqfd_resample: true,
            signal_msi: true,
            ext_cpuid: true,
            user_space_msr: true,
            msr_filter: true,
            hyperv_synic2: false,
            hyperv_eventfd: false,
            hyperv_enforce_cpuid: false,
            sync_regs: true,
        }
    }

    fn kernel_capable() -> Capabilities {
        Capabilities {
            hyperv_synic2: true,
            hyperv_eventfd: true,
            hyperv_enforce_cpuid: true,
            ..all()
        }
    }

    #[test]
    fn auto_picks_kernel_mode_only_when_all_of_it_is_there() {
        assert_eq!(
            all().choose_mode(ModeRequest::Auto).unwrap(),
            SynicMode::Userspace
        );
        assert_eq!(
            kernel_capable().choose_mode(ModeRequest::Auto).unwrap(),
            SynicMode::Kernel
        );
        assert_eq!(
            kernel_capable()
                .choose_mode(ModeRequest::Userspace)
                .unwrap(),
            SynicMode::Userspace
        );
        // Kernel mode's acks are EOM exits, not resamplefds: SYNIC2 without working resample
        // irqfds is still kernel mode.
        let no_resample = Capabilities {
            irqfd_resample: false,
            ..kernel_capable()
        };
        assert_eq!(
            no_resample.choose_mode(ModeRequest::Auto).unwrap(),
            SynicMode::Kernel
        );
        // Without SYNIC2, auto falls back.
        let no_synic2 = Capabilities {
            hyperv_synic2: false,
            ..kernel_capable()
        };
        assert_eq!(
            no_synic2.choose_mode(ModeRequest::Auto).unwrap(),
            SynicMode::Userspace
        );
    }

    #[test]
    fn missing_capability_is_named() {
        let caps = Capabilities {
            msr_filter: false,
            ..all()
        };
        let err = caps.choose_mode(ModeRequest::Auto).unwrap_err();
        assert!(err.to_string().contains("KVM_CAP_X86_MSR_FILTER"), "{err}");
        let err = all().choose_mode(ModeRequest::Kernel).unwrap_err();
        assert!(err.to_string().contains("KVM_CAP_HYPERV_SYNIC2"), "{err}");
        let caps = Capabilities {
            irqchip: false,
            ..kernel_capable()
        };
        let err = caps.choose_mode(ModeRequest::Kernel).unwrap_err();
        assert!(err.to_string().contains("KVM_CAP_IRQCHIP"), "{err}");
        let caps = Capabilities {
            hyperv_eventfd: false,
            ..kernel_capable()
        };
        let err = caps.choose_mode(ModeRequest::Kernel).unwrap_err();
        assert!(err.to_string().contains("KVM_CAP_HYPERV_EVENTFD"), "{err}");
    }
}
