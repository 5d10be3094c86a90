//! Batched commits vs one commit per route (what QEMU's dynamic MSI routing did).
//!
//! `cargo bench -p synic-routing --bench commit`
//!
//! 1. The size, 1024 VPs x 16 HV_SINT routes + 1024 MSI routes (17 408 entries), over a
//!    backend that only counts: the library's own cost (building and encoding the shadow
//!    table) and the number of `KVM_SET_GSI_ROUTING` calls. KVM's table holds 4096 entries
//!    (KVM_MAX_IRQ_ROUTES), so this size cannot be committed to a real kernel at all.
//! 2. Real KVM at the largest mix its table takes: 192 VPs x 16 SINT routes + 1024 MSI routes
//!    = 4096 entries. HV_SINT entries are refused by this machine's KVM, so the SINT routes
//!    are userspace-mode MSI routes (the kernel's per-entry work is the same simple copy).
//!
//! Both strategies run in the same process, back to back; the ratio is what to read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_irq_routing_entry;
use kvm_ioctls::VmFd;
use synic::{SintIndex, VpIndex};
use synic_routing::{
    Capabilities, DefaultRoutes, Gsi, MsiRoute, Route, RoutingBackend, RoutingTable,
};
use vmm_sys_util::errno;
use vmm_sys_util::eventfd::EventFd;

/// Counts what is sent to the kernel; forwards it to a real VM, or (without one) accepts
/// anything instantly so only the library's own cost is timed.
#[derive(Debug)]
struct Metered {
    vm: Option<VmFd>,
    size: u32,
    calls: AtomicU64,
    entries: AtomicU64,
}

impl RoutingBackend for Metered {
    fn probe(&self) -> Capabilities {
        match &self.vm {
            Some(vm) => vm.probe(),
            None => Capabilities {
                routing_table_size: self.size,
                irqfd: true,
                irqfd_resample_cap: true,
                irqfd_resample: true,
                hyperv_synic2: true,
            },
        }
    }

    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), errno::Error> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        match &self.vm {
            Some(vm) => RoutingBackend::set_gsi_routing(vm, entries),
            None => Ok(()),
        }
    }

    fn register_irqfd(&self, _: &EventFd, _: Gsi, _: Option<&EventFd>) -> Result<(), errno::Error> {
        unreachable!("the benchmark registers no irqfds")
    }

    fn unregister_irqfd(&self, _: &EventFd, _: Gsi) -> Result<(), errno::Error> {
        unreachable!("the benchmark registers no irqfds")
    }
}

struct Run {
    calls: u64,
    entries: u64,
    time: Duration,
}

/// Adds `routes` to a fresh table over `backend`, batched (one transaction) or one commit per
/// route, and returns what was sent and the wall time.
fn add_all(backend: &Arc<Metered>, routes: &[Route], vps: u32, batched: bool) -> Run {
    let table = RoutingTable::new(Arc::clone(backend), DefaultRoutes::Discard);
    for vp in 0..vps {
        table.mark_synic_active(VpIndex(vp));
    }
    let (calls, entries) = (
        backend.calls.load(Ordering::Relaxed),
        backend.entries.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    if batched {
        table
            .update(|tx| routes.iter().try_for_each(|r| tx.add(*r).map(drop)))
            .expect("batched commit");
    } else {
        for r in routes {
            table.add(*r).expect("per-route commit");
        }
    }
    let time = start.elapsed();
    Run {
        calls: backend.calls.load(Ordering::Relaxed) - calls,
        entries: backend.entries.load(Ordering::Relaxed) - entries,
        time,
    }
}

fn routes(vps: u32, hv_sint: bool, msi_routes: u32) -> Vec<Route> {
    let mut out = Vec::new();
    for vp in 0..vps {
        for sint in SintIndex::ALL {
            out.push(if hv_sint {
                Route::HvSint {
                    vp: VpIndex(vp),
                    sint,
                }
            } else {
                Route::Msi(MsiRoute::fixed(vp, 0x30 + sint.get()))
            });
        }
    }
    for n in 0..msi_routes {
        out.push(Route::Msi(MsiRoute::fixed(n % 64, 0x80 + (n % 64) as u8)));
    }
    out
}

fn counting(routes: &[Route], vps: u32, batched: bool) -> Run {
    let backend = Arc::new(Metered {
        vm: None,
        size: routes.len() as u32,
        calls: AtomicU64::new(0),
        entries: AtomicU64::new(0),
    });
    add_all(&backend, routes, vps, batched)
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by_key(|r| r.time);
    runs.swap_remove(runs.len() / 2)
}

fn report(title: &str, routes: usize, batched: &Run, per_route: &Run) {
    println!("\n{title}: {routes} routes");
    println!(
        "  {:<22} {:>10} {:>14} {:>12}",
        "strategy", "commits", "entries sent", "time"
    );
    for (name, r) in [("batched", batched), ("commit per route", per_route)] {
        println!(
            "  {:<22} {:>10} {:>14} {:>10.3?}",
            name, r.calls, r.entries, r.time
        );
    }
    println!(
        "  ratio per-route/batched: {}x commits, {:.0}x time",
        per_route.calls / batched.calls.max(1),
        per_route.time.as_secs_f64() / batched.time.as_secs_f64()
    );
}

fn main() {
    let vps = 1024;
    let big = routes(vps, true, 1024);
    let batched = median((0..5).map(|_| counting(&big, vps, true)).collect());
    let per_route = median((0..3).map(|_| counting(&big, vps, false)).collect());
    report(
        "library only (counting backend), 1024 VPs x 16 HV_SINT + 1024 MSI",
        big.len(),
        &batched,
        &per_route,
    );

    if !std::path::Path::new("/dev/kvm").exists() {
        println!("\n*** /dev/kvm absent: real-KVM comparison SKIPPED ***");
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let backend = Arc::new(Metered {
        vm: Some(vm),
        size: 0,
        calls: AtomicU64::new(0),
        entries: AtomicU64::new(0),
    });
    let size = backend.probe().routing_table_size;
    let vps = (size - 1024) / 16;
    let fit = routes(vps, false, 1024);
    let batched = median((0..5).map(|_| add_all(&backend, &fit, 0, true)).collect());
    let per_route = add_all(&backend, &fit, 0, false);
    report(
        &format!("real KVM (table size {size}), {vps} VPs x 16 SINT MSI + 1024 MSI"),
        fit.len(),
        &batched,
        &per_route,
    );
}
