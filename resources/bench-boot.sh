#!/usr/bin/env bash
# Boot-time benchmark: boots a kernel N times with our initramfs running
# `true`, and prints per run the wall time until init's first output (the
# boot-timer write), the total run time and the host-repair counters, then
# the medians. Figures only, no pass/fail: these hosts are noisy.
#
#   resources/bench-boot.sh [KERNEL] [RUNS] [-- extra kiln args]
#   KERNEL defaults to build/guest/minimal/vmlinux, RUNS to 5.
set -euo pipefail
cd "$(dirname "$0")/.."
. resources/lib/common.sh
kernel=${1:-build/guest/minimal/vmlinux}
runs=${2:-5}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = -- ] && shift
kiln=${KILN:-target/release/kiln}
[ -x "$kiln" ] || cargo build --release -q
initrd=build/guest/initramfs.cpio
timeout=${KILN_BENCH_TIMEOUT:-1200}


boots_ms=() total_s=()
echo "kernel: $kernel  runs: $runs  extra: $*"
for i in $(seq "$runs"); do
    log=$(mktemp)
    boot_once "$log" "-- true" "$@"
    t=$(sed -n 's/.*VM stopped: .* after \([0-9.]*\) s.*/\1/p' "$log" | tail -n 1)
    r=$(sed -n 's/.*host repairs: //p' "$log" | tr '\n' ' ')
    printf 'run %d: init output at %s ms, total %s s, init exit %s; repairs: %s\n' \
        "$i" "${boot_ms:--}" "${t:--}" "${init_exit:--}" "${r:-none}"
    [ -n "$boot_ms" ] && boots_ms+=("$boot_ms")
    [ -n "$t" ] && total_s+=("$t")
    rm -f "$log" "$log.out"
done
echo "median: init output at $(printf '%s\n' "${boots_ms[@]}" | median) ms, total $(printf '%s\n' "${total_s[@]}" | median) s (${#boots_ms[@]}/$runs runs reached init)"
