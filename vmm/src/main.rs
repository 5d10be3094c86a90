//! `synic-vmm`: the demo (no arguments), a multiboot kernel runner (`run`), the benchmarks
//! (`bench`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use synic_kvm::ModeRequest;
use synic_msr::Profile;
use synic_vmm::bench::{self, BenchConfig};
use synic_vmm::demo::{self, DemoConfig};
use synic_vmm::devices::{DebugExit, FwCfg, Serial};
use synic_vmm::layout::ports;
use synic_vmm::{multiboot, StopReason, VcpuHandlers, Vm, VmConfig};

const USAGE: &str = "usage:
  synic-vmm [--mode auto|kernel|userspace] [--profile tlfs|kvm] [--count N] [--timeout S]
                                    run the demo: a guest on 2 vCPUs exchanging messages and
                                    events with the host both ways (N = 15000 of each per
                                    vCPU and direction: 120 000 in all), every one checked;
                                    exit status 1 on any loss, duplicate, reorder or timeout
  synic-vmm run [--smp N] [--mem MiB] [--timeout S] KERNEL [ARGS..]
                                    boot a multiboot kernel; its COM1 output goes to stdout
                                    and the exit status is QEMU isa-debug-exit's (value << 1 | 1)
  synic-vmm bench [--mode auto|kernel|userspace|both] [--profile ..] [--count N]
                                    print the round-trip table (raw irqfd floor vs SynIC;
                                    N = 5000 round trips per kind per round, 3 rounds);
                                    `both` runs userspace then kernel mode and compares them
  synic-vmm linux [OPTIONS] KERNEL  boot a Linux bzImage (options: synic-vmm linux --help)";

/// Exit status for usage and setup errors.
const EXIT_ERROR: u8 = 2;
/// Exit status when the time limit stopped the guest (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

struct RunArgs {
    smp: u32,
    mem_mib: u64,
    timeout: Option<Duration>,
    kernel: String,
    args: Vec<String>,
}

fn parse_run(mut argv: impl Iterator<Item = String>) -> Result<RunArgs, String> {
    let mut r = RunArgs {
        smp: 1,
        mem_mib: 128,
        timeout: None,
        kernel: String::new(),
        args: Vec::new(),
    };
    while let Some(a) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--smp" => {
                let v = value("--smp")?;
                r.smp = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--smp {v}: not a vCPU count"))?;
            }
            "--mem" => {
                let v = value("--mem")?;
                r.mem_mib = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--mem {v}: not a size in MiB"))?;
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
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => {
                r.kernel = a;
                r.args = argv.collect();
                return Ok(r);
            }
        }
    }
    Err("run needs a KERNEL".into())
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    let image =
        std::fs::read(&args.kernel).map_err(|e| format!("cannot read {}: {e}", args.kernel))?;
    let config = VmConfig {
        vcpus: args.smp,
        mem_size: args.mem_mib << 20,
        ..VmConfig::default()
    };
    let mut vm = Vm::new(config).map_err(|e| e.to_string())?;
    let stdout = Box::new(std::io::stdout());
    let devices: [(u16, u16, Arc<dyn synic_vmm::PortDevice>); 3] = [
        (ports::COM1, 8, Arc::new(Serial::new(ports::COM1, stdout))),
        (
            ports::DEBUG_EXIT,
            1,
            Arc::new(DebugExit::new(vm.control().clone())),
        ),
        (
            ports::FW_CFG_SELECTOR,
            2,
            Arc::new(FwCfg::new(args.smp as u16, config.mem_size)),
        ),
    ];
    for (port, len, dev) in devices {
        vm.add_device(port, len, dev).map_err(|e| e.to_string())?;
    }
    // QEMU passes the kernel's name as the first word of the command line.
    let cmdline = std::iter::once(args.kernel.as_str())
        .chain(args.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let entry = multiboot::load(vm.memory(), &image, &cmdline)
        .map_err(|e| format!("{}: {e}", args.kernel))?;
    vm.boot_protected_mode(entry).map_err(|e| e.to_string())?;
    let running = vm
        .start(VcpuHandlers::without_synic)
        .map_err(|e| e.to_string())?;
    let out = running.wait_with_progress(args.timeout, PROGRESS_INTERVAL, |elapsed, exits| {
        eprintln!(
            "synic-vmm: still running after {} s ({} exits to userspace)",
            elapsed.as_secs(),
            exits.iter().sum::<u64>()
        );
    });
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match out.reason {
        StopReason::DebugExit(v) => Ok(ExitCode::from(DebugExit::qemu_status(v) as u8)),
        StopReason::Timeout => {
            eprintln!(
                "synic-vmm: time limit reached after {:.1} s, guest stopped",
                out.elapsed.as_secs_f64()
            );
            Ok(ExitCode::from(EXIT_TIMEOUT))
        }
        StopReason::Shutdown { vcpu, rip, rsp } => {
            eprintln!(
                "synic-vmm: vCPU {vcpu} shut down (triple fault) at RIP {rip:#x}, RSP {rsp:#x}"
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("guest stopped: {other:?}")),
    }
}

/// Options of the demo and the benchmark.
struct Options {
    mode: ModeRequest,
    /// `--mode both` (bench only): userspace and kernel mode in one run.
    both_modes: bool,
    profile: Profile,
    /// Demo: messages and events per vCPU each way; bench: round trips per kind per round.
    count: Option<u64>,
    /// Demo: wall-clock limit of the exchange.
    timeout: Option<Duration>,
}

fn parse_options(argv: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        mode: ModeRequest::Auto,
        both_modes: false,
        profile: Profile::Tlfs,
        count: None,
        timeout: None,
    };
    let mut argv = argv.peekable();
    while let Some(a) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--mode" => {
                let v = value("--mode")?;
                o.both_modes = v == "both";
                o.mode = match v.as_str() {
                    "auto" | "both" => ModeRequest::Auto,
                    "kernel" => ModeRequest::Kernel,
                    "userspace" | "user" => ModeRequest::Userspace,
                    other => return Err(format!("--mode {other}: auto, kernel or userspace")),
                }
            }
            "--profile" => {
                o.profile = match value("--profile")?.as_str() {
                    "tlfs" => Profile::Tlfs,
                    "kvm" => Profile::Kvm,
                    other => return Err(format!("--profile {other}: tlfs or kvm")),
                }
            }
            "--count" => {
                let v = value("--count")?;
                o.count = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("--count {v}: not a positive number"))?,
                );
            }
            "--timeout" => {
                let v = value("--timeout")?;
                let s: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .ok_or(format!("--timeout {v}: not a number of seconds"))?;
                o.timeout = Some(Duration::from_secs_f64(s));
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

fn run_demo(o: Options) -> Result<ExitCode, String> {
    if o.both_modes {
        return Err("--mode both is for synic-vmm bench; the demo runs one mode".into());
    }
    let mut config = DemoConfig {
        mode: o.mode,
        profile: o.profile,
        ..DemoConfig::default()
    };
    if let Some(n) = o.count {
        config.messages = n;
        config.events = n;
        config.latency_samples = config.latency_samples.min(n / 4).max(1);
    }
    if let Some(t) = o.timeout {
        config.timeout = t;
    }
    println!(
        "synic-vmm demo: {} vCPUs, {} messages and {} events each way per vCPU",
        config.vcpus, config.messages, config.events
    );
    let report = demo::run(&config, Duration::from_secs(2), |line| {
        eprintln!("synic-vmm: {line}")
    })
    .map_err(|e| e.to_string())?;
    println!("{report}");
    if report.passed() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("synic-vmm: demo FAILED");
        Ok(ExitCode::FAILURE)
    }
}

fn run_bench(o: Options) -> Result<ExitCode, String> {
    let mut config = BenchConfig {
        mode: o.mode,
        profile: o.profile,
        ..BenchConfig::default()
    };
    if let Some(n) = o.count {
        config.iterations = n;
        config.warmup = config.warmup.min(n);
    }
    eprintln!(
        "synic-vmm bench: {} rounds x {} round trips per kind (after {} warm-up), interleaved",
        config.rounds, config.iterations, config.warmup
    );
    if o.both_modes {
        let report = bench::compare_modes(&config).map_err(|e| e.to_string())?;
        print!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let report = bench::run(&config).map_err(|e| e.to_string())?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = || args.iter().skip(1).cloned();
    let result = match args.first().map(String::as_str) {
        // The demo: no command, or only its options.
        None => parse_options(std::iter::empty()).and_then(run_demo),
        Some(a) if a.starts_with("--") && a != "--help" => {
            parse_options(args.iter().cloned()).and_then(run_demo)
        }
        Some("run") => parse_run(rest()).and_then(run),
        Some("linux") => synic_vmm::linux::cli::command(rest()).map(ExitCode::from),
        Some("bench") => parse_options(rest()).and_then(run_bench),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other}\n{USAGE}")),
    };
    finish(result)
}

fn finish(result: Result<ExitCode, String>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("synic-vmm: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
