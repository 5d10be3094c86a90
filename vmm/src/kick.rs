//! Kicking a vCPU thread out of `KVM_RUN`: a real-time signal whose handler sets the thread's
//! `kvm_run.immediate_exit`, so a kick that lands just before `KVM_RUN` is not lost (the
//! scheme the KVM API documentation recommends instead of `KVM_SET_SIGNAL_MASK`).

use std::cell::Cell;
use std::sync::OnceLock;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    // Const-initialised and without a destructor: safe to touch from a signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal.
pub(crate) fn signal() -> libc::c_int {
    SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is set by this thread to its own vCPU's mapped kvm_run and
        // cleared before that mapping goes away; a signal handler runs on the same thread, so
        // the mapping is live here. A volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the handler once per process. Every call returns the outcome of that one
/// installation: a failure is reported on each call, so no VM starts vCPUs that a kick would
/// kill (the signal's default action ends the process).
pub(crate) fn install() -> crate::Result<()> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| register_signal_handler(signal(), on_kick));
    installed.map_err(crate::Error::KickHandler)
}

/// Makes kicks of the calling thread set `run.immediate_exit`. `run` must stay mapped until
/// [`unregister`] is called on this thread.
pub(crate) fn register(run: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(run));
}

/// Stops kicks of the calling thread from touching its `kvm_run`.
pub(crate) fn unregister() {
    KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
}
