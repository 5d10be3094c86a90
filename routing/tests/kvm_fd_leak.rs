//! No file descriptor leaks: create and drop many routes with irqfds and resamplefds on real
//! KVM (and kernel-mode routes with their epoll thread on the fake), then count /proc/self/fd.
//! One test in its own binary, so no other test opens fds meanwhile.

mod common;

use std::sync::Arc;

use common::{kvm_available, Vm};
use synic::{SintIndex, VpIndex};
use synic_routing::fake::{FakeConfig, FakeKvm};
use synic_routing::{
    enable_synic2, DefaultRoutes, KernelSintRoutes, MsiRoute, MsixVectors, Route, RoutingTable,
    UserSintRoutes,
};

/// Raises the soft fd limit to the hard one: this test holds about 2100 fds at once, more
/// than the common default of 1024 (a VMM with thousands of irqfds must do the same).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed, which lives here.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn routes_irqfds_and_resamplefds_leak_no_fds() {
    if !kvm_available("routes_irqfds_and_resamplefds_leak_no_fds") {
        return;
    }
    raise_fd_limit();
    let vm = Vm::new();
    let table = Arc::new(RoutingTable::new(Arc::clone(&vm.vm), DefaultRoutes::Keep));
    let vps: Vec<VpIndex> = (0..64).map(VpIndex).collect();
    // Where the kernel has in-kernel Hyper-V (kvm-lab), kernel-mode routes run for real too.
    let real_kernel_mode = table.capabilities().hyperv_synic2;
    if real_kernel_mode {
        enable_synic2(&vm.vcpu).unwrap();
        table.mark_synic_active(VpIndex(0));
    }
    let baseline = open_fds();
    for round in 0..3 {
        let user =
            UserSintRoutes::new(Arc::clone(&table), vps.iter().map(|vp| (*vp, vp.0))).unwrap();
        user.add_vps(&vps, &SintIndex::ALL).unwrap();
        let mut msix = MsixVectors::new(Arc::clone(&table), 256, None).unwrap();
        for v in 0..256 {
            msix.set_masked(v, false).unwrap();
        }
        let gsis = table
            .update(|tx| {
                (0..100)
                    .map(|_| tx.add(Route::Msi(MsiRoute::fixed(0, 0x40))))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        let resample: Vec<_> = gsis
            .iter()
            .map(|&g| table.irqfd(g, true).unwrap())
            .collect();

        let fake = Arc::new(FakeKvm::new(FakeConfig::default()));
        let fake_table = Arc::new(RoutingTable::new(fake, DefaultRoutes::Discard));
        for vp in &vps {
            fake_table.mark_synic_active(*vp);
        }
        let kernel = KernelSintRoutes::new(fake_table, |_: VpIndex, _: SintIndex| {}).unwrap();
        kernel.add_vps(&vps[..8], &SintIndex::ALL).unwrap();
        let real_kernel = real_kernel_mode.then(|| {
            let k =
                KernelSintRoutes::new(Arc::clone(&table), |_: VpIndex, _: SintIndex| {}).unwrap();
            k.add_vps(&vps[..1], &SintIndex::ALL).unwrap();
            k
        });

        let during = open_fds();
        // 1024 SINT irqfds + 256 MSI-X + 200 resample pair fds + kernel routes.
        assert!(
            during >= baseline + 1024 + 256 + 200,
            "round {round}: {during}"
        );
        drop(kernel);
        drop(real_kernel);
        drop(resample);
        table
            .update(|tx| gsis.iter().try_for_each(|&g| tx.release(g)))
            .unwrap();
        drop(msix);
        drop(user);
        assert_eq!(open_fds(), baseline, "round {round} leaked fds");
        assert_eq!(table.snapshot().len(), 40, "round {round} left routes");
    }
}
