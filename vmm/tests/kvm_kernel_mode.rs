//! Kernel mode (KVM's in-kernel SynIC, KVM_CAP_HYPERV_SYNIC2): SynIC notifications and
//! HvPostMessage reach synic-kvm's `VcpuSynic::hyperv_exit` through the VMM's vCPU loop. This host's KVM has no Hyper-V, so here the test
//! says so and returns; it runs for real under `/work/shared/tools/kvm-lab/kvm-lab`:
//!
//! ```sh
//! cargo test -p synic-vmm --test kvm_kernel_mode --no-run   # prints the binary's path
//! /work/shared/tools/kvm-lab/kvm-lab --timeout 600 <that path> --nocapture
//! ```

mod common;

use std::sync::{Arc, Mutex};

use common::{drain, kvm_available, synic_rig, RUN_LIMIT};
use synic::hypercall::{HypercallControl, HVCALL_POST_MESSAGE};
use synic::HvStatus;
use synic_kvm::{HypervExit, ModeRequest, SynicMode};
use synic_vmm::devices::Report;
use synic_vmm::guest::{layout, tag, GuestBuilder};
use synic_vmm::synic_vm::SynicVmBuilder;
use synic_vmm::{ExitObserver, StopReason};

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<HypervExit>>>);

impl ExitObserver for Log {
    fn hyperv(&mut self, exit: &HypervExit) {
        self.0.lock().unwrap().push(*exit);
    }
}

#[test]
fn kernel_mode_synic_exits_and_post_message_reach_the_synic() {
    if !kvm_available() {
        return;
    }
    if !common::kernel_mode_available() {
        return;
    }
    let simp = layout::FREE_PAGES;
    let input = layout::FREE_PAGES + 0x1000;
    let mut g = GuestBuilder::new().unwrap();
    g.enable_hypercall_page(layout::HYPERCALL_PAGE).unwrap();
    g.wrmsr(synic_msr::index::SCONTROL, 1).unwrap();
    g.wrmsr(synic_msr::index::SIMP, simp | 1).unwrap();
    g.rdmsr_report(synic_msr::index::VP_INDEX, tag::USER)
        .unwrap();
    // An all-zero input: connection 0 exists nowhere.
    g.hypercall(
        layout::HYPERCALL_PAGE,
        u64::from(HVCALL_POST_MESSAGE),
        input,
        0,
    )
    .unwrap();
    g.report_reg(tag::USER + 1, iced_x86::code_asm::rax)
        .unwrap();
    g.exit(0).unwrap();
    let rig = synic_rig(SynicVmBuilder::new().mode(ModeRequest::Kernel), 1);
    assert_eq!(rig.vm.mode(), SynicMode::Kernel);
    let log = Log::default();
    let l = log.clone();
    let (running, reports) = rig.start_with(&g.build().unwrap(), move |_, mut h| {
        h.observer = Some(Box::new(l.clone()));
        h
    });
    let out = running.wait(Some(RUN_LIMIT * 6)); // nested under emulation: slow
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
    let refused = HvStatus::InvalidParameter.rax();
    assert_eq!(
        drain(&reports),
        vec![
            Report {
                vcpu: 0,
                tag: tag::USER,
                value: 0
            },
            Report {
                vcpu: 0,
                tag: tag::USER + 1,
                value: refused
            },
        ]
    );
    let exits = log.0.lock().unwrap().clone();
    assert_eq!(exits.len(), 3, "{exits:?}");
    let HypervExit::Synic(scontrol) = exits[0] else {
        panic!("{exits:?}")
    };
    assert_eq!(
        (scontrol.msr, scontrol.control),
        (synic_msr::index::SCONTROL, 1)
    );
    let HypervExit::Synic(simp_exit) = exits[1] else {
        panic!("{exits:?}")
    };
    assert_eq!(
        (simp_exit.msr, simp_exit.msg_page),
        (synic_msr::index::SIMP, simp | 1)
    );
    let HypervExit::Hypercall { call, result } = exits[2] else {
        panic!("{exits:?}")
    };
    assert_eq!(
        HypercallControl(call.control).call_code(),
        HVCALL_POST_MESSAGE
    );
    assert_eq!(call.input, input);
    assert_eq!(result, refused);
}
