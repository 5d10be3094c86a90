//! The crate's one error type.

use vmm_sys_util::errno;

use crate::probe::SynicMode;

/// Everything that can go wrong wiring the SynIC to KVM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` does not exist.
    #[error(
        "/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or run on a \
         machine with hardware virtualization enabled)"
    )]
    KvmMissing,
    /// `/dev/kvm` exists but may not be opened by this user.
    #[error(
        "/dev/kvm exists but cannot be opened: permission denied (run as root or join the kvm \
         group)"
    )]
    KvmPermission,
    /// Opening `/dev/kvm` failed for another reason.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(errno::Error),
    /// KVM lacks a capability the chosen mode needs.
    #[error("KVM lacks {cap}, needed for {needed_for}")]
    MissingCapability {
        /// The capability's KVM name.
        cap: &'static str,
        /// What it is needed for.
        needed_for: &'static str,
    },
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The operation, e.g. `KVM_ENABLE_CAP(HYPERV_SYNIC2)`.
        op: &'static str,
        /// The error the kernel returned.
        source: errno::Error,
    },
    /// `KVM_GET_MSRS` or `KVM_SET_MSRS` stopped before the end of the list: KVM refused this
    /// register (on a save: it cannot be read; on a restore: the saved value).
    #[error("KVM refused {op} of MSR {msr:#x} (value {value:#x}) on vCPU {vcpu}")]
    MsrRefused {
        /// `KVM_GET_MSRS` or `KVM_SET_MSRS`.
        op: &'static str,
        /// The vCPU.
        vcpu: u32,
        /// The register KVM stopped at.
        msr: u32,
        /// The value (0 for a read).
        value: u64,
    },
    /// A saved kernel-mode register list names an MSR that is not one of
    /// [`crate::KERNEL_MSRS`].
    #[error("saved kernel-mode state of vCPU {vcpu} holds MSR {msr:#x}, which is not a saved Hyper-V register")]
    NotAKernelMsr {
        /// The vCPU.
        vcpu: u32,
        /// The MSR.
        msr: u32,
    },
    /// The number of vCPUs given does not match the SynIC's.
    #[error("{what}: {given} vCPUs given, the SynIC has {expected}")]
    VcpuCount {
        /// What was being done.
        what: &'static str,
        /// The count passed in.
        given: usize,
        /// The SynIC's count.
        expected: usize,
    },
    /// A vCPU index outside the SynIC.
    #[error("no vCPU {vcpu}: the SynIC has {count}")]
    NoSuchVcpu {
        /// The index asked for.
        vcpu: u32,
        /// The SynIC's vCPU count.
        count: u32,
    },
    /// A saved state from the other mode.
    #[error("saved SynIC state is from {saved:?} mode, this VM runs {running:?} mode")]
    ModeMismatch {
        /// The mode of the saved state.
        saved: SynicMode,
        /// This VM's mode.
        running: SynicMode,
    },
    /// Save was called while the SynIC was not paused ([`crate::VmSynic::pause`]).
    #[error("save needs a paused SynIC: pause the vCPUs and call VmSynic::pause first")]
    NotPaused,
    /// Kernel mode: a vCPU's registers were not captured ([`crate::VcpuSynic::capture`]) since
    /// the SynIC was paused.
    #[error(
        "kernel mode: vCPU {vcpu}'s Hyper-V registers were not captured since the pause (call \
         VcpuSynic::capture on each paused vCPU)"
    )]
    NotCaptured {
        /// The vCPU.
        vcpu: u32,
    },
    /// The exit handed in is not the kind the handler takes.
    #[error("not a {expected} exit (kvm_run exit reason {reason})")]
    WrongExit {
        /// The exit the handler takes.
        expected: &'static str,
        /// `kvm_run.exit_reason`.
        reason: u32,
    },
    /// `KVM_EXIT_HYPERV` of a type this crate does not handle.
    #[error("unsupported KVM_EXIT_HYPERV type {0}")]
    UnsupportedHypervExit(u32),
    /// A connection id is taken or out of range.
    #[error("connection: {0}")]
    Connection(#[from] synic::hypercall::ConnectionError),
    /// A helper thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The error from the OS.
        source: std::io::Error,
    },
    /// The routing layer refused (a missing capability, a full GSI table, KVM's refusal).
    #[error("SINT routing: {0}")]
    Routing(#[from] synic_routing::Error),
    /// The SynIC model refused (its configuration, a saved state that does not fit).
    #[error("SynIC model: {0}")]
    Synic(#[from] synic::Error),
    /// A KVM list (CPUID entries, MSRs) could not be built: more entries than KVM takes.
    #[error("{what}: more than {limit} entries")]
    TooManyEntries {
        /// The list.
        what: &'static str,
        /// KVM's limit.
        limit: usize,
    },
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps a failed KVM call to [`Error::Kvm`] naming the operation.
pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(errno::Error) -> Error {
    move |source| Error::Kvm { op, source }
}
