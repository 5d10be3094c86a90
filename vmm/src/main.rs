//! `synic-vmm`: the demo (no arguments), a multiboot kernel runner (`run`), the benchmarks
//! (`bench`).

use std::process::ExitCode;
use std::time::Duration;

use synic_kvm::ModeRequest;
use synic_msr::Profile;
use synic_vmm::bench::{self, BenchConfig};
use synic_vmm::demo::{self, DemoConfig};
use synic_vmm::run::RunConfig;
use synic_vmm::StopReason;

const USAGE: &str = "usage:
  synic-vmm [--mode auto|kernel|userspace] [--profile tlfs|kvm] [--count N] [--timeout S]
                                    run the demo: a guest on 2 vCPUs exchanging messages and
                                    events with the host both ways (N = 15000 of each per
                                    vCPU and direction: 120 000 in all), every one checked;
                                    exit status 1 on any loss, duplicate, reorder or timeout
  synic-vmm run [--mode auto|kernel|userspace] [--profile tlfs|kvm] [--no-hyperv] [--smp N]
                [--mem MiB] [--timeout S] KERNEL [ARGS..]
                                    boot a multiboot kernel with the SynIC (Hyper-V CPUID,
                                    synthetic timers, hyperv-testdev at 0x3000; --no-hyperv:
                                    a plain PC); COM1 goes to stdout; the exit status is
                                    isa-debug-exit's (value << 1 | 1), 4 for a guest that shut
                                    down (triple fault), 124 at the time limit
  synic-vmm bench [--mode auto|kernel|userspace|both] [--profile ..] [--count N]
                                    print the round-trip table (raw irqfd floor vs SynIC;
                                    N = 5000 round trips per kind per round, 3 rounds);
                                    `both` runs userspace then kernel mode and compares them
  synic-vmm linux [OPTIONS] KERNEL  boot a Linux bzImage (options: synic-vmm linux --help)";

/// Exit status for usage and setup errors.
const EXIT_ERROR: u8 = 2;
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

fn parse_mode(v: &str) -> Result<ModeRequest, String> {
    match v {
        "auto" => Ok(ModeRequest::Auto),
        "kernel" => Ok(ModeRequest::Kernel),
        "userspace" | "user" => Ok(ModeRequest::Userspace),
        other => Err(format!("--mode {other}: auto, kernel or userspace")),
    }
}

fn parse_profile(v: &str) -> Result<Profile, String> {
    match v {
        "tlfs" => Ok(Profile::Tlfs),
        "kvm" => Ok(Profile::Kvm),
        other => Err(format!("--profile {other}: tlfs or kvm")),
    }
}

fn parse_seconds(name: &str, v: &str) -> Result<Duration, String> {
    v.parse()
        .ok()
        .filter(|s: &f64| *s > 0.0 && s.is_finite())
        .map(Duration::from_secs_f64)
        .ok_or(format!("{name} {v}: not a number of seconds"))
}

fn parse_run(mut argv: impl Iterator<Item = String>) -> Result<RunConfig, String> {
    let mut r = RunConfig::default();
    while let Some(a) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--mode" => r.mode = parse_mode(&value("--mode")?)?,
            "--profile" => r.profile = parse_profile(&value("--profile")?)?,
            "--no-hyperv" => r.hyperv = false,
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
            "--timeout" => r.timeout = Some(parse_seconds("--timeout", &value("--timeout")?)?),
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

fn run(config: RunConfig) -> Result<ExitCode, String> {
    let image =
        std::fs::read(&config.kernel).map_err(|e| format!("cannot read {}: {e}", config.kernel))?;
    let report = synic_vmm::run::run(
        &config,
        &image,
        Box::new(std::io::stdout()),
        PROGRESS_INTERVAL,
        |elapsed, exits| {
            eprintln!(
                "synic-vmm: still running after {} s ({exits} exits to userspace)",
                elapsed.as_secs()
            )
        },
    )
    .map_err(|e| format!("{}: {e}", config.kernel))?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match &report.outcome.reason {
        StopReason::Timeout => eprintln!(
            "synic-vmm: time limit reached after {:.1} s, guest stopped",
            report.outcome.elapsed.as_secs_f64()
        ),
        StopReason::Shutdown { vcpu, rip, rsp } => eprintln!(
            "synic-vmm: vCPU {vcpu} shut down (triple fault) at RIP {rip:#x}, RSP {rsp:#x}"
        ),
        StopReason::SystemEvent { vcpu, kind } => {
            eprintln!("synic-vmm: vCPU {vcpu} reported system event {kind}")
        }
        _ => {}
    }
    match report.exit_status() {
        Some(code) => Ok(ExitCode::from(code)),
        None => Err(format!("guest stopped: {:?}", report.outcome.reason)),
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
                o.mode = if o.both_modes {
                    ModeRequest::Auto
                } else {
                    parse_mode(&v)?
                };
            }
            "--profile" => o.profile = parse_profile(&value("--profile")?)?,
            "--count" => {
                let v = value("--count")?;
                o.count = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("--count {v}: not a positive number"))?,
                );
            }
            "--timeout" => o.timeout = Some(parse_seconds("--timeout", &value("--timeout")?)?),
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
