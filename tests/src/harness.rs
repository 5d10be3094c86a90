//! Running an e2e program: a VM with the SynIC attached in the requested [`Setup`], the report,
//! debug-exit, step and settle ports, a wall-clock limit, and what the run left behind.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use synic::hypercall::Connections;
use synic::{FlagOutcome, HvMessage, MessageType, Posted, SintIndex, VpIndex};
use synic_kvm::testdev::TestDev;
use synic_kvm::{HvFeatures, ModeRequest, SynicMode, SynicState};
use synic_vmm::devices::{DebugExit, Report, ReportPort};
use synic_vmm::guest::tag as toolkit_tag;
use synic_vmm::layout::ports as vmm_ports;
use synic_vmm::snapshot::VcpuSnapshot;
use synic_vmm::synic_vm::{
    RunningSynicVm, SynicMemory, SynicPartition, SynicVm, SynicVmBuilder, VmSynic,
};
use synic_vmm::{GuestMemory, PortDevice, RunOutcome, StopReason, Vm, VmControl};

use crate::layout::{self, ports, MEM_SIZE, MESSAGE_TYPE};
use crate::view::GuestView;
use crate::{Mode, Setup, SynicProgram};

/// Wall-clock limit of one run unless the scenario says otherwise: the guests take
/// milliseconds; a lost interrupt leaves a guest halted, and the run fails at the limit.
pub const RUN_LIMIT: Duration = Duration::from_secs(10);

/// A VM to run an e2e program in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// Mode and profile.
    pub setup: Setup,
    /// vCPUs (= VPs, indices 0..vcpus).
    pub vcpus: u32,
    /// Per-(VP, SINT) queue capacity of the partition.
    pub queue_capacity: usize,
    /// Hyper-V CPUID features.
    pub features: HvFeatures,
    /// Wall-clock limit.
    pub limit: Duration,
}

impl VmSpec {
    /// `vcpus` vCPUs in `setup`, default queue capacity and features, [`RUN_LIMIT`].
    pub fn new(setup: Setup, vcpus: u32) -> Self {
        Self {
            setup,
            vcpus,
            queue_capacity: synic::DEFAULT_QUEUE_CAPACITY,
            features: HvFeatures::SYNIC,
            limit: scaled_limit(setup, RUN_LIMIT),
        }
    }
}

/// Kernel mode runs nested under emulation (kvm-lab): give it more time.
fn scaled_limit(setup: Setup, limit: Duration) -> Duration {
    match setup.mode {
        crate::Mode::Userspace => limit,
        crate::Mode::Kernel => limit * 6,
    }
}

/// What step actions and checks get: the attached SynIC (partition, connections, save and
/// restore) and guest RAM.
pub struct Host {
    synic: Arc<VmSynic>,
    testdev: Option<Arc<TestDev<SynicMemory>>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

/// The message an e2e host posts as number `seq` on `sint`: type [`MESSAGE_TYPE`], sender
/// `0xE2E0 + sint`, `size` payload bytes; payload qword 0 = `seq`, qword 1 = `sint`, the rest
/// `seq + n` (all 30 qwords are written; only `size` bytes are meaningful).
pub fn host_message(sint: u8, seq: u64, size: usize) -> HvMessage {
    let mut payload = [0u8; 240];
    for (n, chunk) in payload.chunks_mut(8).enumerate() {
        let v = match n {
            0 => seq,
            1 => u64::from(sint),
            _ => seq + n as u64,
        };
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    let size = size.min(240);
    // Sizes are clamped to 240 above, so this cannot fail.
    HvMessage::new(
        MessageType(MESSAGE_TYPE),
        0xE2E0 + u64::from(sint),
        &payload[..size],
    )
    .unwrap_or_default()
}

impl Host {
    /// The attached SynIC.
    pub fn synic(&self) -> &Arc<VmSynic> {
        &self.synic
    }

    /// The partition.
    pub fn partition(&self) -> &Arc<SynicPartition> {
        self.synic.partition()
    }

    /// The hypercall connection registry.
    pub fn connections(&self) -> &Arc<Connections> {
        self.synic.connections()
    }

    /// Posts [`host_message`]`(sint, seq, 240)` to `vp`. A refusal says why (the message
    /// itself is dropped: the scenario knows it).
    pub fn post(&self, vp: u32, sint: u8, seq: u64) -> Result<Posted, synic::Error> {
        self.post_sized(vp, sint, seq, 240)
    }

    /// Posts [`host_message`]`(sint, seq, size)` to `vp`.
    pub fn post_sized(
        &self,
        vp: u32,
        sint: u8,
        seq: u64,
        size: usize,
    ) -> Result<Posted, synic::Error> {
        self.partition()
            .post_message(VpIndex(vp), u32::from(sint), host_message(sint, seq, size))
            .map_err(|e| e.error)
    }

    /// Sets event flag `flag` of `sint` on `vp`.
    pub fn signal(&self, vp: u32, sint: u8, flag: u32) -> Result<FlagOutcome, synic::Error> {
        self.partition()
            .signal_event(VpIndex(vp), u32::from(sint), flag)
    }

    /// Registers message connection `id` whose port is `sint` of `vp`.
    pub fn add_message_port(&self, id: u32, vp: u32, sint: u8) {
        self.synic
            .add_message_port(id, VpIndex(vp), sint_index(sint))
            .unwrap_or_else(|e| panic!("message connection {id:#x}: {e}"));
    }

    /// Registers event connection `id`: its flag `n < count` sets flag `base + n` of `sint` on
    /// `vp`.
    pub fn add_event_port(&self, id: u32, vp: u32, sint: u8, base: u32, count: u32) {
        self.synic
            .add_event_port(id, VpIndex(vp), sint_index(sint), base, count)
            .unwrap_or_else(|e| panic!("event connection {id:#x}: {e}"));
    }

    /// What the hyperv-testdev device did: (commands carried out, refused, undecodable).
    pub fn testdev_counts(&self) -> (u64, u64, u64) {
        self.testdev.as_ref().map_or((0, 0, 0), |d| {
            let s = d.stats();
            (s.done, s.refused, s.malformed)
        })
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        self.synic.memory()
    }

    /// What the host's SynIC machinery has done so far, summed (it only grows), and the acks
    /// the routing layer passed on that the model has not taken yet (resamplefd acks; none
    /// since kernel mode's acks became EOM exits, which the model takes on the vCPU thread).
    fn activity(&self) -> (u64, u64) {
        let routes = self.synic.route_counters();
        let mut done = routes.raised + routes.suppressed + routes.unrouted + routes.acks;
        let mut model_acks = 0;
        let partition = self.partition();
        for vp in partition.vp_indices() {
            if let Ok(c) = partition.counters(vp) {
                let t = c.total();
                done += c.eoms + t.posted + t.delivered + t.flags_set + t.flags_coalesced;
                model_acks += t.acks;
            }
        }
        (done, routes.acks.saturating_sub(model_acks))
    }

    /// A settle (the guest's OUT to [`ports::SETTLE`]): see [`layout::SETTLE_MS`].
    fn settle(&self) {
        let mut before = self.activity();
        for _ in 0..layout::SETTLE_MAX_PERIODS {
            std::thread::sleep(Duration::from_millis(layout::SETTLE_MS));
            let now = self.activity();
            if now.0 == before.0 && now.1 == 0 {
                return;
            }
            before = now;
        }
    }
}

/// SINT `n` (0..=15) as the model's index type.
pub fn sint_index(n: u8) -> SintIndex {
    SintIndex::new(u32::from(n)).unwrap_or_else(|| panic!("SINT {n} is not 0..=15"))
}

/// A host action run when a vCPU reaches a step: `(host, vcpu, step)`.
pub type StepAction = dyn Fn(&Host, u32, u32) + Send + Sync;

/// The step and settle ports. A step action that panics stops the VM with
/// [`StopReason::Error`] carrying the panic message (the vCPU thread lives on).
struct StepPort {
    host: Arc<Host>,
    action: Box<StepAction>,
    control: Arc<VmControl>,
}

impl PortDevice for StepPort {
    fn read(&self, _vcpu: u32, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, vcpu: u32, port: u16, data: &[u8]) {
        match port {
            ports::STEP => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                let step = u32::from_le_bytes(b);
                let run = || (self.action)(&self.host, vcpu, step);
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    self.control.request_stop(StopReason::Error {
                        vcpu,
                        message: format!("host action of step {step} panicked: {what}"),
                    });
                }
            }
            ports::SETTLE => self.host.settle(),
            _ => {}
        }
    }
}

/// A finished run.
pub struct Finished {
    /// How the VM stopped.
    pub outcome: RunOutcome,
    /// Every report, in arrival order.
    pub reports: Vec<Report>,
    /// The host side (partition, connections, RAM) as the run left it.
    pub host: Arc<Host>,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("outcome", &self.outcome)
            .field("reports", &self.reports)
            .finish_non_exhaustive()
    }
}

impl Finished {
    /// What the guest recorded.
    pub fn view(&self) -> GuestView<'_> {
        GuestView::new(self.host.memory())
    }

    /// Panics unless the guest exited with 0 (a timeout means a lost interrupt or a hang).
    pub fn assert_exited_ok(&self) {
        assert_eq!(
            self.outcome.reason,
            StopReason::DebugExit(0),
            "the guest did not finish (a Timeout means it waited for an interrupt that never \
             came); reports: {:#x?}",
            self.reports
        );
    }

    /// The values vCPU `vcpu` reported under `tag`, in order.
    pub fn values(&self, vcpu: u32, tag: u32) -> Vec<u64> {
        self.reports
            .iter()
            .filter(|r| r.vcpu == vcpu && r.tag == tag)
            .map(|r| r.value)
            .collect()
    }

    /// The MSR indices whose access faulted on vCPU `vcpu` (recovered #GPs), in order.
    pub fn gps(&self, vcpu: u32) -> Vec<u32> {
        self.values(vcpu, toolkit_tag::GP)
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }
}

/// A VM built for a spec, with the program loaded, not started yet.
pub struct Prepared {
    vm: SynicVm,
    host: Arc<Host>,
    reports: Receiver<Report>,
    limit: Duration,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

/// A started [`Prepared`] VM.
#[derive(Debug)]
pub struct Running {
    running: RunningSynicVm,
    host: Arc<Host>,
    reports: Receiver<Report>,
    limit: Duration,
}

impl Prepared {
    /// Builds a VM for `spec` with the SynIC attached (the VMM's wiring, with the
    /// hyperv-testdev at port 0x3000), adds the report, debug-exit, step and settle ports and
    /// loads `program`. `steps` runs on a vCPU's thread whenever that vCPU writes the step
    /// port.
    pub fn new(
        spec: VmSpec,
        program: &SynicProgram,
        steps: impl Fn(&Host, u32, u32) + Send + Sync + 'static,
    ) -> Self {
        let mode = match spec.setup.mode {
            Mode::Userspace => ModeRequest::Userspace,
            Mode::Kernel => ModeRequest::Kernel,
        };
        let mut vm = SynicVmBuilder::new()
            .vcpus(spec.vcpus)
            .memory(MEM_SIZE)
            .mode(mode)
            .profile(spec.setup.profile)
            .features(spec.features)
            .queue_capacity(spec.queue_capacity)
            .testdev(true)
            .build()
            .expect("building the VM with a SynIC");
        let want = match spec.setup.mode {
            Mode::Userspace => SynicMode::Userspace,
            Mode::Kernel => SynicMode::Kernel,
        };
        assert_eq!(vm.mode(), want, "the VM runs in the mode asked for");
        let host = Arc::new(Host {
            synic: vm.synic().clone(),
            testdev: vm.testdev().cloned(),
        });
        let (report, reports) = ReportPort::new(spec.vcpus);
        let control = vm.vm().control().clone();
        let devices: [(u16, u16, Arc<dyn PortDevice>); 3] = [
            (ReportPort::BASE, ReportPort::LEN, Arc::new(report)),
            (
                vmm_ports::DEBUG_EXIT,
                1,
                Arc::new(DebugExit::new(control.clone())),
            ),
            (
                ports::STEP,
                8,
                Arc::new(StepPort {
                    host: host.clone(),
                    action: Box::new(steps),
                    control,
                }),
            ),
        ];
        for (start, len, device) in devices {
            vm.vm_mut()
                .add_device(start, len, device)
                .expect("adding a device");
        }
        program.load(vm.vm_mut()).expect("loading the program");
        Self {
            vm,
            host,
            reports,
            limit: spec.limit,
        }
    }

    /// The host side.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The VM, for setup before the start (entry points, vCPU registers, RAM).
    pub fn vm_mut(&mut self) -> &mut Vm {
        self.vm.vm_mut()
    }

    /// Puts the vCPU states of a paused VM ([`Running::pause`]) into this one's vCPUs, guest
    /// RAM already in place.
    pub fn restore_vcpus(&mut self, snapshots: &[VcpuSnapshot]) -> synic_vmm::Result<()> {
        self.vm.restore_vcpus(snapshots)
    }

    /// Restores a saved SynIC state before the start ([`SynicVm::restore`]: in kernel mode
    /// KVM's registers and clock too), guest RAM already in place.
    pub fn restore(&mut self, state: &SynicState) -> synic_vmm::Result<()> {
        self.vm.restore(state)
    }

    /// [`restore`](Self::restore), declaring that the VM was away for `downtime` (the
    /// reference time, and in kernel mode the kvmclock, continue from the saved value plus
    /// it).
    pub fn restore_with_downtime(
        &mut self,
        state: &SynicState,
        downtime: Duration,
    ) -> synic_vmm::Result<()> {
        self.vm.restore_with_downtime(state, downtime)
    }

    /// Starts the vCPUs.
    pub fn start(self) -> Running {
        Running {
            running: self.vm.start().expect("starting vCPUs"),
            host: self.host,
            reports: self.reports,
            limit: self.limit,
        }
    }
}

impl Running {
    /// The host side.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Pauses the running VM (every vCPU parked, the SynIC's timers stopped): a moment to
    /// save the SynIC, the vCPUs and RAM.
    pub fn pause(&self) -> synic_vmm::Result<()> {
        self.running.pause(self.limit)
    }

    /// The vCPUs' state in the current pause.
    pub fn vcpu_snapshots(&self) -> synic_vmm::Result<Vec<VcpuSnapshot>> {
        self.running.vcpu_snapshots()
    }

    /// Ends a pause.
    pub fn resume(&self) -> synic_vmm::Result<()> {
        self.running.resume()
    }

    /// Waits until the VM stops or the spec's limit passes.
    pub fn wait(self) -> Finished {
        let outcome = self.running.wait(Some(self.limit));
        Finished {
            outcome,
            reports: self.reports.try_iter().collect(),
            host: self.host,
        }
    }
}

/// Builds a VM for `spec` with the SynIC attached, loads `program`, runs it until it stops or
/// the limit passes, and returns what it left. `steps` runs on a vCPU's thread whenever that
/// vCPU writes the step port.
pub fn run(
    spec: VmSpec,
    program: &SynicProgram,
    steps: impl Fn(&Host, u32, u32) + Send + Sync + 'static,
) -> Finished {
    Prepared::new(spec, program, steps).start().wait()
}
