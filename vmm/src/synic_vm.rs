//! This VMM's [`Vm`] with the SynIC attached, through synic-kvm's public API only: the same
//! calls any embedder makes (`docs/embedding.md`).
//!
//! [`SynicVmBuilder::build`] creates the [`Vm`] (its capability probe, MSR exits, CPUID and
//! vCPU setup come from synic-kvm), then [`VmSynicBuilder`] wires the SynIC to it (routes on
//! the VM's one routing table, the partition, acks, timers), and optionally puts QEMU's
//! hyperv-testdev at port 0x3000. [`SynicVm::start`] gives every vCPU thread its
//! [`synic_kvm::VcpuSynic`]. [`RunningSynicVm::pause`] / [`RunningSynicVm::resume`] and
//! [`VmSynic::save`] take a snapshot of a running VM; [`SynicVm::restore`] puts one into a new VM
//! before it starts.
//!
//! ```no_run
//! use std::time::Duration;
//! use synic::{HvMessage, MessageType, VpIndex};
//! use synic_kvm::ModeRequest;
//! use synic_vmm::synic_vm::SynicVmBuilder;
//!
//! # fn main() -> Result<(), synic_vmm::Error> {
//! let mut vm = SynicVmBuilder::new().vcpus(2).mode(ModeRequest::Auto).build()?;
//! // vm.vm_mut().add_device(..); program.load(vm.vm_mut())?;
//! let running = vm.start()?;
//! let synic = running.synic().clone();
//! let msg = HvMessage::new(MessageType(1), 0, b"hello").unwrap();
//! let _ = synic.partition().post_message(VpIndex(0), 2u32, msg);
//! running.pause(Duration::from_secs(5))?;
//! let state = synic.save()?; // vCPUs paused: a consistent snapshot
//! running.resume()?;
//! let outcome = running.wait(Some(Duration::from_secs(10)));
//! # let _ = (outcome, state); Ok(()) }
//! ```

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use synic::SintIndex;
use synic_kvm::testdev::TestDev;
use synic_kvm::{
    GuestTsc, HvFeatures, ModeRequest, StimerHook, SynicMode, SynicState, VmSynicBuilder,
};
use synic_msr::Profile;
use synic_routing::GsiRoutingOwner;

use crate::control::VmControl;
use crate::devices::HvTestDev;
use crate::error::{kvm_err, Error, Result};
use crate::layout::ports;
use crate::memory::GuestMemory;
use crate::snapshot::VcpuSnapshot;
use crate::vcpu::VcpuHandlers;
use crate::vm::{RunOutcome, RunningVm, Vm, VmConfig};

/// Guest memory as the SynIC holds it.
pub type SynicMemory = Arc<GuestMemory>;
/// The SynIC of one of this VMM's VMs.
pub type VmSynic = synic_kvm::VmSynic<SynicMemory>;
/// The model's partition over this VMM's guest memory.
pub type SynicPartition = synic::Partition<SynicMemory>;
/// One VP of the model over this VMM's guest memory.
pub type SynicVp = synic::Vp<SynicMemory>;

/// KVM's in-kernel LAPIC timer counts at 1 GHz (one bus cycle per nanosecond): what
/// HV_X64_MSR_APIC_FREQUENCY says.
pub const KVM_APIC_BUS_HZ: u64 = 1_000_000_000;

/// Configures a [`SynicVm`].
#[derive(Clone)]
pub struct SynicVmBuilder {
    vcpus: u32,
    mem_size: u64,
    mode: ModeRequest,
    profile: Profile,
    features: HvFeatures,
    queue_capacity: usize,
    routed_sints: Vec<SintIndex>,
    testdev: bool,
    stimer_hook: Option<Arc<dyn StimerHook>>,
    delegated: Option<(Arc<dyn GsiRoutingOwner>, Range<u32>)>,
}

impl std::fmt::Debug for SynicVmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynicVmBuilder")
            .field("vcpus", &self.vcpus)
            .field("mem_size", &self.mem_size)
            .field("mode", &self.mode)
            .field("profile", &self.profile)
            .field("features", &self.features)
            .field("queue_capacity", &self.queue_capacity)
            .field("routed_sints", &self.routed_sints)
            .field("testdev", &self.testdev)
            .finish_non_exhaustive()
    }
}

impl Default for SynicVmBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SynicVmBuilder {
    /// One vCPU, 64 MiB, mode chosen automatically, TLFS profile, every SynIC feature in
    /// CPUID, the default queue capacity, routes for all 16 SINTs of every VP, no test device.
    pub fn new() -> Self {
        Self {
            vcpus: 1,
            mem_size: 64 << 20,
            mode: ModeRequest::Auto,
            profile: Profile::Tlfs,
            features: HvFeatures::SYNIC,
            queue_capacity: synic::DEFAULT_QUEUE_CAPACITY,
            routed_sints: SintIndex::ALL.to_vec(),
            testdev: false,
            stimer_hook: None,
            delegated: None,
        }
    }

    /// Number of vCPUs (VP indices and APIC ids `0..n`).
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }

    /// Guest RAM in bytes.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.mem_size = bytes;
        self
    }

    /// Kernel mode, userspace mode, or the first one the host can do ([`ModeRequest::Auto`]).
    /// A forced mode the host cannot do fails in [`build`](Self::build) with an error naming
    /// the missing capability.
    pub fn mode(mut self, mode: ModeRequest) -> Self {
        self.mode = mode;
        self
    }

    /// TLFS-strict or KVM-compatible register and delivery semantics.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// The Hyper-V features advertised in CPUID. With `frequency_msrs`, the TSC frequency KVM
    /// runs the vCPUs at and the 1 GHz LAPIC timer answer the frequency MSRs. With
    /// `reference_tsc` in userspace mode the partition's clock runs on the guest's TSC
    /// ([`GuestTsc::probe`]) so the reference TSC page is valid, when the host allows
    /// ([`SynicVm::reference_tsc_page`] says).
    pub fn features(mut self, features: HvFeatures) -> Self {
        self.features = features;
        self
    }

    /// Capacity of each (VP, SINT) message queue.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Which SINTs of every VP get a route at creation (default: all 16).
    pub fn routed_sints(mut self, sints: &[SintIndex]) -> Self {
        self.routed_sints = sints.to_vec();
        self
    }

    /// Whether to put QEMU's hyperv-testdev at port `0x3000` (default off). It lets the guest
    /// create SINT routes and connections (and destroy only its own): for test guests.
    pub fn testdev(mut self, on: bool) -> Self {
        self.testdev = on;
        self
    }

    /// Where synthetic-timer changes go (default: synic-kvm's timer thread in userspace mode).
    pub fn stimer_hook(mut self, hook: Arc<dyn StimerHook>) -> Self {
        self.stimer_hook = Some(hook);
        self
    }

    /// The VM's GSI routing table belongs to `owner` (as in a VMM with its own interrupt
    /// manager): the SINT routes take GSIs from `gsis` and every change of them goes to `owner`
    /// ([`VmSynicBuilder::delegate_routing`]).
    pub fn delegate_routing(mut self, owner: Arc<dyn GsiRoutingOwner>, gsis: Range<u32>) -> Self {
        self.delegated = Some((owner, gsis));
        self
    }

    /// Builds the VM and attaches the SynIC.
    pub fn build(self) -> Result<SynicVm> {
        let vm = Vm::new(VmConfig {
            vcpus: self.vcpus,
            mem_size: self.mem_size,
            mode: self.mode,
            features: self.features,
        })?;
        self.attach(vm)
    }

    /// Attaches the SynIC to `vm`, built with [`Vm::new`] and not started: the VM's mode,
    /// vCPU count and CPUID features are used (this builder's `vcpus`, `memory`, `mode` and
    /// `features` are not). For a VM that needed something of its own before the SynIC is
    /// wired, e.g. a routing owner over its VM fd ([`delegate_routing`](Self::delegate_routing)).
    pub fn attach(self, mut vm: Vm) -> Result<SynicVm> {
        let vcpus = vm.config().vcpus;
        let mut synic = VmSynicBuilder::new(vm.mode(), vcpus)
            .profile(self.profile)
            .queue_capacity(self.queue_capacity)
            .routed_sints(&self.routed_sints);
        if let Some(hook) = self.stimer_hook {
            synic = synic.stimer_hook(hook);
        }
        if let Some((owner, gsis)) = self.delegated {
            synic = synic.delegate_routing(owner, gsis);
        }
        let mut tsc_page = match vm.mode() {
            SynicMode::Kernel => "KVM's (kernel mode)".to_string(),
            SynicMode::Userspace => "not advertised".to_string(),
        };
        if vm.mode() == SynicMode::Userspace && vm.config().features.reference_tsc {
            match GuestTsc::probe(&vm.vcpu_fds()) {
                Ok(tsc) => {
                    tsc_page = format!(
                        "valid, on the guest TSC ({} kHz, KVM offset {:#x})",
                        tsc.tsc_hz() / 1000,
                        tsc.offset()
                    );
                    synic = synic.reference_tsc(tsc);
                }
                Err(e) => tsc_page = format!("sequence 0 (read TIME_REF_COUNT): {e}"),
            }
        }
        if vm.config().features.frequency_msrs {
            let khz = vm
                .vcpu(0)
                .ok_or(Error::AlreadyStarted)?
                .get_tsc_khz()
                .map_err(kvm_err("KVM_GET_TSC_KHZ"))?;
            synic = synic.frequencies(u64::from(khz) * 1000, KVM_APIC_BUS_HZ);
        }
        let synic = synic.build(Arc::clone(vm.vm_fd()), Arc::new(vm.memory().clone()))?;
        let testdev = if self.testdev {
            let dev = Arc::new(TestDev::new(Arc::clone(&synic)));
            vm.add_device(ports::HV_TESTDEV, 4, Arc::new(HvTestDev(Arc::clone(&dev))))?;
            Some(dev)
        } else {
            None
        };
        Ok(SynicVm {
            vm,
            synic,
            testdev,
            tsc_page,
        })
    }
}

/// A VM with the SynIC attached, not started yet: add devices and load the guest through
/// [`SynicVm::vm_mut`], then [`SynicVm::start`].
#[derive(Debug)]
pub struct SynicVm {
    vm: Vm,
    synic: Arc<VmSynic>,
    testdev: Option<Arc<TestDev<SynicMemory>>>,
    tsc_page: String,
}

impl SynicVm {
    /// The VM (mode, memory, VM fd, control).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The VM, to add devices and load the guest.
    pub fn vm_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// The SynIC (partition, connections, routes, save/restore).
    pub fn synic(&self) -> &Arc<VmSynic> {
        &self.synic
    }

    /// The mode in use.
    pub fn mode(&self) -> SynicMode {
        self.vm.mode()
    }

    /// The hyperv-testdev device, when built with it.
    pub fn testdev(&self) -> Option<&Arc<TestDev<SynicMemory>>> {
        self.testdev.as_ref()
    }

    /// What the reference TSC page will show, in words: valid on the guest's TSC, sequence 0
    /// and why, not advertised, or KVM's (kernel mode).
    pub fn reference_tsc_page(&self) -> &str {
        &self.tsc_page
    }

    /// Restores a state saved by [`VmSynic::save`] into this VM before its start, guest memory
    /// already in place ([`synic_kvm::VmSynic::restore`] with this VM's vCPU fds).
    pub fn restore(&mut self, state: &SynicState) -> Result<()> {
        self.restore_with_downtime(state, Duration::ZERO)
    }

    /// [`restore`](Self::restore), declaring that the VM was away for `downtime`.
    pub fn restore_with_downtime(&mut self, state: &SynicState, downtime: Duration) -> Result<()> {
        let fds = self.vm.vcpu_fds();
        if fds.len() != self.synic.vcpus() as usize {
            return Err(Error::AlreadyStarted);
        }
        Ok(self.synic.restore_with_downtime(state, &fds, downtime)?)
    }

    /// Puts the vCPU states of a paused VM into this one's vCPUs, before start.
    pub fn restore_vcpus(&mut self, snapshots: &[VcpuSnapshot]) -> Result<()> {
        self.vm.restore_vcpus(snapshots)
    }

    /// Starts the vCPUs, each with its [`synic_kvm::VcpuSynic`].
    pub fn start(self) -> Result<RunningSynicVm> {
        self.start_with(|_, handlers| handlers)
    }

    /// Like [`start`](Self::start), letting `customize(vcpu, handlers)` change a vCPU's
    /// handlers (e.g. a test that observes the SynIC's hypercalls).
    pub fn start_with(
        self,
        mut customize: impl FnMut(u32, VcpuHandlers) -> VcpuHandlers,
    ) -> Result<RunningSynicVm> {
        let synic = Arc::clone(&self.synic);
        let mut handlers = Vec::with_capacity(synic.vcpus() as usize);
        for n in 0..synic.vcpus() {
            handlers.push(customize(n, VcpuHandlers::with_synic(synic.vcpu(n)?)));
        }
        let mut handlers = handlers.into_iter();
        let running = self.vm.start(|_| {
            handlers
                .next()
                .unwrap_or_else(|| VcpuHandlers::without_synic(0))
        })?;
        Ok(RunningSynicVm {
            running: Some(running),
            synic,
            testdev: self.testdev,
        })
    }
}

/// A running [`SynicVm`]. Waiting or dropping it stops the vCPUs and pauses the SynIC, which
/// stays usable afterwards (counters, save).
#[derive(Debug)]
pub struct RunningSynicVm {
    running: Option<RunningVm>,
    synic: Arc<VmSynic>,
    testdev: Option<Arc<TestDev<SynicMemory>>>,
}

impl RunningSynicVm {
    /// The SynIC.
    pub fn synic(&self) -> &Arc<VmSynic> {
        &self.synic
    }

    /// The hyperv-testdev device, when built with it.
    pub fn testdev(&self) -> Option<&Arc<TestDev<SynicMemory>>> {
        self.testdev.as_ref()
    }

    fn inner(&self) -> &RunningVm {
        // Only `wait_with_progress` (which consumes `self`) and `drop` take it.
        self.running
            .as_ref()
            .expect("running VM present until finished")
    }

    /// The running VM (memory, VM fd).
    pub fn vm(&self) -> &RunningVm {
        self.inner()
    }

    /// Stop control (devices, tests).
    pub fn control(&self) -> &Arc<VmControl> {
        self.inner().control()
    }

    /// Pauses the VM for a save: every vCPU parks (capturing KVM's SynIC registers in kernel
    /// mode), then the SynIC's own activity (timers) pauses. [`VmSynic::save`] may follow;
    /// [`resume`](Self::resume) continues.
    pub fn pause(&self, timeout: Duration) -> Result<()> {
        if !self.inner().pause(timeout) {
            return Err(Error::PauseFailed);
        }
        self.synic.pause();
        Ok(())
    }

    /// Every vCPU's state from the current pause (to restore into a new VM with
    /// [`SynicVm::restore_vcpus`]).
    pub fn vcpu_snapshots(&self) -> Result<Vec<VcpuSnapshot>> {
        self.inner().vcpu_snapshots()
    }

    /// Ends a pause: the SynIC first, then the vCPUs.
    pub fn resume(&self) -> Result<()> {
        self.synic.resume()?;
        self.inner().resume();
        Ok(())
    }

    /// Waits until the VM stops or `timeout` passes (then stops it).
    pub fn wait(self, timeout: Option<Duration>) -> RunOutcome {
        self.wait_with_progress(timeout, Duration::MAX, |_, _| {})
    }

    /// [`RunningVm::wait_with_progress`].
    pub fn wait_with_progress(
        mut self,
        timeout: Option<Duration>,
        interval: Duration,
        progress: impl FnMut(Duration, &[u64]),
    ) -> RunOutcome {
        let running = self.running.take().expect("running VM present");
        let outcome = running.wait_with_progress(timeout, interval, progress);
        // Every vCPU left KVM_RUN and captured its registers: the SynIC can be saved.
        self.synic.pause();
        outcome
    }

    /// Stops the VM now.
    pub fn stop(self) -> RunOutcome {
        self.control()
            .request_stop(crate::control::StopReason::Requested);
        self.wait(None)
    }
}

impl Drop for RunningSynicVm {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            drop(running);
            self.synic.pause();
        }
    }
}
