# Sourced by the kvm-lab CI scripts (ci/kvm-lab/run.sh, ci/linux-vmbus/run.sh) after they set
# `root` (the repository) and `name` (their log prefix): finds kvm-lab ($KVM_LAB, or
# shared/tools/kvm-lab/kvm-lab beside the repository or under /work) into `kvmlab`, defines
# say/skip/fail, and skips (exit 77, said loudly) without kvm-lab or /dev/kvm.
SKIP=77
kvmlab=${KVM_LAB:-}
for c in "$root/../shared/tools/kvm-lab/kvm-lab" /work/shared/tools/kvm-lab/kvm-lab; do
  [ -z "$kvmlab" ] && [ -x "$c" ] && kvmlab=$c
done

say() { echo "$name: $*" >&2; }
# skip REASON [WHAT-WAS-NOT-TESTED]
skip() {
  echo "$name: ================================================================" >&2
  echo "$name: SKIPPED: $1" >&2
  [ -n "${2:-}" ] && echo "$name: $2" >&2
  echo "$name: ================================================================" >&2
  exit $SKIP
}
fail() { say "FAIL: $*"; exit 1; }

[ -n "$kvmlab" ] || skip "kvm-lab not found (shared/tools/kvm-lab/kvm-lab beside the repository)"
[ -e /dev/kvm ] || skip "no /dev/kvm on this machine: kvm-lab needs it"
