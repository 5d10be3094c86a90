#!/usr/bin/env bash
# Fuzz smoke run for CI: build every target, run each for FUZZ_SECONDS (default 25) from the
# committed seeds plus the local corpus. Missing tooling (nightly, cargo-fuzz) is reported
# loudly and skipped (exit 0); a target that does not build or that crashes fails (exit 1).
#
#   bash fuzz/ci.sh                  # all targets
#   FUZZ_SECONDS=60 bash fuzz/ci.sh msr_access
set -uo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-25}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(msr_access synic_model hypercall routing_ops vmbus)
fi

skip() {
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! FUZZ SMOKE RUN SKIPPED: $1"
    echo "!!! The fuzz targets were NOT built or run. See docs/fuzzing.md."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    exit 0
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "== no nightly toolchain; trying: rustup toolchain install nightly"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 \
        || skip "no nightly Rust toolchain and it could not be installed"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== no cargo-fuzz; trying: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked >/dev/null 2>&1 \
        || skip "cargo-fuzz is not installed and could not be installed"
fi

# No sanitizer: the code under test is safe Rust apart from vm-memory's access to mmap'd guest
# memory, which AddressSanitizer does not track; debug assertions (overflow checks) stay on.
# Twice the executions per second.
flags=(-s none)

echo "== cargo fuzz build (${targets[*]})"
for t in "${targets[@]}"; do
    if ! cargo +nightly fuzz build "${flags[@]}" "$t"; then
        echo "FUZZ: target $t does not build"
        exit 1
    fi
done

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== fuzz $t for ${seconds}s"
    log="$(mktemp)"
    cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    status=$?
    grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
    if [ $status -ne 0 ]; then
        grep -E "panicked|SUMMARY|Test unit written|artifact_prefix" "$log" | head -20
        echo "FUZZ: $t FAILED (exit $status); full log: $log; reproduce with"
        echo "  cd fuzz && cargo +nightly fuzz run -s none $t artifacts/$t/<crash file>"
        failed+=("$t")
    else
        rm -f "$log"
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "FUZZ: crashes in: ${failed[*]}"
    exit 1
fi
echo "== fuzz smoke run: ${#targets[@]} targets, no crashes"
