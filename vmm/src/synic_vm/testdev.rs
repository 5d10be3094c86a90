//! QEMU's hyperv-testdev protocol (port 0x3000) carried out on the attached model, so guests
//! written for QEMU (kvm-unit-tests' hyperv_synic and hyperv_connections) run unchanged.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use synic::hypercall::ConnectionError;
use synic::{SintIndex, VpIndex};

use super::host::AttachedSynic;
use crate::devices::{TestDevCommand, TestDevHandler};

/// What the test device did (monotonic counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestDevStats {
    /// Commands carried out.
    pub done: u64,
    /// Commands refused: a route created twice or destroyed/raised without being created, a
    /// connection id in use or unknown, a VP that does not exist, a route KVM refused.
    pub refused: u64,
}

/// The [`TestDevHandler`] of a [`super::SynicVm`]:
///
/// * cmd 1/2: create/destroy a SINT route to (vp, sint). Routes the VM created at build time
///   are reused (the test device only marks them as its own); others are added to the table,
///   and removed again on destroy.
/// * cmd 3: raise that SINT through its route ([`AttachedSynic::raise_sint`]).
/// * cmd 4/5: create/destroy message connection `conn_id`, a [`synic::hypercall::MessagePort`]
///   posting every message back to (vp, sint): `SUCCESS` once queued, `INSUFFICIENT_BUFFERS`
///   when the SINT's queue is full.
/// * cmd 6/7: create/destroy event connection `conn_id`, an
///   [`synic::hypercall::EventPort`] setting event flag `conn_id` of (vp, sint) on every
///   signal (relative flag 0).
#[derive(Debug)]
pub struct SynicTestDev {
    synic: Arc<AttachedSynic>,
    state: Mutex<Routes>,
    done: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Routes {
    /// Routes the guest created through the device.
    created: HashSet<(VpIndex, SintIndex)>,
    /// Of those, the ones the device added to the table (removed on destroy).
    added: HashSet<(VpIndex, SintIndex)>,
}

impl SynicTestDev {
    /// The device's handler for `synic`.
    pub fn new(synic: Arc<AttachedSynic>) -> Self {
        Self {
            synic,
            state: Mutex::new(Routes::default()),
            done: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// What the device did.
    pub fn stats(&self) -> TestDevStats {
        TestDevStats {
            done: self.done.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn vp_exists(&self, vp: VpIndex) -> bool {
        self.synic.partition().vp_indices().contains(&vp)
    }

    fn route_create(&self, pair: (VpIndex, SintIndex)) -> bool {
        if !self.vp_exists(pair.0) {
            return false;
        }
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.created.contains(&pair) {
            return false;
        }
        if self.synic.sint_gsi(pair.0, pair.1).is_none() {
            if self.synic.add_sint_routes(&[pair]).is_err() {
                return false;
            }
            st.added.insert(pair);
        }
        st.created.insert(pair)
    }

    fn route_destroy(&self, pair: (VpIndex, SintIndex)) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !st.created.remove(&pair) {
            return false;
        }
        if st.added.remove(&pair) {
            return self.synic.remove_sint_routes(&[pair]).is_ok();
        }
        true
    }

    fn route_set(&self, pair: (VpIndex, SintIndex)) -> bool {
        let created = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .created
            .contains(&pair);
        if created {
            self.synic.raise_sint(pair.0, pair.1);
        }
        created
    }

    fn carry_out(&self, command: TestDevCommand) -> bool {
        let ok = |r: Result<(), ConnectionError>| r.is_ok();
        match command {
            TestDevCommand::SintRouteCreate { vp_index, sint } => {
                self.route_create((VpIndex(vp_index), sint))
            }
            TestDevCommand::SintRouteDestroy { vp_index, sint } => {
                self.route_destroy((VpIndex(vp_index), sint))
            }
            TestDevCommand::SintRouteSet { vp_index, sint } => {
                self.route_set((VpIndex(vp_index), sint))
            }
            TestDevCommand::MsgConnCreate {
                conn_id,
                vp_index,
                sint,
            } => {
                self.vp_exists(VpIndex(vp_index))
                    && ok(self
                        .synic
                        .add_message_port(conn_id, VpIndex(vp_index), sint))
            }
            TestDevCommand::MsgConnDestroy { conn_id } => {
                self.synic.remove_message_connection(conn_id).is_some()
            }
            TestDevCommand::EvtConnCreate {
                conn_id,
                vp_index,
                sint,
            } => {
                self.vp_exists(VpIndex(vp_index))
                    && ok(self
                        .synic
                        .add_event_port(conn_id, VpIndex(vp_index), sint, conn_id, 1))
            }
            TestDevCommand::EvtConnDestroy { conn_id } => {
                self.synic.remove_event_connection(conn_id).is_some()
            }
        }
    }
}

impl TestDevHandler for SynicTestDev {
    fn command(&self, _vcpu: u32, command: TestDevCommand) {
        let counter = if self.carry_out(command) {
            &self.done
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
