//! `synic-vmm linux`: build the VM, prepare it for Linux, run it to power-off and report.

use std::io::Write;
use std::time::{Duration, Instant};

use synic_kvm::HvFeatures;
use synic_kvm::{ModeRequest, SynicMode};
use synic_vmbus::{Version, VmbusConfig, VmbusHost, VmbusLog};

use super::host_script::{self, HostScript, ScriptReport};
use super::{prepare, LinuxError, LinuxImage, PowerEvent};
use crate::synic_vm::SynicVmBuilder;
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
    /// Offer the reference TSC page (needs `hyperv`): the guest's clock reads then exit no
    /// more (userspace mode: when the host's TSC can back the page).
    pub reference_tsc: bool,
    /// Attach the VMBus host and its integration services (needs `hyperv`), speaking
    /// versions up to this.
    pub vmbus: Option<Version>,
    /// What to ask of the integration services while the guest runs.
    pub script: HostScript,
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
    /// The TSC frequency KVM runs the guest's TSC at (Hz); the guest is told it through
    /// HV_X64_MSR_TSC_FREQUENCY when it sees Hyper-V.
    pub tsc_hz: u64,
    /// What the reference TSC page showed (valid, sequence 0 and why, not advertised, KVM's).
    pub tsc_page: String,
    /// The guest's TIME_REF_COUNT reads (userspace mode: each one an MSR exit; kernel mode:
    /// KVM answers them, 0 here).
    pub time_ref_count_reads: u64,
    /// The VMBus host's exchange log, when it was attached.
    pub vmbus: Option<VmbusLog>,
    /// What the host script did, when there was one.
    pub script: Option<ScriptReport>,
}

const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// What a Linux guest sees of Hyper-V: the partition registers, VP_INDEX, SynIC, synthetic
/// timers with direct mode (Linux runs its clock events on STIMER0 in direct mode when it is
/// offered), the two hypercalls and the frequency MSRs. The timers are the library's in both
/// modes, so its expiries and the VMBus messages on the same SINT have one writer.
const LINUX_HYPERV: HvFeatures = HvFeatures {
    sint_polling: false,
    frequency_msrs: true,
    ..HvFeatures::SYNIC
};

/// Boots the guest and waits for it to stop.
pub fn run(mut r: LinuxRun) -> Result<LinuxReport, LinuxError> {
    let image = LinuxImage {
        vmbus_acpi: r.vmbus.is_some() && r.hyperv,
        ..r.image.clone()
    };
    let mut progress = r.progress.take();
    let mut tick = move |t: Duration, exits: &[u64]| {
        if let Some(p) = progress.as_mut() {
            p(t, exits.iter().sum());
        }
    };
    if !r.hyperv {
        let mut vm = Vm::new(VmConfig {
            vcpus: r.vcpus,
            mem_size: r.mem_size,
            mode: r.mode,
            features: HvFeatures::NONE,
        })?;
        let mode = vm.mode();
        let machine = prepare(&mut vm, &image, r.console)?;
        let running = vm.start(VcpuHandlers::without_synic)?;
        let outcome = running.wait_with_progress(r.timeout, PROGRESS_INTERVAL, &mut tick);
        return Ok(LinuxReport {
            mode,
            power: machine.power.event(),
            outcome,
            tsc_hz: machine.tsc_hz,
            tsc_page: "not advertised (no Hyper-V)".into(),
            time_ref_count_reads: 0,
            vmbus: None,
            script: None,
        });
    }
    let features = HvFeatures {
        reference_tsc: r.reference_tsc,
        ..LINUX_HYPERV
    };
    let mut svm = SynicVmBuilder::new()
        .vcpus(r.vcpus)
        .memory(r.mem_size)
        .mode(r.mode)
        .features(features)
        .testdev(false)
        .build()?;
    let mode = svm.mode();
    let tsc_page = svm.reference_tsc_page().to_string();
    let synic = std::sync::Arc::clone(svm.synic());
    let machine = prepare(svm.vm_mut(), &image, r.console)?;
    let tsc_hz = machine.tsc_hz;
    let host = match (r.vmbus, image.vmbus_acpi) {
        (Some(max), true) => Some(
            super::vmbus::attach(
                svm.synic(),
                VmbusConfig {
                    max_version: max,
                    ..VmbusConfig::default()
                },
            )
            .map_err(LinuxError::Vmbus)?,
        ),
        _ => None,
    };
    let running = svm.start()?;
    let start = Instant::now();
    // The script's calls block: it runs beside the VM and learns that the VM stopped when
    // `vm_running` is dropped.
    let (vm_running, stopped) = crossbeam_channel::bounded::<()>(0);
    let script = match &host {
        Some(h) if !r.script.is_empty() => {
            let (handle, steps) = (h.handle(), r.script.clone());
            std::thread::Builder::new()
                .name("host-script".into())
                .spawn(move || host_script::run(&handle, &steps, start, &stopped))
                .ok()
        }
        _ => None,
    };
    let outcome = running.wait_with_progress(r.timeout, PROGRESS_INTERVAL, &mut tick);
    drop(vm_running);
    let script = script.and_then(|t| t.join().ok());
    Ok(LinuxReport {
        mode,
        power: machine.power.event(),
        outcome,
        tsc_hz,
        tsc_page,
        time_ref_count_reads: synic.stats().time_ref_count_reads,
        vmbus: host.map(VmbusHost::finish),
        script,
    })
}
