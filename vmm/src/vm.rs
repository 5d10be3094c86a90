//! A VM: KVM VM fd with the in-kernel irqchip, guest RAM, vCPUs with Hyper-V CPUID, MSR exits
//! set up for the SynIC mode, the I/O bus; then vCPU threads and a clean stop.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_enable_cap, kvm_mp_state, KVM_CAP_HYPERV_SYNIC2, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use synic_msr::Profile;
use vmm_sys_util::signal::Killable;

use crate::boot::{self, LongModeEntry, ProtectedModeEntry};
use crate::control::{StopReason, VmControl};
use crate::cpuid::{self, HvFeatures};
use crate::error::{kvm_err, Error, Result};
use crate::hv::{HvPartition, HypercallPageState, PartitionMsrs};
use crate::io::{IoBus, PortDevice};
use crate::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::memory::{self, GuestMemory};
use crate::probe::{Capabilities, ModeRequest, SynicMode};
use crate::vcpu::{VcpuHandlers, VcpuRunner, VcpuStats};
use crate::{kick, lapic, msr};

/// What VM to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Number of vCPUs (their VP indices and APIC ids are 0..vcpus).
    pub vcpus: u32,
    /// RAM in bytes, at guest-physical 0.
    pub mem_size: u64,
    /// Kernel or userspace SynIC.
    pub mode: ModeRequest,
    /// Hyper-V features advertised in CPUID.
    pub features: HvFeatures,
    /// Semantics of the partition-wide Hyper-V registers (userspace mode).
    pub profile: Profile,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vcpus: 1,
            mem_size: 64 << 20,
            mode: ModeRequest::Auto,
            features: HvFeatures::SYNIC,
            profile: Profile::Tlfs,
        }
    }
}

/// A built VM whose vCPUs have not started yet.
#[derive(Debug)]
pub struct Vm {
    vcpus: Vec<VcpuFd>,
    fd: Arc<VmFd>,
    kvm: Kvm,
    memory: GuestMemory,
    mode: SynicMode,
    caps: Capabilities,
    bus: IoBus,
    partition_msrs: PartitionMsrs,
    control: Arc<VmControl>,
    config: VmConfig,
}

impl Vm {
    /// Builds the VM: checks capabilities, creates the irqchip, RAM, MSR exits and vCPUs.
    pub fn new(config: VmConfig) -> Result<Vm> {
        let (kvm, caps) = Capabilities::probe()?;
        let mode = caps.choose_mode(config.mode)?;
        let limit = kvm.get_max_vcpus().min(255);
        if config.vcpus == 0 || config.vcpus as usize > limit {
            return Err(Error::Config(format!(
                "{} vCPUs requested; this host supports 1..={limit}",
                config.vcpus
            )));
        }
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let memory = memory::allocate(config.mem_size)?;
        memory::register(&fd, &memory)?;
        msr::enable_msr_exits(&fd, mode)?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let hv_leaves = cpuid::hyperv_leaves(config.features, mode, config.vcpus);
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let vcpu = fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = cpuid::vcpu_cpuid(&supported, &hv_leaves, id)?;
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            lapic::configure_lint(&vcpu)?;
            if mode == SynicMode::Kernel {
                let cap = kvm_enable_cap {
                    cap: KVM_CAP_HYPERV_SYNIC2,
                    ..Default::default()
                };
                vcpu.enable_cap(&cap)
                    .map_err(kvm_err("KVM_ENABLE_CAP(HYPERV_SYNIC2)"))?;
            }
            vcpus.push(vcpu);
        }
        let hv = Arc::new(HvPartition::new(config.profile, memory.clone()));
        let control = Arc::new(VmControl::new(config.vcpus));
        Ok(Vm {
            vcpus,
            fd: Arc::new(fd),
            kvm,
            memory,
            mode,
            caps,
            bus: IoBus::new(),
            partition_msrs: PartitionMsrs::Vmm(hv),
            control,
            config,
        })
    }

    /// The SynIC mode in use.
    pub fn mode(&self) -> SynicMode {
        self.mode
    }

    /// The host's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The configuration the VM was built with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The VM fd (routing, irqfds, MSIs).
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// The `/dev/kvm` handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Stop control, for devices that stop the VM.
    pub fn control(&self) -> &Arc<VmControl> {
        &self.control
    }

    /// The VMM's own partition-wide Hyper-V registers (userspace mode), or `None` once they
    /// were handed to an attached SynIC model.
    pub fn hv(&self) -> Option<&Arc<HvPartition>> {
        self.partition_msrs.vmm()
    }

    /// Hands GUEST_OS_ID, HYPERCALL and TIME_REF_COUNT to the vCPUs' [`crate::MsrHandler`]s:
    /// an attached SynIC model owns them (one owner; the VMM's [`HvPartition`] no longer
    /// answers). `page` tells the vCPU loop when the hypercall trap port is live.
    pub fn hand_partition_registers_to_handlers(&mut self, page: Arc<dyn HypercallPageState>) {
        self.partition_msrs = PartitionMsrs::Handlers(page);
    }

    /// vCPU `index`, before start (for extra setup).
    pub fn vcpu(&self, index: u32) -> Option<&VcpuFd> {
        self.vcpus.get(index as usize)
    }

    /// Puts a device on ports `start..start + len`.
    pub fn add_device(&mut self, start: u16, len: u16, device: Arc<dyn PortDevice>) -> Result<()> {
        self.bus.insert(start, len, device)
    }

    /// Starts every vCPU in long mode at `entry(vcpu)` (raw 64-bit programs): writes the boot
    /// GDT and identity map, and makes the APs runnable without INIT/SIPI.
    pub fn boot_long_mode(&mut self, entry: impl Fn(u32) -> LongModeEntry) -> Result<()> {
        boot::write_gdt(&self.memory)?;
        boot::write_identity_map(&self.memory)?;
        for (id, vcpu) in (0u32..).zip(&self.vcpus) {
            let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            let regs = entry(id).apply(&mut sregs);
            vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
            vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
            if id != 0 {
                let state = kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                };
                vcpu.set_mp_state(state)
                    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
            }
        }
        Ok(())
    }

    /// Starts the BSP in 32-bit protected mode (multiboot); the APs wait for INIT/SIPI.
    pub fn boot_protected_mode(&mut self, entry: ProtectedModeEntry) -> Result<()> {
        boot::write_gdt(&self.memory)?;
        let bsp = &self.vcpus[0];
        let mut sregs = bsp.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let regs = entry.apply(&mut sregs);
        bsp.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        bsp.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
    }

    /// Starts one thread per vCPU. `handlers(vcpu)` builds each vCPU's exit handlers.
    pub fn start(mut self, mut handlers: impl FnMut(u32) -> VcpuHandlers) -> Result<RunningVm> {
        kick::install().map_err(kvm_err("installing the vCPU kick signal handler"))?;
        let bus = Arc::new(std::mem::take(&mut self.bus));
        let mut running = RunningVm {
            threads: Vec::new(),
            fd: self.fd.clone(),
            memory: self.memory.clone(),
            control: self.control.clone(),
            partition_msrs: self.partition_msrs.clone(),
            started: Instant::now(),
            finished: None,
        };
        for (index, fd) in (0u32..).zip(self.vcpus.drain(..)) {
            let runner = VcpuRunner {
                index,
                fd,
                handlers: handlers(index),
                bus: bus.clone(),
                partition_msrs: self.partition_msrs.clone(),
                control: self.control.clone(),
                mode: self.mode,
                sync_regs: self.caps.sync_regs,
            };
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || runner.run())
                .map_err(Error::Thread)?; // dropping `running` stops the started ones
            running.threads.push(thread);
        }
        Ok(running)
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// Why the VM stopped.
    pub reason: StopReason,
    /// Wall-clock time from start to stop.
    pub elapsed: Duration,
    /// Per-vCPU exit statistics.
    pub stats: Vec<VcpuStats>,
}

/// A VM whose vCPUs are running. Dropping it stops and joins them.
#[derive(Debug)]
pub struct RunningVm {
    threads: Vec<JoinHandle<VcpuStats>>,
    fd: Arc<VmFd>,
    memory: GuestMemory,
    control: Arc<VmControl>,
    partition_msrs: PartitionMsrs,
    started: Instant,
    finished: Option<Duration>,
}

impl RunningVm {
    /// The VM fd (routing, irqfds, MSIs).
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Stop control.
    pub fn control(&self) -> &Arc<VmControl> {
        &self.control
    }

    /// The VMM's own partition-wide Hyper-V registers (`None` when a SynIC model owns them).
    pub fn hv(&self) -> Option<&Arc<HvPartition>> {
        self.partition_msrs.vmm()
    }

    /// Waits until the VM stops or `timeout` passes (then stops it with
    /// [`StopReason::Timeout`]).
    pub fn wait(self, timeout: Option<Duration>) -> RunOutcome {
        self.wait_with_progress(timeout, Duration::MAX, |_, _| {})
    }

    /// Like [`RunningVm::wait`], calling `progress(elapsed, exits per vCPU)` every `interval`.
    pub fn wait_with_progress(
        mut self,
        timeout: Option<Duration>,
        interval: Duration,
        mut progress: impl FnMut(Duration, &[u64]),
    ) -> RunOutcome {
        let deadline = timeout.map(|t| self.started + t);
        let mut next_progress = self.started.checked_add(interval);
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                self.control.request_stop(StopReason::Timeout);
            }
            if let Some(p) = next_progress.filter(|&p| now >= p) {
                progress(now - self.started, &self.control.exits());
                next_progress = p.checked_add(interval);
            }
            let wake = [deadline, next_progress].into_iter().flatten().min();
            let slice = wake.map_or(Duration::from_secs(3600), |w| {
                w.saturating_duration_since(now)
            });
            if self.control.wait_stop(slice) {
                break;
            }
        }
        let stats = self.join();
        RunOutcome {
            reason: self.control.reason().unwrap_or(StopReason::Requested),
            elapsed: self.finished.unwrap_or_default(),
            stats,
        }
    }

    /// Stops the VM now.
    pub fn stop(self) -> RunOutcome {
        self.control.request_stop(StopReason::Requested);
        self.wait(None)
    }

    fn join(&mut self) -> Vec<VcpuStats> {
        self.control.request_stop(StopReason::Requested);
        self.finished.get_or_insert_with(|| self.started.elapsed());
        // Kick until every thread has left KVM_RUN: one kick suffices (immediate_exit), the
        // loop only guards against a thread busy in a handler when the kick came.
        while self.threads.iter().any(|t| !t.is_finished()) {
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(kick::signal());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.threads
            .drain(..)
            .map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.join();
        }
    }
}
