//! Booting a stock Linux kernel (bzImage + initrd) as a real SynIC client.
//!
//! [`prepare`] turns a built [`Vm`] into a small PC that Linux boots on: the in-kernel PIT,
//! a 16550A UART with interrupts on COM1, a CMOS clock, ACPI tables (with the VMBus device
//! Linux's hv_vmbus looks for) and the fixed hardware they describe (power-off, reset, PM
//! timer), the kernel and initrd loaded by the 64-bit boot protocol, and the BSP at the
//! kernel's 64-bit entry point. Time: the TSC, with its frequency (and the LAPIC timer's)
//! published through the Hyper-V frequency MSRs when the guest sees Hyper-V (synic-kvm answers
//! them in userspace mode, KVM in kernel mode), else calibrated by the kernel against the PIT; the PIT, then the LAPIC
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

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};

pub use acpi::{write_tables, AcpiConfig, AcpiLayout};
pub use boot::{e820_map, entry_state, load, LoadedKernel};
pub use devices::{AcpiPm, Cmos, ConsoleSink, IrqLine, Power, PowerEvent, ResetPorts, Uart};
pub use run::{run, LinuxReport, LinuxRun};

use crate::layout::ports::COM1;
use crate::vm::Vm;

/// Why a Linux guest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// The kernel image is not a bootable 64-bit bzImage (this crate's own finding).
    #[error("kernel image: {0}")]
    Kernel(String),
    /// The bzImage loader refused the kernel image.
    #[error("kernel image: {0}")]
    KernelImage(#[source] linux_loader::loader::Error),
    /// The zero page (boot parameters) could not be written.
    #[error("zero page: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// The command line does not fit.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Guest memory cannot hold something (this crate's own finding).
    #[error("guest memory: {0}")]
    Memory(String),
    /// Guest memory refused a write.
    #[error("guest memory: {what} at {gpa:#x}: {source}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// vm-memory's error.
        source: vm_memory::GuestMemoryError,
    },
    /// The VMBus host could not attach.
    #[error("VMBus host: {0}")]
    Vmbus(#[from] synic_vmbus::host::AttachError),
    /// The configuration cannot be met.
    #[error("configuration: {0}")]
    Config(String),
    /// A KVM call failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The error the kernel returned.
        source: kvm_ioctls::Error,
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
    move |source| LinuxError::Kvm { op, source }
}

/// The ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

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
