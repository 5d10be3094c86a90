//! Guest -> host events on an eventfd: HvSignalEvent to a connection id signals an [`EventFd`]
//! the host waits on (a VMBus channel's interrupt, say).
//!
//! Kernel mode registers the pair with KVM (`KVM_HYPERV_EVENTFD`), so KVM signals the eventfd
//! itself and the guest's hypercall never leaves the kernel. kvm-ioctls has no wrapper for
//! this ioctl; [`hyperv_eventfd`] is the one call, with the layout from kvm-bindings. KVM handles
//! flag 0 only: any other flag number exits to userspace as an ordinary hypercall, where the
//! same connection answers it. Userspace mode routes the hypercall exit to the same
//! [`EventFdConnection`], so both modes answer alike: flag 0 signals the eventfd (SUCCESS),
//! any other flag is HV_STATUS_INVALID_PORT_ID (as KVM and QEMU answer for their flag-0-only
//! ports).

use std::os::fd::{AsRawFd, RawFd};

use kvm_bindings::{kvm_hyperv_eventfd, KVMIO, KVM_HYPERV_EVENTFD_DEASSIGN};
use kvm_ioctls::VmFd;
use synic::hypercall::{EventConnection, HvStatus};
use synic::VpIndex;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::{errno, ioctl_iow_nr};

// KVM_HYPERV_EVENTFD = _IOW(KVMIO, 0xbd, struct kvm_hyperv_eventfd) (Linux's kvm.h).
ioctl_iow_nr!(KVM_HYPERV_EVENTFD, KVMIO, 0xbd, kvm_hyperv_eventfd);

/// Assigns (or with `deassign`, removes) `fd` as the eventfd KVM signals when the guest calls
/// HvSignalEvent with connection id `conn_id` and flag 0. Needs in-kernel Hyper-V (SynIC);
/// KVM refuses ids above 24 bits (`EINVAL`) and a second eventfd for an id (`EEXIST`).
pub fn hyperv_eventfd(
    vm: &VmFd,
    conn_id: u32,
    fd: RawFd,
    deassign: bool,
) -> Result<(), errno::Error> {
    let arg = kvm_hyperv_eventfd {
        conn_id,
        fd,
        flags: if deassign {
            KVM_HYPERV_EVENTFD_DEASSIGN
        } else {
            0
        },
        ..Default::default()
    };
    // SAFETY: `vm` is an open KVM VM fd and `arg` a fully initialised kvm_hyperv_eventfd that
    // lives across the call; KVM only reads it (an _IOW ioctl).
    let ret = unsafe { ioctl_with_ref(vm, KVM_HYPERV_EVENTFD(), &arg) };
    if ret == 0 {
        Ok(())
    } else {
        Err(errno::Error::last())
    }
}

/// An event connection whose only flag (0) signals an eventfd. Counts what it answered.
#[derive(Debug)]
pub struct EventFdConnection {
    fd: EventFd,
    signalled: std::sync::atomic::AtomicU64,
}

impl EventFdConnection {
    /// A connection that signals `fd`.
    pub fn new(fd: EventFd) -> Self {
        Self {
            fd,
            signalled: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.fd
    }

    /// Signals delivered through this connection by the hypercall path (kernel mode: only
    /// those KVM passed on; the ones KVM signalled itself never reach it).
    pub fn signalled_here(&self) -> u64 {
        self.signalled.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl EventConnection for EventFdConnection {
    fn signal(&self, _caller: VpIndex, flag_number: u16) -> HvStatus {
        if flag_number != 0 {
            return HvStatus::InvalidPortId;
        }
        match self.fd.write(1) {
            Ok(()) => {
                self.signalled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                HvStatus::Success
            }
            // A counter at its maximum (the host never reads): the signal is still pending.
            Err(_) => HvStatus::Success,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_zero_signals_the_eventfd_other_flags_are_invalid_port_id() {
        let c = EventFdConnection::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        assert_eq!(c.signal(VpIndex(0), 1), HvStatus::InvalidPortId);
        assert_eq!(c.signal(VpIndex(0), 2047), HvStatus::InvalidPortId);
        assert!(c.eventfd().read().is_err(), "nothing signalled yet");
        assert_eq!(c.signal(VpIndex(3), 0), HvStatus::Success);
        assert_eq!(c.signal(VpIndex(3), 0), HvStatus::Success);
        assert_eq!(c.eventfd().read().unwrap(), 2);
        assert_eq!(c.signalled_here(), 2);
    }

    #[test]
    fn the_ioctl_number_is_kvms() {
        // _IOW(0xAE, 0xbd, 24 bytes) = dir 1 << 30 | size 24 << 16 | 0xAE << 8 | 0xbd.
        assert_eq!(KVM_HYPERV_EVENTFD(), 0x4018_AEBD);
    }
}
