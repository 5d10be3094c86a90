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
    /// Guest memory could not be allocated or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
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
    /// A guest program could not be assembled.
    #[error("cannot assemble guest program: {0}")]
    Assemble(String),
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
    /// The routing layer refused (a missing capability, a full GSI table, KVM's refusal).
    #[error("SINT routing: {0}")]
    Routing(#[from] synic_routing::Error),
}

impl From<iced_x86::IcedError> for Error {
    fn from(e: iced_x86::IcedError) -> Self {
        Error::Assemble(e.to_string())
    }
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps a failed KVM call to [`Error::Kvm`] naming the operation.
pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(errno::Error) -> Error {
    move |source| Error::Kvm { op, source }
}
