//! `synic-vmm run`: boots a multiboot kernel on a PC with the SynIC attached (by default) —
//! Hyper-V CPUID (SynIC, synthetic timers with direct mode, hypercalls, VP_INDEX,
//! TIME_REF_COUNT), QEMU's hyperv-testdev protocol at port 0x3000 (test kernels such as
//! kvm-unit-tests' hyperv_synic expect it), COM1, isa-debug-exit at 0xF4 and fw_cfg. With
//! `hyperv: false` the guest sees a plain PC.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use synic_kvm::{HvFeatures, ModeRequest, SynicMode};
use synic_msr::Profile;

use crate::control::StopReason;
use crate::devices::{DebugExit, FwCfg, Serial};
use crate::error::Result;
use crate::io::PortDevice;
use crate::layout::ports;
use crate::multiboot;
use crate::synic_vm::SynicVmBuilder;
use crate::vcpu::VcpuHandlers;
use crate::vm::{RunOutcome, Vm, VmConfig};

/// What to boot, and on what.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// Kernel or userspace SynIC, or the first the host can do.
    pub mode: ModeRequest,
    /// Register semantics of the userspace SynIC.
    pub profile: Profile,
    /// Show the guest Hyper-V and the SynIC (the default); false: a plain PC.
    pub hyperv: bool,
    /// vCPUs.
    pub smp: u32,
    /// RAM in MiB.
    pub mem_mib: u64,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// The kernel's path (QEMU passes it as the first word of the command line).
    pub kernel: String,
    /// The rest of the command line.
    pub args: Vec<String>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            mode: ModeRequest::Auto,
            profile: Profile::Tlfs,
            hyperv: true,
            smp: 1,
            mem_mib: 128,
            timeout: None,
            kernel: String::new(),
            args: Vec::new(),
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    /// The SynIC mode (`None` without Hyper-V).
    pub mode: Option<SynicMode>,
    /// The VM's outcome.
    pub outcome: RunOutcome,
}

/// Exit status when the guest triple-faulted (or otherwise shut down without isa-debug-exit).
pub const EXIT_GUEST_SHUTDOWN: u8 = 4;
/// Exit status when the time limit stopped the guest (as timeout(1)).
pub const EXIT_TIMEOUT: u8 = 124;

impl RunReport {
    /// The process exit status QEMU would give: isa-debug-exit's `value << 1 | 1`;
    /// [`EXIT_TIMEOUT`] at the time limit; [`EXIT_GUEST_SHUTDOWN`] for a triple fault or a
    /// KVM system event (a guest that crashed is a failure, never 0); `None` for a VMM error.
    pub fn exit_status(&self) -> Option<u8> {
        match self.outcome.reason {
            StopReason::DebugExit(v) => Some(DebugExit::qemu_status(v) as u8),
            StopReason::Timeout => Some(EXIT_TIMEOUT),
            StopReason::Shutdown { .. } | StopReason::SystemEvent { .. } => {
                Some(EXIT_GUEST_SHUTDOWN)
            }
            StopReason::Error { .. }
            | StopReason::Kvm { .. }
            | StopReason::Synic { .. }
            | StopReason::Requested => None,
        }
    }
}

fn add_pc_devices(
    vm: &mut Vm,
    smp: u32,
    mem_size: u64,
    console: Box<dyn Write + Send>,
) -> Result<()> {
    let devices: [(u16, u16, Arc<dyn PortDevice>); 3] = [
        (ports::COM1, 8, Arc::new(Serial::new(ports::COM1, console))),
        (
            ports::DEBUG_EXIT,
            1,
            Arc::new(DebugExit::new(vm.control().clone())),
        ),
        (
            ports::FW_CFG_SELECTOR,
            2,
            Arc::new(FwCfg::new(smp as u16, mem_size)),
        ),
    ];
    for (port, len, dev) in devices {
        vm.add_device(port, len, dev)?;
    }
    Ok(())
}

/// Boots `image` as `config` says, COM1 to `console`, and waits for it to stop;
/// `progress(elapsed, exits)` every `interval`.
pub fn run(
    config: &RunConfig,
    image: &[u8],
    console: Box<dyn Write + Send>,
    interval: Duration,
    mut progress: impl FnMut(Duration, u64),
) -> Result<RunReport> {
    let mem_size = config.mem_mib << 20;
    // QEMU passes the kernel's name as the first word of the command line.
    let cmdline = std::iter::once(config.kernel.as_str())
        .chain(config.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let mut tick = |t: Duration, exits: &[u64]| progress(t, exits.iter().sum());
    if !config.hyperv {
        let mut vm = Vm::new(VmConfig {
            vcpus: config.smp,
            mem_size,
            mode: config.mode,
            features: HvFeatures::NONE,
        })?;
        add_pc_devices(&mut vm, config.smp, mem_size, console)?;
        let entry = multiboot::load(vm.memory(), image, &cmdline)?;
        vm.boot_protected_mode(entry)?;
        let running = vm.start(VcpuHandlers::without_synic)?;
        let outcome = running.wait_with_progress(config.timeout, interval, &mut tick);
        return Ok(RunReport {
            mode: None,
            outcome,
        });
    }
    let mut svm = SynicVmBuilder::new()
        .vcpus(config.smp)
        .memory(mem_size)
        .mode(config.mode)
        .profile(config.profile)
        .features(HvFeatures::SYNIC)
        .testdev(true)
        .build()?;
    let mode = svm.mode();
    let vm = svm.vm_mut();
    add_pc_devices(vm, config.smp, mem_size, console)?;
    let entry = multiboot::load(vm.memory(), image, &cmdline)?;
    vm.boot_protected_mode(entry)?;
    let running = svm.start()?;
    let outcome = running.wait_with_progress(config.timeout, interval, &mut tick);
    Ok(RunReport {
        mode: Some(mode),
        outcome,
    })
}
