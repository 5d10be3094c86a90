//! The mini VMM's glue to the VMBus host (`synic-vmbus`): the one place that knows both the
//! VMBus crate and this VMM's KVM wiring. In kernel mode a channel's HvSignalEvent goes to an
//! eventfd KVM signals itself (`KVM_HYPERV_EVENTFD`, [`KvmEventFds`]); in userspace mode it
//! reaches the VMBus host through the hypercall exit and the partition's connections.

use std::os::fd::RawFd;
use std::sync::Arc;

use kvm_ioctls::VmFd;
use synic_vmbus::host::AttachError;
use synic_vmbus::{HvEventFds, VmbusConfig, VmbusHost};

use synic_kvm::{hyperv_eventfd, SynicMode};

use crate::synic_vm::VmSynic;

/// KVM's in-kernel HvSignalEvent-to-eventfd table (`KVM_HYPERV_EVENTFD`).
#[derive(Debug)]
pub struct KvmEventFds {
    vm: Arc<VmFd>,
}

impl KvmEventFds {
    /// The table of the VM behind `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self { vm }
    }
}

impl HvEventFds for KvmEventFds {
    fn assign(&self, connection_id: u32, fd: RawFd) -> std::io::Result<()> {
        hyperv_eventfd(&self.vm, connection_id, fd, false)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn deassign(&self, connection_id: u32, fd: RawFd) {
        // Only fails when KVM no longer has the pair.
        let _ = hyperv_eventfd(&self.vm, connection_id, fd, true);
    }
}

/// Attaches a VMBus host to `synic`: its partition and hypercall connections, and in kernel
/// mode KVM's eventfd table and KVM's reference time (what the guest's TIME_REF_COUNT reads:
/// the kvmclock in 100 ns units), for time samples.
pub fn attach(synic: &Arc<VmSynic>, mut config: VmbusConfig) -> Result<VmbusHost, AttachError> {
    if synic.mode() == SynicMode::Kernel {
        let vm = Arc::clone(synic.vm_fd());
        config.eventfds = Some(Arc::new(KvmEventFds::new(Arc::clone(&vm))));
        let partition = Arc::clone(synic.partition());
        config.reference_time = Some(Arc::new(move || match vm.get_clock() {
            Ok(c) => c.clock / 100,
            // Only fails when the VM is gone; the model's clock is the best guess then.
            Err(_) => partition.reference_time(),
        }));
    }
    VmbusHost::attach(
        Arc::clone(synic.partition()),
        Arc::clone(synic.connections()),
        config,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use synic::hypercall::{validate_post_message, Hypercall, PostMessageInput};
    use synic::{HvStatus, VpIndex};
    use synic_msr::{index, Origin};
    use synic_vmbus::protocol::{
        header_only, ChannelMessageHeader, ChannelMessageType, InitiateContact, Version,
        HV_MESSAGE_VMBUS,
    };
    use vm_memory::{Bytes, GuestAddress};
    use zerocopy::{FromZeros, IntoBytes};

    use super::*;
    use crate::synic_vm::SynicVmBuilder;
    use synic_kvm::ModeRequest;

    const SIMP: u64 = 0x20_0000;

    /// What the guest's HvPostMessage would hand the connections registry.
    fn guest_post(synic: &VmSynic, connection_id: u32, payload: &[u8]) -> HvStatus {
        let mut input = PostMessageInput::new_zeroed();
        input.connection_id = connection_id;
        input.message_type = HV_MESSAGE_VMBUS;
        input.payload_size = payload.len() as u32;
        input.payload[..payload.len()].copy_from_slice(payload);
        let call = Hypercall::PostMessage(validate_post_message(&input).unwrap());
        synic.connections().dispatch(VpIndex(0), &call)
    }

    /// Waits for a message in slot 2 of the message page, returns its payload's first 16 bytes
    /// and frees the slot the way the guest does (type None, then EOM).
    fn take_slot2(synic: &VmSynic) -> [u8; 16] {
        let slot = GuestAddress(SIMP + 2 * 256);
        for _ in 0..500 {
            let t: u32 = synic.memory().read_obj(slot).unwrap();
            if t != 0 {
                assert_eq!(t, HV_MESSAGE_VMBUS);
                let mut p = [0u8; 16];
                synic
                    .memory()
                    .read_slice(&mut p, GuestAddress(SIMP + 2 * 256 + 16))
                    .unwrap();
                synic.memory().write_obj(0u32, slot).unwrap();
                synic
                    .with_vp(0, |vp| vp.wrmsr(index::EOM, 0, Origin::Guest))
                    .unwrap()
                    .unwrap();
                return p;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no reply in the message page");
    }

    #[test]
    fn host_answers_through_the_message_page() {
        if !synic::testing::kvm_available("host_answers_through_the_message_page") {
            return;
        }
        let vm = SynicVmBuilder::new()
            .mode(ModeRequest::Userspace)
            .testdev(false)
            .build()
            .unwrap();
        let synic = vm.synic().clone();
        // The guest's SynIC setup, as Linux does it: SINT2 unmasked, SIMP, SCONTROL.
        for (msr, value) in [
            (index::SINT0 + 2, 0xF3),
            (index::SIMP, SIMP | 1),
            (index::SCONTROL, 1),
        ] {
            synic
                .with_vp(0, |vp| vp.wrmsr(msr, value, Origin::Guest))
                .unwrap()
                .unwrap();
        }
        let host = attach(&synic, VmbusConfig::default()).unwrap();
        let contact = InitiateContact {
            header: ChannelMessageHeader::new(ChannelMessageType::INITIATE_CONTACT),
            vmbus_version_requested: Version::WIN10_V5_3.0,
            target_vcpu: 0,
            interrupt_page_or_sint: 2,
            monitor_page1: 0x30_0000,
            monitor_page2: 0x30_1000,
        };
        assert_eq!(guest_post(&synic, 4, contact.as_bytes()), HvStatus::Success);
        let r = take_slot2(&synic);
        assert_eq!(r[..4], 15u32.to_le_bytes(), "VERSION_RESPONSE");
        let conn = u32::from_le_bytes(r[12..16].try_into().unwrap());
        assert_eq!(r[8], 1, "supported");
        let offers = header_only(ChannelMessageType::REQUEST_OFFERS);
        assert_eq!(guest_post(&synic, conn, &offers), HvStatus::Success);
        for _ in 0..4 {
            assert_eq!(take_slot2(&synic)[..4], 1u32.to_le_bytes(), "OFFERCHANNEL");
        }
        assert_eq!(
            take_slot2(&synic)[..4],
            4u32.to_le_bytes(),
            "ALLOFFERS_DELIVERED"
        );
        let unload = header_only(ChannelMessageType::UNLOAD);
        assert_eq!(guest_post(&synic, conn, &unload), HvStatus::Success);
        assert_eq!(
            take_slot2(&synic)[..4],
            17u32.to_le_bytes(),
            "UNLOAD_RESPONSE"
        );
        assert_eq!(
            guest_post(&synic, 7, &unload),
            HvStatus::InvalidConnectionId
        );
        let log = host.finish();
        assert_eq!(log.log.total(), 10, "{:#?}", log.log);
        assert_eq!(
            (log.log.errors(), log.negotiated),
            (0, Some(Version::WIN10_V5_3))
        );
        assert_eq!(log.connection, None, "disconnected by UNLOAD");
        assert_eq!(
            guest_post(&synic, conn, &offers),
            HvStatus::InvalidConnectionId,
            "finish unregisters the connections"
        );
    }
}
