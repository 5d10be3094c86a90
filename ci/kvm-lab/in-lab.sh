#!/bin/bash
# Runs inside kvm-lab (a guest whose KVM has in-kernel Hyper-V): every line of the suite file
# "label<TAB>dir<TAB>command...", in order, in its directory, each under a time limit. Prints
# each command's output between "=== begin LABEL" and "=== end LABEL rc=N secs=S retries=R"
# markers (the lab's output directory does not outlive the run, so everything goes to stdout;
# while the lab runs, $KVM_LAB_OUT/progress on the host (/tmp/kvm-lab.*/out/progress) shows
# how far it got, since the lab's console output arrives only at its end).
#
# The lab's emulated nested SVM (QEMU TCG) has a bug: now and then the nested guest's register
# state is lost. Seen with this tracepoint: after an interrupt-window (VINTR) exit the guest
# resumed at an address in the lab kernel's own text (RIP 0xffffffffc054220c) and died of a #PF
# there; or it triple-faulted (KVM_EXIT_SHUTDOWN) at its own code with a stack pointer gone
# bad (#PF on `ret` or on interrupt delivery). Nothing in the suite writes vCPU registers in
# kernel mode and no guest program of it faults on purpose or runs above 4 GiB, so a kvm_exit
# with a guest RIP in the upper half or a shutdown exit (SVM exit code 0x7f) is that bug. The
# kvm:kvm_exit tracepoint, filtered to those, catches it: a command that fails while the filter
# caught something is run again (at most twice), and the catch is printed ("=== emulator-bug
# LABEL ...") so the host side reports it. A command that fails with nothing caught fails:
# there is no rerun for it (issue 14: such reruns once hid a real duplicate).
#
# Commands labelled demo-* also get a kernel trace of their own (a tracefs instance with the
# KVM entry/exit, injection and Hyper-V events, so the filter above is untouched): the demo
# stops it at its first anomaly (SYNIC_DEMO_TRACING), and when the demo fails its last lines
# are printed between "=== trace LABEL" and "=== end trace LABEL".
set -u
progress=/dev/null
[ -n "${KVM_LAB_OUT:-}" ] && progress=$KVM_LAB_OUT/progress
# A heartbeat for the host's watchdog (run.sh): the lab's own kernel can freeze under the
# emulator too, and then no time limit in here fires.
if [ -n "${KVM_LAB_OUT:-}" ]; then
  (while :; do date +%s >"$KVM_LAB_OUT/heartbeat"; sleep 5; done) &
  heartbeat=$!
  trap 'kill $heartbeat 2>/dev/null' EXIT
fi
# LIMITS (optional): a file of "label<TAB>seconds" lines, each a command whose own limit
# replaces LIMIT (a long stress test).
suite=$1 limit=$2 limits=${3:-}
echo "=== lab: $(uname -r), $(nproc) CPUs, /dev/kvm $( [ -e /dev/kvm ] && echo present || echo MISSING)"

T=${IN_LAB_TRACEFS:-/sys/kernel/tracing} # overridable only to test this script
trace=""
[ -d "$T/events" ] || mount -t tracefs nodev "$T" 2>/dev/null
if [ -d "$T/events/kvm/kvm_exit" ]; then
  if echo 'exit_reason == 127 || guest_rip >= 0xffff800000000000' \
       >"$T/events/kvm/kvm_exit/filter" 2>/dev/null \
     && echo 1 >"$T/events/kvm/kvm_exit/enable" 2>/dev/null; then
    trace=$T
  fi
fi
[ -n "$trace" ] || echo "=== lab: no kvm_exit tracing: emulator-bug retries are off"
# The demo's own trace (see the top).
diag=""
diag_events="kvm/kvm_entry kvm/kvm_exit kvm/kvm_inj_virq kvm/kvm_hv_hypercall
  kvm/kvm_hv_hypercall_done kvm/kvm_userspace_exit kvm/kvm_hv_synic_set_irq
  kvm/kvm_hv_notify_acked_sint kvm/kvm_eoi"
if [ -n "$trace" ] && mkdir -p "$T/instances/synic-demo" 2>/dev/null; then
  diag=$T/instances/synic-demo
  echo "${IN_LAB_DIAG_KB:-8192}" >"$diag/buffer_size_kb" 2>/dev/null
  echo 0 >"$diag/tracing_on"
  for e in $diag_events; do echo 1 >"$diag/events/$e/enable" 2>/dev/null || diag=""; done
fi
diag_lines=${IN_LAB_DIAG_LINES:-400}

while IFS=$'\t' read -r label dir cmd; do
  [ -n "$label" ] || continue
  echo "=== begin $label"
  lim=$limit
  if [ -n "$limits" ]; then
    own=$(awk -F'\t' -v l="$label" '$1 == l {print $2}' "$limits")
    [ -n "$own" ] && lim=$own
  fi
  echo "$(date +%T) begin $label" >>"$progress"
  t0=$(date +%s.%N)
  retries=0
  traced=""
  case $label in demo-*) [ -n "$diag" ] && traced=$diag;; esac
  while :; do
    [ -n "$trace" ] && echo >"$trace/trace"
    if [ -n "$traced" ]; then echo >"$traced/trace"; echo 1 >"$traced/tracing_on"; fi
    echo "=== attempt $((retries + 1))"
    (cd "$dir" && { [ -z "$traced" ] || export SYNIC_DEMO_TRACING=$traced; } \
      && eval "timeout -k 10 $lim $cmd") 2>&1
    rc=$?
    # The markers must start a line: a command killed mid-line (a test runner's
    # "test x ... " before a timeout) would otherwise glue "=== end" to it, and run.sh would
    # take the command for one the lab never finished.
    echo
    if [ -n "$traced" ]; then
      echo 0 >"$traced/tracing_on"
      if [ "$rc" != 0 ]; then
        echo "=== trace $label (last $diag_lines lines)"
        grep -v '^#' "$traced/trace" | tail -n "$diag_lines"
        echo "=== end trace $label"
      fi
    fi
    caught=""
    [ -n "$trace" ] && caught=$(grep -v '^#' "$trace/trace" | grep -m1 kvm_exit)
    if [ "$rc" != 0 ] && [ -n "$caught" ] && [ $retries -lt 2 ]; then
      retries=$((retries + 1))
      echo "=== emulator-bug $label: the nested guest lost its state: $caught"
      echo "$(date +%T) emulator bug in $label, running it again" >>"$progress"
      continue
    fi
    break
  done
  t1=$(date +%s.%N)
  end="rc=$rc secs=$(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}') retries=$retries"
  echo "=== end $label $end"
  echo "$(date +%T) end $label $end" >>"$progress"
done <"$suite"
