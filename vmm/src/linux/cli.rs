//! The `synic-vmm linux` command line.

use std::time::Duration;

use super::{run, LinuxImage, LinuxReport, LinuxRun, PowerEvent};
use crate::control::StopReason;
use crate::vmbus::Version;
use synic_kvm::ModeRequest;

/// Usage of `synic-vmm linux`.
pub const USAGE: &str =
    "  synic-vmm linux [--smp N] [--mem MiB] [--timeout S] [--mode auto|kernel|userspace]
                  [--no-hyperv] [--no-vmbus] [--vmbus-max-version X.Y] [--initrd FILE]
                  [--append ARGS] [--timestamps] KERNEL
                                    boot a Linux bzImage with COM1 on stdout (Hyper-V
                                    enlightenments, SynIC and the VMBus host on by default; the
                                    VMBus exchange is printed on stderr at the end); exit status 0
                                    when the guest powers off or halts, 3 on reset";

/// The command line every boot gets; `--append` adds to it.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 pci=off io_delay=none";

/// Exit status when the guest reset (or triple-faulted) instead of powering off.
pub const EXIT_RESET: u8 = 3;
/// Exit status when the time limit stopped the guest.
pub const EXIT_TIMEOUT: u8 = 124;

fn parse(mut argv: impl Iterator<Item = String>) -> Result<LinuxRun, String> {
    let mut r = LinuxRun {
        image: LinuxImage {
            kernel: Vec::new(),
            initrd: None,
            cmdline: BASE_CMDLINE.to_string(),
            vmbus_acpi: true,
            console_timestamps: false,
        },
        vcpus: 1,
        mem_size: 256 << 20,
        mode: ModeRequest::Auto,
        hyperv: true,
        vmbus: Some(Version::WIN10_V5_3),
        timeout: None,
        console: Box::new(std::io::stdout()),
        progress: None,
    };
    while let Some(a) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--smp" => {
                let v = value("--smp")?;
                r.vcpus = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--smp {v}: not a vCPU count"))?;
            }
            "--mem" => {
                let v = value("--mem")?;
                let mib: u64 = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--mem {v}: not a size in MiB"))?;
                r.mem_size = mib << 20;
            }
            "--timeout" => {
                let v = value("--timeout")?;
                let s: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .ok_or(format!("--timeout {v}: not a number of seconds"))?;
                r.timeout = Some(Duration::from_secs_f64(s));
            }
            "--mode" => {
                r.mode = match value("--mode")?.as_str() {
                    "auto" => ModeRequest::Auto,
                    "kernel" => ModeRequest::Kernel,
                    "userspace" => ModeRequest::Userspace,
                    other => return Err(format!("--mode {other}: auto, kernel or userspace")),
                }
            }
            "--no-hyperv" => r.hyperv = false,
            "--timestamps" => r.image.console_timestamps = true,
            "--no-vmbus" => r.vmbus = None,
            "--vmbus-max-version" => {
                let v = value("--vmbus-max-version")?;
                let parsed = v
                    .split_once('.')
                    .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                    .map(|(a, b)| Version(a << 16 | b))
                    .filter(|v| Version::ALL.contains(v));
                r.vmbus = Some(parsed.ok_or(format!(
                    "--vmbus-max-version {v}: one of 5.3 5.2 5.1 5.0 4.1 4.0 3.0 2.4 1.1 0.13"
                ))?);
            }
            "--initrd" => {
                let path = value("--initrd")?;
                r.image.initrd =
                    Some(std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))?);
            }
            "--append" => {
                r.image.cmdline.push(' ');
                r.image.cmdline.push_str(&value("--append")?);
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            path => {
                r.image.kernel =
                    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
                if let Some(extra) = argv.next() {
                    return Err(format!("unexpected argument {extra} after KERNEL"));
                }
                return Ok(r);
            }
        }
    }
    Err("linux needs a KERNEL (a bzImage)".into())
}

fn summary(report: &LinuxReport) -> (String, u8) {
    let exits: u64 = report
        .outcome
        .stats
        .iter()
        .map(|s| s.io + s.msr + s.mmio)
        .sum();
    // Userspace mode: trapped hypercalls; kernel mode: KVM_EXIT_HYPERV (HCALL and SYNIC).
    let hyperv: u64 = report
        .outcome
        .stats
        .iter()
        .map(|s| s.hypercalls + s.hyperv)
        .sum();
    let secs = report.outcome.elapsed.as_secs_f64();
    let (what, status) = match (report.power, &report.outcome.reason) {
        (Some(PowerEvent::PowerOff), _) => ("powered off".to_string(), 0),
        (Some(PowerEvent::Halt), _) => ("halted".to_string(), 0),
        (Some(PowerEvent::Reset), _) => ("reset".to_string(), EXIT_RESET),
        (None, StopReason::Shutdown { vcpu, .. }) => (
            format!("triple-faulted on vCPU {vcpu} (a reset)"),
            EXIT_RESET,
        ),
        (None, StopReason::Timeout) => ("hit the time limit".to_string(), EXIT_TIMEOUT),
        (None, other) => (format!("stopped: {other:?}"), 2),
    };
    (
        format!(
            "synic-vmm: guest {what} after {secs:.1} s ({:?} mode, TSC {} kHz, {exits} port/MSR/MMIO \
             exits, {hyperv} hypercall/Hyper-V exits)",
            report.mode,
            report.tsc_hz / 1000
        ),
        status,
    )
}

/// Runs `synic-vmm linux ARGS`; returns the process exit status.
pub fn command(argv: impl Iterator<Item = String>) -> Result<u8, String> {
    let mut argv = argv.peekable();
    if argv.peek().is_some_and(|a| a == "--help" || a == "-h") {
        println!("usage:\n{USAGE}");
        return Ok(0);
    }
    let mut r = parse(argv)?;
    r.progress = Some(Box::new(|t: Duration, exits: u64| {
        eprintln!(
            "synic-vmm: still running after {} s ({exits} exits to userspace)",
            t.as_secs()
        );
    }));
    let report = run(r).map_err(|e| e.to_string())?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let (line, status) = summary(&report);

    if let Some(log) = &report.vmbus {
        eprintln!(
            "vmbus: {} messages exchanged, {} refused; negotiated {}; {}",
            log.exchanges.len(),
            log.errors(),
            log.negotiated
                .map_or("no version".to_string(), |v| format!("version {v}")),
            match log.connection {
                Some(c) => format!("connected at the end (VP{} SINT{})", c.vp.0, c.sint.get()),
                None => "disconnected at the end".to_string(),
            }
        );
        for e in &log.exchanges {
            eprintln!("vmbus: {e}");
        }
    }
    eprintln!("{line}");
    Ok(status)
}
