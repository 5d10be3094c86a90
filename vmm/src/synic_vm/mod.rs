//! A VM with the SynIC model attached: the one place where KVM, the routing table and the
//! model are wired together.
//!
//! [`SynicVmBuilder::build`] creates, in this order:
//!
//! 1. the [`Vm`] (KVM VM, in-kernel irqchip, RAM, vCPUs; in kernel mode `KVM_CAP_HYPERV_SYNIC2`
//!    is enabled on every vCPU as it is created);
//! 2. the VM's one [`RoutingTable`] (KVM's default irqchip routes kept), shared with any device
//!    that needs a GSI ([`AttachedSynic::routing_table`]);
//! 3. SINT routes for every (VP, routed SINT): userspace mode [`UserSintRoutes`] (MSI routes that
//!    follow the guest's SINT registers through `sint_changed`), kernel mode every VP is marked
//!    SynIC-active and then [`KernelSintRoutes`] (HV_SINT routes with resamplefds, committed
//!    after SYNIC2 is on) whose acks go through a channel to [`synic::Partition::ack`];
//! 4. the [`synic::Partition`] over the VM's guest memory, raising SINTs through those routes,
//!    and one [`synic::Vp`] per vCPU behind a per-vCPU mutex (only that vCPU's thread takes it
//!    while the VM runs; the host takes it for save/restore and timers);
//! 5. the hypercall [`Connections`] registry and the QEMU hyperv-testdev device at port
//!    `0x3000` ([`SynicTestDev`]);
//! 6. in userspace mode, GUEST_OS_ID/HYPERCALL/TIME_REF_COUNT are handed to the model
//!    ([`Vm::hand_partition_registers_to_handlers`]): one owner.
//!
//! [`SynicVm::start`] gives every vCPU a [`SynicVcpu`] as its MSR, hypercall and SynIC-exit
//! handler. The host keeps an [`Arc<AttachedSynic>`] for posting, signalling, connections,
//! counters and save/restore. `docs/embedding.md` explains the same wiring for other VMMs.
//!
//! ```no_run
//! use std::time::Duration;
//! use synic::{HvMessage, MessageType, VpIndex};
//! use synic_vmm::synic_vm::SynicVmBuilder;
//! use synic_vmm::ModeRequest;
//!
//! # fn main() -> Result<(), synic_vmm::Error> {
//! let mut vm = SynicVmBuilder::new().vcpus(2).mode(ModeRequest::Auto).build()?;
//! // vm.vm_mut().add_device(..); program.load(vm.vm_mut())?;
//! let running = vm.start()?;
//! let synic = running.synic().clone();
//! let msg = HvMessage::new(MessageType(1), 0, b"hello").unwrap();
//! let _ = synic.partition().post_message(VpIndex(0), 2u32, msg);
//! let outcome = running.wait(Some(Duration::from_secs(10)));
//! let state = synic.save()?; // vCPUs stopped: a consistent snapshot
//! # let _ = (outcome, state); Ok(()) }
//! ```

mod connections;
mod eventfd;
mod host;
mod kernel_state;
mod routes;
mod testdev;
mod timers;
mod vcpu;

use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VmFd;
use synic::hypercall::Connections;
use synic::{Mode, PartitionConfig, SintIndex, SystemReferenceClock, VpIndex};
use synic_msr::Profile;
use synic_routing::{DefaultRoutes, KernelSintRoutes, RoutingTable, UserSintRoutes};

use crate::control::VmControl;
use crate::cpuid::HvFeatures;
use crate::devices::HvTestDev;
use crate::error::{Error, Result};
use crate::layout::ports;
use crate::memory::GuestMemory;
use crate::probe::{ModeRequest, SynicMode};
use crate::vcpu::VcpuHandlers;
use crate::vm::{RunOutcome, RunningVm, Vm, VmConfig};

pub use connections::{GuestEvent, GuestMessage, HostEventConnection, HostMessageConnection};
pub use eventfd::{hyperv_eventfd, EventFdConnection};
pub use host::{AttachedSynic, SynicState, SynicStats};
pub use kernel_state::{KernelSynicState, KERNEL_MSRS, REFERENCE_TSC, VP_ASSIST_PAGE};
pub use testdev::{SynicTestDev, TestDevStats};
pub use timers::{NoStimers, StimerHook};
pub use vcpu::SynicVcpu;

/// Guest memory as the SynIC model holds it.
pub type SynicMemory = Arc<GuestMemory>;
/// The model's partition over this VMM's guest memory.
pub type SynicPartition = synic::Partition<SynicMemory>;
/// One VP of the model over this VMM's guest memory.
pub type SynicVp = synic::Vp<SynicMemory>;

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
}

impl std::fmt::Debug for SynicVmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynicVmBuilder")
            .field("vcpus", &self.vcpus)
            .field("mem_size", &self.mem_size)
            .field("mode", &self.mode)
            .field("profile", &self.profile)
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
    /// One vCPU, 64 MiB, mode chosen automatically, TLFS profile, the default queue capacity,
    /// routes for all 16 SINTs of every VP, the test device on.
    pub fn new() -> Self {
        Self {
            vcpus: 1,
            mem_size: 64 << 20,
            mode: ModeRequest::Auto,
            profile: Profile::Tlfs,
            features: HvFeatures::SYNIC,
            queue_capacity: synic::DEFAULT_QUEUE_CAPACITY,
            routed_sints: SintIndex::ALL.to_vec(),
            testdev: true,
            stimer_hook: None,
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

    /// Kernel mode (`KVM_CAP_HYPERV_SYNIC2`), userspace mode, or the first one the host can do
    /// ([`ModeRequest::Auto`]). A forced mode the host cannot do fails in
    /// [`build`](Self::build) with an error naming the missing capability.
    pub fn mode(mut self, mode: ModeRequest) -> Self {
        self.mode = mode;
        self
    }

    /// TLFS-strict or KVM-compatible register and delivery semantics.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// The Hyper-V features advertised in CPUID.
    pub fn features(mut self, features: HvFeatures) -> Self {
        self.features = features;
        self
    }

    /// Capacity of each (VP, SINT) message queue.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Which SINTs of every VP get a route at creation (default: all 16). More can be added
    /// later with [`AttachedSynic::add_sint_routes`]. Each route costs a GSI (of
    /// `KVM_CAP_IRQ_ROUTING`'s 4096) and one or two file descriptors.
    pub fn routed_sints(mut self, sints: &[SintIndex]) -> Self {
        self.routed_sints = sints.to_vec();
        self
    }

    /// Whether to put the QEMU hyperv-testdev device at port `0x3000` (default on). It lets
    /// the guest create routes and connections: a test device, to turn off for guests that
    /// are not tests.
    pub fn testdev(mut self, on: bool) -> Self {
        self.testdev = on;
        self
    }

    /// Where synthetic-timer changes go, and who starts a timer thread with the VM (default:
    /// a [`crate::timers::TimerThread`] in userspace mode, [`NoStimers`] in kernel mode, where
    /// KVM runs the timers). A hook that runs no timers should come with
    /// [`features`](Self::features) that do not advertise them (`stimer`, `direct_stimer`).
    pub fn stimer_hook(mut self, hook: Arc<dyn StimerHook>) -> Self {
        self.stimer_hook = Some(hook);
        self
    }

    /// Builds the VM and attaches the model (see the module documentation for the order).
    pub fn build(self) -> Result<SynicVm> {
        let mut vm = Vm::new(VmConfig {
            vcpus: self.vcpus,
            mem_size: self.mem_size,
            mode: self.mode,
            features: self.features,
            profile: self.profile,
        })?;
        let mode = vm.mode();
        let table = Arc::new(RoutingTable::new(
            Arc::clone(vm.vm_fd()),
            DefaultRoutes::Keep,
        ));
        let vps: Vec<VpIndex> = (0..self.vcpus).map(VpIndex).collect();
        let (routes, acks) = match mode {
            SynicMode::Userspace => {
                // VP index n runs on vCPU n, whose APIC id is n (see cpuid::vcpu_cpuid).
                let user = UserSintRoutes::new(Arc::clone(&table), vps.iter().map(|&v| (v, v.0)))?;
                user.add_vps(&vps, &self.routed_sints)?;
                (routes::SintRoutes::User(Arc::new(user)), None)
            }
            SynicMode::Kernel => {
                // Vm::new enabled SYNIC2 on every vCPU; KVM builds its SINT->GSI map (the ack
                // path) only for active SynICs, at commit: mark them before any HV_SINT route.
                for &vp in &vps {
                    table.mark_synic_active(vp);
                }
                let (tx, rx) = crossbeam_channel::unbounded();
                let kernel = KernelSintRoutes::new(Arc::clone(&table), tx)?;
                kernel.add_vps(&vps, &self.routed_sints)?;
                (routes::SintRoutes::Kernel(Arc::new(kernel)), Some(rx))
            }
        };
        let model_mode = match mode {
            SynicMode::Userspace => Mode::Userspace,
            SynicMode::Kernel => Mode::Kernel,
        };
        let config = PartitionConfig::new(model_mode, self.profile, self.vcpus)
            .with_queue_capacity(self.queue_capacity);
        let memory: SynicMemory = Arc::new(vm.memory().clone());
        let (partition, model_vps) = synic::Partition::new(
            config,
            Arc::clone(&memory),
            routes.raise(),
            Arc::new(SystemReferenceClock::new()),
        )?;
        if let Some(rx) = acks {
            routes::spawn_ack_pump(rx, Arc::downgrade(&partition))?;
        }
        let hook = self.stimer_hook.unwrap_or_else(|| match mode {
            SynicMode::Userspace => Arc::new(crate::timers::TimerThread::new()),
            SynicMode::Kernel => Arc::new(NoStimers::default()),
        });
        let synic = Arc::new(AttachedSynic::new(
            mode,
            partition,
            model_vps,
            Arc::new(Connections::new()),
            routes,
            memory,
            hook,
        ));
        if mode == SynicMode::Userspace {
            vm.hand_partition_registers_to_handlers(synic.hypercall_page_state());
        }
        let testdev = if self.testdev {
            let dev = Arc::new(HvTestDev::new(SynicTestDev::new(Arc::clone(&synic))));
            vm.add_device(ports::HV_TESTDEV, 4, dev.clone())?;
            Some(dev)
        } else {
            None
        };
        Ok(SynicVm { vm, synic, testdev })
    }
}

/// A VM with the SynIC model attached, not started yet: add devices and load the guest through
/// [`SynicVm::vm_mut`], then [`SynicVm::start`].
#[derive(Debug)]
pub struct SynicVm {
    vm: Vm,
    synic: Arc<AttachedSynic>,
    testdev: Option<Arc<HvTestDev<SynicTestDev>>>,
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

    /// The attached model (partition, connections, routes, save/restore).
    pub fn synic(&self) -> &Arc<AttachedSynic> {
        &self.synic
    }

    /// The mode in use.
    pub fn mode(&self) -> SynicMode {
        self.vm.mode()
    }

    /// The hyperv-testdev device, when built with it.
    pub fn testdev(&self) -> Option<&Arc<HvTestDev<SynicTestDev>>> {
        self.testdev.as_ref()
    }

    /// Restores a state saved by [`AttachedSynic::save`] into this VM before its start, guest
    /// memory already in place. Kernel mode first sets the kvmclock and writes KVM's saved
    /// registers into every vCPU (host-initiated `KVM_SET_MSRS`; SynIC2 is already enabled
    /// on them), then restores the model ([`AttachedSynic::restore`]). A state from the
    /// other mode or for another vCPU count is refused before anything changes.
    pub fn restore(&mut self, state: &SynicState) -> Result<()> {
        self.restore_with_downtime(state, Duration::ZERO)
    }

    /// [`restore`](Self::restore), declaring that the VM was away for `downtime`: the
    /// reference time (and in kernel mode the kvmclock) continues from the saved value plus
    /// `downtime`, so TIME_REF_COUNT never goes backwards and jumps by exactly that.
    pub fn restore_with_downtime(&mut self, state: &SynicState, downtime: Duration) -> Result<()> {
        self.synic.check_fits(state)?;
        if let Some(k) = &state.kernel {
            let downtime_ns = u64::try_from(downtime.as_nanos()).unwrap_or(u64::MAX);
            kernel_state::write_clock(self.vm.vm_fd(), k.clock_ns.saturating_add(downtime_ns))?;
            for (n, regs) in (0u32..).zip(&k.vcpus) {
                let fd = self.vm.vcpu(n).ok_or(Error::AlreadyStarted)?;
                kernel_state::write_vcpu(fd, n, regs)?;
            }
        }
        self.synic.restore_with_downtime(state, downtime)
    }

    /// Starts the vCPUs, each with a [`SynicVcpu`] as its MSR, hypercall and SynIC-exit
    /// handler, and tells the timer hook.
    pub fn start(self) -> Result<RunningSynicVm> {
        self.start_with(|_, handlers| handlers)
    }

    /// Like [`start`](Self::start), letting `customize(vcpu, handlers)` replace or wrap any of
    /// a vCPU's handlers (e.g. a test that records hypercalls before the model sees them).
    pub fn start_with(
        self,
        mut customize: impl FnMut(u32, VcpuHandlers) -> VcpuHandlers,
    ) -> Result<RunningSynicVm> {
        let synic = Arc::clone(&self.synic);
        let running = self.vm.start(|vcpu| {
            let handler = SynicVcpu::new(Arc::clone(&synic), vcpu);
            customize(
                vcpu,
                VcpuHandlers {
                    msr: Box::new(handler.clone()),
                    hypercall: Box::new(handler.clone()),
                    synic_exit: Box::new(handler),
                },
            )
        })?;
        synic.stimer_hook().vm_started(&synic);
        Ok(RunningSynicVm {
            running: Some(running),
            synic,
            testdev: self.testdev,
        })
    }
}

/// A running [`SynicVm`]. Waiting or dropping it stops the vCPUs; the [`AttachedSynic`] stays
/// usable afterwards (counters, save).
#[derive(Debug)]
pub struct RunningSynicVm {
    running: Option<RunningVm>,
    synic: Arc<AttachedSynic>,
    testdev: Option<Arc<HvTestDev<SynicTestDev>>>,
}

impl RunningSynicVm {
    /// The attached model.
    pub fn synic(&self) -> &Arc<AttachedSynic> {
        &self.synic
    }

    /// The hyperv-testdev device, when built with it.
    pub fn testdev(&self) -> Option<&Arc<HvTestDev<SynicTestDev>>> {
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
        let vm_fd = Arc::clone(running.vm_fd());
        let outcome = running.wait_with_progress(timeout, interval, progress);
        self.kernel_clock_after_stop(&vm_fd);
        self.synic.stimer_hook().vm_stopped();
        outcome
    }

    /// Stops the VM now.
    pub fn stop(self) -> RunOutcome {
        self.control()
            .request_stop(crate::control::StopReason::Requested);
        self.wait(None)
    }

    /// Kernel mode: the vCPUs stopped (each read its KVM registers); read the kvmclock.
    fn kernel_clock_after_stop(&self, vm_fd: &VmFd) {
        if self.synic.mode() == SynicMode::Kernel {
            // Without a clock the save reports the VM as not stopped.
            if let Ok(clock) = kernel_state::read_clock(vm_fd) {
                self.synic.kernel_clock_read(clock);
            }
        }
    }
}

impl Drop for RunningSynicVm {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let vm_fd = Arc::clone(running.vm_fd());
            drop(running);
            self.kernel_clock_after_stop(&vm_fd);
            self.synic.stimer_hook().vm_stopped();
        }
    }
}
