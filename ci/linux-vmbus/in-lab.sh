#!/bin/sh
# Runs inside kvm-lab: boots the Linux guest under synic-vmm once per mode and prints, per mode,
# the guest's console and the host's report between markers that run.sh splits on.
# usage: in-lab.sh SYNIC_VMM KERNEL INITRD TIMEOUT HEARTBEATS SMP MODE...
bin=$1 kernel=$2 initrd=$3 tmo=$4 heartbeats=$5 smp=$6
shift 6
tmp=${TMPDIR:-/tmp}
# noxsave: QEMU's TCG does not intercept a nested guest's XSETBV, so KVM's CPUID 0xD.0 EBX
# (the XSAVE size for the guest's XCR0) goes stale and Linux WARNs "XSAVE consistency problem"
# with a backtrace. A lab artefact (KVM_SET_XCRS shows KVM computing the right size); FXSAVE
# avoids it.
echo "=== lab up: $(uname -r)"
for mode in "$@"; do
  start=$(date +%s.%N)
  "$bin" linux --mode "$mode" --smp "$smp" --timeout "$tmo" --timestamps --append noxsave --initrd "$initrd" \
    --heartbeats "$heartbeats" --kvp FullyQualifiedDomainName --time-sample --shutdown-after 0 \
    "$kernel" \
    >"$tmp/$mode.guest" 2>"$tmp/$mode.host"
  rc=$?
  end=$(date +%s.%N)
  echo "=== guest $mode"
  tr -d '\r' <"$tmp/$mode.guest"
  echo "=== host $mode"
  cat "$tmp/$mode.host"
  echo "=== end $mode rc=$rc wall=$(awk "BEGIN { printf \"%.1f\", $end - $start }")"
done
