#!/bin/bash
# Runs inside kvm-lab (a guest whose KVM has in-kernel Hyper-V): every line of the suite file
# "label<TAB>dir<TAB>command...", in order, in its directory, each under a time limit. Prints
# each command's output between "=== begin LABEL" and "=== end LABEL rc=N secs=S" markers
# (the lab's output directory does not outlive the run, so everything goes to stdout; while
# the lab runs, $KVM_LAB_OUT/progress on the host (/tmp/kvm-lab.*/out/progress) shows how far
# it got, since the lab's console output arrives only at its end).
set -u
progress=/dev/null
[ -n "${KVM_LAB_OUT:-}" ] && progress=$KVM_LAB_OUT/progress
suite=$1 limit=$2
echo "=== lab: $(uname -r), $(nproc) CPUs, /dev/kvm $( [ -e /dev/kvm ] && echo present || echo MISSING)"
while IFS=$'\t' read -r label dir cmd; do
  [ -n "$label" ] || continue
  echo "=== begin $label"
  echo "$(date +%T) begin $label" >>"$progress"
  t0=$(date +%s.%N)
  (cd "$dir" && eval "timeout $limit $cmd") 2>&1
  rc=$?
  t1=$(date +%s.%N)
  end="rc=$rc secs=$(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}')"
  echo "=== end $label $end"
  echo "$(date +%T) end $label $end" >>"$progress"
done <"$suite"
