//! The SynIC beside a VMM that already owns `KVM_SET_GSI_ROUTING` (as Cloud Hypervisor's
//! interrupt manager does): a second, independent owner of routes in the same VM keeps its
//! table, merges the SynIC's routes (a reserved GSI range, handed over through
//! `GsiRoutingOwner`) and commits both. Its MSI routes keep interrupting the guest, the SINT
//! routes keep delivering, and no commit from either side drops the other's entries.
//!
//! Userspace mode here; kernel mode (HV_SINT routes in the range) under kvm-lab.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kvm_available;
use iced_x86::code_asm::*;
use kvm_bindings::kvm_irq_routing_entry;
use kvm_ioctls::VmFd;
use synic::{HvMessage, MessageType, SintIndex, VpIndex};
use synic_kvm::ModeRequest;
use synic_routing::{
    default_irqchip_routes, Gsi, GsiRoutingOwner, MsiRoute, Route, RoutingBackend,
};
use synic_vmm::devices::ReportPort;
use synic_vmm::guest::synic::{apic_eoi, count_irq, release_slot};
use synic_vmm::guest::{layout, tag, GuestBuilder, Isr, SynicSetup};
use synic_vmm::synic_vm::SynicVmBuilder;
use synic_vmm::{Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// The reserved range the SynIC's routes live in.
const SYNIC_GSIS: std::ops::Range<u32> = 1000..1100;
/// The device MSI routes the other owner adds: (GSI, vector).
const DEVICE: [(u32, u8); 3] = [(100, 0x60), (101, 0x61), (102, 0x62)];
const MSG_SINT: u8 = 2;
const MSG_VECTOR: u8 = 0x50;
const LATE_SINT: u8 = 4;
const LATE_VECTOR: u8 = 0x54;

/// The VMM's interrupt manager: owns the VM's routing table, its own routes (KVM's irqchip
/// pins and device MSIs) plus whatever the SynIC hands it, and commits all of it every time.
struct InterruptManager {
    vm: Arc<VmFd>,
    state: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    own: Vec<kvm_irq_routing_entry>,
    synic: Vec<kvm_irq_routing_entry>,
    commits: u32,
}

impl InterruptManager {
    fn new(vm: Arc<VmFd>) -> Self {
        let own = default_irqchip_routes()
            .into_iter()
            .map(|(gsi, route)| route.encode(gsi))
            .collect();
        Self {
            vm,
            state: Mutex::new(Tables {
                own,
                ..Tables::default()
            }),
        }
    }

    fn commit(&self, t: &mut Tables) -> Result<(), vmm_sys_util::errno::Error> {
        let all: Vec<_> = t.own.iter().chain(&t.synic).copied().collect();
        RoutingBackend::set_gsi_routing(&*self.vm, &all)?;
        t.commits += 1;
        Ok(())
    }

    /// A device MSI route of the VMM's own.
    fn add_msi(&self, gsi: u32, vector: u8) {
        let mut t = self.state.lock().unwrap();
        t.own
            .push(Route::Msi(MsiRoute::fixed(0, vector)).encode(Gsi(gsi)));
        self.commit(&mut t).expect("the owner's commit");
    }

    fn synic_entries(&self) -> Vec<u32> {
        self.state
            .lock()
            .unwrap()
            .synic
            .iter()
            .map(|e| e.gsi)
            .collect()
    }

    fn own_gsis(&self) -> Vec<u32> {
        self.state
            .lock()
            .unwrap()
            .own
            .iter()
            .map(|e| e.gsi)
            .collect()
    }
}

impl GsiRoutingOwner for InterruptManager {
    fn commit_delegated(
        &self,
        entries: &[kvm_irq_routing_entry],
    ) -> Result<(), vmm_sys_util::errno::Error> {
        let mut t = self.state.lock().unwrap();
        let old = std::mem::replace(&mut t.synic, entries.to_vec());
        let r = self.commit(&mut t);
        if r.is_err() {
            t.synic = old;
        }
        r
    }
}

/// Waits until the vCPU-0 counter of `vector` in guest memory reaches `n`.
fn wait_irqs(mem: &synic_vmm::GuestMemory, vector: u8, n: u64) {
    let at = GuestAddress(layout::percpu(0) + u64::from(vector) * 8);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: u64 = mem.read_obj(at).unwrap();
        if got >= n {
            assert_eq!(got, n, "vector {vector:#x}: more interrupts than sent");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "vector {vector:#x}: {got} of {n} interrupts arrived"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A message ISR for `sint` at `vector`: counts, frees the slot the TLFS way, EOIs.
fn message_isr(g: &mut GuestBuilder, setup: &SynicSetup, sint: u8, vector: u8) {
    let slot = setup.slot(sint);
    let a = g.asm();
    let mut isr = a.create_label();
    a.set_label(&mut isr).unwrap();
    for r in [rax, rcx, rdx, rbx] {
        a.push(r).unwrap();
    }
    count_irq(a, vector).unwrap();
    a.mov(rbx, slot).unwrap();
    release_slot(a, rbx).unwrap();
    apic_eoi(a).unwrap();
    for r in [rbx, rdx, rcx, rax] {
        a.pop(r).unwrap();
    }
    a.iretq().unwrap();
    g.gate(vector, isr).unwrap();
}

fn two_owners(mode: ModeRequest) {
    let setup = SynicSetup {
        simp: layout::FREE_PAGES,
        siefp: layout::FREE_PAGES + 0x1000,
        sints: vec![(MSG_SINT, MSG_VECTOR), (LATE_SINT, LATE_VECTOR)],
    };
    let mut g = GuestBuilder::new().unwrap();
    for (_, vector) in DEVICE {
        g.isr(vector, Isr::QUIET).unwrap();
    }
    g.lapic_enable().unwrap();
    g.synic_enable(&setup).unwrap();
    g.report(tag::USER, 0).unwrap(); // ready
                                     // Serve interrupts forever; the host checks counters and stops the VM.
    let mut idle = g.asm().create_label();
    g.asm().set_label(&mut idle).unwrap();
    g.asm().sti().unwrap();
    g.asm().hlt().unwrap();
    g.asm().jmp(idle).unwrap();
    message_isr(&mut g, &setup, MSG_SINT, MSG_VECTOR);
    message_isr(&mut g, &setup, LATE_SINT, LATE_VECTOR);
    let program = g.build().unwrap();

    // The VM and its interrupt manager exist before the SynIC (they are the VMM's).
    let mut vm = Vm::new(VmConfig {
        mode,
        ..VmConfig::default()
    })
    .expect("building the VM");
    let owner = Arc::new(InterruptManager::new(Arc::clone(vm.vm_fd())));
    let (report, reports) = ReportPort::new(1);
    vm.add_device(ReportPort::BASE, ReportPort::LEN, Arc::new(report))
        .unwrap();
    // The SynIC routes SINT2 at build; SINT4 is added later, mid-run.
    let mut svm = SynicVmBuilder::new()
        .routed_sints(&[SintIndex::new(u32::from(MSG_SINT)).unwrap()])
        .delegate_routing(owner.clone(), SYNIC_GSIS)
        .attach(vm)
        .expect("attaching the SynIC");
    let synic = svm.synic().clone();
    let mem = svm.vm().memory().clone();
    assert!(
        owner.synic_entries().iter().all(|g| SYNIC_GSIS.contains(g)),
        "the SynIC's routes live in its range: {:?}",
        owner.synic_entries()
    );
    assert_eq!(owner.synic_entries().len(), 1, "one SINT route at build");
    let fds: Vec<(EventFd, u32, u8)> = DEVICE
        .iter()
        .map(|&(gsi, v)| (EventFd::new(libc::EFD_NONBLOCK).unwrap(), gsi, v))
        .collect();
    owner.add_msi(DEVICE[0].0, DEVICE[0].1);
    for (fd, gsi, _) in &fds {
        owner.vm.register_irqfd(fd, *gsi).unwrap();
    }
    program.load(svm.vm_mut()).unwrap();
    let running = svm.start().unwrap();
    let ready = reports
        .recv_timeout(Duration::from_secs(60))
        .expect("the guest is ready");
    assert_eq!((ready.tag, ready.value), (tag::USER, 0));

    let msg = || HvMessage::new(MessageType(1), 0, b"two owners").unwrap();
    let post = |sint: u8| {
        synic
            .partition()
            .post_message(VpIndex(0), u32::from(sint), msg())
            .expect("post");
    };
    // Phase 1: both owners' first routes work.
    fds[0].0.write(1).unwrap();
    wait_irqs(&mem, DEVICE[0].1, 1);
    post(MSG_SINT);
    wait_irqs(&mem, MSG_VECTOR, 1);

    // Phase 2: the owner commits a new device route: the SINT route survives.
    owner.add_msi(DEVICE[1].0, DEVICE[1].1);
    post(MSG_SINT);
    wait_irqs(&mem, MSG_VECTOR, 2);
    fds[1].0.write(1).unwrap();
    wait_irqs(&mem, DEVICE[1].1, 1);

    // Phase 3: the SynIC commits a new SINT route: the owner's routes survive.
    synic
        .add_sint_routes(&[(VpIndex(0), SintIndex::new(u32::from(LATE_SINT)).unwrap())])
        .unwrap();
    assert_eq!(owner.synic_entries().len(), 2);
    for (i, (fd, _, _)) in fds.iter().enumerate().take(2) {
        fd.write(1).unwrap();
        wait_irqs(&mem, DEVICE[i].1, 2);
    }
    post(LATE_SINT);
    wait_irqs(&mem, LATE_VECTOR, 1);

    // Phase 4: both once more, interleaved; then the SynIC removes a route: the owner keeps
    // all of its own.
    owner.add_msi(DEVICE[2].0, DEVICE[2].1);
    fds[2].0.write(1).unwrap();
    wait_irqs(&mem, DEVICE[2].1, 1);
    post(MSG_SINT);
    post(LATE_SINT);
    wait_irqs(&mem, MSG_VECTOR, 3);
    wait_irqs(&mem, LATE_VECTOR, 2);
    synic
        .remove_sint_routes(&[(VpIndex(0), SintIndex::new(u32::from(LATE_SINT)).unwrap())])
        .unwrap();
    assert_eq!(owner.synic_entries().len(), 1);
    for (i, (fd, _, _)) in fds.iter().enumerate() {
        fd.write(1).unwrap();
        wait_irqs(&mem, DEVICE[i].1, if i < 2 { 3 } else { 2 });
    }
    post(MSG_SINT);
    wait_irqs(&mem, MSG_VECTOR, 4);
    let own = owner.own_gsis();
    for (gsi, _) in DEVICE {
        assert!(own.contains(&gsi), "device route {gsi} kept: {own:?}");
    }
    assert!(own.contains(&0) && own.contains(&23), "irqchip pins kept");
    assert!(owner.state.lock().unwrap().commits >= 6);
    running.stop();
}

#[test]
fn a_second_routing_owner_keeps_its_routes_and_the_synics_userspace_mode() {
    if !kvm_available() {
        return;
    }
    two_owners(ModeRequest::Userspace);
}

#[test]
fn a_second_routing_owner_keeps_its_routes_and_the_synics_kernel_mode() {
    if !kvm_available() {
        return;
    }
    if !common::kernel_mode_available() {
        return;
    }
    two_owners(ModeRequest::Kernel);
}
