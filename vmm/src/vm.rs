//! A VM: KVM VM fd with the in-kernel irqchip, guest RAM, vCPUs with Hyper-V CPUID, MSR exits
//! set up for the SynIC mode, the I/O bus; then vCPU threads and a clean stop.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_mp_state, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use synic_kvm::{cpuid, Capabilities, HvFeatures, ModeRequest, SynicMode};
use vmm_sys_util::signal::Killable;

use crate::boot::{self, LongModeEntry, ProtectedModeEntry};
use crate::control::{StopReason, VmControl};
use crate::error::{kvm_err, Error, Result};
use crate::io::{IoBus, PortDevice};
use crate::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::memory::{self, GuestMemory};
use crate::snapshot::VcpuSnapshot;
use crate::vcpu::{VcpuHandlers, VcpuRunner, VcpuStats};
use crate::{kick, lapic};

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
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vcpus: 1,
            mem_size: 64 << 20,
            mode: ModeRequest::Auto,
            features: HvFeatures::SYNIC,
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
    control: Arc<VmControl>,
    config: VmConfig,
}

/// What this VMM needs of KVM beyond the SynIC: (present, capability, what for).
fn vmm_requirements(kvm: &Kvm) -> [(bool, &'static str, &'static str); 3] {
    [
        (
            kvm.check_extension(Cap::SetTssAddr),
            "KVM_CAP_SET_TSS_ADDR",
            "vCPU setup",
        ),
        (
            kvm.check_extension(Cap::SetIdentityMapAddr),
            "KVM_CAP_SET_IDENTITY_MAP_ADDR",
            "vCPU setup",
        ),
        (
            kvm.check_extension(Cap::ImmediateExit),
            "KVM_CAP_IMMEDIATE_EXIT",
            "stopping and pausing vCPUs cleanly",
        ),
    ]
}

impl Vm {
    /// Builds the VM: the VM fd with its in-kernel irqchip, the capability probe and mode
    /// decision (synic-kvm's), RAM, MSR exits for the mode, and the vCPUs with Hyper-V CPUID
    /// (prepared for the mode by [`synic_kvm::setup_vcpu`]).
    pub fn new(config: VmConfig) -> Result<Vm> {
        let kvm = synic_kvm::open_kvm()?;
        for (present, cap, needed_for) in vmm_requirements(&kvm) {
            if !present {
                return Err(Error::MissingCapability { cap, needed_for });
            }
        }
        let limit = kvm.get_max_vcpus().min(255);
        if config.vcpus == 0 || config.vcpus as usize > limit {
            return Err(Error::VcpuCount {
                requested: config.vcpus,
                limit,
            });
        }
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        // After the irqchip: the probe tries (resample) irqfds on this VM.
        let caps = Capabilities::probe(&kvm, &fd);
        let mode = caps.choose_mode(config.mode)?;
        let memory = memory::allocate(config.mem_size)?;
        memory::register(&fd, &memory)?;
        synic_kvm::setup_vm(&fd, mode)?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let hv_leaves = cpuid::hyperv_leaves(config.features, mode, config.vcpus);
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let vcpu = fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut table = crate::cpu::with_apic_id(&supported, id)?;
            cpuid::apply(&mut table, &hv_leaves)?;
            vcpu.set_cpuid2(&table).map_err(kvm_err("KVM_SET_CPUID2"))?;
            lapic::configure_lint(&vcpu)?;
            synic_kvm::setup_vcpu(&vcpu, mode)?;
            vcpus.push(vcpu);
        }
        let control = Arc::new(VmControl::new(config.vcpus));
        Ok(Vm {
            vcpus,
            fd: Arc::new(fd),
            kvm,
            memory,
            mode,
            caps,
            bus: IoBus::new(),
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

    /// Puts vCPU states taken by [`RunningVm::vcpu_snapshots`] into this VM's vCPUs, before
    /// start (the RAM must be in place: the APIC state refers to nothing in it, but the
    /// registers do).
    pub fn restore_vcpus(&mut self, snapshots: &[VcpuSnapshot]) -> Result<()> {
        if snapshots.len() != self.vcpus.len() {
            return Err(Error::Config(format!(
                "{} vCPU snapshots for {} vCPUs",
                snapshots.len(),
                self.vcpus.len()
            )));
        }
        for (fd, s) in self.vcpus.iter().zip(snapshots) {
            s.restore(fd)?;
        }
        Ok(())
    }

    /// The vCPU fds, before start (to restore a saved SynIC state into them).
    pub fn vcpu_fds(&self) -> Vec<&VcpuFd> {
        self.vcpus.iter().collect()
    }

    /// Starts one thread per vCPU. `handlers(vcpu)` builds each vCPU's exit handlers.
    pub fn start(mut self, mut handlers: impl FnMut(u32) -> VcpuHandlers) -> Result<RunningVm> {
        kick::install()?;
        let bus = Arc::new(std::mem::take(&mut self.bus));
        let mut running = RunningVm {
            threads: Vec::new(),
            fd: self.fd.clone(),
            memory: self.memory.clone(),
            control: self.control.clone(),
            started: Instant::now(),
            finished: None,
        };
        for (index, fd) in (0u32..).zip(self.vcpus.drain(..)) {
            let runner = VcpuRunner {
                index,
                fd,
                handlers: handlers(index),
                bus: bus.clone(),
                control: self.control.clone(),
                sync_regs: self.caps.sync_regs,
            };
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || runner.run())
                .map_err(|source| Error::Thread {
                    what: "vCPU",
                    source,
                })?; // dropping `running` stops the started ones
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

    /// Pauses every vCPU: each leaves `KVM_RUN` at its next exit or kick, captures its SynIC
    /// state (kernel mode: KVM's registers) and parks until [`resume`](Self::resume). Returns
    /// once all are parked, or false if the VM stopped or they did not park within `timeout`.
    pub fn pause(&self, timeout: Duration) -> bool {
        self.control.request_pause();
        let deadline = Instant::now() + timeout;
        let n = self.threads.len() as u32;
        // Kick until all parked: a kick that lands before a thread registered its kvm_run
        // would be lost, the next one is not.
        loop {
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(kick::signal());
            }
            if self.control.wait_parked(n, Duration::from_millis(5)) {
                return true;
            }
            if self.control.stopping() || Instant::now() >= deadline {
                self.control.resume();
                return false;
            }
        }
    }

    /// Ends a pause.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Every vCPU's state as it parked in the current pause, in vCPU order.
    pub fn vcpu_snapshots(&self) -> Result<Vec<VcpuSnapshot>> {
        self.control.snapshots()
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
