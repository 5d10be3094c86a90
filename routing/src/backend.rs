//! The small slice of KVM this crate needs, behind a trait, and what the kernel can do.

use core::fmt;

use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_CAP_HYPERV_SYNIC2,
    KVM_MSI_VALID_DEVID,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use vmm_sys_util::errno;
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Gsi, MsiRoute};

/// The KVM operations routing needs. [`VmFd`] implements it for real; [`crate::fake::FakeKvm`]
/// records calls and models the kernel's checks so the table logic runs without `/dev/kvm`.
pub trait RoutingBackend: Send + Sync + 'static {
    /// What this VM's kernel can do. Called once when a [`crate::RoutingTable`] is created,
    /// which must be after the irqchip is created (resample support depends on it).
    fn probe(&self) -> Capabilities;

    /// `KVM_SET_GSI_ROUTING`: replace the whole routing table with `entries`.
    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), errno::Error>;

    /// `KVM_IRQFD`: writes to `fd` trigger `gsi`; with `resample`, KVM signals it when the
    /// interrupt is acknowledged (EOI, or for HV_SINT routes also EOM).
    fn register_irqfd(
        &self,
        fd: &EventFd,
        gsi: Gsi,
        resample: Option<&EventFd>,
    ) -> Result<(), errno::Error>;

    /// `KVM_IRQFD` with `KVM_IRQFD_FLAG_DEASSIGN`. When it returns, KVM injects nothing more
    /// for writes to `fd` (the kernel flushes in-flight injections).
    fn unregister_irqfd(&self, fd: &EventFd, gsi: Gsi) -> Result<(), errno::Error>;

    /// `KVM_SIGNAL_MSI`: injects `msi` once, with no route and no irqfd (a direct-mode
    /// synthetic timer's vector). `Ok(false)`: the kernel accepted it but no APIC took it
    /// (e.g. software-disabled). The default refuses with `ENOSYS`, so backends written before
    /// this method keep building.
    fn signal_msi(&self, msi: MsiRoute) -> Result<bool, errno::Error> {
        let _ = msi;
        Err(errno::Error::new(libc::ENOSYS))
    }
}

/// What a VM's KVM offers for interrupt routing, probed once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Routing table size (`KVM_CAP_IRQ_ROUTING`): GSIs are `0..routing_table_size`.
    pub routing_table_size: u32,
    /// `KVM_CAP_IRQFD`, and a trial registration on this VM worked (needs an in-kernel irqchip).
    pub irqfd: bool,
    /// `KVM_CAP_IRQFD_RESAMPLE` is reported.
    pub irqfd_resample_cap: bool,
    /// A trial resample registration on this VM worked (needs the full in-kernel irqchip from
    /// `KVM_CREATE_IRQCHIP`; refused with EINVAL under a split irqchip).
    pub irqfd_resample: bool,
    /// `KVM_CAP_HYPERV_SYNIC2`: in-kernel SynIC and HV_SINT routes.
    pub hyperv_synic2: bool,
}

/// How SINT interrupts reach the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// KVM's in-kernel SynIC: HV_SINT routes, irqfds, resamplefds as acks.
    Kernel,
    /// The VMM owns the SynIC: an MSI route per (VP, SINT) to the VP's local APIC.
    Userspace,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Kernel => "kernel-mode",
            Mode::Userspace => "userspace-mode",
        })
    }
}

impl Capabilities {
    /// Ok when `mode` can work here, else [`Error::MissingCapability`] naming the first missing
    /// capability and what was found.
    pub fn check(&self, mode: Mode) -> Result<(), Error> {
        self.check_acks(mode, true)
    }

    /// As [`check`](Self::check) for kernel-mode routes whose acks are EOM writes the VMM
    /// takes to userspace ([`crate::KernelSintRoutes::eom_acked`]): no resample irqfds needed,
    /// so a split irqchip will do.
    pub fn check_eom_acked(&self) -> Result<(), Error> {
        self.check_acks(Mode::Kernel, false)
    }

    fn check_acks(&self, mode: Mode, resample: bool) -> Result<(), Error> {
        let missing = |capability: &'static str, detail: String| {
            Err(Error::MissingCapability {
                mode,
                capability,
                detail,
            })
        };
        if self.routing_table_size == 0 {
            return missing(
                "KVM_CAP_IRQ_ROUTING",
                "this KVM reports no GSI routing table".into(),
            );
        }
        if !self.irqfd {
            return missing(
                "KVM_CAP_IRQFD",
                "irqfd registration is refused; create the in-kernel irqchip \
                 (KVM_CREATE_IRQCHIP or a split irqchip) before probing"
                    .into(),
            );
        }
        if mode == Mode::Userspace {
            return Ok(());
        }
        if !self.hyperv_synic2 {
            return missing(
                "KVM_CAP_HYPERV_SYNIC2",
                "this KVM has no in-kernel Hyper-V SynIC (built without CONFIG_KVM_HYPERV?)".into(),
            );
        }
        if !resample {
            return Ok(());
        }
        if !self.irqfd_resample_cap {
            return missing(
                "KVM_CAP_IRQFD_RESAMPLE",
                "this KVM cannot signal acks through a resamplefd".into(),
            );
        }
        if !self.irqfd_resample {
            return missing(
                "KVM_CAP_IRQFD_RESAMPLE",
                "resample irqfds need the full in-kernel irqchip (KVM_CREATE_IRQCHIP); this VM \
                 has a split irqchip or none"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Creates a non-blocking, close-on-exec eventfd.
pub(crate) fn new_eventfd() -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::os("eventfd"))
}

impl RoutingBackend for VmFd {
    fn probe(&self) -> Capabilities {
        let size = u32::try_from(self.check_extension_int(Cap::IrqRouting)).unwrap_or(0);
        // Probe irqfd support with real registrations on the last GSI: the capability bits
        // say what the kernel was built with, not what this VM's irqchip allows.
        let scratch = Gsi(size.saturating_sub(1));
        let trial = |resample: bool| -> bool {
            let (Ok(fd), Ok(rfd)) = (new_eventfd(), new_eventfd()) else {
                return false;
            };
            let ok = RoutingBackend::register_irqfd(self, &fd, scratch, resample.then_some(&rfd))
                .is_ok();
            if ok {
                let _ = RoutingBackend::unregister_irqfd(self, &fd, scratch);
            }
            ok
        };
        let irqfd = self.check_extension(Cap::Irqfd) && size > 0 && trial(false);
        let irqfd_resample_cap = self.check_extension(Cap::IrqfdResample);
        Capabilities {
            routing_table_size: size,
            irqfd,
            irqfd_resample_cap,
            irqfd_resample: irqfd && irqfd_resample_cap && trial(true),
            hyperv_synic2: self.check_extension(Cap::HypervSynic2),
        }
    }

    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), errno::Error> {
        // The wrapper caps the table at KVM_MAX_IRQ_ROUTES (4096), the kernel's own limit.
        let table =
            KvmIrqRouting::from_entries(entries).map_err(|_| errno::Error::new(libc::EINVAL))?;
        VmFd::set_gsi_routing(self, &table)
    }

    fn register_irqfd(
        &self,
        fd: &EventFd,
        gsi: Gsi,
        resample: Option<&EventFd>,
    ) -> Result<(), errno::Error> {
        match resample {
            Some(rfd) => self.register_irqfd_with_resample(fd, rfd, gsi.0),
            None => VmFd::register_irqfd(self, fd, gsi.0),
        }
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: Gsi) -> Result<(), errno::Error> {
        VmFd::unregister_irqfd(self, fd, gsi.0)
    }

    fn signal_msi(&self, msi: MsiRoute) -> Result<bool, errno::Error> {
        let raw = kvm_msi {
            // Truncations intended: the 64-bit address is split into its two halves.
            address_lo: msi.address as u32,
            address_hi: (msi.address >> 32) as u32,
            data: msi.data,
            flags: if msi.devid.is_some() {
                KVM_MSI_VALID_DEVID
            } else {
                0
            },
            devid: msi.devid.unwrap_or(0),
            ..Default::default()
        };
        VmFd::signal_msi(self, raw).map(|delivered| delivered > 0)
    }
}

/// Activates KVM's in-kernel SynIC (`KVM_CAP_HYPERV_SYNIC2`) on `vcpu`. Do this on every vCPU
/// before committing HV_SINT routes, then tell the table with
/// [`crate::RoutingTable::mark_synic_active`].
pub fn enable_synic2(vcpu: &VcpuFd) -> Result<(), Error> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_HYPERV_SYNIC2,
        ..Default::default()
    };
    vcpu.enable_cap(&cap)
        .map_err(|source| Error::EnableSynic2 { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Capabilities {
        Capabilities {
            routing_table_size: 4096,
            irqfd: true,
            irqfd_resample_cap: true,
            irqfd_resample: true,
            hyperv_synic2: true,
        }
    }

    fn missing(caps: Capabilities, mode: Mode) -> (&'static str, String) {
        match caps.check(mode) {
            Err(e @ Error::MissingCapability { capability, .. }) => (capability, e.to_string()),
            other => panic!("expected a missing capability, got {other:?}"),
        }
    }

    #[test]
    fn full_kvm_supports_both_modes() {
        assert!(full().check(Mode::Kernel).is_ok());
        assert!(full().check(Mode::Userspace).is_ok());
    }

    #[test]
    fn no_synic2_refuses_kernel_mode_only() {
        let caps = Capabilities {
            hyperv_synic2: false,
            ..full()
        };
        assert!(caps.check(Mode::Userspace).is_ok());
        let (cap, msg) = missing(caps, Mode::Kernel);
        assert_eq!(cap, "KVM_CAP_HYPERV_SYNIC2");
        assert!(msg.contains("in-kernel Hyper-V SynIC"), "{msg}");
    }

    #[test]
    fn split_irqchip_is_named_for_kernel_mode() {
        let caps = Capabilities {
            irqfd_resample: false,
            ..full()
        };
        let (cap, msg) = missing(caps, Mode::Kernel);
        assert_eq!(cap, "KVM_CAP_IRQFD_RESAMPLE");
        assert!(msg.contains("split irqchip"), "{msg}");
        assert!(caps.check(Mode::Userspace).is_ok());
    }

    #[test]
    fn no_irqfd_or_routing_refuses_both_modes() {
        let caps = Capabilities {
            irqfd: false,
            ..full()
        };
        assert_eq!(missing(caps, Mode::Userspace).0, "KVM_CAP_IRQFD");
        let caps = Capabilities {
            routing_table_size: 0,
            ..full()
        };
        assert_eq!(missing(caps, Mode::Kernel).0, "KVM_CAP_IRQ_ROUTING");
    }
}
