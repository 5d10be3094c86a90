//! Real-KVM tests of the VMM foundation: 64-bit toolkit guests, MSR exits, #GP injection,
//! irqfd -> MSI -> guest ISR, hypercalls through the hypercall page, two vCPUs.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{drain, kvm_available, next_report, rig, synic_rig, RUN_LIMIT};
use synic::hypercall::{HypercallControl, HypercallRegs};
use synic_kvm::{ModeRequest, SynicMode, Trap};
use synic_msr::{Gp, GpReason};
use synic_routing::{DefaultRoutes, MsiRoute, Route, RoutingTable};
use synic_vmm::devices::Report;
use synic_vmm::guest::{layout, tag, GuestBuilder, Isr};
use synic_vmm::msr::{MsrError, VpIndexOnly};
use synic_vmm::synic_vm::SynicVmBuilder;
use synic_vmm::{ExitObserver, MsrHandler, StopReason, VcpuHandlers, VmConfig};

use synic_msr::index::{SCONTROL, SVERSION};

/// Userspace mode explicitly: these tests drive the MSR and hypercall hooks, which KVM's own
/// SynIC would bypass on a host that has it.
fn config(vcpus: u32) -> VmConfig {
    VmConfig {
        vcpus,
        mode: ModeRequest::Userspace,
        ..VmConfig::default()
    }
}

#[test]
fn guest_runs_and_reports_through_port_io() {
    if !kvm_available() {
        return;
    }
    let mut g = GuestBuilder::new().unwrap();
    g.report(tag::USER, 0x1234_5678_9ABC_DEF0).unwrap();
    g.report_reg(tag::USER + 1, iced_x86::code_asm::r15)
        .unwrap();
    g.exit(7).unwrap();
    let r = rig(config(1));
    assert_eq!(
        r.vm.mode(),
        SynicMode::Userspace,
        "this host has no in-kernel Hyper-V"
    );
    let (running, reports, _) = r.start(&g.build().unwrap(), VcpuHandlers::without_synic);
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(7));
    assert_eq!(
        drain(&reports),
        vec![
            Report {
                vcpu: 0,
                tag: tag::USER,
                value: 0x1234_5678_9ABC_DEF0
            },
            Report {
                vcpu: 0,
                tag: tag::USER + 1,
                value: 0
            },
        ]
    );
}

/// A register file for SCONTROL that refuses writes to SVERSION, recording every access.
#[derive(Clone, Default)]
struct FakeSynic {
    regs: Arc<Mutex<HashMap<u32, u64>>>,
    log: Arc<Mutex<Vec<(char, u32, u64)>>>,
}

impl MsrHandler for FakeSynic {
    fn rdmsr(&mut self, msr: u32) -> Result<u64, MsrError> {
        let v = match msr {
            SCONTROL => self.regs.lock().unwrap().get(&msr).copied().unwrap_or(0),
            SVERSION => 1,
            _ => return Err(Gp::new(msr, GpReason::UnknownMsr).into()),
        };
        self.log.lock().unwrap().push(('r', msr, v));
        Ok(v)
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), MsrError> {
        self.log.lock().unwrap().push(('w', msr, value));
        match msr {
            SCONTROL => {
                self.regs.lock().unwrap().insert(msr, value);
                Ok(())
            }
            SVERSION => Err(Gp::new(msr, GpReason::ReadOnly).into()),
            _ => Err(Gp::new(msr, GpReason::UnknownMsr).into()),
        }
    }
}

fn with_msr(h: FakeSynic) -> impl FnMut(u32) -> VcpuHandlers {
    move |vp| VcpuHandlers {
        msr: Box::new(h.clone()),
        ..VcpuHandlers::without_synic(vp)
    }
}

#[test]
fn guest_msr_access_reaches_the_host_handler_and_round_trips() {
    if !kvm_available() {
        return;
    }
    let value = 0xABCD_0000_0000_0001;
    let mut g = GuestBuilder::new().unwrap();
    g.wrmsr(SCONTROL, value).unwrap();
    g.rdmsr_report(SCONTROL, tag::USER).unwrap();
    g.exit(0).unwrap();
    let h = FakeSynic::default();
    let (running, reports, _) = rig(config(1)).start(&g.build().unwrap(), with_msr(h.clone()));
    assert_eq!(
        running.wait(Some(RUN_LIMIT)).reason,
        StopReason::DebugExit(0)
    );
    assert_eq!(
        drain(&reports),
        vec![Report {
            vcpu: 0,
            tag: tag::USER,
            value
        }]
    );
    assert_eq!(
        *h.log.lock().unwrap(),
        vec![('w', SCONTROL, value), ('r', SCONTROL, value)]
    );
}

#[test]
fn host_gp_reaches_the_guest_gp_handler_and_the_guest_continues() {
    if !kvm_available() {
        return;
    }
    let mut g = GuestBuilder::new().unwrap();
    g.wrmsr(SVERSION, 2).unwrap(); // handler refuses: #GP
    g.rdmsr_report(0x4000_0085, tag::USER).unwrap(); // not a register: #GP, no USER report
    g.rdmsr_report(SVERSION, tag::USER + 1).unwrap();
    // The guest's own count of recovered faults.
    g.asm()
        .mov(iced_x86::code_asm::rax, layout::GP_COUNT)
        .unwrap();
    g.asm()
        .mov(
            iced_x86::code_asm::rax,
            iced_x86::code_asm::qword_ptr(iced_x86::code_asm::r14 + iced_x86::code_asm::rax),
        )
        .unwrap();
    g.report_reg(tag::USER + 2, iced_x86::code_asm::rax)
        .unwrap();
    g.exit(0).unwrap();
    let h = FakeSynic::default();
    let (running, reports, _) = rig(config(1)).start(&g.build().unwrap(), with_msr(h));
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0));
    assert_eq!(out.stats[0].msr_gp, 2);
    assert_eq!(
        drain(&reports),
        vec![
            Report {
                vcpu: 0,
                tag: tag::GP,
                value: u64::from(SVERSION)
            },
            Report {
                vcpu: 0,
                tag: tag::GP,
                value: 0x4000_0085
            },
            Report {
                vcpu: 0,
                tag: tag::USER + 1,
                value: 1
            },
            Report {
                vcpu: 0,
                tag: tag::USER + 2,
                value: 2
            },
        ]
    );
}

#[test]
fn irqfd_on_an_msi_route_interrupts_the_guest_isr() {
    if !kvm_available() {
        return;
    }
    const VECTOR: u8 = 0x40;
    let mut g = GuestBuilder::new().unwrap();
    g.isr(VECTOR, Isr::REPORT_AND_EOI).unwrap();
    g.lapic_enable().unwrap();
    g.report(tag::USER, 0).unwrap(); // ready
    g.wait_for_irqs(VECTOR, 2).unwrap();
    g.report(tag::USER + 1, 0).unwrap();
    g.exit(0).unwrap();
    let r = rig(config(1));
    // One MSI route on the VM's routing table: fixed delivery to APIC id 0, vector 0x40.
    let table = RoutingTable::new(r.vm.vm_fd().clone(), DefaultRoutes::Keep);
    let gsi = table.add(Route::Msi(MsiRoute::fixed(0, VECTOR))).unwrap();
    let irq = table.irqfd(gsi, false).unwrap();
    let (running, reports, _) = r.start(&g.build().unwrap(), VcpuHandlers::without_synic);
    assert_eq!(
        next_report(&reports),
        Report {
            vcpu: 0,
            tag: tag::USER,
            value: 0
        }
    );
    for _ in 0..2 {
        irq.trigger().unwrap();
        assert_eq!(
            next_report(&reports),
            Report {
                vcpu: 0,
                tag: tag::IRQ,
                value: u64::from(VECTOR)
            }
        );
    }
    assert_eq!(next_report(&reports).tag, tag::USER + 1);
    assert_eq!(
        running.wait(Some(RUN_LIMIT)).reason,
        StopReason::DebugExit(0)
    );
}

/// A toolkit ISR entered while another runs (IF is clear in every ISR, so only a platform that
/// makes up a delivery does this: the kvm-lab's emulated SVM) counts nothing and sends no EOI;
/// the entry is counted apart. Simulated with the ISR depth set while a real MSI arrives.
#[test]
fn a_toolkit_isr_entered_inside_another_counts_nothing() {
    use iced_x86::code_asm::{qword_ptr, r14, rax};
    if !kvm_available() {
        return;
    }
    const VECTOR: u8 = 0x41;
    let mut g = GuestBuilder::new().unwrap();
    g.isr(VECTOR, Isr::REPORT_AND_EOI).unwrap();
    g.lapic_enable().unwrap();
    let a = g.asm();
    a.mov(rax, layout::ISR_DEPTH).unwrap();
    a.mov(qword_ptr(r14 + rax), 1).unwrap();
    g.report(tag::USER, 0).unwrap(); // ready: "inside an ISR" now
    let a = g.asm();
    let mut wait = a.create_label();
    a.set_label(&mut wait).unwrap();
    a.sti().unwrap();
    a.hlt().unwrap();
    a.mov(rax, layout::NESTED_ISRS).unwrap();
    a.cmp(qword_ptr(r14 + rax), 0).unwrap();
    a.je(wait).unwrap();
    a.cli().unwrap();
    a.mov(rax, layout::ISR_DEPTH).unwrap();
    a.mov(qword_ptr(r14 + rax), 0).unwrap();
    g.eoi().unwrap(); // the "outer" ISR's EOI
    let a = g.asm();
    a.mov(rax, qword_ptr(r14 + u32::from(VECTOR) * 8)).unwrap();
    g.report_reg(tag::USER + 2, rax).unwrap();
    let a = g.asm();
    a.mov(rax, layout::NESTED_ISRS).unwrap();
    a.mov(rax, qword_ptr(r14 + rax)).unwrap();
    g.report_reg(tag::USER + 3, rax).unwrap();
    g.wait_for_irqs(VECTOR, 1).unwrap();
    g.report(tag::USER + 1, 0).unwrap();
    g.exit(0).unwrap();
    let r = rig(config(1));
    let table = RoutingTable::new(r.vm.vm_fd().clone(), DefaultRoutes::Keep);
    let gsi = table.add(Route::Msi(MsiRoute::fixed(0, VECTOR))).unwrap();
    let irq = table.irqfd(gsi, false).unwrap();
    let (running, reports, _) = r.start(&g.build().unwrap(), VcpuHandlers::without_synic);
    let report = |tag, value| Report {
        vcpu: 0,
        tag,
        value,
    };
    assert_eq!(next_report(&reports), report(tag::USER, 0));
    irq.trigger().unwrap();
    assert_eq!(
        next_report(&reports),
        report(tag::USER + 2, 0),
        "the nested entry counted no interrupt and reported nothing"
    );
    assert_eq!(next_report(&reports), report(tag::USER + 3, 1));
    irq.trigger().unwrap();
    assert_eq!(next_report(&reports), report(tag::IRQ, u64::from(VECTOR)));
    assert_eq!(next_report(&reports), report(tag::USER + 1, 0));
    assert_eq!(
        running.wait(Some(RUN_LIMIT)).reason,
        StopReason::DebugExit(0)
    );
}

/// Records the SynIC's hypercall traps: (vCPU, call, result).
#[derive(Clone, Default)]
struct RecordingTraps(Arc<Mutex<Vec<(u32, HypercallRegs, u64)>>>, u32);

impl ExitObserver for RecordingTraps {
    fn trap(&mut self, trap: &Trap) {
        if let Trap::Handled { call, result } = *trap {
            self.0.lock().unwrap().push((self.1, call, result));
        }
    }
}

/// A userspace-mode SynIC VM whose vCPUs' hypercall traps are recorded.
fn recorded(
    program: &synic_vmm::guest::GuestProgram,
) -> (
    synic_vmm::synic_vm::RunningSynicVm,
    crossbeam_channel::Receiver<Report>,
    RecordingTraps,
) {
    let h = RecordingTraps::default();
    let rig = synic_rig(SynicVmBuilder::new().mode(ModeRequest::Userspace), 1);
    let log = h.0.clone();
    let (running, reports) = rig.start_with(program, move |vp, mut handlers| {
        handlers.observer = Some(Box::new(RecordingTraps(log.clone(), vp)));
        handlers
    });
    (running, reports, h)
}

#[test]
fn hypercall_through_the_page_reaches_the_synic_and_returns_rax() {
    if !kvm_available() {
        return;
    }
    let mut g = GuestBuilder::new().unwrap();
    g.enable_hypercall_page(layout::HYPERCALL_PAGE).unwrap();
    g.asm().mov(iced_x86::code_asm::r9, 0x5555u64).unwrap(); // survives the call
                                                             // HvSignalEvent, fast, with a rep count: a simple call may not have one.
    g.hypercall(
        layout::HYPERCALL_PAGE,
        0x0003_0000_0001_005D,
        0x11_2233,
        0x44_5566,
    )
    .unwrap();
    g.report_reg(tag::USER, iced_x86::code_asm::rax).unwrap();
    g.report_reg(tag::USER + 1, iced_x86::code_asm::r9).unwrap();
    g.exit(0).unwrap();
    let (running, reports, h) = recorded(&g.build().unwrap());
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0));
    assert_eq!(out.stats[0].hypercalls, 1);
    let calls = h.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (vp, call, result) = calls[0];
    assert_eq!(vp, 0);
    assert_eq!(call.control, 0x0003_0000_0001_005D);
    assert!(HypercallControl(call.control).fast());
    assert_eq!((call.input, call.output), (0x11_2233, 0x44_5566));
    assert_eq!(result, synic::HvStatus::InvalidHypercallInput.rax());
    assert_eq!(
        drain(&reports),
        vec![
            Report {
                vcpu: 0,
                tag: tag::USER,
                value: result
            },
            Report {
                vcpu: 0,
                tag: tag::USER + 1,
                value: 0x5555
            },
        ]
    );
}

#[test]
fn out_to_the_trap_port_is_no_hypercall_until_the_page_is_enabled() {
    if !kvm_available() {
        return;
    }
    let mut g = GuestBuilder::new().unwrap();
    g.asm().mov(iced_x86::code_asm::rax, 0x77u64).unwrap();
    g.asm().out(0xEBi32, iced_x86::code_asm::al).unwrap();
    g.report_reg(tag::USER, iced_x86::code_asm::rax).unwrap();
    g.exit(0).unwrap();
    let (running, reports, h) = recorded(&g.build().unwrap());
    let out = running.wait(Some(RUN_LIMIT));
    assert_eq!(out.reason, StopReason::DebugExit(0));
    assert_eq!(out.stats[0].hypercalls, 0);
    assert!(h.0.lock().unwrap().is_empty());
    assert_eq!(
        drain(&reports),
        vec![Report {
            vcpu: 0,
            tag: tag::USER,
            value: 0x77
        }]
    );
}

#[test]
fn two_vcpus_both_run_with_their_own_vp_index() {
    if !kvm_available() {
        return;
    }
    let mut g = GuestBuilder::new().unwrap();
    g.rdmsr_report(synic_msr::index::VP_INDEX, tag::USER)
        .unwrap();
    g.halt().unwrap();
    let (running, reports, _) = rig(config(2)).start(&g.build().unwrap(), |vp| VcpuHandlers {
        msr: Box::new(VpIndexOnly { vp_index: vp }),
        ..VcpuHandlers::without_synic(vp)
    });
    let mut got = vec![next_report(&reports), next_report(&reports)];
    got.sort_by_key(|r| r.vcpu);
    assert_eq!(
        got,
        vec![
            Report {
                vcpu: 0,
                tag: tag::USER,
                value: 0
            },
            Report {
                vcpu: 1,
                tag: tag::USER,
                value: 1
            },
        ]
    );
    let out = running.stop();
    assert_eq!(out.reason, StopReason::Requested);
    assert_eq!(out.stats.len(), 2);
}

#[test]
fn a_spinning_guest_is_stopped_by_the_timeout() {
    if !kvm_available() {
        return;
    }
    let mut g = GuestBuilder::new().unwrap();
    let mut top = g.asm().create_label();
    g.asm().set_label(&mut top).unwrap();
    g.asm().jmp(top).unwrap();
    let (running, _, _) = rig(config(2)).start(&g.build().unwrap(), VcpuHandlers::without_synic);
    let out = running.wait(Some(std::time::Duration::from_millis(300)));
    assert_eq!(out.reason, StopReason::Timeout);
    assert!(out.elapsed < RUN_LIMIT);
}

#[test]
fn unexpected_exception_is_reported_and_stops_the_vm() {
    if !kvm_available() {
        return;
    }
    let mut g = GuestBuilder::new().unwrap();
    let mut ud = g.asm().create_label();
    g.asm().set_label(&mut ud).unwrap();
    g.asm().ud2().unwrap();
    let program = g.build().unwrap();
    let ud_addr = program.address_of(&ud).unwrap();
    let (running, reports, _) = rig(config(1)).start(&program, VcpuHandlers::without_synic);
    assert_eq!(
        running.wait(Some(RUN_LIMIT)).reason,
        StopReason::DebugExit(synic_vmm::guest::EXIT_UNEXPECTED_EXCEPTION)
    );
    assert_eq!(
        drain(&reports),
        vec![Report {
            vcpu: 0,
            tag: tag::EXCEPTION,
            value: 6 | ud_addr << 8
        }]
    );
}
