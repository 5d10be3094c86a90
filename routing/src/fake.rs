//! A recording stand-in for KVM: the table logic, SINT routes and MSI-X run against it in unit
//! tests, property tests, fuzz targets and benchmarks without `/dev/kvm`.
//!
//! It checks what the kernel checks (`virt/kvm/irqchip.c`, `arch/x86/kvm/irq_comm.c`,
//! `virt/kvm/eventfd.c`): table size, GSI range, entry types and flags, irqchip pins, one
//! non-irqchip route per GSI, one registration per eventfd, resample irqfds only with the full
//! irqchip. It keeps only the last committed table (not every one), so committing thousands of
//! times stays cheap.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use kvm_bindings::kvm_irq_routing_entry;
use synic::{SintIndex, VpIndex};
use vmm_sys_util::errno;
use vmm_sys_util::eventfd::EventFd;

use crate::{Capabilities, Gsi, Route, RoutingBackend};

/// Which in-kernel irqchip the fake VM has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeIrqchip {
    /// `KVM_CREATE_IRQCHIP`: PIC, IOAPIC and LAPICs in the kernel.
    Full,
    /// `KVM_CAP_SPLIT_IRQCHIP`: LAPICs only; irqchip routes and resample irqfds are refused.
    Split,
    /// No irqchip: irqfds are refused.
    None,
}

/// What the fake kernel supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeConfig {
    /// `KVM_CAP_IRQ_ROUTING`.
    pub routing_table_size: u32,
    /// `KVM_CAP_HYPERV_SYNIC2` (HV_SINT routes accepted).
    pub hyperv_synic2: bool,
    /// The VM's irqchip.
    pub irqchip: FakeIrqchip,
}

impl Default for FakeConfig {
    /// A KVM with in-kernel Hyper-V, the full irqchip and 4096 routes.
    fn default() -> Self {
        Self {
            routing_table_size: 4096,
            hyperv_synic2: true,
            irqchip: FakeIrqchip::Full,
        }
    }
}

/// One call the fake received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `KVM_SET_GSI_ROUTING` with this many entries, and whether it was accepted.
    SetGsiRouting {
        /// Entry count.
        entries: usize,
        /// Accepted.
        ok: bool,
    },
    /// `KVM_IRQFD` assign.
    RegisterIrqfd {
        /// GSI.
        gsi: Gsi,
        /// With a resamplefd.
        resample: bool,
        /// Accepted.
        ok: bool,
    },
    /// `KVM_IRQFD` deassign; `found` is false when no such registration existed (KVM returns
    /// success anyway).
    UnregisterIrqfd {
        /// GSI.
        gsi: Gsi,
        /// A registration was removed.
        found: bool,
    },
}

/// An interrupt the fake kernel injected: an irqfd on `gsi` was written and the committed
/// table routed it to `routes` (empty: the GSI had no route and the write was lost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The GSI raised.
    pub gsi: Gsi,
    /// Where the committed table sent it.
    pub routes: Vec<Route>,
}

/// The recording fake. Share it as `Arc<FakeKvm>`.
#[derive(Debug)]
pub struct FakeKvm {
    config: FakeConfig,
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    committed: Vec<(Gsi, Route)>,
    set_routing_calls: u64,
    irqfds: Vec<FakeIrqfd>,
    calls: Vec<Call>,
    record_calls: bool,
    fail_next: Option<i32>,
    commit_delay: std::time::Duration,
    msis: Vec<crate::MsiRoute>,
}

#[derive(Debug)]
struct FakeIrqfd {
    gsi: Gsi,
    /// The caller's fd number: KVM matches registrations by eventfd, and a number is unique
    /// while the caller keeps the fd open (which it must while registered).
    raw: RawFd,
    event: EventFd,
    resample: Option<EventFd>,
}

fn einval() -> errno::Error {
    errno::Error::new(libc::EINVAL)
}

impl FakeKvm {
    /// The MSIs injected with `KVM_SIGNAL_MSI` so far, oldest first (every one is "delivered").
    pub fn signalled_msis(&self) -> Vec<crate::MsiRoute> {
        self.lock().msis.clone()
    }

    /// A fake kernel with `config`, recording every call.
    pub fn new(config: FakeConfig) -> Self {
        Self {
            config,
            state: Mutex::new(FakeState {
                record_calls: true,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops (or resumes) recording the call log; counters and the table are always kept.
    /// Benchmarks turn it off.
    pub fn record_calls(&self, on: bool) {
        self.lock().record_calls = on;
    }

    /// The table KVM holds: the entries of the last accepted `KVM_SET_GSI_ROUTING`.
    pub fn committed(&self) -> Vec<(Gsi, Route)> {
        self.lock().committed.clone()
    }

    /// Number of `KVM_SET_GSI_ROUTING` calls, accepted or not.
    pub fn set_routing_calls(&self) -> u64 {
        self.lock().set_routing_calls
    }

    /// The call log.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Empties the call log.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The registered irqfds as (GSI, has resamplefd), in registration order.
    pub fn irqfds(&self) -> Vec<(Gsi, bool)> {
        self.lock()
            .irqfds
            .iter()
            .map(|i| (i.gsi, i.resample.is_some()))
            .collect()
    }

    /// Makes every `KVM_SET_GSI_ROUTING` take at least `delay` (a real commit waits for an
    /// SRCU grace period), to widen race windows in tests.
    pub fn set_commit_delay(&self, delay: std::time::Duration) {
        self.lock().commit_delay = delay;
    }

    /// Makes the next `KVM_SET_GSI_ROUTING` fail with `errno` (fault injection).
    pub fn fail_next_commit(&self, errno: i32) {
        self.lock().fail_next = Some(errno);
    }

    /// Does what the kernel does when irqfds are written: consumes every registered irqfd's
    /// counter and routes one injection per non-zero counter through the committed table.
    pub fn deliver(&self) -> Vec<Injection> {
        let state = self.lock();
        let mut out = Vec::new();
        for irqfd in &state.irqfds {
            if irqfd.event.read().unwrap_or(0) == 0 {
                continue;
            }
            let routes = state
                .committed
                .iter()
                .filter(|(g, _)| *g == irqfd.gsi)
                .map(|(_, r)| *r)
                .collect();
            out.push(Injection {
                gsi: irqfd.gsi,
                routes,
            });
        }
        out
    }

    /// The guest acknowledged `gsi`: signals the resamplefd of every resample irqfd on it, as
    /// KVM's resampler does. Returns how many were signalled.
    pub fn ack_gsi(&self, gsi: Gsi) -> usize {
        let state = self.lock();
        let mut n = 0;
        for irqfd in state.irqfds.iter().filter(|i| i.gsi == gsi) {
            if let Some(r) = &irqfd.resample {
                let _ = r.write(1);
                n += 1;
            }
        }
        n
    }

    /// The guest acknowledged `sint` on `vp` (EOI of its vector or EOM): like KVM, finds the GSI
    /// whose HV_SINT route names the pair in the committed table and acks it.
    pub fn ack_sint(&self, vp: VpIndex, sint: SintIndex) -> usize {
        let gsi = self
            .lock()
            .committed
            .iter()
            .find(|(_, r)| *r == Route::HvSint { vp, sint })
            .map(|(g, _)| *g);
        gsi.map_or(0, |g| self.ack_gsi(g))
    }

    fn check_table(&self, entries: &[kvm_irq_routing_entry]) -> Result<Vec<(Gsi, Route)>, i32> {
        let size = self.config.routing_table_size;
        if entries.len() > size as usize {
            return Err(libc::EINVAL);
        }
        let mut table: Vec<(Gsi, Route)> = Vec::with_capacity(entries.len());
        // Sorted by GSI in practice (the table commits in order), but do not rely on it.
        let mut by_gsi: std::collections::HashMap<Gsi, Vec<Route>> = Default::default();
        for e in entries {
            let (gsi, route) = Route::decode(e).ok_or(libc::EINVAL)?;
            if gsi.0 >= size || route.validate().is_err() {
                return Err(libc::EINVAL);
            }
            match route {
                Route::HvSint { .. } if !self.config.hyperv_synic2 => return Err(libc::EINVAL),
                Route::Irqchip { .. } if self.config.irqchip != FakeIrqchip::Full => {
                    return Err(libc::EINVAL)
                }
                _ => {}
            }
            let on_gsi = by_gsi.entry(gsi).or_default();
            let clash = on_gsi.iter().any(|e| match (e, &route) {
                (Route::Irqchip { chip: a, .. }, Route::Irqchip { chip: b, .. }) => a == b,
                _ => true,
            });
            if clash {
                return Err(libc::EINVAL);
            }
            on_gsi.push(route);
            table.push((gsi, route));
        }
        Ok(table)
    }
}

impl RoutingBackend for FakeKvm {
    fn probe(&self) -> Capabilities {
        Capabilities {
            routing_table_size: self.config.routing_table_size,
            irqfd: self.config.irqchip != FakeIrqchip::None,
            irqfd_resample_cap: true,
            irqfd_resample: self.config.irqchip == FakeIrqchip::Full,
            hyperv_synic2: self.config.hyperv_synic2,
        }
    }

    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), errno::Error> {
        let checked = self.check_table(entries);
        let delay = self.lock().commit_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut state = self.lock();
        state.set_routing_calls += 1;
        let result = match (state.fail_next.take(), checked) {
            (Some(e), _) | (None, Err(e)) => Err(errno::Error::new(e)),
            (None, Ok(table)) => {
                state.committed = table;
                Ok(())
            }
        };
        if state.record_calls {
            state.calls.push(Call::SetGsiRouting {
                entries: entries.len(),
                ok: result.is_ok(),
            });
        }
        result
    }

    fn register_irqfd(
        &self,
        fd: &EventFd,
        gsi: Gsi,
        resample: Option<&EventFd>,
    ) -> Result<(), errno::Error> {
        let mut state = self.lock();
        let allowed = match self.config.irqchip {
            FakeIrqchip::Full => true,
            FakeIrqchip::Split => resample.is_none(),
            FakeIrqchip::None => false,
        };
        let result = if !allowed {
            Err(einval())
        } else if state.irqfds.iter().any(|i| i.raw == fd.as_raw_fd()) {
            Err(errno::Error::new(libc::EBUSY))
        } else {
            let dup = |e: &EventFd| e.try_clone().map_err(|_| errno::Error::new(libc::EMFILE));
            let event = dup(fd)?;
            let resample = resample.map(dup).transpose()?;
            state.irqfds.push(FakeIrqfd {
                gsi,
                raw: fd.as_raw_fd(),
                event,
                resample,
            });
            Ok(())
        };
        if state.record_calls {
            state.calls.push(Call::RegisterIrqfd {
                gsi,
                resample: resample.is_some(),
                ok: result.is_ok(),
            });
        }
        result
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: Gsi) -> Result<(), errno::Error> {
        let mut state = self.lock();
        let before = state.irqfds.len();
        state
            .irqfds
            .retain(|i| !(i.raw == fd.as_raw_fd() && i.gsi == gsi));
        let found = state.irqfds.len() != before;
        if state.record_calls {
            state.calls.push(Call::UnregisterIrqfd { gsi, found });
        }
        Ok(())
    }

    fn signal_msi(&self, msi: crate::MsiRoute) -> Result<bool, errno::Error> {
        self.lock().msis.push(msi);
        Ok(true)
    }
}
