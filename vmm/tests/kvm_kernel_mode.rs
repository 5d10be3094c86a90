//! Kernel mode (KVM's in-kernel SynIC, KVM_CAP_HYPERV_SYNIC2): SynIC notifications and
//! HvPostMessage reach the per-vCPU hooks. This host's KVM has no Hyper-V, so here the test
//! says so and returns; it runs for real under `/work/shared/tools/kvm-lab/kvm-lab`:
//!
//! ```sh
//! cargo test -p synic-vmm --test kvm_kernel_mode --no-run   # prints the binary's path
//! /work/shared/tools/kvm-lab/kvm-lab --timeout 600 <that path> --nocapture
//! ```

mod common;

use std::sync::{Arc, Mutex};

use common::{drain, kvm_available, rig, RUN_LIMIT};
use synic_vmm::devices::Report;
use synic_vmm::guest::{layout, tag, GuestBuilder};
use synic_vmm::hypercall::{Hypercall, HypercallHandler, HVCALL_POST_MESSAGE};
use synic_vmm::{
    Capabilities, ModeRequest, StopReason, SynicExit, SynicExitHandler, SynicMode, VcpuHandlers,
    VmConfig,
};

#[derive(Clone, Default)]
struct Log {
    synic: Arc<Mutex<Vec<SynicExit>>>,
    calls: Arc<Mutex<Vec<Hypercall>>>,
}

impl SynicExitHandler for Log {
    fn synic_exit(&mut self, exit: &SynicExit) {
        self.synic.lock().unwrap().push(*exit);
    }
}

impl HypercallHandler for Log {
    fn hypercall(&mut self, call: &Hypercall) -> u64 {
        self.calls.lock().unwrap().push(*call);
        0x12 // HV_STATUS_INVALID_CONNECTION_ID: any value the guest can tell apart
    }
}

#[test]
fn kernel_mode_synic_exits_and_post_message_reach_the_hooks() {
    if !kvm_available() {
        return;
    }
    let (_, caps) = Capabilities::probe().unwrap();
    if !caps.hyperv_synic2 {
        eprintln!("SKIPPED here: KVM_CAP_HYPERV_SYNIC2 is absent (run this test under kvm-lab)");
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
    let config = VmConfig {
        mode: ModeRequest::Kernel,
        ..VmConfig::default()
    };
    let r = rig(config);
    assert_eq!(r.vm.mode(), SynicMode::Kernel);
    let log = Log::default();
    let l = log.clone();
    let (running, reports, _) = r.start(&g.build().unwrap(), move |vp| VcpuHandlers {
        hypercall: Box::new(l.clone()),
        synic_exit: Box::new(l.clone()),
        ..VcpuHandlers::without_synic(vp)
    });
    let out = running.wait(Some(RUN_LIMIT * 6)); // nested under emulation: slow
    assert_eq!(out.reason, StopReason::DebugExit(0), "{out:?}");
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
                value: 0x12
            },
        ]
    );
    let synic = log.synic.lock().unwrap().clone();
    assert_eq!(synic.len(), 2, "{synic:?}");
    assert_eq!(
        (synic[0].msr, synic[0].control),
        (synic_msr::index::SCONTROL, 1)
    );
    assert_eq!(
        (synic[1].msr, synic[1].msg_page),
        (synic_msr::index::SIMP, simp | 1)
    );
    let calls = log.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].input.call_code(), HVCALL_POST_MESSAGE);
    assert_eq!(calls[0].param0, input);
}
