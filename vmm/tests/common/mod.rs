//! Shared by the real-KVM tests: skip loudly without /dev/kvm, build a VM with the standard
//! devices, run toolkit programs with a wall-clock limit.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use synic_vmm::devices::{DebugExit, Report, ReportPort, Serial, SharedBuffer};
use synic_vmm::guest::GuestProgram;
use synic_vmm::layout::ports;
use synic_vmm::{RunningVm, VcpuHandlers, Vm, VmConfig};

/// Wall-clock limit for one guest run: generous, the guests take milliseconds.
pub const RUN_LIMIT: Duration = Duration::from_secs(20);

/// False (after a loud message) when this host has no /dev/kvm; a failure instead with
/// `SYNIC_REQUIRE_KVM` set (`synic::testing::kvm_available`).
pub fn kvm_available() -> bool {
    synic::testing::kvm_available(
        std::thread::current()
            .name()
            .unwrap_or("a synic-vmm real-KVM test"),
    )
}

/// True where this host can run kernel mode; otherwise the loud kernel-mode SKIPPED line.
pub fn kernel_mode_available() -> bool {
    let kernel = synic_kvm::Capabilities::probe_host()
        .is_ok_and(|c| c.choose_mode(synic_kvm::ModeRequest::Kernel).is_ok());
    if !kernel {
        synic::testing::kernel_mode_skipped(
            std::thread::current()
                .name()
                .unwrap_or("a synic-vmm kernel-mode test"),
        );
    }
    kernel
}

/// A VM with COM1 (captured), isa-debug-exit and the report port.
pub struct Rig {
    pub vm: Vm,
    pub reports: Receiver<Report>,
    pub serial: SharedBuffer,
}

pub fn rig(config: VmConfig) -> Rig {
    let mut vm = Vm::new(config).expect("building the VM");
    let serial = SharedBuffer::new();
    let (report, reports) = ReportPort::new(config.vcpus);
    vm.add_device(ReportPort::BASE, ReportPort::LEN, Arc::new(report))
        .unwrap();
    vm.add_device(
        ports::DEBUG_EXIT,
        1,
        Arc::new(DebugExit::new(vm.control().clone())),
    )
    .unwrap();
    vm.add_device(
        ports::COM1,
        8,
        Arc::new(Serial::new(ports::COM1, Box::new(serial.clone()))),
    )
    .unwrap();
    Rig {
        vm,
        reports,
        serial,
    }
}

impl Rig {
    /// Loads `program` and starts the vCPUs with `handlers`.
    pub fn start(
        mut self,
        program: &GuestProgram,
        handlers: impl FnMut(u32) -> VcpuHandlers,
    ) -> (RunningVm, Receiver<Report>, SharedBuffer) {
        program.load(&mut self.vm).expect("loading the program");
        let running = self.vm.start(handlers).expect("starting vCPUs");
        (running, self.reports, self.serial)
    }
}

/// Next report, failing the test after `RUN_LIMIT`.
pub fn next_report(rx: &Receiver<Report>) -> Report {
    rx.recv_timeout(RUN_LIMIT)
        .expect("guest report within the time limit")
}

/// All reports left in the channel (after the VM stopped).
pub fn drain(rx: &Receiver<Report>) -> Vec<Report> {
    rx.try_iter().collect()
}
pub mod kernel;
pub mod synic_kernel;

/// A SynIC VM with the report port and isa-debug-exit.
pub struct SynicRig {
    pub vm: synic_vmm::synic_vm::SynicVm,
    pub reports: Receiver<Report>,
}

pub fn synic_rig(builder: synic_vmm::synic_vm::SynicVmBuilder, vcpus: u32) -> SynicRig {
    let mut vm = builder.vcpus(vcpus).build().expect("building the SynIC VM");
    let (report, reports) = ReportPort::new(vcpus);
    let control = vm.vm().control().clone();
    let v = vm.vm_mut();
    v.add_device(ReportPort::BASE, ReportPort::LEN, Arc::new(report))
        .unwrap();
    v.add_device(ports::DEBUG_EXIT, 1, Arc::new(DebugExit::new(control)))
        .unwrap();
    SynicRig { vm, reports }
}

impl SynicRig {
    /// Loads `program` and starts the vCPUs with the SynIC's handlers.
    pub fn start(
        self,
        program: &GuestProgram,
    ) -> (synic_vmm::synic_vm::RunningSynicVm, Receiver<Report>) {
        self.start_with(program, |_, h| h)
    }

    /// Like [`start`](Self::start), with `customize` changing each vCPU's handlers.
    pub fn start_with(
        mut self,
        program: &GuestProgram,
        customize: impl FnMut(u32, VcpuHandlers) -> VcpuHandlers,
    ) -> (synic_vmm::synic_vm::RunningSynicVm, Receiver<Report>) {
        program.load(self.vm.vm_mut()).expect("loading the program");
        (
            self.vm.start_with(customize).expect("starting vCPUs"),
            self.reports,
        )
    }
}
