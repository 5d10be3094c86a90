//! The demo and the benchmark, shortened, on real KVM: the demo's checks on both sides see
//! every message and event exactly once and in order; every benchmark round trip completes.
//! Timings are printed, never asserted.

mod common;

use std::time::Duration;

use common::kvm_available;
use synic_msr::Profile;
use synic_vmm::bench::{self, BenchConfig, Kind};
use synic_vmm::demo::{self, DemoConfig, Traffic};

fn short_demo(profile: Profile) -> DemoConfig {
    DemoConfig {
        profile,
        messages: 3_000,
        events: 3_000,
        latency_samples: 200,
        timeout: Duration::from_secs(60),
        ..DemoConfig::default()
    }
}

#[test]
fn demo_exchanges_every_message_and_event_once_and_in_order() {
    if !kvm_available() {
        return;
    }
    for profile in [Profile::Tlfs, Profile::Kvm] {
        let config = short_demo(profile);
        let report = demo::run(&config, Duration::from_secs(3600), |_| {}).unwrap();
        println!("{report}");
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(
            (report.lost, report.duplicated, report.out_of_order),
            (0, 0, 0)
        );
        let n = 3_000 * u64::from(config.vcpus);
        let all = Traffic {
            host_to_guest_messages: n,
            guest_to_host_messages: n,
            host_to_guest_events: n,
            guest_to_host_events: n,
        };
        assert_eq!(report.traffic, all);
        assert!(report.passed());
        assert_eq!(report.message_latency.samples, 200 * config.vcpus as usize);
        assert!(report.message_latency.p50 <= report.message_latency.p99);
        assert!(report.verification().starts_with("verification: lost 0,"));
    }
}

#[test]
fn bench_round_trips_all_complete() {
    if !kvm_available() {
        return;
    }
    let config = BenchConfig {
        iterations: 300,
        rounds: 2,
        warmup: 20,
        ..BenchConfig::default()
    };
    let report = bench::run(&config).unwrap();
    print!("{report}");
    let kinds: Vec<Kind> = report.rows.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, Kind::ALL.to_vec());
    for r in &report.rows {
        assert_eq!(r.latency.samples, 600, "{:?}", r.kind);
        assert!(r.latency.p50 > Duration::ZERO && r.ops_per_sec > 0.0);
    }
    assert!((report.rows[0].ratio - 1.0).abs() < 1e-9);
}
