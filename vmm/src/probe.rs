//! Which KVM features this host has, and a clear error when one the VMM needs is missing.

use kvm_ioctls::{Cap, Kvm};
use vmm_sys_util::errno;

use crate::error::{Error, Result};

/// How the SynIC is provided to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SynicMode {
    /// KVM's in-kernel SynIC (`KVM_CAP_HYPERV_SYNIC2`): the kernel owns the MSRs and reports
    /// changes as `KVM_EXIT_HYPERV`.
    Kernel,
    /// Every Hyper-V MSR exits to userspace (`KVM_CAP_X86_USER_SPACE_MSR` plus an MSR filter)
    /// and the library owns the semantics; SINTs are delivered as MSIs.
    Userspace,
}

/// Which [`SynicMode`] to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ModeRequest {
    /// Kernel mode where the host has `KVM_CAP_HYPERV_SYNIC2`, otherwise userspace mode.
    #[default]
    Auto,
    /// Force userspace mode.
    Userspace,
    /// Require kernel mode (an error where the host lacks it).
    Kernel,
}

/// The capabilities the VMM looks at, as the host reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `KVM_CAP_IRQCHIP`.
    pub irqchip: bool,
    /// `KVM_CAP_IRQ_ROUTING`: the routing table size (0 = absent).
    pub irq_routing: usize,
    /// `KVM_CAP_IRQFD`.
    pub irqfd: bool,
    /// `KVM_CAP_SIGNAL_MSI`.
    pub signal_msi: bool,
    /// `KVM_CAP_SET_TSS_ADDR`.
    pub set_tss_addr: bool,
    /// `KVM_CAP_SET_IDENTITY_MAP_ADDR`.
    pub set_identity_map_addr: bool,
    /// `KVM_CAP_IMMEDIATE_EXIT`.
    pub immediate_exit: bool,
    /// `KVM_CAP_EXT_CPUID`.
    pub ext_cpuid: bool,
    /// `KVM_CAP_X86_USER_SPACE_MSR`.
    pub user_space_msr: bool,
    /// `KVM_CAP_X86_MSR_FILTER`.
    pub msr_filter: bool,
    /// `KVM_CAP_HYPERV_SYNIC2`.
    pub hyperv_synic2: bool,
    /// `KVM_CAP_NR_VCPUS`: recommended maximum vCPUs.
    pub nr_vcpus: usize,
    /// `KVM_CAP_SYNC_REGS` covers general and system registers (hypercall traps then read
    /// and write registers without extra ioctls).
    pub sync_regs: bool,
}

impl Capabilities {
    /// Opens `/dev/kvm` and asks it.
    pub fn probe() -> Result<(Kvm, Capabilities)> {
        let kvm = open_kvm()?;
        let caps = Self::of(&kvm);
        Ok((kvm, caps))
    }

    /// Asks an open KVM handle.
    pub fn of(kvm: &Kvm) -> Capabilities {
        let count = |cap| usize::try_from(kvm.check_extension_int(cap)).unwrap_or(0);
        Capabilities {
            irqchip: kvm.check_extension(Cap::Irqchip),
            irq_routing: count(Cap::IrqRouting),
            irqfd: kvm.check_extension(Cap::Irqfd),
            signal_msi: kvm.check_extension(Cap::SignalMsi),
            set_tss_addr: kvm.check_extension(Cap::SetTssAddr),
            set_identity_map_addr: kvm.check_extension(Cap::SetIdentityMapAddr),
            immediate_exit: kvm.check_extension(Cap::ImmediateExit),
            ext_cpuid: kvm.check_extension(Cap::ExtCpuid),
            user_space_msr: kvm.check_extension(Cap::X86UserSpaceMsr),
            msr_filter: kvm.check_extension(Cap::X86MsrFilter),
            hyperv_synic2: kvm.check_extension(Cap::HypervSynic2),
            nr_vcpus: count(Cap::NrVcpus),
            sync_regs: {
                let want = kvm_bindings::KVM_SYNC_X86_REGS | kvm_bindings::KVM_SYNC_X86_SREGS;
                u32::try_from(kvm.check_extension_int(Cap::SyncRegs)).unwrap_or(0) & want == want
            },
        }
    }

    /// Checks everything every VM needs, then picks the SynIC mode.
    pub fn choose_mode(&self, request: ModeRequest) -> Result<SynicMode> {
        let required: [(bool, &'static str, &'static str); 7] = [
            (
                self.irqchip,
                "KVM_CAP_IRQCHIP",
                "the in-kernel LAPIC and IOAPIC",
            ),
            (
                self.irq_routing > 0,
                "KVM_CAP_IRQ_ROUTING",
                "MSI and SINT routes",
            ),
            (
                self.irqfd,
                "KVM_CAP_IRQFD",
                "interrupt delivery through eventfds",
            ),
            (self.set_tss_addr, "KVM_CAP_SET_TSS_ADDR", "vCPU setup"),
            (
                self.set_identity_map_addr,
                "KVM_CAP_SET_IDENTITY_MAP_ADDR",
                "vCPU setup",
            ),
            (
                self.immediate_exit,
                "KVM_CAP_IMMEDIATE_EXIT",
                "stopping vCPUs cleanly",
            ),
            (self.ext_cpuid, "KVM_CAP_EXT_CPUID", "Hyper-V CPUID leaves"),
        ];
        for (present, cap, needed_for) in required {
            if !present {
                return Err(Error::MissingCapability { cap, needed_for });
            }
        }
        let userspace = || -> Result<SynicMode> {
            if !self.user_space_msr {
                return Err(Error::MissingCapability {
                    cap: "KVM_CAP_X86_USER_SPACE_MSR",
                    needed_for: "userspace SynIC mode (Hyper-V MSR exits)",
                });
            }
            if !self.msr_filter {
                return Err(Error::MissingCapability {
                    cap: "KVM_CAP_X86_MSR_FILTER",
                    needed_for: "userspace SynIC mode (forcing Hyper-V MSRs to exit)",
                });
            }
            Ok(SynicMode::Userspace)
        };
        match request {
            ModeRequest::Userspace => userspace(),
            ModeRequest::Kernel if self.hyperv_synic2 => Ok(SynicMode::Kernel),
            ModeRequest::Kernel => Err(Error::MissingCapability {
                cap: "KVM_CAP_HYPERV_SYNIC2",
                needed_for: "kernel SynIC mode",
            }),
            ModeRequest::Auto if self.hyperv_synic2 => Ok(SynicMode::Kernel),
            ModeRequest::Auto => userspace(),
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
            signal_msi: true,
            set_tss_addr: true,
            set_identity_map_addr: true,
            immediate_exit: true,
            ext_cpuid: true,
            user_space_msr: true,
            msr_filter: true,
            hyperv_synic2: false,
            nr_vcpus: 2,
            sync_regs: true,
        }
    }

    #[test]
    fn auto_picks_kernel_mode_only_with_synic2() {
        assert_eq!(
            all().choose_mode(ModeRequest::Auto).unwrap(),
            SynicMode::Userspace
        );
        let caps = Capabilities {
            hyperv_synic2: true,
            ..all()
        };
        assert_eq!(
            caps.choose_mode(ModeRequest::Auto).unwrap(),
            SynicMode::Kernel
        );
        assert_eq!(
            caps.choose_mode(ModeRequest::Userspace).unwrap(),
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
            ..all()
        };
        let err = caps.choose_mode(ModeRequest::Userspace).unwrap_err();
        assert!(err.to_string().contains("KVM_CAP_IRQCHIP"), "{err}");
    }
}
