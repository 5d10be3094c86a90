#!/bin/bash
# Linux VMBus test: a stock Debian kernel's hv_vmbus and hv_utils, with Debian's hv_kvp_daemon,
# against synic-vmm's VMBus host and integration services inside kvm-lab, in kernel mode and
# in userspace mode.
#
#   ci/linux-vmbus/run.sh [MODE...]        (default: kernel userspace)
#
# Prepares (cached under $KVM_LAB_DIR/linux-vmbus, default ~/.cache/kvm-lab/linux-vmbus): the
# kvm-lab machine, Debian's kernel package (the same version kvm-lab boots; downloaded with apt
# because kvm-lab keeps only a few modules) with hv_vmbus.ko, hv_utils.ko and their
# dependencies, Debian's hyperv-daemons package (hv_kvp_daemon and the libraries it links), an
# initramfs (busybox-static + ci/linux-vmbus/init and poweroff), and a release build of
# synic-vmm. Then boots the guest once per mode inside one kvm-lab run: the host exchanges
# LINUX_VMBUS_HEARTBEATS heartbeats (default 10000) back to back, reads the guest's host name
# through KVP, sends a time sample and asks the guest to shut down through the shutdown service.
#
# Passes (exit 0) when, in every mode: the guest's clock source is hyperv_clocksource_tsc_page
# (hyperv_clocksource_msr with LINUX_VMBUS_TSC_PAGE=0); the guest powered off at the host's request (by itself:
# the kernel's orderly power-off runs /sbin/poweroff, which unloads hv_utils, and hv_vmbus
# unless the tick runs on STIMER0: then the STIMER0 interrupts are checked instead); every
# heartbeat was answered; the KVP host name is the one the guest printed; the four services
# opened and negotiated; its log shows "hv_vmbus: Vmbus version:X.Y" and no Hyper-V/VMBus/SynIC
# error; the host's exchange log shows the handshake, the offers, the opens, the closes and
# (when hv_vmbus unloaded) UNLOAD/UNLOAD_RESPONSE with nothing refused. Prints, per mode:
#   PASS <mode>: heartbeats N/N (p50 .. us, p99 .. us), kvp HostName=<name>, shutdown by host in <s> s
# LINUX_VMBUS_SMP=N (default 1) gives the lab and the guest N CPUs; the guest then moves every
# service channel to its last CPU (MODIFYCHANNEL).
# Exit 1 on failure; exit 77 (SKIPPED, said loudly) when the lab or a package cannot be
# prepared (no package mirror reachable). Logs go to $LINUX_VMBUS_OUT (default
# target/linux-vmbus under the repository).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(kernel userspace)
LAB=${KVM_LAB_DIR:-$HOME/.cache/kvm-lab}
cache="$LAB/linux-vmbus"
out=${LINUX_VMBUS_OUT:-$root/target/linux-vmbus}
guest_timeout=${LINUX_VMBUS_GUEST_TIMEOUT:-240}
heartbeats=${LINUX_VMBUS_HEARTBEATS:-10000}
smp=${LINUX_VMBUS_SMP:-1}
# 1 (default): the reference TSC page is offered and the guest must use it
# (hyperv_clocksource_tsc_page); 0: synic-vmm --no-tsc-page, the guest must read TIME_REF_COUNT
# (hyperv_clocksource_msr): the "before" of the TIME_REF_COUNT exit count.
tsc_page=${LINUX_VMBUS_TSC_PAGE:-1}
name=linux-vmbus
# shellcheck source=../lab-common.sh
. "$root/ci/lab-common.sh"
mkdir -p "$out" || fail "cannot create $out"

# 1. The lab (qemu, busybox-static, its own kernel).
"$kvmlab" --setup >"$out/setup.log" 2>&1 || skip "kvm-lab --setup failed (see $out/setup.log)"

# 2. The kernel package again, for hv_vmbus.ko and hv_utils.ko.
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq >/dev/null 2>&1
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[ -n "$pkg" ] || skip "cannot find Debian's kernel package (no package mirror reachable?)"
kdir="$cache/$pkg"
want_modules="hv_vmbus hv_utils"
if [ "$(cat "$kdir/ready" 2>/dev/null)" != "$want_modules" ]; then
  say "fetching $pkg for $want_modules"
  rm -rf "$kdir" && mkdir -p "$kdir/deb" "$kdir/x" || fail "cannot create $kdir"
  (cd "$kdir/deb" && apt-get download -qq "$pkg" >/dev/null 2>&1) \
    || skip "apt-get download $pkg failed (no package mirror reachable?)"
  dpkg-deb --fsys-tarfile "$kdir"/deb/*.deb \
    | tar -x -C "$kdir/x" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/hv/*' \
        './lib/modules/*/kernel/drivers/ptp/*' './lib/modules/*/kernel/drivers/pps/*' \
    || fail "cannot extract $pkg"
  cp "$kdir"/x/boot/vmlinuz-* "$kdir/vmlinuz" || fail "no vmlinuz in $pkg"
  mkdir -p "$kdir/modules"
  # hv_vmbus and whatever its .modinfo says it depends on, dependencies first.
  order=()
  add() {
    local m=$1 f dep
    case " ${order[*]:-} " in *" $m "*) return 0;; esac
    f=$(find "$kdir/x/lib/modules" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -1)
    [ -n "$f" ] || fail "module $m not in $pkg"
    case $f in
      *.xz) xz -dc "$f" >"$kdir/modules/$m.ko";;
      *.zst) zstd -qdc "$f" >"$kdir/modules/$m.ko";;
      *) cp "$f" "$kdir/modules/$m.ko";;
    esac
    for dep in $(grep -a -o 'depends=[A-Za-z0-9_,-]*' "$kdir/modules/$m.ko" | head -1 \
                 | sed 's/^depends=//' | tr ',' ' '); do
      add "$dep"
    done
    order+=("$m")
  }
  for m in $want_modules; do add "$m"; done
  printf '%s\n' "${order[@]}" >"$kdir/modules.order"
  rm -rf "$kdir/deb" "$kdir/x"
  echo "$want_modules" >"$kdir/ready"
fi
say "kernel $pkg, modules: $(tr '\n' ' ' <"$kdir/modules.order")"

# 2b. Debian's hyperv-daemons: hv_kvp_daemon answers the host's KVP requests in the guest.
ddir="$cache/hyperv-daemons"
if [ ! -f "$ddir/ready" ]; then
  say "fetching hyperv-daemons for hv_kvp_daemon"
  rm -rf "$ddir" && mkdir -p "$ddir/deb" "$ddir/x" || fail "cannot create $ddir"
  (cd "$ddir/deb" && apt-get download -qq hyperv-daemons >/dev/null 2>&1) \
    || skip "apt-get download hyperv-daemons failed (no package mirror reachable?)"
  dpkg-deb -x "$ddir"/deb/*.deb "$ddir/x" || fail "cannot extract hyperv-daemons"
  cp "$ddir/x/usr/sbin/hv_kvp_daemon" "$ddir/hv_kvp_daemon" || fail "no hv_kvp_daemon in hyperv-daemons"
  basename "$ddir"/deb/*.deb >"$ddir/version"
  rm -rf "$ddir/deb" "$ddir/x"
  touch "$ddir/ready"
fi
say "hv_kvp_daemon from $(cat "$ddir/version")"

# 3. The initramfs.
busybox=$(command -v busybox || echo /bin/busybox)
[ -x "$busybox" ] || skip "busybox-static is not installed (kvm-lab --setup installs it)"
rootfs="$cache/rootfs"
rm -rf "$rootfs" && mkdir -p "$rootfs"/{bin,sbin,proc,sys,dev,lib/modules,usr/sbin,var/lib} \
  || fail "cannot build $rootfs"
cp "$busybox" "$rootfs/bin/busybox"
cp "$here/init" "$rootfs/init" && chmod +x "$rootfs/init"
cp "$here/poweroff" "$rootfs/sbin/poweroff" && chmod +x "$rootfs/sbin/poweroff"
cp "$ddir/hv_kvp_daemon" "$rootfs/usr/sbin/hv_kvp_daemon"
# Its libraries (this machine is the same Debian release as the package), at the paths ldd
# names, and the dynamic loader.
for lib in $(ldd "$ddir/hv_kvp_daemon" | grep -oE '/[^ ]+'); do
  mkdir -p "$rootfs$(dirname "$lib")" && cp -L "$lib" "$rootfs$lib" || fail "cannot copy $lib"
done
cp "$kdir"/modules/*.ko "$rootfs/lib/modules/"
cp "$kdir/modules.order" "$rootfs/modules.order"
python3 "$(dirname "$kvmlab")/mkcpio.py" "$rootfs" "$cache/initrd.gz" >/dev/null \
  || fail "cannot build the initramfs"

# 4. synic-vmm, release (the lab's nested KVM runs under TCG: debug builds are too slow).
say "building synic-vmm (release)"
(cd "$root" && cargo build --release -q -p synic-vmm) || fail "cargo build --release -p synic-vmm"
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target="$root/$target";; esac
bin="$target/release/synic-vmm"
[ -x "$bin" ] || fail "no $bin"

# 5. Boot, once per mode, inside one lab run.
say "booting Linux under synic-vmm in kvm-lab, modes: ${modes[*]}"
t0=$(date +%s)
lab_run() { # MODE... -> appends to $out/lab.log
  "$kvmlab" --smp "$smp" --timeout $((guest_timeout * $# + 120)) \
    "$here/in-lab.sh" "$bin" "$kdir/vmlinuz" "$cache/initrd.gz" "$guest_timeout" "$heartbeats" "$smp" \
    "$tsc_page" "$@" \
    >>"$out/lab.log" 2>&1
}
: >"$out/lab.log"
lab_run "${modes[@]}"
lab_rc=$?
# The lab's emulated nested SVM now and then freezes the whole lab or loses a nested guest's
# state (docs/kernel-mode-lab.md, "Known issue"): a mode the lab did not finish, or whose guest
# triple-faulted (Linux here never does: it powers off), gets one more boot, said loudly.
again=()
for mode in "${modes[@]}"; do
  end=$(grep -a "^=== end $mode " "$out/lab.log" | tail -1)
  if [ -z "$end" ]; then
    again+=("$mode")
  elif awk -v m="$mode" '$0=="=== host " m {w=1; next} index($0, "=== end " m " ")==1 {w=0} w' \
         "$out/lab.log" | grep -q 'triple-faulted'; then
    again+=("$mode")
  fi
done
retried=""
if [ ${#again[@]} -gt 0 ]; then
  say "RETRYING ${again[*]} in a second boot: the lab froze or the guest triple-faulted (the lab emulator's known bug)"
  retried=" (retried: ${again[*]})"
  # Keep only the last attempt of each mode in the log the checks read.
  mv "$out/lab.log" "$out/lab.first.log"
  : >"$out/lab.log"
  for mode in "${modes[@]}"; do
    case " ${again[*]} " in *" $mode "*) ;;
      *) awk -v m="$mode" '$0=="=== guest " m {w=1} w {print} index($0, "=== end " m " ")==1 {w=0}' \
           "$out/lab.first.log" >>"$out/lab.log";;
    esac
  done
  lab_run "${again[@]}"
  lab_rc=$?
fi
t1=$(date +%s)
say "kvm-lab finished in $((t1 - t0)) s (status $lab_rc); raw log $out/lab.log"
# A lab that never came up is a lab that cannot be prepared here, not a failure of the guest.
grep -a -q '=== lab up' "$out/lab.log" "$out/lab.first.log" 2>/dev/null \
  || skip "kvm-lab did not boot (see $out/lab.log)"

# 6. Check every mode.
status=0 not_run=()
for mode in "${modes[@]}"; do
  c="$out/$mode.console.log" g="$out/$mode.guest.log" h="$out/$mode.host.log"
  # The console with the host's wall-clock time on every line, and without it.
  awk -v m="$mode" '$0=="=== guest " m {w=1; next} $0=="=== host " m {w=0} w' "$out/lab.log" >"$c"
  sed -E 's/^\[\+ *[0-9.]+ s\] //' "$c" >"$g"
  host_time() { grep -m1 -E "$1" "$c" | sed -nE 's/^\[\+ *([0-9.]+) s\].*/\1/p'; }
  init_wall=$(host_time 'Run /init as init process')
  vmbus_wall=$(host_time 'hv_vmbus: Vmbus version')
  awk -v m="$mode" '$0=="=== host " m {w=1; next} index($0, "=== end " m " ")==1 {w=0} w' "$out/lab.log" >"$h"
  end=$(grep -m1 "^=== end $mode " "$out/lab.log")
  rc=$(echo "$end" | sed -n 's/.*rc=\([0-9]*\).*/\1/p')
  wall=$(echo "$end" | sed -n 's/.*wall=\([0-9.]*\).*/\1/p')
  problems=()
  if [ -z "$end" ]; then
    # The lab froze in both boots before this mode ended: the lab, not the guest.
    not_run+=("$mode")
    say "NOT RUN $mode: the lab froze in both boots before it finished"
    continue
  fi
  [ "${rc:-x}" = 0 ] || problems+=("synic-vmm exit status ${rc:-none} (0 = guest powered off)")
  grep -qE 'hv_vmbus: Vmbus version:[0-9]+\.[0-9]+' "$g" || problems+=("no 'hv_vmbus: Vmbus version' in the guest log")
  errs=$(grep -iE 'hyper|hv_|vmbus|synic|unchecked msr' "$g" \
    | grep -iE 'error|fail|warn|unable|timed out|timeout|invalid|bug|unchecked msr' \
    | grep -v '^linux-vmbus: |' || true)
  [ -z "$errs" ] || problems+=("Hyper-V/VMBus errors in the guest log: $errs")
  grep -q 'Call Trace' "$g" && problems+=("a kernel backtrace in the guest log")
  for want in 'INITIATE_CONTACT from' 'VERSION_RESPONSE: version [0-9.]+ supported' \
              'REQUESTOFFERS from' 'ALLOFFERS_DELIVERED \(4 offered\)' \
              'OPENCHANNEL_RESULT channel 1: open' 'OPENCHANNEL_RESULT channel 2: open' \
              'OPENCHANNEL_RESULT channel 3: open' 'OPENCHANNEL_RESULT channel 4: open' \
              'CLOSECHANNEL channel 1 from' 'GPADL_TORNDOWN'; do
    grep -qE "vmbus: .*$want" "$h" || problems+=("host exchange log lacks '$want'")
  done
  # The guest's clock events: with the synthetic timers advertised (direct mode), Linux ticks
  # on STIMER0 and cannot unload hv_vmbus (see ./poweroff); otherwise it must unload it, and
  # the host must see UNLOAD and answer it.
  clockevent=$(sed -n 's/^linux-vmbus: clockevent0: //p' "$g" | head -1)
  if grep -q 'linux-vmbus: hv_vmbus stays loaded: STIMER0 drives the tick' "$g"; then
    grep -qiE 'linux-vmbus: \| .*hyper-v stimer0' "$g" \
      || problems+=("the guest says STIMER0 drives the tick but has no 'Hyper-V stimer0' interrupts")
    unload="hv_vmbus kept (tick on STIMER0)"
  else
    for want in 'UNLOAD from' 'UNLOAD_RESPONSE'; do
      grep -qE "vmbus: .*$want" "$h" || problems+=("host exchange log lacks '$want'")
    done
    grep -q "linux-vmbus: hv_vmbus unloaded" "$g" || problems+=("hv_vmbus did not unload at power-off")
    unload="hv_vmbus unloaded (UNLOAD answered)"
  fi
  for svc in heartbeat shutdown timesync kvp; do
    grep -qE "^vmbus: channel [0-9]+ $svc: opened 1x, framework [0-9.]+ service [0-9.]+" "$h" \
      || problems+=("the $svc service did not open and negotiate")
  done
  grep -qE '^vmbus: .* 0 refused' "$h" || problems+=("the host refused or ignored messages")
  hb=$(grep -oE '^vmbus: heartbeats [0-9]+/[0-9]+ answered \(p50 [0-9]+ us, p99 [0-9]+ us' "$h" | head -1)
  hb_ok=$(echo "$hb" | sed -nE 's/.*heartbeats ([0-9]+)\/([0-9]+) .*/\1 \2/p')
  [ -n "$hb" ] && [ "${hb_ok% *}" = "$heartbeats" ] && [ "${hb_ok#* }" = "$heartbeats" ] \
    || problems+=("heartbeats: ${hb:-none reported} (want $heartbeats/$heartbeats)")
  p50=$(echo "$hb" | sed -nE 's/.*p50 ([0-9]+) us.*/\1/p')
  p99=$(echo "$hb" | sed -nE 's/.*p99 ([0-9]+) us.*/\1/p')
  guest_name=$(sed -n 's/^linux-vmbus: hostname //p' "$g" | head -1)
  kvp_name=$(sed -n 's/^vmbus: kvp FullyQualifiedDomainName=//p' "$h" | head -1)
  [ -n "$guest_name" ] && [ "$kvp_name" = "$guest_name" ] \
    || problems+=("KVP host name '${kvp_name}' is not the guest's '${guest_name}'")
  grep -qE '^vmbus: time sample \(service [0-9.]+\) acknowledged' "$h" || problems+=("no time sample acknowledged")
  by_host=$(sed -nE 's/^synic-vmm: guest powered off at the host.s request \(shutdown service, ([0-9.]+) s after it\).*/\1/p' "$h")
  [ -n "$by_host" ] || problems+=("the guest did not power off at the host's request")
  grep -q 'linux-vmbus: orderly power-off requested' "$g" || problems+=("the guest's orderly power-off (/sbin/poweroff) did not run")
  grep -q "linux-vmbus: hv_utils unloaded" "$g" || problems+=("hv_utils did not unload at power-off")
  # The clock source the guest settled on, and how often it read TIME_REF_COUNT (userspace
  # mode: each read an exit, counted by synic-kvm; kernel mode: KVM answers, not counted).
  want_cs=hyperv_clocksource_tsc_page
  [ "$tsc_page" = 0 ] && want_cs=hyperv_clocksource_msr
  clocksource=$(sed -nE 's/^linux-vmbus: clocksource ([^ ]+).*/\1/p' "$g" | head -1)
  [ "$clocksource" = "$want_cs" ] || problems+=("clocksource '${clocksource:-none}', want $want_cs")
  trc=$(sed -nE 's/^synic-vmm: guest .* ([0-9]+) TIME_REF_COUNT reads; reference TSC page: (.*)\)$/\1/p' "$h" | head -1)
  tsc_note=$(sed -nE 's/^synic-vmm: guest .* TIME_REF_COUNT reads; reference TSC page: (.*)\)$/\1/p' "$h" | head -1)
  # The library's page is valid exactly when the lab's own clock source is the TSC (kvm-lab
  # with more than one CPU marks it unstable: then KVM's page and ours say "read the MSR").
  lab_cs=$(sed -n 's/^=== lab clocksource: //p' "$out/lab.log" | tail -1)
  if [ "$mode" = userspace ] && [ "$tsc_page" != 0 ]; then
    case "$lab_cs:$tsc_note" in
      tsc:valid*) ;;
      tsc:*) problems+=("the library's reference TSC page is not valid on a stable TSC: ${tsc_note:-no report}");;
      *:valid*) problems+=("the library's reference TSC page is valid on an unstable TSC (lab clock source ${lab_cs:-?})");;
      *) say "  NOTE $mode: the lab's clock source is ${lab_cs:-?}, not tsc: the page correctly says 'read TIME_REF_COUNT' (${tsc_note:-?}); its validity was NOT checked";;
    esac
  fi
  version=$(grep -oE 'Vmbus version:[0-9.]+' "$g" | head -1)
  at_init=$(sed -n 's/^linux-vmbus: \/init reached at \([0-9.]*\) s uptime.*/\1/p' "$g" | head -1)
  if [ ${#problems[@]} -eq 0 ]; then
    say "PASS $mode: heartbeats $heartbeats/$heartbeats (p50 $p50 us, p99 $p99 us), kvp HostName=$kvp_name, shutdown by host in $by_host s"
    say "  $mode: ${version#Vmbus }; wall clock from VM start: /init at ${init_wall:-?} s, VMBus connected at ${vmbus_wall:-?} s, powered off at ${wall:-?} s (guest uptime at /init ${at_init:-?} s)"
    say "  $mode: clocksource $clocksource, clockevent ${clockevent:-?}; $unload; TIME_REF_COUNT reads handled by synic-kvm: ${trc:-?}; reference TSC page: ${tsc_note:-?}"
  else
    status=1
    say "FAIL $mode:"
    for p in "${problems[@]}"; do say "  - $p"; done
  fi
  grep -E 'hv_vmbus|hv_utils|Hyper-V|hyperv' "$g" | grep -v '^linux-vmbus' | sed "s/^/linux-vmbus: [$mode guest] /" >&2
  grep -E '^vmbus: ' "$h" | sed "s/^/linux-vmbus: [$mode host] /" >&2
  grep -E '^synic-vmm: guest' "$h" | sed "s/^/linux-vmbus: [$mode host] /" >&2
done
if [ $status -eq 0 ] && [ ${#not_run[@]} -gt 0 ]; then
  skip "the lab froze before finishing ${not_run[*]} in both boots (docs/kernel-mode-lab.md, \"Known issue\"): NOT tested in this run"
fi
if [ $status -eq 0 ]; then
  echo "linux-vmbus: ${#modes[@]} passed, 0 failed${retried}"
else
  echo "linux-vmbus: FAILED (logs in $out)"
fi
exit $status
