#!/bin/sh
# Runs inside kvm-lab: boots the Linux guest under synic-vmm once per mode and prints, per mode,
# the guest's console and the host's report between markers that run.sh splits on.
# usage: in-lab.sh SYNIC_VMM KERNEL INITRD TIMEOUT HEARTBEATS SMP TSC_PAGE MODE...
# (TSC_PAGE 0: synic-vmm --no-tsc-page, the guest's clock on TIME_REF_COUNT)
bin=$1 kernel=$2 initrd=$3 tmo=$4 heartbeats=$5 smp=$6 tsc_page=$7
shift 7
extra=""
[ "$tsc_page" = 0 ] && extra="--no-tsc-page"
tmp=${TMPDIR:-/tmp}
# noxsave: QEMU's TCG does not intercept a nested guest's XSETBV, so KVM's CPUID 0xD.0 EBX
# (the XSAVE size for the guest's XCR0) goes stale and Linux WARNs "XSAVE consistency problem"
# with a backtrace. A lab artefact (KVM_SET_XCRS shows KVM computing the right size); FXSAVE
# avoids it.
echo "=== lab up: $(uname -r)"
echo "=== lab clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
for mode in "$@"; do
  start=$(date +%s.%N)
  "$bin" linux --mode "$mode" --smp "$smp" --timeout "$tmo" --timestamps --append noxsave --initrd "$initrd" \
    --heartbeats "$heartbeats" --kvp FullyQualifiedDomainName --time-sample --shutdown-after 0 \
    $extra "$kernel" \
    >"$tmp/$mode.guest" 2>"$tmp/$mode.host"
  rc=$?
  end=$(date +%s.%N)
  echo "=== guest $mode"
  tr -d '\r' <"$tmp/$mode.guest"
  echo "=== host $mode"
  cat "$tmp/$mode.host"
  echo "=== end $mode rc=$rc wall=$(awk "BEGIN { printf \"%.1f\", $end - $start }")"
done
