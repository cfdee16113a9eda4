#!/usr/bin/env bash
# Snapshot benchmark: how fast a sandbox starts from its template, in
# parts, and what N clones of one template cost in memory.
#   - restore: kiln's side of a restore (read the state file, map the
#     memory file, build the VM and devices, write the vCPU state) up to
#     the first guest instruction, from `kiln run -v`'s marks; then the
#     agent's reconnection and the command, and the whole run;
#   - the same run booted (--no-template), for the ratio;
#   - N clones of one template at once (each running `sleep`): RSS and
#     PSS of every kiln (/proc/PID/smaps_rollup), so the guest pages the
#     clones share through the memory file's page cache show.
# Figures only, no pass/fail. Leaves nothing behind (its own cache dir).
#
#   resources/bench-snapshot.sh [RUNS] [CLONES]    defaults 5 and 4
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$KILN_ROOT"

runs=${1:-5}
clones=${2:-4}
need_count RUNS "$runs"
need_count CLONES "$clones"
timeout=${KILN_BENCH_TIMEOUT:-600}
kiln=${KILN:-target/release/kiln}
cargo build --release -q
./resources/guests.sh >/dev/null

bench_workdir bench-snapshot
export KILN_CACHE_DIR=$work/cache

results=$work/results
mkdir "$results"

# One `kiln run -v ... -- true`; its wall time and marks go to $results/NAME.*
run_parts() {
    local name=$1 t0 t1 rc=0
    shift
    t0=$(now)
    timeout "$timeout" "$kiln" run -v "$@" -- true >/dev/null 2>"$work/log" || rc=$?
    t1=$(now)
    if [ "$rc" != 0 ]; then
        echo "$name: exit $rc: $(grep -v 'kiln: [a-z]' "$work/log" | tail -n 1)" >>"$results/failures"
        return
    fi
    echo "$t1 - $t0" | bc -l >>"$results/$name"
    sandbox_marks "$work/log" "$results/$name" "restored=restored from the template .*" \
        "setup=VM set up" "agent=guest agent connected" "ended=command ended"
}

echo "making the template (one boot)" >&2
run_parts first
template=$(find "$KILN_CACHE_DIR/templates" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | head -n 1)
[ -n "$template" ] || die "no template was made: $(tail -n 3 "$work/log")"

for i in $(seq "$runs"); do
    echo "round $i/$runs" >&2
    run_parts template
    run_parts boot --no-template
done

echo "starting $clones clones of the template" >&2
start_clones "$kiln" "$work" "$clones" 60
sleep 2
rss_sum=0
pss_sum=0
clone_rows=""
for i in "${!pids[@]}"; do
    p=${pids[$i]}
    rss=$(rollup_kib "$p" Rss)
    pss=$(rollup_kib "$p" Pss)
    rss_sum=$((rss_sum + rss))
    pss_sum=$((pss_sum + pss))
    clone_rows+="| clone $((i + 1)) | $((rss / 1024)) | $((pss / 1024)) |"$'\n'
done
kill_pids

part() { median <"$results/$1" 2>/dev/null || echo -; }
mem_file=$template/memory
mem_size=$(stat -c %s "$mem_file")
mem_used=$(( $(stat -c %b "$mem_file") * $(stat -c %B "$mem_file") ))

echo
echo "Sandbox from a template ($(date -u +%Y-%m-%d), $(nproc) cores, $runs rounds; seconds since kiln started, median):"
echo
echo "| run | restored (first guest instruction) | VM set up | agent connected | command ended | wall |"
echo "|---|---|---|---|---|---|"
echo "| kiln run -- true, template | $(part template.restored) | $(part template.setup) | $(part template.agent) | $(part template.ended) | $(part template) |"
echo "| kiln run --no-template -- true | - | $(part boot.setup) | $(part boot.agent) | $(part boot.ended) | $(part boot) |"
echo "| the first run (boots, saves the template) | - | $(part first.setup) | $(part first.agent) | $(part first.ended) | $(part first) |"
echo
echo "Memory of $clones clones of one template, each running sleep (MiB; the memory file is $((mem_size >> 20)) MiB, $((mem_used >> 20)) MiB of it written):"
echo
echo "| kiln | RSS | PSS |"
echo "|---|---|---|"
printf '%s' "$clone_rows"
echo "| all | $((rss_sum / 1024)) | $((pss_sum / 1024)) |"
if [ -s "$results/failures" ]; then
    echo
    echo "failures:"
    cat "$results/failures"
fi
