#!/usr/bin/env bash
# What teaching mode costs. Three kiln builds/settings, the same workloads:
#   off-build   built without the `trace` feature (the branches compiled out)
#   off         the default build, no --trace (what every user runs)
#   on          the default build with --trace-out (every exit recorded)
# Workloads: the bare-metal payload's boot (payload=hello, ~160 exits), its
# 100000 unclaimed-port reads (payload=exits: one exit round trip each), and
# the ring-3 test agent's virtio-blk flush check (blk-flush, 1 MiB disk).
# Prints each run's total time (kiln's "VM stopped ... after"; the three
# settings take turns) and the medians, and the time per exit derived from payload=exits. Figures only,
# no pass/fail: these hosts are noisy.
#
#   resources/bench-trace.sh [RUNS]     (RUNS defaults to 5)
set -euo pipefail
cd "$(dirname "$0")/.."
. resources/lib/common.sh
runs=${1:-5}
timeout=${KILN_BENCH_TIMEOUT:-300}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT


echo "building: default features, and --no-default-features into target/bench-notrace"
cargo build --release -q
CARGO_TARGET_DIR=target/bench-notrace cargo build --release -q --no-default-features
with=target/release/kiln
without=target/bench-notrace/release/kiln

cc -c tests/payload/payload.S -o "$work/payload.o"
ld -T tests/payload/payload.ld -o "$work/payload.elf" "$work/payload.o"
agent=$(tests/agent/build.sh | tail -n 1)
truncate -s 1M "$work/disk.img"

# run BIN WORKLOAD EXTRA...: prints kiln's total run time in seconds.
run() {
    local bin=$1 workload=$2
    shift 2
    local args
    case $workload in
        hello | exits) args=(--kernel "$work/payload.elf" --cmdline "payload=$workload") ;;
        agent) args=(--kernel "$agent" --cmdline "agent.test=blk-flush" --disk "$work/disk.img") ;;
    esac
    timeout "$timeout" "$bin" run "${args[@]}" --console none "$@" </dev/null 2>"$work/err" >/dev/null || true
    sed -n 's/.*VM stopped: .* after \([0-9.]*\) s.*/\1/p' "$work/err" | tail -n 1
}

# Settings take turns run by run, so the host's drift hits each alike.
declare -A med times
for workload in hello exits agent; do
    for _ in $(seq "$runs"); do
        for setting in off-build off on; do
            case $setting in
                off-build) t=$(run "$without" "$workload") ;;
                off) t=$(run "$with" "$workload") ;;
                on) t=$(run "$with" "$workload" --trace-out "$work/trace.json") ;;
            esac
            [ -n "$t" ] && times[$workload,$setting]+="$t "
        done
    done
    for setting in off-build off on; do
        m=$(printf '%s\n' ${times[$workload,$setting]} | median 4)
        med[$workload,$setting]=$m
        printf '%-6s %-10s runs: %s median %s s\n' "$workload" "$setting" "${times[$workload,$setting]}" "$m"
    done
done

echo
echo "medians (s)        off-build      off       on   off/off-build   on/off"
for workload in hello exits agent; do
    a=${med[$workload,off-build]} b=${med[$workload,off]} c=${med[$workload,on]}
    awk -v w="$workload" -v a="$a" -v b="$b" -v c="$c" \
        'BEGIN {printf "%-16s %9.4f %9.4f %8.4f %14.3f %8.3f\n", w, a, b, c, b/a, c/b}'
done
# payload=exits minus payload=hello: 100000 exits' worth of time.
for setting in off-build off on; do
    awk -v s="$setting" -v e="${med[exits,$setting]}" -v h="${med[hello,$setting]}" \
        'BEGIN {printf "per exit (%s): %.2f us\n", s, (e - h) * 1e6 / 100000}'
done
