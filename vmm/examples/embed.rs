//! Embedding the SynIC library in a VMM, by hand: what `synic_vmm::synic_vm` does, in one
//! page. This crate's `Vm` stands in for your VMM's KVM layer (VM fd, vCPU threads, exits).
//! `docs/embedding.md` explains each step.
//!
//! ```sh
//! cargo run -p synic-vmm --example embed     # a guest enables SynIC and takes one message
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use synic::hypercall::{handle, Connections, HypercallRegs, MessagePort};
use synic::{HvMessage, MessageType, Mode, Partition, PartitionConfig, RaiseSint, VmmAction};
use synic::{SintIndex, SystemReferenceClock, VpIndex};
use synic_msr::{Origin, Profile};
use synic_routing::{DefaultRoutes, KernelSintRoutes, RoutingTable, UserSintRoutes};
use synic_vmm::devices::{DebugExit, ReportPort};
use synic_vmm::guest::{layout, tag, GuestBuilder, Isr, SynicSetup};
use synic_vmm::hv::HypercallPageState;
use synic_vmm::hypercall::{hypercall_page, Hypercall, HypercallHandler};
use synic_vmm::msr::{MsrError, MsrHandler};
use synic_vmm::{SynicExit, SynicExitHandler, SynicMode, VcpuHandlers, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

type Mem = Arc<synic_vmm::GuestMemory>;
type Vp = synic::Vp<Mem>;

/// One vCPU's exits into its VP (the VP lives with the vCPU thread; the mutex is only shared
/// by this vCPU's own three handlers).
#[derive(Clone)]
struct VcpuSynic {
    vp: Arc<Mutex<Vp>>,
    connections: Arc<Connections>,
    memory: Mem,
}

impl MsrHandler for VcpuSynic {
    fn rdmsr(&mut self, msr: u32) -> Result<u64, MsrError> {
        self.vp.lock().unwrap().rdmsr(msr, Origin::Guest)
    }
    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), MsrError> {
        let write = self.vp.lock().unwrap().wrmsr(msr, value, Origin::Guest)?;
        if let Some(VmmAction::FillHypercallPage { gpa }) = write.action {
            // Your hypercall sequence: here, a port-I/O trap the vCPU loop turns into a call.
            let _ = self
                .memory
                .write_slice(&hypercall_page(), GuestAddress(gpa));
        }
        Ok(()) // VmmAction::StimerChanged: wake your timer thread (Partition::poll_timers)
    }
}

impl HypercallHandler for VcpuSynic {
    fn hypercall(&mut self, call: &Hypercall) -> u64 {
        let caller = self.vp.lock().unwrap().index();
        let regs = HypercallRegs {
            control: call.input.0,
            input: call.param0,
            output: call.param1,
        };
        handle(&*self.memory, &regs, caller, &self.connections)
    }
}

impl SynicExitHandler for VcpuSynic {
    fn synic_exit(&mut self, exit: &SynicExit) {
        let _ = self.vp.lock().unwrap().apply_synic_exit(*exit);
    }
}

/// The trap port is a hypercall only while the guest has HYPERCALL enabled.
#[derive(Debug)]
struct PageState(Arc<Partition<Mem>>);
impl HypercallPageState for PageState {
    fn hypercall_page(&self) -> Option<u64> {
        let h = synic_msr::Hypercall(self.0.save().hypercall);
        h.enabled().then(|| h.gpa())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The VM: in-kernel irqchip, RAM, vCPUs (kernel mode: KVM_CAP_HYPERV_SYNIC2 enabled on
    //    every vCPU as it is created, before any route).
    let mut vm = Vm::new(VmConfig::default())?;
    let (vps, sint2) = ([VpIndex(0)], SintIndex::ALL[2]);
    // 2. The VM's one routing table, shared with every device that needs a GSI.
    let table = Arc::new(RoutingTable::new(
        Arc::clone(vm.vm_fd()),
        DefaultRoutes::Keep,
    ));
    let memory: Mem = Arc::new(vm.memory().clone());
    let clock = Arc::new(SystemReferenceClock::new());
    let (mode, raise, acks): (Mode, Arc<dyn RaiseSint>, _) = match vm.mode() {
        SynicMode::Userspace => {
            let routes = UserSintRoutes::new(Arc::clone(&table), [(VpIndex(0), 0)])?;
            routes.add_vps(&vps, &[sint2])?; // MSI routes; they follow the guest's SINTn
            (Mode::Userspace, Arc::new(routes), None)
        }
        SynicMode::Kernel => {
            table.mark_synic_active(VpIndex(0)); // SYNIC2 is on: HV_SINT routes may commit
            let (tx, rx) = crossbeam_channel::unbounded(); // acks: resamplefd -> channel
            let routes = KernelSintRoutes::new(Arc::clone(&table), tx)?;
            routes.add_vps(&vps, &[sint2])?;
            (Mode::Kernel, Arc::new(routes), Some(rx))
        }
    };
    // 3. The model over guest memory, raising SINTs through the routes.
    let config = PartitionConfig::new(mode, Profile::Tlfs, 1);
    let (partition, mut model_vps) = Partition::new(config, Arc::clone(&memory), raise, clock)?;
    if let Some(rx) = acks {
        // The routes own the sink and the partition owns the routes: hold only a Weak here.
        let weak = Arc::downgrade(&partition);
        std::thread::spawn(move || {
            for (vp, sint) in rx {
                let Some(p) = weak.upgrade() else { return };
                let _ = p.ack(vp, sint); // a hint: retry delivery on that SINT
            }
        });
    }
    // 4. Connections: HvPostMessage to connection 7 is posted back to SINT2 of VP 0.
    let connections = Arc::new(Connections::new());
    connections.add_message(
        7,
        Arc::new(MessagePort::new(Arc::clone(&partition), VpIndex(0), sint2)),
    )?;
    // 5. Userspace mode: the model is the one owner of GUEST_OS_ID/HYPERCALL/TIME_REF_COUNT.
    if mode == Mode::Userspace {
        vm.hand_partition_registers_to_handlers(Arc::new(PageState(Arc::clone(&partition))));
    }
    // A guest: enable SynIC (SINT2 -> vector 0x50), say ready, take one interrupt, exit.
    let simp = layout::FREE_PAGES;
    let mut g = GuestBuilder::new()?;
    g.isr(0x50, Isr::QUIET)?;
    g.lapic_enable()?;
    g.enable_hypercall_page(layout::HYPERCALL_PAGE)?;
    g.synic_enable(&SynicSetup {
        simp,
        siefp: simp + 0x1000,
        sints: vec![(2, 0x50)],
    })?;
    g.report(tag::USER, 0)?;
    g.wait_for_irqs(0x50, 1)?;
    g.exit(0)?;
    let (port, reports) = ReportPort::new(1);
    vm.add_device(ReportPort::BASE, ReportPort::LEN, Arc::new(port))?;
    vm.add_device(0xF4, 1, Arc::new(DebugExit::new(Arc::clone(vm.control()))))?;
    g.build()?.load(&mut vm)?;
    // 6. Each vCPU thread gets its VP.
    let handler = VcpuSynic {
        vp: Arc::new(Mutex::new(model_vps.remove(0))),
        connections,
        memory,
    };
    let running = vm.start(|_| VcpuHandlers {
        msr: Box::new(handler.clone()),
        hypercall: Box::new(handler.clone()),
        synic_exit: Box::new(handler.clone()),
    })?;
    // 7. A device thread posts once the guest is ready.
    reports.recv_timeout(Duration::from_secs(10))?;
    let msg = HvMessage::new(MessageType(1), 0, b"hello from the host")?;
    println!(
        "{mode:?} mode: post_message -> {:?}",
        partition.post_message(VpIndex(0), sint2, msg)
    );
    let out = running.wait(Some(Duration::from_secs(10)));
    println!("guest stopped: {:?}", out.reason);
    Ok(())
}
