#!/usr/bin/env bash
# Command-line switches side by side (issue 17): boots KERNEL with our
# initramfs running `true` once per variant per round, the variants in
# turn (so a noisy minute hits them all alike), and prints each variant's
# median wall time until init's first output (the boot-timer write) and
# its ratio to the first variant. Figures only, no pass/fail.
#
#   resources/bench-cmdline.sh KERNEL ROUNDS LABEL=SWITCHES [LABEL=SWITCHES...]
#
# SWITCHES go to --cmdline (appended to kiln's defaults; "" for none), e.g.
#   resources/bench-cmdline.sh build/guest/generic/vmlinux 3 \
#       default= trust_cpu=random.trust_cpu=on
# The "generic" kernel (not tuned for kiln): resources/minimal-kernel.sh generic.
# KILN_BENCH_ARGS adds kiln arguments to every run (e.g. "--cpus 2").
set -euo pipefail
cd "$(dirname "$0")/.."
. resources/lib/common.sh
[ $# -ge 3 ] || die "usage: $0 KERNEL ROUNDS LABEL=SWITCHES..."
kernel=$1 rounds=$2
shift 2
need_count ROUNDS "$rounds"
[ -f "$kernel" ] || die "no kernel $kernel"
kiln=${KILN:-target/release/kiln}
[ -x "$kiln" ] || cargo build --release -q
initrd=build/guest/initramfs.cpio
[ -f "$initrd" ] || die "no $initrd: run resources/guests.sh first"
timeout=${KILN_BENCH_TIMEOUT:-900}
read -r -a extra <<<"${KILN_BENCH_ARGS:-}"
bench_workdir cmdline

labels=() switches=()
for v in "$@"; do
    [[ $v == *=* ]] || die "variant '$v' is not LABEL=SWITCHES"
    labels+=("${v%%=*}")
    switches+=("${v#*=}")
done

echo "kernel: $kernel ($(cat "$(dirname "$kernel")/version" 2>/dev/null || echo "version unknown"))  rounds: $rounds  kiln args: ${extra[*]:-none}  host: $(uname -r), $(nproc) CPUs"
for r in $(seq "$rounds"); do
    for i in "${!labels[@]}"; do
        log=$work/run.log
        boot_once "$log" "${switches[$i]} -- true" "${extra[@]}"
        printf 'round %d %-12s init output at %8s ms, init exit %s\n' "$r" "${labels[$i]}" "${boot_ms:--}" "${init_exit:--}"
        [ -n "$boot_ms" ] && echo "$boot_ms" >>"$work/${i}.ms"
        [ -n "$boot_ms" ] || tail -n 5 "$log.out" "$log" | sed 's/^/    /'
    done
done
echo
printf '%-12s %12s %8s %6s  %s\n' variant "median ms" ratio runs switches
base=$(median 0 <"$work/0.ms" 2>/dev/null || echo -)
for i in "${!labels[@]}"; do
    m=$( [ -f "$work/$i.ms" ] && median 0 <"$work/$i.ms" || echo -)
    n=$( [ -f "$work/$i.ms" ] && wc -l <"$work/$i.ms" || echo 0)
    ratio=-
    [[ $m != - && $base != - ]] && ratio=$(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.2f", a / b}')
    printf '%-12s %12s %8s %6s  %s\n' "${labels[$i]}" "$m" "$ratio" "$n/$rounds" "${switches[$i]:-(kiln defaults)}"
done
