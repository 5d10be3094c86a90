#!/usr/bin/env bash
# Long fuzz runs, one target at a time at the lowest priority:
#
#   bash fuzz/long.sh SECONDS [TARGET...]            # default: all five targets
#   RUNS=10000000 bash fuzz/long.sh 14400            # stop each at 10^7 executions
#   MAX_LEN=512 bash fuzz/long.sh 3600               # inputs of at most 512 bytes
#
# Builds every target first and runs copies of the binaries (so editing the sources during a
# long run does not change what runs). Prints each target's executions ("Done N runs") and
# keeps full logs in fuzz/logs/. Crashes land in fuzz/artifacts/<target>/ (reproduce:
# cargo +nightly fuzz run -s none <target> <file>).
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:?usage: long.sh SECONDS [TARGET...]}"
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(msr_access synic_model hypercall routing_ops vmbus)
fi
extra=()
if [ -n "${RUNS:-}" ]; then
    extra+=(-runs="$RUNS")
fi
if [ -n "${MAX_LEN:-}" ]; then
    extra+=(-max_len="$MAX_LEN")
fi
mkdir -p logs target/long
# The binaries are copied from fuzz/target whatever the caller's CARGO_TARGET_DIR says.
export CARGO_TARGET_DIR="$PWD/target"
for t in "${targets[@]}"; do
    cargo +nightly fuzz build -s none "$t" || exit 1
    cp "target/x86_64-unknown-linux-gnu/release/$t" "target/long/$t"
done
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t-$(date +%Y%m%d-%H%M%S).log"
    nice -n 19 "target/long/$t" "corpus/$t" "seeds/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$seconds" "${extra[@]}" -print_final_stats=1 >"$log" 2>&1
    status=$?
    done_line=$(grep -E "^Done" "$log" | tail -1)
    echo "$t: exit $status; ${done_line:-no Done line}; log $log"
done
