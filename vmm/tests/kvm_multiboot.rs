//! Real-KVM tests of multiboot booting: an ELF32 kernel generated here boots in protected
//! mode, prints to COM1, reads fw_cfg, starts its APs with INIT/SIPI and exits through
//! isa-debug-exit; and the same through the `synic-vmm run` command line.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::kernel::{self, kernel};
use common::synic_kernel;
use common::{kvm_available, rig, RUN_LIMIT};
use synic_vmm::devices::{DebugExit, FwCfg};
use synic_vmm::layout::ports;
use synic_vmm::{multiboot, StopReason, VcpuHandlers, VmConfig};

fn boot(cpus: u32) -> (StopReason, String, Vec<synic_vmm::VcpuStats>) {
    let config = VmConfig {
        vcpus: cpus,
        mem_size: 32 << 20,
        ..VmConfig::default()
    };
    let mut r = rig(config);
    let fw_cfg = FwCfg::new(cpus as u16, config.mem_size);
    r.vm.add_device(ports::FW_CFG_SELECTOR, 2, Arc::new(fw_cfg))
        .unwrap();
    let entry = multiboot::load(r.vm.memory(), &kernel(cpus, config.mem_size), "kernel").unwrap();
    r.vm.boot_protected_mode(entry).unwrap();
    let running = r.vm.start(VcpuHandlers::without_synic).unwrap();
    let out = running.wait(Some(RUN_LIMIT));
    (out.reason, r.serial.text(), out.stats)
}

#[test]
fn multiboot_elf32_kernel_boots_prints_and_exits_with_its_code() {
    if !kvm_available() {
        return;
    }
    let (reason, serial, _) = boot(1);
    assert_eq!(
        reason,
        StopReason::DebugExit(kernel::PASS),
        "serial: {serial}"
    );
    assert_eq!(serial, "hello from a multiboot kernel\ncpus=1\n");
}

#[test]
fn multiboot_kernel_starts_its_aps_with_init_sipi() {
    if !kvm_available() {
        return;
    }
    let (reason, serial, stats) = boot(3);
    assert_eq!(
        reason,
        StopReason::DebugExit(kernel::PASS),
        "serial: {serial}"
    );
    assert_eq!(serial, "hello from a multiboot kernel\ncpus=3\nAPs up\n");
    assert_eq!(stats.len(), 3);
    // Each AP's KVM_RUN returned EAGAIN when it left wait-for-SIPI, and was retried.
    assert!(stats[1..].iter().all(|s| s.sipi_retries >= 1), "{stats:?}");
}

fn write_kernel(name: &str, cpus: u32, mem_size: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("synic-vmm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, kernel(cpus, mem_size)).unwrap();
    path
}

#[test]
fn cli_run_boots_the_kernel_relays_serial_and_exits_with_the_debug_exit_status() {
    if !kvm_available() {
        return;
    }
    // The CLI's default RAM is 128 MiB; the kernel checks mem_upper against it.
    let path = write_kernel("cli.elf", 2, 128 << 20);
    let out = Command::new(env!("CARGO_BIN_EXE_synic-vmm"))
        .args(["run", "--smp", "2", "--timeout", "20"])
        .arg(&path)
        .args(["arg1", "arg2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout, "hello from a multiboot kernel\ncpus=2\nAPs up\n",
        "stderr: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(DebugExit::qemu_status(kernel::PASS)),
        "stderr: {stderr}"
    );
}

#[test]
fn cli_reports_clear_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_synic-vmm"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["run", "/nonexistent/kernel.elf"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/kernel.elf"), "{err}");
    let (code, err) = run(&["run", "--smp", "zero", "k"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--smp"), "{err}");
    let (code, err) = run(&["frobnicate"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("usage"), "{err}");
}

fn run_synic_kernel(args: &[&str]) -> (Option<i32>, String, String) {
    // One file per call: the tests run in parallel, and a file rewritten while another test's
    // synic-vmm reads it is a truncated kernel (seen under load: "no multiboot v1 header").
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("synic-vmm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("synic-kernel-{n}.elf"));
    std::fs::write(&path, synic_kernel::kernel()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_synic-vmm"))
        .arg("run")
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `synic-vmm run` gives a multiboot kernel the SynIC: the kernel enables it, takes a message it
/// posted through a hyperv-testdev connection and a synthetic-timer expiry, and passes.
fn synic_kernel_passes(args: &[&str]) {
    let (code, stdout, stderr) = run_synic_kernel(args);
    assert_eq!(
        stdout, "long mode\nsynic up\ntest-device message taken\ntimer expiry taken\nPASS\n",
        "stderr: {stderr}"
    );
    assert_eq!(
        code,
        Some(DebugExit::qemu_status(synic_kernel::PASS)),
        "stderr: {stderr}"
    );
}

#[test]
fn run_gives_a_multiboot_kernel_the_synic_tlfs_profile() {
    if !kvm_available() {
        return;
    }
    synic_kernel_passes(&[
        "--mode",
        "userspace",
        "--profile",
        "tlfs",
        "--timeout",
        "30",
    ]);
}

#[test]
fn run_gives_a_multiboot_kernel_the_synic_kvm_profile() {
    if !kvm_available() {
        return;
    }
    synic_kernel_passes(&["--mode", "userspace", "--profile", "kvm", "--timeout", "30"]);
}

#[test]
fn run_gives_a_multiboot_kernel_the_synic_kernel_mode() {
    if !kvm_available() {
        return;
    }
    if !common::kernel_mode_available() {
        return;
    }
    synic_kernel_passes(&["--mode", "kernel", "--timeout", "120"]);
}

#[test]
fn without_hyperv_the_kernel_sees_no_synic_and_says_so() {
    if !kvm_available() {
        return;
    }
    let (code, stdout, stderr) = run_synic_kernel(&["--no-hyperv", "--timeout", "30"]);
    assert_eq!(stdout, "long mode\n", "stderr: {stderr}");
    assert_eq!(
        code,
        Some(DebugExit::qemu_status(synic_kernel::FAIL_CPUID)),
        "stderr: {stderr}"
    );
}

#[test]
fn a_guest_triple_fault_is_a_failure_exit_status() {
    if !kvm_available() {
        return;
    }
    // `ud2` with no IDT (the multiboot entry state): #UD, #DF, triple fault.
    let image = synic_vmm::multiboot::elf32_kernel(kernel::LOAD_ADDR, &[0x0F, 0x0B], 0);
    let dir = std::env::temp_dir().join(format!("synic-vmm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("triple-fault.elf");
    std::fs::write(&path, image).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_synic-vmm"))
        .args(["run", "--timeout", "20"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(synic_vmm::run::EXIT_GUEST_SHUTDOWN)),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("triple fault"), "{stderr}");
}
