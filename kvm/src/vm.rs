//! The SynIC of one VM on KVM: [`VmSynicBuilder`] wires it, [`VmSynic`] is the host's handle.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kvm_ioctls::{VcpuFd, VmFd};
use synic::hypercall::{Connections, EventConnection, EventPort, MessageConnection, MessagePort};
use synic::{
    Partition, PartitionConfig, PartitionState, ReferenceClock, SintIndex, SystemReferenceClock,
    Vp, VpIndex, VpState,
};
use synic_msr::Profile;
use synic_routing::{
    DefaultRoutes, Gsi, GsiRoutingOwner, KernelSintRoutes, RoutingTable, SintCounters,
    UserSintRoutes, VmRouting,
};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

use crate::clock::{GuestTsc, TscReferenceClock};
use crate::error::{Error, Result};
use crate::eventfd::{hyperv_eventfd, EventFdConnection};
use crate::hypercall::DEFAULT_TRAP_PORT;
use crate::kernel_state::{self, KernelSynicState};
use crate::kvmclock::KvmClock;
use crate::probe::SynicMode;
use crate::routes::SintRoutes;
use crate::stimer_hook::{StimerHook, TimerSource};
use crate::timers::TimerThread;
use crate::vcpu::VcpuSynic;

/// How the SynIC's routing table reaches KVM ([`VmRouting`] over the VM fd).
pub type Routing = VmRouting<VmFd>;
/// The routing table the SynIC's routes live on (the VM's one table, or a reserved range of
/// the VMM's).
pub type SynicRoutingTable = RoutingTable<Routing>;

/// The whole SynIC state of a VM: the partition-wide part and every VP, in vCPU order.
/// Slots, MessagePending bits and event flags are guest memory and travel with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynicState {
    /// GUEST_OS_ID, HYPERCALL, reference time.
    pub partition: PartitionState,
    /// Registers and queued messages of VP `n` (vCPU `n`).
    pub vps: Vec<VpState>,
    /// Userspace mode: each vCPU's VP assist page register (kernel mode: in [`Self::kernel`]).
    pub vp_assist: Vec<u64>,
    /// Kernel mode: the registers and clock KVM keeps (`None` in userspace mode, where the
    /// model owns every register).
    pub kernel: Option<KernelSynicState>,
}

/// What the wiring saw (monotonic counters), beyond the model's and the routes' own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynicStats {
    /// Guest MSR accesses refused (#GP injected).
    pub msr_refused: u64,
    /// Hypercall pages written (HYPERCALL enabled, userspace mode).
    pub hypercall_pages_filled: u64,
    /// `KVM_EXIT_HYPERV_SYNIC` notifications the model refused (kernel mode; should be 0).
    pub synic_exit_errors: u64,
    /// Synthetic-timer register writes passed to the timer hook.
    pub stimer_changes: u64,
    /// Hypercalls handled.
    pub hypercalls: u64,
    /// Hypercall traps from a CPL other than 0 (left to the VMM as plain port writes).
    pub unprivileged_traps: u64,
    /// Guest reads of TIME_REF_COUNT (userspace mode: each one an MSR exit).
    pub time_ref_count_reads: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub msr_refused: AtomicU64,
    pub hypercall_pages_filled: AtomicU64,
    pub synic_exit_errors: AtomicU64,
    pub stimer_changes: AtomicU64,
    pub hypercalls: AtomicU64,
    pub unprivileged_traps: AtomicU64,
    pub time_ref_count_reads: AtomicU64,
}

impl Stats {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which routing table the SynIC's routes go on.
enum RoutingChoice {
    /// A new table over the VM fd, the VM's one table (KVM's default irqchip routes kept).
    Own,
    /// The VMM's existing table (it already uses synic-routing as its routing owner).
    Table(Arc<SynicRoutingTable>),
    /// A table of the GSIs `range`, whose commits go to the VMM's owner.
    Delegated(Arc<dyn GsiRoutingOwner>, Range<u32>),
}

/// Configures and builds a [`VmSynic`].
///
/// ```no_run
/// # use std::sync::Arc;
/// # use synic_kvm::{SynicMode, VmSynicBuilder};
/// # fn f(vm: Arc<kvm_ioctls::VmFd>, memory: Arc<vm_memory::GuestMemoryMmap>) -> synic_kvm::Result<()> {
/// // The VM fd has its in-kernel irqchip, every vCPU went through synic_kvm::setup_vcpu.
/// let synic = VmSynicBuilder::new(SynicMode::Userspace, 2).build(vm, memory)?;
/// let mut vcpu0 = synic.vcpu(0)?; // goes to vCPU 0's thread
/// # let _ = vcpu0; Ok(()) }
/// ```
pub struct VmSynicBuilder {
    mode: SynicMode,
    vcpus: u32,
    profile: Profile,
    queue_capacity: usize,
    routed_sints: Vec<SintIndex>,
    stimer_hook: Option<Arc<dyn StimerHook>>,
    routing: RoutingChoice,
    trap_port: u8,
    frequencies: Option<(u64, u64)>,
    guest_tsc: Option<GuestTsc>,
}

impl fmt::Debug for VmSynicBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmSynicBuilder")
            .field("mode", &self.mode)
            .field("vcpus", &self.vcpus)
            .field("profile", &self.profile)
            .field("queue_capacity", &self.queue_capacity)
            .field("routed_sints", &self.routed_sints)
            .field("trap_port", &self.trap_port)
            .field("frequencies", &self.frequencies)
            .field("guest_tsc", &self.guest_tsc)
            .finish_non_exhaustive()
    }
}

impl VmSynicBuilder {
    /// A SynIC for `vcpus` vCPUs (VP indices `0..vcpus`, vCPU `n` with APIC id `n`) in `mode`:
    /// TLFS profile (kernel mode: always KVM's), the default queue capacity, routes for all 16
    /// SINTs of every VP, its own routing table, a [`TimerThread`] for the synthetic timers
    /// (the library's in both modes), the hypercall trap at port [`DEFAULT_TRAP_PORT`], no
    /// frequency MSRs.
    pub fn new(mode: SynicMode, vcpus: u32) -> Self {
        Self {
            mode,
            vcpus,
            profile: Profile::Tlfs,
            queue_capacity: synic::DEFAULT_QUEUE_CAPACITY,
            routed_sints: SintIndex::ALL.to_vec(),
            stimer_hook: None,
            routing: RoutingChoice::Own,
            trap_port: DEFAULT_TRAP_PORT,
            frequencies: None,
            guest_tsc: None,
        }
    }

    /// TLFS-strict or KVM-compatible register and delivery semantics (userspace mode; kernel
    /// mode follows KVM's).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Capacity of each (VP, SINT) message queue.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Which SINTs of every VP get a route at build (default: all 16). More can be added later
    /// with [`VmSynic::add_sint_routes`]. Each route costs a GSI and one or two file
    /// descriptors.
    pub fn routed_sints(mut self, sints: &[SintIndex]) -> Self {
        self.routed_sints = sints.to_vec();
        self
    }

    /// Where synthetic-timer changes go, and what serves the timers (default: a
    /// [`TimerThread`]). A hook that serves no timers ([`crate::NoStimers`]) should come with
    /// CPUID that does not advertise them.
    pub fn stimer_hook(mut self, hook: Arc<dyn StimerHook>) -> Self {
        self.stimer_hook = Some(hook);
        self
    }

    /// Puts the SINT routes on the VMM's routing table (one owner for every route in the VM;
    /// devices add theirs to the same table).
    pub fn routing_table(mut self, table: Arc<SynicRoutingTable>) -> Self {
        self.routing = RoutingChoice::Table(table);
        self
    }

    /// For a VMM that owns `KVM_SET_GSI_ROUTING` itself: the SINT routes take GSIs from
    /// `gsis` only, and every change of them goes to `owner`, which merges them into its own
    /// table and commits (see [`GsiRoutingOwner`]). Reserve enough GSIs: one per routed
    /// (VP, SINT) pair.
    pub fn delegate_routing(mut self, owner: Arc<dyn GsiRoutingOwner>, gsis: Range<u32>) -> Self {
        self.routing = RoutingChoice::Delegated(owner, gsis);
        self
    }

    /// The I/O port of the hypercall trap (userspace mode): the hypercall page holds
    /// `out port, al; ret`. Default [`DEFAULT_TRAP_PORT`] (0xEB).
    pub fn hypercall_trap_port(mut self, port: u8) -> Self {
        self.trap_port = port;
        self
    }

    /// Userspace mode answers HV_X64_MSR_TSC_FREQUENCY and HV_X64_MSR_APIC_FREQUENCY with these
    /// (Hz; `KVM_GET_TSC_KHZ` x 1000, and 1 GHz for KVM's in-kernel LAPIC timer). Advertise
    /// them with [`crate::HvFeatures::frequency_msrs`]. Kernel mode: KVM answers them itself.
    pub fn frequencies(mut self, tsc_hz: u64, apic_hz: u64) -> Self {
        self.frequencies = Some((tsc_hz, apic_hz));
        self
    }

    /// Userspace mode: run the partition's reference clock on the guest's TSC
    /// ([`TscReferenceClock`]), so the reference TSC page is valid and agrees exactly with
    /// TIME_REF_COUNT and the synthetic timers (docs/timers.md). Without it (or in kernel mode,
    /// where KVM fills the page) the clock is the host's monotonic clock and the page, when
    /// advertised, says "read TIME_REF_COUNT" (sequence 0).
    pub fn reference_tsc(mut self, tsc: GuestTsc) -> Self {
        self.guest_tsc = Some(tsc);
        self
    }

    /// Wires the SynIC to `vm` over guest memory `memory`, in this order: the routing table;
    /// kernel mode marks every VP's SynIC active (each vCPU went through
    /// [`crate::setup_vcpu`]: KVM builds its SINT-to-GSI ack map only for active SynICs, at
    /// commit) then adds HV_SINT routes (acks are EOM writes, taken to userspace by
    /// [`crate::setup_vm`]'s filter: no resamplefds, no ack thread); userspace mode adds
    /// MSI routes that follow the guest's SINT registers; then the model's partition and VPs,
    /// the connection registry, and the timer hook, started.
    pub fn build<M>(self, vm: Arc<VmFd>, memory: M) -> Result<Arc<VmSynic<M>>>
    where
        M: GuestAddressSpace + Send + Sync + 'static,
    {
        let table = match self.routing {
            RoutingChoice::Own => Arc::new(RoutingTable::new(
                Arc::new(VmRouting::direct(Arc::clone(&vm))),
                DefaultRoutes::Keep,
            )),
            RoutingChoice::Table(t) => t,
            RoutingChoice::Delegated(owner, gsis) => Arc::new(RoutingTable::in_range(
                Arc::new(VmRouting::delegated(Arc::clone(&vm), owner)),
                gsis,
            )),
        };
        let vps: Vec<VpIndex> = (0..self.vcpus).map(VpIndex).collect();
        let routes = match self.mode {
            SynicMode::Userspace => {
                // VP index n runs on vCPU n, whose APIC id is n.
                let user = UserSintRoutes::new(Arc::clone(&table), vps.iter().map(|&v| (v, v.0)))?;
                user.add_vps(&vps, &self.routed_sints)?;
                SintRoutes::User(Arc::new(user))
            }
            SynicMode::Kernel => {
                for &vp in &vps {
                    table.mark_synic_active(vp);
                }
                // Acks are the guest's EOM writes, which the MSR filter (crate::setup_vm)
                // brings to VcpuSynic::wrmsr: no resamplefds, no ack thread.
                let kernel = KernelSintRoutes::eom_acked(Arc::clone(&table))?;
                kernel.add_vps(&vps, &self.routed_sints)?;
                SintRoutes::Kernel(Arc::new(kernel))
            }
        };
        // Kernel mode: KVM's register semantics, and KVM's clock (TIME_REF_COUNT is KVM's; the
        // timers, which the model runs, count on the same timeline). Userspace mode: the guest's
        // TSC when the VMM gave it (the reference TSC page is then valid), else host time.
        let tsc_clock = match (self.mode, self.guest_tsc) {
            (SynicMode::Userspace, Some(tsc)) => Some(Arc::new(TscReferenceClock::new(tsc))),
            _ => None,
        };
        let (profile, clock): (Profile, Arc<dyn ReferenceClock>) = match (self.mode, &tsc_clock) {
            (SynicMode::Userspace, Some(c)) => (self.profile, Arc::clone(c) as _),
            (SynicMode::Userspace, None) => (self.profile, Arc::new(SystemReferenceClock::new())),
            (SynicMode::Kernel, _) => (Profile::Kvm, Arc::new(KvmClock::new(Arc::clone(&vm)))),
        };
        let config = PartitionConfig::new(self.mode.model(), profile, self.vcpus)
            .with_queue_capacity(self.queue_capacity);
        let (partition, model_vps) = Partition::new(config, memory.clone(), routes.raise(), clock)?;
        let stimer_hook = self
            .stimer_hook
            .unwrap_or_else(|| Arc::new(TimerThread::new()));
        stimer_hook.start(Arc::clone(&partition) as Arc<dyn TimerSource>)?;
        Ok(Arc::new(VmSynic {
            mode: self.mode,
            vm,
            vps: model_vps
                .into_iter()
                .map(|vp| {
                    Mutex::new(VcpuState {
                        vp,
                        vp_assist: 0,
                        captured: None,
                    })
                })
                .collect(),
            partition,
            connections: Arc::new(Connections::new()),
            routes,
            memory,
            hypercall: AtomicU64::new(0),
            trap_port: self.trap_port,
            frequencies: self.frequencies,
            tsc_clock,
            stimer_hook,
            paused: AtomicBool::new(false),
            eventfds: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        }))
    }
}

/// What the SynIC keeps per vCPU, behind that vCPU's mutex.
pub(crate) struct VcpuState<M: GuestAddressSpace> {
    /// The model's VP.
    pub vp: Vp<M>,
    /// HV_X64_MSR_VP_ASSIST_PAGE (userspace mode; stored only).
    pub vp_assist: u64,
    /// Kernel mode: KVM's registers read by [`VcpuSynic::capture`] since the pause.
    pub captured: Option<Vec<(u32, u64)>>,
}

/// The SynIC of one VM, as the host sees it. Shared (`Arc`) by the vCPU handlers
/// ([`VcpuSynic`]), devices and the host.
///
/// * Device side (any thread): [`partition`](Self::partition) (`post_message`,
///   `signal_event`, counters); [`connections`](Self::connections) and the `add_*` methods for
///   guest -> host traffic.
/// * VP side: each vCPU's [`VcpuSynic`] ([`vcpu`](Self::vcpu)) handles its exits; the VP sits
///   behind a mutex that only its vCPU thread takes while the VM runs.
/// * Save and restore: pause the vCPUs, [`pause`](Self::pause), [`VcpuSynic::capture`] each
///   paused vCPU (kernel mode), [`save`](Self::save), [`resume`](Self::resume). Restore into a
///   fresh VM before its vCPUs run: [`restore`](Self::restore).
pub struct VmSynic<M: GuestAddressSpace> {
    mode: SynicMode,
    vm: Arc<VmFd>,
    partition: Arc<Partition<M>>,
    vps: Box<[Mutex<VcpuState<M>>]>,
    connections: Arc<Connections>,
    routes: SintRoutes,
    memory: M,
    /// HYPERCALL's value while enabled (0 otherwise), mirrored from the model after every
    /// write of a partition register so the trap check on every port exit takes no lock.
    hypercall: AtomicU64,
    trap_port: u8,
    frequencies: Option<(u64, u64)>,
    /// Userspace mode with [`VmSynicBuilder::reference_tsc`]: the partition's clock.
    tsc_clock: Option<Arc<TscReferenceClock>>,
    stimer_hook: Arc<dyn StimerHook>,
    paused: AtomicBool,
    /// Event connections backed by an eventfd (kernel mode: assigned in KVM too).
    eventfds: Mutex<HashMap<u32, Arc<EventFdConnection>>>,
    pub(crate) stats: Stats,
}

impl<M: GuestAddressSpace> fmt::Debug for VmSynic<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmSynic")
            .field("mode", &self.mode)
            .field("vcpus", &self.vps.len())
            .field("partition", &self.partition)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl<M: GuestAddressSpace> Drop for VmSynic<M> {
    fn drop(&mut self) {
        self.stimer_hook.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside the model cannot leave its state half-updated in a way a later call could
    // not handle (the model recovers its own locks the same way).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<M> VmSynic<M>
where
    M: GuestAddressSpace + Send + Sync + 'static,
{
    /// The handler of vCPU `vcpu`'s exits, for that vCPU's thread.
    pub fn vcpu(self: &Arc<Self>, vcpu: u32) -> Result<VcpuSynic<M>> {
        if (vcpu as usize) < self.vps.len() {
            Ok(VcpuSynic::new(Arc::clone(self), vcpu))
        } else {
            Err(Error::NoSuchVcpu {
                vcpu,
                count: self.vcpus(),
            })
        }
    }

    /// Kernel or userspace mode.
    pub fn mode(&self) -> SynicMode {
        self.mode
    }

    /// The VM fd.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// The partition: `post_message`, `signal_event`, `counters`, `synic_view`, ...
    pub fn partition(&self) -> &Arc<Partition<M>> {
        &self.partition
    }

    /// The hypercall connection registry (HvPostMessage / HvSignalEvent targets).
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Guest memory as the SynIC sees it.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// The routing table the SINT routes live on. With the SynIC's own table this is the VM's
    /// one table: devices that need GSIs (MSI, MSI-X, irqfds) add their routes here, never with
    /// their own `KVM_SET_GSI_ROUTING`.
    pub fn routing_table(&self) -> &Arc<SynicRoutingTable> {
        self.routes.table()
    }

    /// Number of vCPUs (and VPs).
    pub fn vcpus(&self) -> u32 {
        // Built from a u32 vCPU count.
        self.vps.len() as u32
    }

    pub(crate) fn lock_vcpu(&self, vcpu: u32) -> Option<MutexGuard<'_, VcpuState<M>>> {
        self.vps.get(vcpu as usize).map(lock)
    }

    /// Runs `f` on vCPU `vcpu`'s VP. While the VM runs this waits for the vCPU's current exit
    /// to finish, and the vCPU waits for `f` at its next SynIC exit: keep `f` short. `None`
    /// for a vCPU that does not exist.
    pub fn with_vp<R>(&self, vcpu: u32, f: impl FnOnce(&mut Vp<M>) -> R) -> Option<R> {
        self.lock_vcpu(vcpu).map(|mut s| f(&mut s.vp))
    }

    /// The VP index of vCPU `vcpu` (equal to `vcpu` unless the host rewrote VP_INDEX).
    pub fn vp_index(&self, vcpu: u32) -> Option<VpIndex> {
        self.with_vp(vcpu, |vp| vp.index())
    }

    /// Registers a host-side message connection: HvPostMessage to `id` reaches `connection`
    /// (guest -> host messages). See [`crate::HostMessageConnection`] for a channel.
    pub fn add_message_connection(
        &self,
        id: u32,
        connection: Arc<dyn MessageConnection>,
    ) -> Result<()> {
        Ok(self.connections.add_message(id, connection)?)
    }

    /// Registers a host-side event connection: HvSignalEvent to `id` reaches `connection`.
    pub fn add_event_connection(
        &self,
        id: u32,
        connection: Arc<dyn EventConnection>,
    ) -> Result<()> {
        Ok(self.connections.add_event(id, connection)?)
    }

    /// Registers message connection `id` whose messages are posted to `sint` of `vp` in this
    /// partition (guest -> guest, as VMBus does between partitions).
    pub fn add_message_port(&self, id: u32, vp: VpIndex, sint: SintIndex) -> Result<()> {
        let port = MessagePort::new(Arc::clone(&self.partition), vp, sint);
        Ok(self.connections.add_message(id, Arc::new(port))?)
    }

    /// Registers event connection `id` whose relative flag `n < flag_count` sets flag
    /// `base_flag + n` of `sint` on `vp`.
    pub fn add_event_port(
        &self,
        id: u32,
        vp: VpIndex,
        sint: SintIndex,
        base_flag: u32,
        flag_count: u32,
    ) -> Result<()> {
        let port = EventPort::new(Arc::clone(&self.partition), vp, sint, base_flag, flag_count);
        Ok(self.connections.add_event(id, Arc::new(port))?)
    }

    /// Removes message connection `id`.
    pub fn remove_message_connection(&self, id: u32) -> Option<Arc<dyn MessageConnection>> {
        self.connections.remove_message(id)
    }

    /// Removes event connection `id` (kernel mode: an eventfd one is deassigned from KVM
    /// first).
    pub fn remove_event_connection(&self, id: u32) -> Option<Arc<dyn EventConnection>> {
        let eventfd = lock(&self.eventfds).remove(&id);
        if let Some(c) = eventfd {
            if self.mode == SynicMode::Kernel {
                // Only fails if KVM no longer has it; the table entry goes either way.
                let _ = hyperv_eventfd(&self.vm, id, c.raw_fd(), true);
            }
        }
        self.connections.remove_event(id)
    }

    /// Registers event connection `id` backed by `fd`: the guest's HvSignalEvent to `id` with
    /// flag 0 signals `fd`; other flags answer HV_STATUS_INVALID_PORT_ID. Kernel mode hands the
    /// pair to KVM (`KVM_HYPERV_EVENTFD`), which signals `fd` without an exit; userspace mode
    /// signals it from the hypercall exit. See [`EventFdConnection`].
    pub fn add_event_eventfd(&self, id: u32, fd: EventFd) -> Result<Arc<EventFdConnection>> {
        let connection = Arc::new(EventFdConnection::new(fd));
        self.connections
            .add_event(id, Arc::clone(&connection) as Arc<dyn EventConnection>)?;
        if self.mode == SynicMode::Kernel {
            if let Err(source) = hyperv_eventfd(&self.vm, id, connection.raw_fd(), false) {
                self.connections.remove_event(id);
                return Err(Error::Kvm {
                    op: "KVM_HYPERV_EVENTFD",
                    source,
                });
            }
        }
        lock(&self.eventfds).insert(id, Arc::clone(&connection));
        Ok(connection)
    }

    /// Raises `sint` on `vp` through its route, with no message or flag (the test device's
    /// "set SINT route"). Userspace mode fires only if the guest's SINT is unmasked with a valid
    /// vector; kernel mode lets KVM decide.
    pub fn raise_sint(&self, vp: VpIndex, sint: SintIndex) {
        // Both route types take the vector from the SINT register they track.
        self.routes.raise().raise(vp, sint, 0, false);
    }

    /// Adds SINT routes for `pairs` (one commit), e.g. SINTs not routed at build time.
    pub fn add_sint_routes(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<()> {
        self.routes.add(pairs)
    }

    /// Removes the SINT routes of `pairs` (one commit); raises for them are then counted as
    /// unrouted.
    pub fn remove_sint_routes(&self, pairs: &[(VpIndex, SintIndex)]) -> Result<()> {
        self.routes.remove(pairs)
    }

    /// The GSI of a SINT's route.
    pub fn sint_gsi(&self, vp: VpIndex, sint: SintIndex) -> Option<Gsi> {
        self.routes.gsi(vp, sint)
    }

    /// What the SINT routes did (raised, suppressed, unrouted, acks, route errors).
    pub fn route_counters(&self) -> SintCounters {
        self.routes.counters()
    }

    /// What the wiring saw.
    pub fn stats(&self) -> SynicStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SynicStats {
            msr_refused: get(&self.stats.msr_refused),
            hypercall_pages_filled: get(&self.stats.hypercall_pages_filled),
            synic_exit_errors: get(&self.stats.synic_exit_errors),
            stimer_changes: get(&self.stats.stimer_changes),
            hypercalls: get(&self.stats.hypercalls),
            unprivileged_traps: get(&self.stats.unprivileged_traps),
            time_ref_count_reads: get(&self.stats.time_ref_count_reads),
        }
    }

    /// The partition's clock when it runs on the guest's TSC ([`VmSynicBuilder::reference_tsc`],
    /// userspace mode).
    pub fn tsc_clock(&self) -> Option<&Arc<TscReferenceClock>> {
        self.tsc_clock.as_ref()
    }

    /// The GPA of the hypercall page while the guest has it enabled (userspace mode; in kernel
    /// mode KVM owns it and this is `None`).
    pub fn hypercall_page(&self) -> Option<u64> {
        let h = synic_msr::Hypercall(self.hypercall.load(Ordering::Acquire));
        h.enabled().then(|| h.gpa())
    }

    /// The hypercall trap port (userspace mode).
    pub fn trap_port(&self) -> u8 {
        self.trap_port
    }

    pub(crate) fn frequencies(&self) -> Option<(u64, u64)> {
        self.frequencies
    }

    /// Re-reads HYPERCALL from the model after a partition-register write or a restore.
    pub(crate) fn refresh_hypercall_page(&self) {
        let h = synic_msr::Hypercall(self.partition.save().hypercall);
        let v = if h.enabled() { h.0 } else { 0 };
        self.hypercall.store(v, Ordering::Release);
    }

    pub(crate) fn stimer_hook(&self) -> &Arc<dyn StimerHook> {
        &self.stimer_hook
    }

    /// Stops the SynIC's own host-side activity (the timer thread: no expiry is delivered
    /// until [`resume`](Self::resume)), for a save. Pause the vCPUs first; device threads that
    /// post or signal are the VMM's to pause. Idempotent.
    pub fn pause(&self) {
        self.stimer_hook.stop();
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Restarts what [`pause`](Self::pause) stopped, and forgets the registers captured during
    /// the pause. Resume the vCPUs after this.
    pub fn resume(&self) -> Result<()> {
        for m in self.vps.iter() {
            lock(m).captured = None;
        }
        self.paused.store(false, Ordering::SeqCst);
        self.stimer_hook
            .start(Arc::clone(&self.partition) as Arc<dyn TimerSource>)
    }

    /// Whether [`pause`](Self::pause) was called without a [`resume`](Self::resume) since.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Saves the partition and every VP, with the vCPUs paused and the SynIC
    /// [`pause`](Self::pause)d ([`Error::NotPaused`] otherwise): a snapshot that matches guest
    /// memory as it is now.
    ///
    /// Kernel mode: the state also holds KVM's registers of every vCPU (SCONTROL, SIEFP, SIMP,
    /// SINTs, timers, GUEST_OS_ID, HYPERCALL, ...; see [`crate::KERNEL_MSRS`]), as
    /// [`VcpuSynic::capture`] read them on each paused vCPU ([`Error::NotCaptured`] for one
    /// that was not), and the kvmclock, read now.
    pub fn save(&self) -> Result<SynicState> {
        if !self.is_paused() {
            return Err(Error::NotPaused);
        }
        let mut vps = Vec::with_capacity(self.vps.len());
        let mut vp_assist = Vec::with_capacity(self.vps.len());
        let mut kernel_vcpus = Vec::new();
        for (vcpu, m) in (0u32..).zip(self.vps.iter()) {
            let s = lock(m);
            if self.mode == SynicMode::Kernel {
                let regs = s.captured.clone().ok_or(Error::NotCaptured { vcpu })?;
                kernel_vcpus.push(regs);
            }
            vps.push(s.vp.save());
            vp_assist.push(s.vp_assist);
        }
        let kernel = match self.mode {
            SynicMode::Userspace => None,
            SynicMode::Kernel => Some(KernelSynicState {
                clock_ns: kernel_state::read_clock(&self.vm)?,
                vcpus: kernel_vcpus,
            }),
        };
        Ok(SynicState {
            partition: self.partition.save(),
            vps,
            vp_assist,
            kernel,
        })
    }

    /// Refuses a saved state from the other mode, or for another vCPU count (in KVM's
    /// registers too), before anything is restored.
    fn check_fits(&self, state: &SynicState, vcpus: usize) -> Result<()> {
        let saved = if state.kernel.is_some() {
            SynicMode::Kernel
        } else {
            SynicMode::Userspace
        };
        if saved != self.mode {
            return Err(Error::ModeMismatch {
                saved,
                running: self.mode,
            });
        }
        let expected = self.vps.len();
        let kernel_vcpus = state.kernel.as_ref().map_or(expected, |k| k.vcpus.len());
        for (what, given) in [
            ("saved VP states", state.vps.len()),
            ("saved VP assist registers", state.vp_assist.len()),
            ("saved kernel-mode vCPU registers", kernel_vcpus),
            ("vCPU fds to restore into", vcpus),
        ] {
            if given != expected {
                return Err(Error::VcpuCount {
                    what,
                    given,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// Restores a state saved by [`save`](Self::save) into this SynIC of a fresh VM whose
    /// vCPUs (`vcpus`, in order) have not run yet, after guest memory is in place.
    ///
    /// Kernel mode first sets the kvmclock and writes KVM's saved registers into every vCPU
    /// (host-initiated `KVM_SET_MSRS`; each went through [`crate::setup_vcpu`]). Then the
    /// partition, every VP (which retries delivery) and the timer hook. A state from the other
    /// mode or for another vCPU count is refused before anything changes; a VP the model
    /// refuses stops the restore there (do not run the VM then).
    pub fn restore(&self, state: &SynicState, vcpus: &[&VcpuFd]) -> Result<()> {
        self.restore_with_downtime(state, vcpus, Duration::ZERO)
    }

    /// [`restore`](Self::restore), declaring that the VM was away for `downtime`: the
    /// reference time (and in kernel mode the kvmclock) continues from the saved value plus
    /// `downtime`, so TIME_REF_COUNT never goes backwards and jumps by exactly that.
    pub fn restore_with_downtime(
        &self,
        state: &SynicState,
        vcpus: &[&VcpuFd],
        downtime: Duration,
    ) -> Result<()> {
        self.check_fits(state, vcpus.len())?;
        if let Some(k) = &state.kernel {
            let downtime_ns = u64::try_from(downtime.as_nanos()).unwrap_or(u64::MAX);
            kernel_state::write_clock(&self.vm, k.clock_ns.saturating_add(downtime_ns))?;
            for ((n, regs), fd) in (0u32..).zip(&k.vcpus).zip(vcpus) {
                kernel_state::write_vcpu(fd, n, regs)?;
            }
        }
        if let Some(clock) = &self.tsc_clock {
            // The vCPUs' TSCs were written back (their offsets moved): follow them before the
            // partition rewrites the reference TSC page. A TSC that cannot back the page any
            // more leaves it at sequence 0; the VM runs on (TIME_REF_COUNT keeps counting).
            let _ = clock.follow(vcpus);
        }
        let downtime_100ns = u64::try_from(downtime.as_nanos() / 100).unwrap_or(u64::MAX);
        self.partition
            .restore_with_downtime(&state.partition, downtime_100ns)?;
        self.refresh_hypercall_page();
        for ((m, saved), &assist) in self.vps.iter().zip(&state.vps).zip(&state.vp_assist) {
            let mut s = lock(m);
            s.vp.restore(saved)?;
            s.vp_assist = assist;
        }
        self.stimer_hook.restored();
        Ok(())
    }
}
