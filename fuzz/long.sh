#!/usr/bin/env bash
# Long fuzz runs, one target at a time at the lowest priority:
#
#   bash fuzz/long.sh SECONDS [TARGET...]     # default: all four targets, SECONDS each
#
# Prints each target's executions ("Done N runs") and keeps full logs in fuzz/logs/.
# Crashes land in fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run -s none
# <target> <file>).
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:?usage: long.sh SECONDS [TARGET...]}"
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(msr_access synic_model hypercall routing_ops)
fi
mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="logs/$t-$(date +%Y%m%d-%H%M%S).log"
    nice -n 19 cargo +nightly fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    status=$?
    runs=$(grep -E "^Done" "$log" | tail -1)
    echo "$t: exit $status; $runs; log $log"
done
