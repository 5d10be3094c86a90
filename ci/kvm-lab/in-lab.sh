#!/bin/bash
# Runs inside kvm-lab (a guest whose KVM has in-kernel Hyper-V): every line of the suite file
# "label<TAB>dir<TAB>command...", in order, in its directory, each under a time limit. Prints
# each command's output between "=== begin LABEL" and "=== end LABEL rc=N secs=S retries=R"
# markers (the lab's output directory does not outlive the run, so everything goes to stdout;
# while the lab runs, $KVM_LAB_OUT/progress on the host (/tmp/kvm-lab.*/out/progress) shows
# how far it got, since the lab's console output arrives only at its end).
#
# The lab's emulated nested SVM (QEMU TCG) has a bug: now and then, after an interrupt-window
# (VINTR) exit, the nested guest resumes at an address in the lab kernel's own text (seen:
# RIP 0xffffffffc054220c) and dies of a #PF there (KVM_EXIT_SHUTDOWN) or loops. No guest
# program of this suite ever runs above 4 GiB, so a kvm_exit with such a guest RIP is that bug,
# never ours. The kvm:kvm_exit tracepoint, filtered to guest RIPs in the upper half, catches it:
# a command that fails while the filter caught something is run again (at most twice), and
# the catch is printed ("=== emulator-bug LABEL ...") so the host side reports it.
set -u
progress=/dev/null
[ -n "${KVM_LAB_OUT:-}" ] && progress=$KVM_LAB_OUT/progress
suite=$1 limit=$2
echo "=== lab: $(uname -r), $(nproc) CPUs, /dev/kvm $( [ -e /dev/kvm ] && echo present || echo MISSING)"

T=${IN_LAB_TRACEFS:-/sys/kernel/tracing} # overridable only to test this script
trace=""
[ -d "$T/events" ] || mount -t tracefs nodev "$T" 2>/dev/null
if [ -d "$T/events/kvm/kvm_exit" ]; then
  if echo 'guest_rip >= 0xffff800000000000' >"$T/events/kvm/kvm_exit/filter" 2>/dev/null \
     && echo 1 >"$T/events/kvm/kvm_exit/enable" 2>/dev/null; then
    trace=$T
  fi
fi
[ -n "$trace" ] || echo "=== lab: no kvm_exit tracing: emulator-bug retries are off"

while IFS=$'\t' read -r label dir cmd; do
  [ -n "$label" ] || continue
  echo "=== begin $label"
  echo "$(date +%T) begin $label" >>"$progress"
  t0=$(date +%s.%N)
  retries=0
  while :; do
    [ -n "$trace" ] && echo >"$trace/trace"
    echo "=== attempt $((retries + 1))"
    (cd "$dir" && eval "timeout -k 10 $limit $cmd") 2>&1
    rc=$?
    caught=""
    [ -n "$trace" ] && caught=$(grep -v '^#' "$trace/trace" | grep -m1 kvm_exit)
    if [ "$rc" != 0 ] && [ -n "$caught" ] && [ $retries -lt 2 ]; then
      retries=$((retries + 1))
      echo "=== emulator-bug $label: nested guest ran at a lab-kernel address: $caught"
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
