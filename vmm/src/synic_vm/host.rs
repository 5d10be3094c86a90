//! The host's handle on the attached model: partition, VPs, connections, routes, save/restore.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_ioctls::VmFd;
use synic::hypercall::{
    ConnectionError, Connections, EventConnection, EventPort, MessageConnection, MessagePort,
};
use synic::{PartitionState, SintIndex, VpIndex, VpState};
use synic_routing::{Gsi, RoutingTable, SintCounters};
use vmm_sys_util::eventfd::EventFd;

use super::eventfd::{hyperv_eventfd, EventFdConnection};
use super::kernel_state::KernelSynicState;
use super::routes::SintRoutes;
use super::timers::StimerHook;
use super::{SynicMemory, SynicPartition, SynicVp};
use crate::error::{Error, Result};
use crate::hv::HypercallPageState;
use crate::probe::SynicMode;

/// The whole SynIC state of a VM: the partition-wide part and every VP, in vCPU order.
/// Slots, MessagePending bits and event flags are guest memory and travel with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynicState {
    /// GUEST_OS_ID, HYPERCALL, reference time.
    pub partition: PartitionState,
    /// Registers and queued messages of VP `n` (vCPU `n`).
    pub vps: Vec<VpState>,
    /// Kernel mode: the registers and clock KVM keeps (`None` in userspace mode, where the
    /// model owns every register).
    pub kernel: Option<KernelSynicState>,
}

/// One vCPU's KVM registers as read when its thread stopped, or why the read failed.
type KernelRead = std::result::Result<Vec<(u32, u64)>, String>;

/// What the wiring saw (monotonic counters), beyond the model's and the routes' own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynicStats {
    /// Guest MSR accesses the model refused (#GP injected).
    pub msr_refused: u64,
    /// Hypercall pages written (HYPERCALL enabled, userspace mode).
    pub hypercall_pages_filled: u64,
    /// `KVM_EXIT_HYPERV_SYNIC` notifications the model refused (kernel mode; should be 0).
    pub synic_exit_errors: u64,
    /// Synthetic-timer register writes passed to the timer hook.
    pub stimer_changes: u64,
    /// Hypercalls handled.
    pub hypercalls: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub msr_refused: AtomicU64,
    pub hypercall_pages_filled: AtomicU64,
    pub synic_exit_errors: AtomicU64,
    pub stimer_changes: AtomicU64,
    pub hypercalls: AtomicU64,
}

impl Stats {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// HYPERCALL's value while enabled (0 otherwise), mirrored from the model after every write
/// of a partition register so the vCPU loop's trap check takes no lock.
#[derive(Debug, Default)]
pub(crate) struct HypercallMirror(AtomicU64);

impl HypercallPageState for HypercallMirror {
    fn hypercall_page(&self) -> Option<u64> {
        let v = synic_msr::Hypercall(self.0.load(Ordering::Acquire));
        v.enabled().then(|| v.gpa())
    }
}

/// The SynIC model attached to a VM, as the host sees it. Shared (`Arc`) by the vCPU handlers,
/// the test device, the timer hook and the host.
///
/// * Device side (any thread): [`partition`](Self::partition) (`post_message`,
///   `signal_event`, counters), [`connections`](Self::connections) for guest -> host traffic
///   (register [`MessageConnection`]s / [`EventConnection`]s by connection id).
/// * VP side: each [`SynicVp`] sits behind a mutex that its vCPU thread takes for every exit;
///   [`with_vp`](Self::with_vp) lets the host take it too (timers, inspection).
/// * [`save`](Self::save) / [`restore`](Self::restore) the whole state.
pub struct AttachedSynic {
    mode: SynicMode,
    partition: Arc<SynicPartition>,
    vps: Box<[Mutex<SynicVp>]>,
    connections: Arc<Connections>,
    routes: SintRoutes,
    memory: SynicMemory,
    hypercall: Arc<HypercallMirror>,
    stimer_hook: Arc<dyn StimerHook>,
    /// Kernel mode: KVM's registers of each vCPU, read when its thread stopped.
    kernel_registers: Box<[Mutex<Option<KernelRead>>]>,
    /// Kernel mode: the kvmclock after the vCPUs stopped.
    kernel_clock: Mutex<Option<u64>>,
    /// Event connections backed by an eventfd (kernel mode: assigned in KVM too).
    eventfds: Mutex<std::collections::HashMap<u32, Arc<EventFdConnection>>>,
    pub(crate) stats: Stats,
}

impl fmt::Debug for AttachedSynic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachedSynic")
            .field("mode", &self.mode)
            .field("partition", &self.partition)
            .field("connections", &self.connections)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl AttachedSynic {
    pub(crate) fn new(
        mode: SynicMode,
        partition: Arc<SynicPartition>,
        vps: Vec<SynicVp>,
        connections: Arc<Connections>,
        routes: SintRoutes,
        memory: SynicMemory,
        stimer_hook: Arc<dyn StimerHook>,
    ) -> Self {
        Self {
            mode,
            partition,
            kernel_registers: vps.iter().map(|_| Mutex::new(None)).collect(),
            kernel_clock: Mutex::new(None),
            eventfds: Mutex::new(std::collections::HashMap::new()),
            vps: vps.into_iter().map(Mutex::new).collect(),
            connections,
            routes,
            memory,
            hypercall: Arc::new(HypercallMirror::default()),
            stimer_hook,
            stats: Stats::default(),
        }
    }

    /// Kernel or userspace mode.
    pub fn mode(&self) -> SynicMode {
        self.mode
    }

    /// The partition: `post_message`, `signal_event`, `counters`, `synic_view`, ...
    pub fn partition(&self) -> &Arc<SynicPartition> {
        &self.partition
    }

    /// The hypercall connection registry (HvPostMessage / HvSignalEvent targets).
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Guest memory as the model sees it.
    pub fn memory(&self) -> &SynicMemory {
        &self.memory
    }

    /// The VM's one routing table: devices that need GSIs (MSI, MSI-X, irqfds) add their
    /// routes here, never with their own `KVM_SET_GSI_ROUTING`.
    pub fn routing_table(&self) -> &Arc<RoutingTable<VmFd>> {
        self.routes.table()
    }

    /// Number of vCPUs (and VPs).
    pub fn vcpus(&self) -> u32 {
        // Built from a u32 vCPU count.
        self.vps.len() as u32
    }

    pub(crate) fn lock_vp(&self, vcpu: u32) -> Option<MutexGuard<'_, SynicVp>> {
        // A panic inside the model cannot leave a Vp half-updated in a way a later call could
        // not handle (the model recovers its own locks the same way).
        self.vps
            .get(vcpu as usize)
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on vCPU `vcpu`'s VP. While the VM runs this waits for the vCPU's current exit
    /// to finish, and the vCPU waits for `f` at its next SynIC exit: keep `f` short. `None`
    /// for a vCPU that does not exist.
    pub fn with_vp<R>(&self, vcpu: u32, f: impl FnOnce(&mut SynicVp) -> R) -> Option<R> {
        self.lock_vp(vcpu).map(|mut vp| f(&mut vp))
    }

    /// The VP index of vCPU `vcpu` (equal to `vcpu` unless the host rewrote VP_INDEX).
    pub fn vp_index(&self, vcpu: u32) -> Option<VpIndex> {
        self.with_vp(vcpu, |vp| vp.index())
    }

    /// Registers a host-side message connection: HvPostMessage to `id` reaches `connection`
    /// (guest -> host messages). See [`super::HostMessageConnection`] for a channel.
    pub fn add_message_connection(
        &self,
        id: u32,
        connection: Arc<dyn MessageConnection>,
    ) -> std::result::Result<(), ConnectionError> {
        self.connections.add_message(id, connection)
    }

    /// Registers a host-side event connection: HvSignalEvent to `id` reaches `connection`.
    pub fn add_event_connection(
        &self,
        id: u32,
        connection: Arc<dyn EventConnection>,
    ) -> std::result::Result<(), ConnectionError> {
        self.connections.add_event(id, connection)
    }

    /// Registers message connection `id` whose messages are posted to `sint` of `vp` in this
    /// partition (guest -> guest, as VMBus does between partitions).
    pub fn add_message_port(
        &self,
        id: u32,
        vp: VpIndex,
        sint: SintIndex,
    ) -> std::result::Result<(), ConnectionError> {
        let port = MessagePort::new(Arc::clone(&self.partition), vp, sint);
        self.connections.add_message(id, Arc::new(port))
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
    ) -> std::result::Result<(), ConnectionError> {
        let port = EventPort::new(Arc::clone(&self.partition), vp, sint, base_flag, flag_count);
        self.connections.add_event(id, Arc::new(port))
    }

    /// Removes message connection `id`.
    pub fn remove_message_connection(&self, id: u32) -> Option<Arc<dyn MessageConnection>> {
        self.connections.remove_message(id)
    }

    /// Removes event connection `id` (kernel mode: an eventfd one is deassigned from KVM
    /// first).
    pub fn remove_event_connection(&self, id: u32) -> Option<Arc<dyn EventConnection>> {
        let eventfd = self
            .eventfds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(c) = eventfd {
            if self.mode == SynicMode::Kernel {
                // Only fails if KVM no longer has it; the table entry goes either way.
                let _ = hyperv_eventfd(self.routing_table().backend(), id, c.raw_fd(), true);
            }
        }
        self.connections.remove_event(id)
    }

    /// Registers event connection `id` backed by `fd`: the guest's HvSignalEvent to `id` with
    /// flag 0 signals `fd`; other flags answer HV_STATUS_INVALID_PORT_ID. Kernel mode hands the
    /// pair to KVM (`KVM_HYPERV_EVENTFD`), which signals `fd` without an exit; userspace mode
    /// signals it from the hypercall exit. See [`super::EventFdConnection`].
    pub fn add_event_eventfd(&self, id: u32, fd: EventFd) -> Result<Arc<EventFdConnection>> {
        let connection = Arc::new(EventFdConnection::new(fd));
        self.connections
            .add_event(id, Arc::clone(&connection) as Arc<dyn EventConnection>)
            .map_err(|e| Error::Config(e.to_string()))?;
        if self.mode == SynicMode::Kernel {
            let vm = self.routing_table().backend();
            if let Err(source) = hyperv_eventfd(vm, id, connection.raw_fd(), false) {
                self.connections.remove_event(id);
                return Err(Error::Kvm {
                    op: "KVM_HYPERV_EVENTFD",
                    source,
                });
            }
        }
        self.eventfds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&connection));
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
        }
    }

    /// The GPA of the hypercall page while enabled (userspace mode; kernel mode: KVM's).
    pub fn hypercall_page(&self) -> Option<u64> {
        self.hypercall.hypercall_page()
    }

    pub(crate) fn hypercall_page_state(&self) -> Arc<dyn HypercallPageState> {
        Arc::clone(&self.hypercall) as Arc<dyn HypercallPageState>
    }

    /// Re-reads HYPERCALL from the model after a partition-register write or a restore.
    pub(crate) fn refresh_hypercall_page(&self) {
        let h = synic_msr::Hypercall(self.partition.save().hypercall);
        let v = if h.enabled() { h.0 } else { 0 };
        self.hypercall.0.store(v, Ordering::Release);
    }

    pub(crate) fn stimer_hook(&self) -> &Arc<dyn StimerHook> {
        &self.stimer_hook
    }

    /// Kernel mode: vCPU `vcpu`'s thread stopped and read KVM's registers (or failed to).
    pub(crate) fn kernel_registers_read(&self, vcpu: u32, read: Result<Vec<(u32, u64)>>) {
        if let Some(slot) = self.kernel_registers.get(vcpu as usize) {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(read.map_err(|e| e.to_string()));
        }
    }

    /// Kernel mode: the VM's vCPUs all stopped and the kvmclock read `clock_ns`.
    pub(crate) fn kernel_clock_read(&self, clock_ns: u64) {
        *self
            .kernel_clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(clock_ns);
    }

    /// Saves the partition and every VP. Each VP is saved atomically with respect to its own
    /// vCPU's exits (its mutex); for a snapshot that matches guest memory, stop the vCPUs
    /// first.
    ///
    /// Kernel mode: the state also holds KVM's registers of every vCPU (SCONTROL, SIEFP, SIMP,
    /// SINTs, timers, GUEST_OS_ID, HYPERCALL, ...; see [`super::KERNEL_MSRS`]) and the
    /// kvmclock, read when the VM stopped. Saving a kernel-mode VM that has not run and
    /// stopped is an error, as is a register KVM refused to read.
    pub fn save(&self) -> Result<SynicState> {
        let kernel = match self.mode {
            SynicMode::Userspace => None,
            SynicMode::Kernel => Some(self.kernel_save()?),
        };
        let partition = self.partition.save();
        let vps = (0..self.vcpus())
            .filter_map(|i| self.with_vp(i, |vp| vp.save()))
            .collect();
        Ok(SynicState {
            partition,
            vps,
            kernel,
        })
    }

    fn kernel_save(&self) -> Result<KernelSynicState> {
        let not_stopped = || {
            Error::Config(
                "kernel mode: KVM's SynIC registers are read when the VM stops; save after \
                 the VM ran and stopped"
                    .into(),
            )
        };
        let clock_ns = self
            .kernel_clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ok_or_else(not_stopped)?;
        let mut vcpus = Vec::with_capacity(self.kernel_registers.len());
        for (vcpu, slot) in self.kernel_registers.iter().enumerate() {
            match &*slot.lock().unwrap_or_else(PoisonError::into_inner) {
                None => return Err(not_stopped()),
                Some(Err(e)) => {
                    return Err(Error::Config(format!(
                        "kernel mode: reading vCPU {vcpu}'s Hyper-V registers failed: {e}"
                    )))
                }
                Some(Ok(regs)) => vcpus.push(regs.clone()),
            }
        }
        Ok(KernelSynicState { clock_ns, vcpus })
    }

    /// Refuses a saved state from the other mode, or for another vCPU count (kernel mode: in
    /// KVM's registers too), before anything is restored.
    pub(crate) fn check_fits(&self, state: &SynicState) -> Result<()> {
        if state.kernel.is_some() != (self.mode == SynicMode::Kernel) {
            return Err(Error::Config(format!(
                "saved SynIC state is from {} mode, this VM runs {:?} mode",
                if state.kernel.is_some() {
                    "kernel"
                } else {
                    "userspace"
                },
                self.mode
            )));
        }
        let kernel_vcpus = state
            .kernel
            .as_ref()
            .map_or(state.vps.len(), |k| k.vcpus.len());
        if state.vps.len() != self.vps.len() || kernel_vcpus != self.vps.len() {
            return Err(Error::Config(format!(
                "saved SynIC state has {} VPs, this VM has {}",
                state.vps.len().max(kernel_vcpus),
                self.vps.len()
            )));
        }
        Ok(())
    }

    /// Restores the model's part of a saved state into this (freshly built, not yet started
    /// or stopped) VM, after guest memory is in place: the partition first, then every VP
    /// (which retries delivery), then the timer hook re-arms. A state for another VP count or
    /// the other mode is refused before anything changes; a VP the model refuses stops the
    /// restore there (do not run the VM then).
    ///
    /// Kernel mode: use [`super::SynicVm::restore`], which writes KVM's registers into the
    /// vCPUs first; this method restores the model only.
    pub fn restore(&self, state: &SynicState) -> Result<()> {
        self.restore_with_downtime(state, std::time::Duration::ZERO)
    }

    /// [`restore`](Self::restore), with the partition's reference time (TIME_REF_COUNT, timer
    /// schedules) continuing from the saved value plus `downtime`, the time the VMM declares
    /// the VM was away: it never goes backwards and jumps by exactly that.
    pub fn restore_with_downtime(
        &self,
        state: &SynicState,
        downtime: std::time::Duration,
    ) -> Result<()> {
        self.check_fits(state)?;
        let downtime_100ns = u64::try_from(downtime.as_nanos() / 100).unwrap_or(u64::MAX);
        self.partition
            .restore_with_downtime(&state.partition, downtime_100ns)?;
        self.refresh_hypercall_page();
        for (m, saved) in self.vps.iter().zip(&state.vps) {
            let mut vp = m.lock().unwrap_or_else(PoisonError::into_inner);
            vp.restore(saved)?;
            self.stimer_hook.restored(&mut vp);
        }
        Ok(())
    }
}
