//! The `synic-vmm linux` command line.

use std::time::Duration;

use synic_vmbus::Version;

use super::host_script::{HostScript, ScriptReport};
use super::{run, LinuxImage, LinuxReport, LinuxRun, PowerEvent};
use crate::control::StopReason;
use synic_kvm::ModeRequest;

/// Usage of `synic-vmm linux`.
pub const USAGE: &str =
    "  synic-vmm linux [--smp N] [--mem MiB] [--timeout S] [--mode auto|kernel|userspace]
                  [--no-hyperv] [--no-tsc-page] [--no-vmbus] [--vmbus-max-version X.Y]
                  [--initrd FILE]
                  [--append ARGS] [--timestamps] [--heartbeats N] [--kvp KEY]...
                  [--time-sample] [--shutdown-after S] KERNEL
                                    boot a Linux bzImage with COM1 on stdout (Hyper-V
                                    enlightenments, SynIC, the VMBus host and its heartbeat,
                                    shutdown, time-sync and KVP services on by default; the
                                    VMBus exchange and what the services answered are printed
                                    on stderr at the end); --heartbeats N exchanges N heartbeats
                                    back to back, --kvp KEY reads a guest intrinsic KVP item
                                    (FullyQualifiedDomainName: its host name), --time-sample
                                    sends a time sample, --shutdown-after S asks the guest to
                                    power off through the shutdown service S seconds after
                                    those (and the service being ready); --no-tsc-page hides the
                                    reference TSC page (every guest clock read is then a
                                    TIME_REF_COUNT access); exit status 0 when the guest powers
                                    off or halts, 3 on reset";

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
        reference_tsc: true,
        vmbus: Some(Version::WIN10_V5_3),
        script: HostScript::default(),
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
            "--no-tsc-page" => r.reference_tsc = false,
            "--timestamps" => r.image.console_timestamps = true,
            "--no-vmbus" => r.vmbus = None,
            "--vmbus-max-version" => {
                let v = value("--vmbus-max-version")?;
                r.vmbus = Some(Version::parse(&v).ok_or(format!(
                    "--vmbus-max-version {v}: one of 5.3 5.2 5.1 5.0 4.1 4.0 3.0"
                ))?);
            }
            "--heartbeats" => {
                let v = value("--heartbeats")?;
                r.script.heartbeats = v
                    .parse()
                    .map_err(|_| format!("--heartbeats {v}: not a count"))?;
            }
            "--kvp" => r.script.kvp.push(value("--kvp")?),
            "--time-sample" => r.script.time_sample = true,
            "--shutdown-after" => {
                let v = value("--shutdown-after")?;
                let s: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s >= 0.0 && s.is_finite())
                    .ok_or(format!("--shutdown-after {v}: not a number of seconds"))?;
                r.script.shutdown_after = Some(Duration::from_secs_f64(s));
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
    let requested = report
        .script
        .as_ref()
        .and_then(|s| s.shutdown.as_ref())
        .filter(|(_, r)| r.is_ok())
        .map(|(at, _)| *at);
    let (what, status) = match (report.power, &report.outcome.reason) {
        (Some(PowerEvent::PowerOff), _) if requested.is_some() => (
            format!(
                "powered off at the host's request (shutdown service, {:.1} s after it)",
                report
                    .outcome
                    .elapsed
                    .saturating_sub(requested.unwrap_or_default())
                    .as_secs_f64()
            ),
            0,
        ),
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
             exits, {hyperv} hypercall/Hyper-V exits, {} TIME_REF_COUNT reads; reference TSC \
             page: {})",
            report.mode,
            report.tsc_hz / 1000,
            report.time_ref_count_reads,
            report.tsc_page
        ),
        status,
    )
}

fn micros(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{}", d.as_micros()))
}

fn print_script(s: &ScriptReport) {
    for (kind, r) in &s.ready {
        match r {
            Ok(n) => eprintln!(
                "vmbus: {kind} service ready: framework {} service {}",
                n.framework, n.service
            ),
            Err(e) => eprintln!("vmbus: {kind} service not ready: {e}"),
        }
    }
    let hb = &s.heartbeats;
    if hb.asked > 0 {
        eprintln!(
            "vmbus: heartbeats {}/{} answered (p50 {} us, p99 {} us, max {} us){}",
            hb.answered,
            hb.asked,
            micros(hb.percentile(50)),
            micros(hb.percentile(99)),
            micros(hb.percentile(100)),
            hb.first_error
                .as_ref()
                .map_or(String::new(), |e| format!("; first failure: {e}"))
        );
    }
    for (key, r) in &s.kvp {
        match r {
            Ok(Some(v)) => eprintln!("vmbus: kvp {key}={v}"),
            Ok(None) => eprintln!("vmbus: kvp {key}: the guest has no such item"),
            Err(e) => eprintln!("vmbus: kvp {key}: {e}"),
        }
    }
    match &s.time {
        Some(Ok(t)) => eprintln!(
            "vmbus: time sample (service {}) acknowledged in {} us: host time {} (100 ns since \
             1601), reference time {}",
            t.service,
            t.round_trip.as_micros(),
            t.host_time,
            t.reference_time
        ),
        Some(Err(e)) => eprintln!("vmbus: time sample: {e}"),
        None => {}
    }
    match &s.shutdown {
        Some((at, Ok(()))) => eprintln!(
            "vmbus: shutdown requested at {:.1} s: accepted by the guest",
            at.as_secs_f64()
        ),
        Some((at, Err(e))) => eprintln!(
            "vmbus: shutdown requested at {:.1} s: {e}",
            at.as_secs_f64()
        ),
        None => {}
    }
    if s.cut_short {
        eprintln!("vmbus: the VM stopped before the host script finished");
    }
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
            "vmbus: {} log entries, {} refused{}; negotiated {}; {}",
            log.log.total(),
            log.log.errors(),
            if log.log.dropped() > 0 {
                format!(" ({} oldest not kept)", log.log.dropped())
            } else {
                String::new()
            },
            log.negotiated
                .map_or("no version".to_string(), |v| format!("version {v}")),
            match log.connection {
                Some(c) => format!("connected at the end (VP{} SINT{})", c.vp.0, c.sint.get()),
                None => "disconnected at the end".to_string(),
            }
        );
        for e in log.log.entries() {
            eprintln!("vmbus: {e}");
        }
        for c in &log.channels {
            let s = &c.stats;
            eprintln!(
                "vmbus: channel {} {}: opened {}x{}, {} packets to the guest, {} from it, {} \
                 signals to it{}, {} from it, {} unexpected{}",
                c.relid,
                c.name,
                s.opens,
                s.negotiated.map_or(String::new(), |n| format!(
                    ", framework {} service {}",
                    n.framework, n.service
                )),
                s.packets_to_guest,
                s.packets_from_guest,
                s.signals_to_guest,
                s.target_vp
                    .map_or(String::new(), |vp| format!(" (last on VP{vp})")),
                s.signals_from_guest,
                s.unexpected_packets,
                s.last_close
                    .as_ref()
                    .map_or(String::new(), |w| format!(", last closed: {w}"))
            );
        }
    }
    if let Some(s) = &report.script {
        print_script(s);
    }
    eprintln!("{line}");
    Ok(status)
}
