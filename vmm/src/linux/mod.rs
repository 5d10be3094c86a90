//! Booting a stock Linux kernel (bzImage + initrd) as a real SynIC client.
//!
//! [`prepare`] turns a built [`Vm`] into a small PC that Linux boots on: the in-kernel PIT,
//! a 16550A UART with interrupts on COM1, a CMOS clock, ACPI tables (with the VMBus device
//! Linux's hv_vmbus looks for) and the fixed hardware they describe (power-off, reset, PM
//! timer), the kernel and initrd loaded by the 64-bit boot protocol, and the BSP at the
//! kernel's 64-bit entry point. Time: the TSC, with its frequency (and the LAPIC timer's)
//! published through the Hyper-V frequency MSRs when the guest sees Hyper-V
//! ([`HvPlatformMsrs`]), else calibrated by the kernel against the PIT; the PIT, then the LAPIC
//! timer, as clock events; the ACPI PM timer and TIME_REF_COUNT as clock sources.
//!
//! [`run`] does the whole thing (with or without the SynIC model and the VMBus host with its
//! integration services, [`vmbus`]) for the `synic-vmm linux` command; [`host_script`] is what
//! the host asks of the guest's services meanwhile. `docs/linux-guest.md` and `docs/vmbus.md`
//! have the details.

pub mod acpi;
pub mod boot;
pub mod cli;
pub mod devices;
pub mod host_script;
mod run;
pub mod vmbus;

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use synic_msr::{Gp, GpReason};

pub use acpi::{write_tables, AcpiConfig, AcpiLayout};
pub use boot::{e820_map, entry_state, load, LoadedKernel};
pub use devices::{AcpiPm, Cmos, ConsoleSink, IrqLine, Power, PowerEvent, ResetPorts, Uart};
pub use run::{run, LinuxReport, LinuxRun};

use crate::cpuid::HV_LEAF_FEATURES;
use crate::layout::ports::COM1;
use crate::msr::{MsrError, MsrHandler};
use crate::vm::Vm;

/// Why a Linux guest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// The kernel image is not a bootable 64-bit bzImage.
    #[error("kernel image: {0}")]
    Kernel(String),
    /// The command line does not fit.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Guest memory could not hold something.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The configuration cannot be met.
    #[error("configuration: {0}")]
    Config(String),
    /// A KVM call failed.
    #[error("KVM {op} failed: {message}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The error.
        message: String,
    },
    /// The VMM refused.
    #[error(transparent)]
    Vmm(#[from] crate::Error),
    /// An I/O error (reading images, eventfds).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> LinuxError {
    move |e| LinuxError::Kvm {
        op,
        message: e.to_string(),
    }
}

/// HV_X64_MSR_TSC_FREQUENCY: the TSC frequency in Hz (read-only).
pub const HV_MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
/// HV_X64_MSR_APIC_FREQUENCY: the LAPIC timer's input frequency in Hz (read-only).
pub const HV_MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
/// CPUID 0x4000_0003 EAX bit 11: AccessFrequencyMsrs.
pub const EAX_ACCESS_FREQUENCY_MSRS: u32 = 1 << 11;
/// CPUID 0x4000_0003 EDX bit 8: the frequency MSRs are available.
pub const EDX_FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;
/// KVM's in-kernel LAPIC timer counts at 1 GHz (one bus cycle per nanosecond).
pub const KVM_APIC_BUS_HZ: u64 = 1_000_000_000;
/// The ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// HV_X64_MSR_VP_ASSIST_PAGE: bit 0 enable, 63:12 the page's GPA.
pub const HV_MSR_VP_ASSIST_PAGE: u32 = 0x4000_0073;

/// The Hyper-V MSRs outside the SynIC model that Linux uses, for userspace mode (where every
/// Hyper-V MSR exits to the VMM): HV_X64_MSR_TSC_FREQUENCY and HV_X64_MSR_APIC_FREQUENCY
/// (read-only), and HV_X64_MSR_VP_ASSIST_PAGE, which Linux 6.1 writes on every CPU whatever
/// CPUID says. The VP assist page is only stored: no feature that reads it (enlightened VMCS,
/// PV EOI) is advertised. Every other MSR goes to `inner`.
pub struct HvPlatformMsrs {
    inner: Box<dyn MsrHandler>,
    tsc_hz: u64,
    apic_hz: u64,
    vp_assist: u64,
}

impl std::fmt::Debug for HvPlatformMsrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HvPlatformMsrs")
            .field("tsc_hz", &self.tsc_hz)
            .field("apic_hz", &self.apic_hz)
            .field("vp_assist", &self.vp_assist)
            .finish_non_exhaustive()
    }
}

impl HvPlatformMsrs {
    /// Wraps `inner`, answering the frequency MSRs with these values.
    pub fn new(inner: Box<dyn MsrHandler>, tsc_hz: u64, apic_hz: u64) -> Self {
        Self {
            inner,
            tsc_hz,
            apic_hz,
            vp_assist: 0,
        }
    }
}

impl MsrHandler for HvPlatformMsrs {
    fn rdmsr(&mut self, msr: u32) -> Result<u64, MsrError> {
        match msr {
            HV_MSR_TSC_FREQUENCY => Ok(self.tsc_hz),
            HV_MSR_APIC_FREQUENCY => Ok(self.apic_hz),
            HV_MSR_VP_ASSIST_PAGE => Ok(self.vp_assist),
            _ => self.inner.rdmsr(msr),
        }
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), MsrError> {
        match msr {
            HV_MSR_TSC_FREQUENCY | HV_MSR_APIC_FREQUENCY => {
                Err(Gp::new(msr, GpReason::ReadOnly).into())
            }
            // Bits 11:1 are reserved (KVM: #GP when set).
            HV_MSR_VP_ASSIST_PAGE if value & 0xFFE != 0 => Err(Gp::new(
                msr,
                GpReason::ReservedBits {
                    bits: value & 0xFFE,
                },
            )
            .into()),
            HV_MSR_VP_ASSIST_PAGE => {
                self.vp_assist = value;
                Ok(())
            }
            _ => self.inner.wrmsr(msr, value),
        }
    }
}

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxImage {
    /// The bzImage.
    pub kernel: Vec<u8>,
    /// The initrd (an initramfs cpio), if any.
    pub initrd: Option<Vec<u8>>,
    /// The kernel command line.
    pub cmdline: String,
    /// Whether the DSDT declares the VMBus device.
    pub vmbus_acpi: bool,
    /// Whether every console line starts with the host's elapsed time.
    pub console_timestamps: bool,
    /// Whether CPUID advertises the Hyper-V frequency MSRs (the VM must then answer them:
    /// KVM does in kernel mode, [`HvPlatformMsrs`] in userspace mode).
    pub frequency_msrs: bool,
}

/// A VM made ready for Linux by [`prepare`].
#[derive(Debug)]
pub struct LinuxMachine {
    /// Power events (power-off, halt, reset).
    pub power: Arc<Power>,
    /// Where the kernel went.
    pub kernel: LoadedKernel,
    /// Where the ACPI tables went.
    pub acpi: AcpiLayout,
    /// The TSC frequency KVM runs the vCPUs at, in Hz.
    pub tsc_hz: u64,
}

/// Adds the PC devices, ACPI tables, kernel, initrd and boot CPU state to `vm` (not started
/// yet). The console goes to `console`.
pub fn prepare(
    vm: &mut Vm,
    image: &LinuxImage,
    console: Box<dyn std::io::Write + Send>,
) -> Result<LinuxMachine, LinuxError> {
    let vcpus = vm.config().vcpus;
    let power = Arc::new(Power::new(vm.control().clone()));

    // The in-kernel PIT (port 0x61 answered by KVM's dummy speaker): the clock Linux calibrates
    // against and its first clock-event device.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.vm_fd()
        .create_pit2(pit)
        .map_err(kvm("KVM_CREATE_PIT2"))?;

    let line = IrqLine::new().map_err(|source| LinuxError::Io {
        what: "COM1 interrupt eventfd".into(),
        source,
    })?;
    vm.vm_fd()
        .register_irqfd(line.eventfd(), COM1_IRQ)
        .map_err(kvm("KVM_IRQFD (COM1)"))?;
    let mut sink = ConsoleSink::new(console, power.clone());
    if image.console_timestamps {
        sink = sink.timestamps();
    }
    let uart = Uart::new(COM1, line, sink);
    vm.add_device(COM1, 8, Arc::new(uart))?;
    vm.add_device(devices::CMOS_PORT, 2, Arc::new(Cmos::default()))?;
    vm.add_device(
        acpi::PM_BASE,
        AcpiPm::LEN,
        Arc::new(AcpiPm::new(power.clone())),
    )?;
    let reset = Arc::new(ResetPorts::new(power.clone()));
    vm.add_device(acpi::RESET_PORT, 1, reset.clone())?;
    vm.add_device(devices::KBC_PORT, 1, reset)?;

    let layout = write_tables(
        vm.memory(),
        AcpiConfig {
            vcpus,
            vmbus: image.vmbus_acpi,
        },
    )?;
    let kernel = load(
        vm.memory(),
        &image.kernel,
        image.initrd.as_deref(),
        &image.cmdline,
        layout.rsdp,
    )?;

    let mut tsc_khz = 0;
    for id in 0..vcpus {
        let vcpu = vm
            .vcpu(id)
            .ok_or_else(|| LinuxError::Config(format!("no vCPU {id}")))?;
        if image.frequency_msrs {
            let mut cpuid = vcpu
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm("KVM_GET_CPUID2"))?;
            for e in cpuid.as_mut_slice() {
                if e.function == HV_LEAF_FEATURES {
                    e.eax |= EAX_ACCESS_FREQUENCY_MSRS;
                    e.edx |= EDX_FREQUENCY_MSRS_AVAILABLE;
                }
            }
            vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        }
        if id == 0 {
            tsc_khz = vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?;
            let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            let regs = entry_state(vm.memory(), &kernel, &mut sregs)?;
            vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
            vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
        }
    }
    Ok(LinuxMachine {
        power,
        kernel,
        acpi: layout,
        tsc_hz: u64::from(tsc_khz) * 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msr::VpIndexOnly;

    #[test]
    fn platform_msrs_answer_and_delegate() {
        let mut m = HvPlatformMsrs::new(Box::new(VpIndexOnly { vp_index: 2 }), 2_500_000_000, 7);
        assert_eq!(m.rdmsr(HV_MSR_TSC_FREQUENCY), Ok(2_500_000_000));
        assert_eq!(m.rdmsr(HV_MSR_APIC_FREQUENCY), Ok(7));
        assert_eq!(m.rdmsr(synic_msr::index::VP_INDEX), Ok(2));
        assert!(m.wrmsr(HV_MSR_TSC_FREQUENCY, 1).is_err());
        assert!(m.rdmsr(synic_msr::index::SCONTROL).is_err());
        assert_eq!(m.rdmsr(HV_MSR_VP_ASSIST_PAGE), Ok(0));
        assert!(
            m.wrmsr(HV_MSR_VP_ASSIST_PAGE, 0x11B_0003).is_err(),
            "reserved bit 1"
        );
        m.wrmsr(HV_MSR_VP_ASSIST_PAGE, 0x11B_0001).unwrap();
        assert_eq!(m.rdmsr(HV_MSR_VP_ASSIST_PAGE), Ok(0x11B_0001));
    }
}
