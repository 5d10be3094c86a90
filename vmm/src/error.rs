//! The crate's one error type.

use vmm_sys_util::errno;

/// Everything that can go wrong building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SynIC's KVM layer refused: opening /dev/kvm, a missing capability, a KVM ioctl of
    /// the SynIC's, its routes, its model, a save or restore that does not fit.
    #[error(transparent)]
    Synic(#[from] synic_kvm::Error),
    /// KVM lacks a capability this VMM needs for itself.
    #[error("KVM lacks {cap}, needed for {needed_for}")]
    MissingCapability {
        /// The capability's KVM name.
        cap: &'static str,
        /// What the VMM needs it for.
        needed_for: &'static str,
    },
    /// More vCPUs than this host runs, or none.
    #[error("{requested} vCPUs requested; this host supports 1..={limit}")]
    VcpuCount {
        /// The count asked for.
        requested: u32,
        /// KVM's limit (at most 255: APIC ids are 8-bit here).
        limit: usize,
    },
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The operation, e.g. `KVM_CREATE_VCPU`.
        op: &'static str,
        /// The error the kernel returned.
        source: errno::Error,
    },
    /// The configuration cannot be satisfied.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// Guest memory cannot hold something (this crate's own finding; a vm-memory error is
    /// [`Error::GuestMemory`] or [`Error::Allocate`]).
    #[error("guest memory: {0}")]
    Memory(String),
    /// Guest RAM could not be allocated.
    #[error("cannot allocate guest memory: {0}")]
    Allocate(#[from] vm_memory::mmap::FromRangesError),
    /// Guest memory refused an access.
    #[error("guest memory: {what} at {gpa:#x}: {source}")]
    GuestMemory {
        /// What was being read or written.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// vm-memory's error.
        source: vm_memory::GuestMemoryError,
    },
    /// A KVM list (CPUID entries, MSRs) could not be built.
    #[error("{what}: {source}")]
    KvmList {
        /// The list.
        what: &'static str,
        /// vmm-sys-util's error (more entries than the list takes).
        source: vmm_sys_util::fam::Error,
    },
    /// Two port-I/O devices claim the same port.
    #[error("port range {start:#x}..{end:#x} overlaps a device already on the I/O bus")]
    PortConflict {
        /// First port of the rejected range.
        start: u16,
        /// One past the last port of the rejected range.
        end: u32,
    },
    /// A kernel image could not be loaded.
    #[error("cannot load kernel: {0}")]
    Load(String),
    /// A guest program could not be assembled (this crate's own finding, e.g. a vector that
    /// is not an interrupt vector).
    #[error("cannot assemble guest program: {0}")]
    Assemble(String),
    /// The assembler refused a guest program.
    #[error("cannot assemble guest program: {0}")]
    Asm(#[from] iced_x86::IcedError),
    /// A thread could not be started.
    #[error("cannot start a {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The error from the OS.
        source: std::io::Error,
    },
    /// The vCPU kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(errno::Error),
    /// The VM was already started.
    #[error("the VM was already started")]
    AlreadyStarted,
    /// A pause did not complete: the VM stopped, or a vCPU did not leave KVM_RUN in time.
    #[error("the vCPUs did not all pause (the VM stopped, or a vCPU did not park in time)")]
    PauseFailed,
    /// A vCPU's state could not be captured when it parked.
    #[error("vCPU {vcpu}'s state could not be captured: {source}")]
    Snapshot {
        /// The vCPU.
        vcpu: u32,
        /// Why (shared: every call for the pause reports it).
        source: std::sync::Arc<Error>,
    },
    /// A vCPU has not parked in the current pause.
    #[error("vCPU {vcpu} has not parked")]
    NotParked {
        /// The vCPU.
        vcpu: u32,
    },
    /// The routing layer refused (a missing capability, a full GSI table, KVM's refusal).
    #[error("SINT routing: {0}")]
    Routing(#[from] synic_routing::Error),
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps a failed KVM call to [`Error::Kvm`] naming the operation.
pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(errno::Error) -> Error {
    move |source| Error::Kvm { op, source }
}
