#!/bin/bash
# Tests ci/kvm-lab/run.sh and in-lab.sh with a fake lab: no QEMU, no nested KVM, a few seconds.
# The fake kvm-lab runs in-lab.sh right here against a fake tracefs; the suites' commands are
# stubs that pass, fail, or fail while "the tracepoint caught" the emulator's signature (a line
# they append to the fake trace). Checks each path's exit status and what the summary says:
#   - everything passes                              -> 0, the retry fired 0 times
#   - a failure with nothing caught                  -> 1, run once (no rerun)
#   - a failure with the signature caught, then a pass -> 0, RETRIED, counted in the summary
#   - the signature caught on every attempt          -> 1 after 3 attempts
#   - a failed demo                                  -> 1, its kernel trace in its log
#   - a command killed at its limit in mid-line      -> 1, FAIL (status 124), not NOT RUN
#   - a command with its own limit (KERNEL_LAB_LIMITS) -> that limit, the others the default
#   - a lab that never boots                         -> 77 (SKIPPED)
# Exit 0 when every check holds, 1 otherwise.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -e /dev/kvm ] || { echo "kvm-lab scripts test: SKIPPED (run.sh needs /dev/kvm to exist)"; exit 77; }
w=$(mktemp -d "${TMPDIR:-/tmp}/kvm-lab-test.XXXXXX")
trap 'rm -rf "$w"' EXIT

# The fake tracefs: the top-level kvm_exit event (the emulator-signature filter) and the demo's
# instance.
t=$w/tracefs
mkdir -p "$t/events/kvm/kvm_exit"
: >"$t/trace"
for e in kvm_entry kvm_exit kvm_inj_virq kvm_hv_hypercall kvm_hv_hypercall_done \
         kvm_userspace_exit kvm_hv_synic_set_irq kvm_hv_notify_acked_sint kvm_eoi; do
  mkdir -p "$t/instances/synic-demo/events/kvm/$e"
done

cat >"$w/kvm-lab" <<'EOF'
#!/bin/bash
# Fake kvm-lab: no VM; runs the command here with in-lab.sh's environment.
[ "$1" = --setup ] && exit 0
while [ $# -gt 0 ]; do case $1 in --smp|--mem|--timeout) shift 2;; *) break;; esac; done
[ "${FAKE_LAB:-}" = noboot ] && { echo "qemu: no boot"; exit 255; }
share=$(mktemp -d "${TMPDIR:-/tmp}/kvm-lab.XXXXXX")
mkdir -p "$share/out"
KVM_LAB_OUT=$share/out "$@"
EOF

# stub BEHAVIOUR: what a suite command does; attempts are counted per label in $w/state.
cat >"$w/stub" <<'EOF'
#!/bin/bash
label=$1 behaviour=$2
n=$(( $(cat "$STUB_STATE/$label" 2>/dev/null || echo 0) + 1 ))
echo $n >"$STUB_STATE/$label"
sig() { echo " vcpu0-1 [000] .... 1.0: kvm_exit: vcpu 0 reason shutdown rip 0xfff0 info1 0" >>"$IN_LAB_TRACEFS/trace"; }
pass() { echo "test result: ok. 3 passed; 0 failed"; exit 0; }
case $behaviour in
  pass) pass;;
  hang) printf 'test slow ... '; sleep 60;;
  slow) sleep 4; pass;;
  fail) echo "test it_works ... FAILED"; echo "test result: FAILED. 2 passed; 1 failed"; exit 1;;
  sig-then-pass) [ $n -gt 1 ] && pass; sig; exit 101;;
  sig-always) sig; exit 101;;
  demo-pass) echo "verification: lost 0, duplicated 0, out of order 0"; exit 0;;
  demo-fail)
    [ -n "${SYNIC_DEMO_TRACING:-}" ] \
      && echo " vcpu1-2 [001] .... 2.0: kvm_inj_virq: IRQ 0x50" >>"$SYNIC_DEMO_TRACING/trace"
    echo "verification: lost 0, duplicated 2, out of order 0"; exit 1;;
esac
echo "stub: unknown behaviour $behaviour"; exit 2
EOF
chmod +x "$w/kvm-lab" "$w/stub"

failures=0
check() { # what condition...
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; failures=$((failures + 1)); fi
}

# run CASE "label behaviour"... : runs run.sh on a suite of stubs; leaves rc and output
run() {
  local case=$1; shift
  local spec label
  mkdir -p "$w/state.$case"
  : >"$w/suite.$case"
  for spec in "$@"; do
    label=${spec%% *}
    printf '%s\t%s\t%s %s\n' "$label" "$w" "$w/stub" "$spec" >>"$w/suite.$case"
  done
  out=$w/out.$case
  KVM_LAB=$w/kvm-lab KERNEL_LAB_SUITE=$w/suite.$case KERNEL_LAB_OUT=$out \
    KERNEL_LAB_BOOTS=1 IN_LAB_TRACEFS=$t STUB_STATE=$w/state.$case \
    bash "$here/run.sh" >"$w/log.$case" 2>&1
  rc=$?
}
has() { grep -q -- "$1" "$w/log.$case"; }
attempts() { grep -c '^=== attempt' "$out/$1.log"; }

case=pass; run pass "e2e pass" "demo-kernel demo-pass"
check "all pass: exit 0" [ $rc = 0 ]
check "all pass: the summary says the retry fired 0 times" has "retry fired 0 times (in 0 of 2 commands)"

case=nosig; run nosig "e2e pass" "vmm fail"
check "failure, nothing caught: exit 1" [ $rc = 1 ]
check "failure, nothing caught: FAIL vmm" has "FAIL vmm"
check "failure, nothing caught: run once, no rerun" [ "$(attempts vmm)" = 1 ]
check "failure, nothing caught: no FLAKY" bash -c "! grep -q FLAKY '$w/log.nosig'"

case=sig; run sig "e2e sig-then-pass" "vmm pass"
check "signature then pass: exit 0" [ $rc = 0 ]
check "signature then pass: RETRIED e2e" has "PASS e2e .*RETRIED 1x"
check "signature then pass: two attempts" [ "$(attempts e2e)" = 2 ]
check "signature then pass: the summary counts it" has "retry fired 1 times (in 1 of 2 commands)"

case=sigall; run sigall "e2e sig-always"
check "signature every time: exit 1" [ $rc = 1 ]
check "signature every time: three attempts" [ "$(attempts e2e)" = 3 ]
check "signature every time: the summary counts both retries" has "retry fired 2 times"

case=demo; run demo "demo-kernel demo-fail"
check "failed demo: exit 1" [ $rc = 1 ]
check "failed demo: its trace is in its log" grep -q "^=== trace demo-kernel" "$out/demo-kernel.last.log"
check "failed demo: the trace holds the demo's events" grep -q "kvm_inj_virq: IRQ 0x50" "$out/demo-kernel.log"
check "failed demo: the FAIL line points at the trace" has "FAIL demo-kernel.*kernel trace of the failure"

case=timeout; KERNEL_LAB_LIMIT=2 run timeout "timers hang" "vmm pass"
check "command over its limit, killed mid-line: exit 1" [ $rc = 1 ]
check "command over its limit: FAIL with status 124, not NOT RUN" has "FAIL timers .*exit status 124"
check "command over its limit: the rest ran" has "PASS vmm"

printf 'timers\t8\n' >"$w/limits"
case=ownlimit; KERNEL_LAB_LIMIT=2 KERNEL_LAB_LIMITS=$w/limits run ownlimit "timers slow" "vmm slow"
check "a command's own limit: it gets it" has "PASS timers"
check "a command's own limit: the others keep the default" has "FAIL vmm .*exit status 124"

case=noboot; FAKE_LAB=noboot run noboot "e2e pass"
check "lab never boots: exit 77" [ $rc = 77 ]
check "lab never boots: SKIPPED" has "SKIPPED: kvm-lab did not boot"

if [ $failures -ne 0 ]; then
  echo "kvm-lab scripts test: $failures checks FAILED (logs were in $w)"
  exit 1
fi
echo "kvm-lab scripts test: all checks passed"
