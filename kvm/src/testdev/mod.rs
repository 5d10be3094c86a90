//! QEMU's hyperv-testdev protocol carried out on a [`VmSynic`], so guests written for QEMU
//! (kvm-unit-tests' hyperv_synic and hyperv_connections) run unchanged.
//!
//! A test device: it lets the guest create SINT routes and hypercall connections. Its authority
//! is limited to what it created itself: it destroys only routes and connections it created
//! (never one the host registered), and holds at most [`MAX_TESTDEV_CONNECTIONS`] connections
//! and [`MAX_TESTDEV_ROUTES`] routes at a time.

mod protocol;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use synic::{SintIndex, VpIndex};
use vm_memory::GuestAddressSpace;

pub use protocol::{TestDevCommand, TestDevError};

use crate::vm::VmSynic;

/// The most connections (message and event together) the guest may hold through the test
/// device.
pub const MAX_TESTDEV_CONNECTIONS: usize = 64;
/// The most SINT routes the guest may hold through the test device.
pub const MAX_TESTDEV_ROUTES: usize = 64;

/// What the test device did (monotonic counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestDevStats {
    /// Commands carried out.
    pub done: u64,
    /// Commands refused: a route created twice or destroyed/raised without being created, a
    /// connection id in use or not the device's own, a VP that does not exist, a limit
    /// reached, a route KVM refused.
    pub refused: u64,
    /// Writes that were not commands (not 32 bits wide, unknown command, SINT above 15).
    pub malformed: u64,
}

/// The hyperv-testdev commands on a [`VmSynic`]:
///
/// * cmd 1/2: create/destroy a SINT route to (vp, sint). Routes the SynIC created at build
///   time are reused (the device only marks them as its own); others are added to the table,
///   and removed again on destroy.
/// * cmd 3: raise that SINT through its route ([`VmSynic::raise_sint`]).
/// * cmd 4/5: create/destroy message connection `conn_id`, a [`synic::hypercall::MessagePort`]
///   posting every message back to (vp, sint): `SUCCESS` once queued, `INSUFFICIENT_BUFFERS`
///   when the SINT's queue is full.
/// * cmd 6/7: create/destroy event connection `conn_id`, an [`synic::hypercall::EventPort`]
///   setting event flag `conn_id` of (vp, sint) on every signal (relative flag 0).
#[derive(Debug)]
pub struct TestDev<M: GuestAddressSpace> {
    synic: Arc<VmSynic<M>>,
    state: Mutex<Owned>,
    done: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
}

#[derive(Debug, Default)]
struct Owned {
    /// Routes the guest created through the device.
    routes: HashSet<(VpIndex, SintIndex)>,
    /// Of those, the ones the device added to the table (removed on destroy).
    added: HashSet<(VpIndex, SintIndex)>,
    /// Message connections the device created.
    messages: HashSet<u32>,
    /// Event connections the device created.
    events: HashSet<u32>,
}

impl Owned {
    fn connections(&self) -> usize {
        self.messages.len() + self.events.len()
    }
}

impl<M> TestDev<M>
where
    M: GuestAddressSpace + Send + Sync + 'static,
{
    /// The device for `synic`.
    pub fn new(synic: Arc<VmSynic<M>>) -> Self {
        Self {
            synic,
            state: Mutex::new(Owned::default()),
            done: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    /// What the device did.
    pub fn stats(&self) -> TestDevStats {
        TestDevStats {
            done: self.done.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
        }
    }

    /// A guest write to the device's port (the command, 4 bytes little-endian). Anything else
    /// is counted as malformed and ignored.
    pub fn write(&self, data: &[u8]) {
        let decoded = <[u8; 4]>::try_from(data)
            .map_err(|_| TestDevError::Width(data.len()))
            .and_then(|b| TestDevCommand::decode(u32::from_le_bytes(b)));
        match decoded {
            Ok(command) => self.command(command),
            Err(_) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Carries out one decoded command.
    pub fn command(&self, command: TestDevCommand) {
        let counter = if self.carry_out(command) {
            &self.done
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn vp_exists(&self, vp: VpIndex) -> bool {
        self.synic.partition().vp_indices().contains(&vp)
    }

    fn route_create(&self, pair: (VpIndex, SintIndex)) -> bool {
        if !self.vp_exists(pair.0) {
            return false;
        }
        let mut st = self.lock();
        if st.routes.contains(&pair) || st.routes.len() >= MAX_TESTDEV_ROUTES {
            return false;
        }
        if self.synic.sint_gsi(pair.0, pair.1).is_none() {
            if self.synic.add_sint_routes(&[pair]).is_err() {
                return false;
            }
            st.added.insert(pair);
        }
        st.routes.insert(pair)
    }

    fn route_destroy(&self, pair: (VpIndex, SintIndex)) -> bool {
        let mut st = self.lock();
        if !st.routes.remove(&pair) {
            return false;
        }
        if st.added.remove(&pair) {
            return self.synic.remove_sint_routes(&[pair]).is_ok();
        }
        true
    }

    fn route_set(&self, pair: (VpIndex, SintIndex)) -> bool {
        let created = self.lock().routes.contains(&pair);
        if created {
            self.synic.raise_sint(pair.0, pair.1);
        }
        created
    }

    fn connection_create(&self, conn_id: u32, vp: VpIndex, event: bool, sint: SintIndex) -> bool {
        if !self.vp_exists(vp) {
            return false;
        }
        let mut st = self.lock();
        if st.connections() >= MAX_TESTDEV_CONNECTIONS {
            return false;
        }
        let added = if event {
            self.synic.add_event_port(conn_id, vp, sint, conn_id, 1)
        } else {
            self.synic.add_message_port(conn_id, vp, sint)
        };
        if added.is_err() {
            return false;
        }
        if event {
            st.events.insert(conn_id)
        } else {
            st.messages.insert(conn_id)
        }
    }

    fn connection_destroy(&self, conn_id: u32, event: bool) -> bool {
        let mut st = self.lock();
        // Only the device's own: the host's connections (VMBus, eventfds) are not the
        // guest's to remove.
        let owned = if event {
            st.events.remove(&conn_id)
        } else {
            st.messages.remove(&conn_id)
        };
        owned
            && if event {
                self.synic.remove_event_connection(conn_id).is_some()
            } else {
                self.synic.remove_message_connection(conn_id).is_some()
            }
    }

    fn carry_out(&self, command: TestDevCommand) -> bool {
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
            } => self.connection_create(conn_id, VpIndex(vp_index), false, sint),
            TestDevCommand::MsgConnDestroy { conn_id } => self.connection_destroy(conn_id, false),
            TestDevCommand::EvtConnCreate {
                conn_id,
                vp_index,
                sint,
            } => self.connection_create(conn_id, VpIndex(vp_index), true, sint),
            TestDevCommand::EvtConnDestroy { conn_id } => self.connection_destroy(conn_id, true),
        }
    }
}
