//! The crate's one error type.

use vmm_sys_util::errno;

/// Everything that can go wrong building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` does not exist.
    #[error(
        "/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or run on a \
         machine with hardware virtualization enabled)"
    )]
    KvmMissing,
    /// `/dev/kvm` exists but may not be opened by this user.
    #[error("/dev/kvm exists but cannot be opened: permission denied (run as root or join the kvm group)")]
    KvmPermission,
    /// Opening `/dev/kvm` failed for another reason.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(errno::Error),
    /// KVM lacks a capability this VMM needs.
    #[error("KVM lacks {cap}, needed for {needed_for}")]
    MissingCapability {
        /// The capability's KVM name.
        cap: &'static str,
        /// What the VMM needs it for.
        needed_for: &'static str,
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
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The VM was already started.
    #[error("the VM was already started")]
    AlreadyStarted,
    /// The routing layer refused (a missing capability, a full GSI table, KVM's refusal).
    #[error("SINT routing: {0}")]
    Routing(#[from] synic_routing::Error),
    /// The SynIC model refused (its configuration, a saved state that does not fit).
    #[error("SynIC model: {0}")]
    Synic(#[from] synic::Error),
}

/// Shorthand for this crate's results.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps a failed KVM call to [`Error::Kvm`] naming the operation.
pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(errno::Error) -> Error {
    move |source| Error::Kvm { op, source }
}
