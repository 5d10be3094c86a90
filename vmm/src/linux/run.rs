//! `synic-vmm linux`: build the VM, prepare it for Linux, run it to power-off and report.

use std::io::Write;
use std::time::Duration;

use super::{prepare, FrequencyMsrs, LinuxError, LinuxImage, PowerEvent, KVM_APIC_BUS_HZ};
use crate::cpuid::HvFeatures;
use crate::probe::{ModeRequest, SynicMode};
use crate::vcpu::VcpuHandlers;
use crate::vm::{RunOutcome, Vm, VmConfig};

/// How to run a Linux guest.
pub struct LinuxRun {
    /// What to boot.
    pub image: LinuxImage,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM in bytes.
    pub mem_size: u64,
    /// Kernel or userspace SynIC.
    pub mode: ModeRequest,
    /// Show the guest Hyper-V (CPUID, hypercall page, VP_INDEX, TIME_REF_COUNT, frequency
    /// MSRs). Without it the guest sees a plain PC.
    pub hyperv: bool,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Where the guest's console goes.
    pub console: Box<dyn Write + Send>,
    /// Called every 10 s with the elapsed time and the exits so far.
    pub progress: Option<Box<dyn FnMut(Duration, u64)>>,
}

impl std::fmt::Debug for LinuxRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxRun")
            .field("vcpus", &self.vcpus)
            .field("mem_size", &self.mem_size)
            .field("mode", &self.mode)
            .field("hyperv", &self.hyperv)
            .finish_non_exhaustive()
    }
}

/// What happened.
#[derive(Debug)]
pub struct LinuxReport {
    /// The SynIC mode the VM ran in.
    pub mode: SynicMode,
    /// How the run ended (stop reason, time, per-vCPU exit counts).
    pub outcome: RunOutcome,
    /// The guest's power event, if it asked to stop.
    pub power: Option<PowerEvent>,
    /// The TSC frequency the guest was told (Hz).
    pub tsc_hz: u64,
}

const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// No Hyper-V at all: CPUID 0x4000_0003 empty, so Linux does not take the machine for Hyper-V.
const NO_HYPERV: HvFeatures = HvFeatures {
    time_ref_count: false,
    synic: false,
    stimer: false,
    direct_stimer: false,
    hypercall: false,
    vp_index: false,
    post_messages: false,
    signal_events: false,
    sint_polling: false,
};

/// Boots the guest and waits for it to stop.
pub fn run(mut r: LinuxRun) -> Result<LinuxReport, LinuxError> {
    if r.hyperv {
        return Err(LinuxError::Config(
            "Hyper-V enlightenments need the SynIC wiring".into(),
        ));
    }
    let image = LinuxImage {
        frequency_msrs: r.hyperv,
        vmbus_acpi: r.image.vmbus_acpi && r.hyperv,
        ..r.image.clone()
    };
    let mut vm = Vm::new(VmConfig {
        vcpus: r.vcpus,
        mem_size: r.mem_size,
        mode: r.mode,
        features: NO_HYPERV,
        ..VmConfig::default()
    })?;
    let mode = vm.mode();
    let machine = prepare(&mut vm, &image, r.console)?;
    let tsc_hz = machine.tsc_hz;
    let frequency = image.frequency_msrs && mode == SynicMode::Userspace;
    let running = vm.start(|vcpu| {
        let mut h = VcpuHandlers::without_synic(vcpu);
        if frequency {
            h.msr = Box::new(FrequencyMsrs::new(h.msr, tsc_hz, KVM_APIC_BUS_HZ));
        }
        h
    })?;
    let mut progress = r.progress.take();
    let outcome = running.wait_with_progress(r.timeout, PROGRESS_INTERVAL, |t, exits| {
        if let Some(p) = progress.as_mut() {
            p(t, exits.iter().sum());
        }
    });
    Ok(LinuxReport {
        mode,
        power: machine.power.event(),
        outcome,
        tsc_hz,
    })
}
