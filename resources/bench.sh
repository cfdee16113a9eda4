#!/usr/bin/env bash
# kiln beside what a user would pick instead, in one run and one table:
# kiln, QEMU's microvm machine with KVM (Debian's qemu-system-x86) and, for
# the sandbox rows, podman and unshare+chroot. Every pair is measured in
# the same run, the tools interleaved round by round so that they share the
# host's noise; the table gives medians and QEMU's figure divided by
# kiln's. Figures only, never pass/fail.
#
#   sudo resources/bench.sh [RUNS]     RUNS defaults to 5 (Linux boots: at most 3)
#
# Every VMM is measured from outside by resources/lib/vmprobe.py, the same
# way for each: wall time from starting the process to a line on the
# guest's console, and /proc/PID for memory. The guests:
#   - the test agent (tests/agent: a PVH ELF that runs at ring 3, natively
#     even on the nested test hosts), which both kiln and QEMU boot;
#   - our minimal Linux kernel and initramfs (build/guest), whose init
#     prints "KILN-INIT:" first.
# Leaves nothing behind: its work directory (templates included) and the
# podman image are removed at the end.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$KILN_ROOT"

runs=${1:-5}
need_count RUNS "$runs"
[ "$(id -u)" = 0 ] || die "needs root (podman, unshare); run with sudo"
boots=$((runs < 3 ? runs : 3))
clones=10
timeout=${KILN_BENCH_TIMEOUT:-600}
kiln=${KILN:-target/release/kiln}
probe_py=resources/lib/vmprobe.py

command -v qemu-system-x86_64 >/dev/null || ./resources/setup-host.sh >/dev/null
command -v fio >/dev/null ||
    run_logged /tmp/kiln-bench-apt.log apt-get install -y -q --no-install-recommends fio ||
    die "could not install fio"
cargo build --release -q
agent=$(tests/agent/build.sh 2>/dev/null)
./resources/guests.sh >/dev/null
kernel=build/guest/minimal/vmlinux
initrd=build/guest/initramfs.cpio

bench_workdir bench
image_tag=localhost/kiln-bench-minimal:$$
podman_prepare "$work"
bench_cleanup() { "${podman_[@]}" rmi -f "$image_tag" >/dev/null 2>&1 || true; }
# kiln's sandbox templates go here, so the first sandbox run makes one.
export KILN_CACHE_DIR=$work/cache
results=$work/results
mkdir "$results"
truncate -s 64M "$work/disk.img"

# The host's KVM: hardware, or the nested emulating kind of the test hosts.
if [ -d /sys/module/kvm_pvm ]; then
    kvm_kind="nested kvm_pvm (software-assisted: guest ring 0 emulated, ring 3 native)"
elif grep -qE 'vmx|svm' /proc/cpuinfo; then
    kvm_kind="hardware (VMX/SVM)"
else
    kvm_kind="unknown"
fi

qemu=(qemu-system-x86_64 -M microvm,acpi=off -accel kvm -smp 1 -m 128 -nodefaults
    -no-user-config -nographic -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4)

# probe NAME VMPROBE-ARGS...: runs vmprobe.py; appends each KEY=NUMBER it
# prints to $results/NAME.KEY, or, without the key the mode is about
# (first_s, overhead_kib), the line to $results/NAME.failed.
probe() {
    local name=$1 line kv
    shift
    line=$(python3 "$probe_py" "$@" 2>&1 | tail -n 1) || true
    if ! grep -qE '\b(first_s|overhead_kib|api_median_ms)=[0-9]' <<<"$line"; then
        echo "$line" >>"$results/$name.failed"
        return
    fi
    for kv in $(grep -oE '\b[a-z0-9_]+=[0-9.]+' <<<"$line"); do
        echo "${kv#*=}" >>"$results/$name.${kv%%=*}"
    done
}

# timed NAME CMD...: wall seconds of CMD, which must exit 0.
timed() {
    local name=$1 t0 t1 rc=0
    shift
    t0=$(now)
    timeout "$timeout" "$@" >/dev/null 2>"$work/err" || rc=$?
    t1=$(now)
    if [ "$rc" = 0 ]; then
        echo "$t1 - $t0" | bc -l >>"$results/$name"
    else
        echo "exit $rc: $(tail -n 1 "$work/err")" >>"$results/$name.failed"
    fi
}

# agent_keys NAME CMD...: runs a VMM with the test agent and appends each
# KEY=NUMBER of its `AGENT: blk-bench` line to $results/NAME.KEY.
agent_keys() {
    local name=$1 line kv
    shift
    line=$(timeout "$timeout" "$@" 2>"$work/err" </dev/null | grep -a 'AGENT: blk-bench' | tail -n 1) || true
    if [ -z "$line" ]; then
        echo "no blk-bench line: $(tail -n 1 "$work/err")" >>"$results/$name.failed"
        return
    fi
    for kv in $(grep -oE '\b[a-z0-9_]+=[0-9.]+' <<<"$line"); do
        echo "${kv#*=}" >>"$results/$name.${kv%%=*}"
    done
}

# host_blk NAME IMAGE: the agent's blk-bench patterns with fio on IMAGE on
# the host (buffered, as kiln's pread/pwrite; psync at one in flight,
# io_uring deeper), each for a second, into $results/NAME.KEY.
host_blk() {
    local name=$1 img=$2 spec n rw bs qd eng
    for spec in seq_write_mib_s:write:256k:4 seq_read_mib_s:read:256k:4 \
        randread_qd1_iops:randread:4k:1 randwrite_qd1_iops:randwrite:4k:1 \
        randread_deep_iops:randread:4k:16 randwrite_deep_iops:randwrite:4k:16; do
        IFS=: read -r n rw bs qd <<<"$spec"
        eng=psync
        [ "$qd" = 1 ] || eng=io_uring
        fio --name="$n" --filename="$img" --rw="$rw" --bs="$bs" --iodepth="$qd" --ioengine="$eng" \
            --size=64M --runtime=1 --time_based --output-format=json 2>/dev/null |
            python3 -c 'import json, sys
j = json.load(sys.stdin)["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
print(round(d["bw"] / 1024, 2) if sys.argv[1].endswith("mib_s") else round(d["iops"]))' "$n" \
            >>"$results/$name.$n" || echo "fio $n failed" >>"$results/$name.failed"
    done
}

echo "preparing: snapshots of the waiting test agent, the sandbox template, the podman image" >&2
# The agent waiting on its console, saved by each VMM.
"$kiln" run --memory 128M --kernel "$agent" --cmdline agent.test=wait \
    --api-sock "$work/api.sock" >"$work/agent.out" 2>&1 &
pids+=("$!")
for _ in $(seq 300); do grep -q 'AGENT: wait' "$work/agent.out" && break; sleep 0.1; done
"$kiln" snapshot --api-sock "$work/api.sock" --leave-paused "$work/kiln-snap" >/dev/null 2>&1 ||
    echo "kiln snapshot failed: $(tail -n 1 "$work/agent.out")" >>"$results/restore-kiln.failed"
kill_pids
qemu_save=$(python3 "$probe_py" qemu-save "AGENT: wait" "$work/qmp.sock" "$work/qemu.mig" -- \
    "${qemu[@]}" -kernel "$agent" -append agent.test=wait -qmp "unix:$work/qmp.sock,server=on,wait=off")
grep -q 'save_s=[0-9]' <<<"$qemu_save" || echo "QEMU's migration to a file failed: $qemu_save" >>"$results/restore-qemu.failed"
# The sandbox template (one boot), and the same tree for the containers.
timed template-boot "$kiln" run -- true
mkdir "$work/tree"
(cd "$work/tree" && cpio -idm --quiet --no-absolute-filenames <"$KILN_ROOT/$initrd")
tar -C "$work/tree" -c . | "${podman_[@]}" import -q - "$image_tag" >/dev/null
# kiln's default command line here, for QEMU's Linux boot.
cmdline=$("$kiln" run --kernel "$agent" --cmdline agent.test=boottime 2>&1 >/dev/null |
    sed -n 's/.*, cmdline: //p' | sed 's/ virtio_mmio.device=[^ ]*//g; s/ agent.test=boottime$//')

for i in $(seq "$runs"); do
    echo "round $i/$runs" >&2
    # 1. Start to the guest's first console line.
    probe start-kiln first "AGENT: start" -- \
        "$kiln" run --memory 128M --kernel "$agent" --cmdline agent.test=selftest
    probe start-qemu first "AGENT: start" -- \
        "${qemu[@]}" -kernel "$agent" -append agent.test=selftest
    # 3. A snapshot restored to the guest's first answer.
    [ -d "$work/kiln-snap" ] && probe restore-kiln first --poke "check wait ok" -- \
        "$kiln" run --restore "$work/kiln-snap"
    [ -s "$work/qemu.mig" ] && probe restore-qemu first --poke "check wait ok" -- \
        "${qemu[@]}" -kernel "$agent" -append agent.test=wait -incoming "exec:cat $work/qemu.mig"
    # 3b. `true` in a fresh sandbox.
    timed sandbox-kiln "$kiln" run -- true
    timed sandbox-podman "${podman_[@]}" run --rm --network=none "$image_tag" true
    timed sandbox-chroot unshare -mpfiun chroot "$work/tree" /bin/true
    # 4. VMM memory: peak RSS minus the guest memory it touched.
    probe mem-kiln memory "AGENT: wait" 128 -- \
        "$kiln" run --memory 128M --cpus 1 --kernel "$agent" --cmdline agent.test=wait
    probe mem-qemu memory "AGENT: wait" 128 -- \
        "${qemu[@]}" -kernel "$agent" -append agent.test=wait
    # 5. virtio-blk from inside the guest, and the same on the host file.
    agent_keys blk-kiln "$kiln" run --memory 128M --kernel "$agent" --cmdline agent.test=blk-bench \
        --disk "$work/disk.img"
    agent_keys blk-qemu "${qemu[@]}" -kernel "$agent" -append agent.test=blk-bench \
        -global virtio-mmio.force-legacy=false -drive "id=d,file=$work/disk.img,format=raw,if=none" \
        -device virtio-blk-device,drive=d
    host_blk blk-host "$work/disk.img"
done

# 6. virtio-net: tests/bench_net.rs runs both VMMs in turns in a namespace.
echo "virtio-net, $runs rounds" >&2
KILN_BENCH_ROUNDS=$runs cargo test --release -q --test bench_net -- --ignored --nocapture \
    >"$work/net.out" 2>&1 || true
while read -r _ vmm rest; do
    vmm=${vmm#vmm=}
    if [[ $rest == failed=* ]]; then
        echo "${rest#failed=}" >>"$results/net-$vmm.failed"
        continue
    fi
    for kv in $rest; do echo "${kv#*=}" >>"$results/net-$vmm.${kv%%=*}"; done
done < <(grep '^BENCH: ' "$work/net.out")
[ -n "$(grep '^BENCH: ' "$work/net.out")" ] || echo "tests/bench_net.rs: $(tail -n 1 "$work/net.out")" >>"$results/net-kiln.failed"

# 7. The API's answer time while the guest keeps its disk busy (kiln).
echo "API under disk load, $boots runs" >&2
truncate -s 256M "$work/load.img"
for i in $(seq "$boots"); do
    rm -f "$work/load.sock"
    probe load-kiln api-load "$work/load.sock" --timeout 300 -- \
        "$kiln" run --memory 128M --kernel "$agent" --disk "$work/load.img" --api-sock "$work/load.sock" \
        --cmdline "agent.test=blk-bench,blk-flush,blk-bench,blk-flush,blk-bench agent.bench_requests=4000"
done

# 2. Boot to init: kiln a few times, QEMU once (it cannot boot stock
# Linux on the nested hosts; the table says how the attempt ended).
for i in $(seq "$boots"); do
    echo "Linux boot $i/$boots" >&2
    probe boot-kiln first --timeout 600 "KILN-INIT:" -- \
        "$kiln" run --memory 128M --kernel "$kernel" --initrd "$initrd" --cmdline "-- true"
done
echo "Linux boot under QEMU (one attempt, at most 90 s)" >&2
probe boot-qemu first --timeout 90 "KILN-INIT:" -- \
    "${qemu[@]}" -no-reboot -kernel "$kernel" -initrd "$initrd" -append "$cmdline -- true"

# 4b. Memory of clones of one template, each running sleep.
echo "starting $clones sandboxes from one template" >&2
start_clones "$kiln" "$work" "$clones" 120
rss_sum=0 pss_sum=0
for p in "${pids[@]}"; do
    rss_sum=$((rss_sum + $(rollup_kib "$p" Rss)))
    pss_sum=$((pss_sum + $(rollup_kib "$p" Pss)))
done
kill_pids

# ---- the table ----------------------------------------------------------
# med FILE [DECIMALS] [SCALE]: the median of FILE's numbers times SCALE.
med() {
    if [ -s "$results/$1" ]; then
        awk -v k="${3:-1}" '{print $1 * k}' "$results/$1" | median "${2:-3}"
    else
        echo -
    fi
}
# cell NAME.KEY [DECIMALS] [SCALE]: the median, or why there is none.
cell() {
    local why
    if [ -s "$results/$1" ]; then
        med "$@"
    elif [ -s "$results/${1%%.*}.failed" ]; then
        # vmprobe.py's why= (spaces made underscores), else the whole line.
        why=$(head -n 1 "$results/${1%%.*}.failed")
        [[ $why == *why=* ]] && why=$(sed 's/.*why=//; s/_/ /g' <<<"$why")
        echo "no result: $(cut -c1-140 <<<"$why")"
    else
        echo "-"
    fi
}
# ratio A B: B's median divided by A's (for times and sizes: above 1,
# kiln is better); ratio A B rate: A's divided by B's (for rates).
ratio() {
    local a b
    a=$(med "$1") b=$(med "$2")
    [ "${3:-}" = rate ] && { local t=$a; a=$b; b=$t; }
    if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] && [ "$(echo "$a > 0" | bc -l)" = 1 ]; then
        printf '%.1fx' "$(echo "$b / $a" | bc -l)"
    else
        echo "-"
    fi
}
ms=1000 mib=0.0009765625

echo
echo "kiln beside QEMU microvm and containers ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r);"
echo "KVM: $kvm_kind; $(qemu-system-x86_64 --version | head -n 1); medians of $runs rounds, Linux boots $boots):"
echo
echo "| # | what is measured | kiln | QEMU microvm (KVM) | kiln's lead (>1: kiln better) | others |"
echo "|---|---|---|---|---|---|"
echo "| 1 | VMM start to the guest's first console line (test agent, ms) | $(cell start-kiln.first_s 1 $ms) | $(cell start-qemu.first_s 1 $ms) | $(ratio start-kiln.first_s start-qemu.first_s) | |"
echo "| 2 | VMM start to init's first line (minimal Linux 6.1 + initramfs, s) | $(cell boot-kiln.first_s 1) | $(cell boot-qemu.first_s 1) | $(ratio boot-kiln.first_s boot-qemu.first_s) | |"
echo "| 3 | snapshot restored to the guest's first answer on its console (test agent, ms) | $(cell restore-kiln.first_s 1 $ms) | $(cell restore-qemu.first_s 1 $ms) | $(ratio restore-kiln.first_s restore-qemu.first_s) | |"
echo "| 3b | \`true\` in a fresh sandbox, end to end (s; kiln from its template) | $(cell sandbox-kiln 2) | no sandbox mode | | podman run --rm: $(cell sandbox-podman 3); unshare+chroot: $(cell sandbox-chroot 3) |"
echo "| 4 | VMM memory overhead: peak RSS minus guest memory touched (1 vCPU, 128 MiB, MiB) | $(cell mem-kiln.overhead_kib 1 $mib) | $(cell mem-qemu.overhead_kib 1 $mib) | $(ratio mem-kiln.overhead_kib mem-qemu.overhead_kib) | |"
echo "| 4a | of row 4, the VMM's own anonymous memory (heap, stacks, buffers; the rest is its binary's and libraries' file pages, which every process running them shares; MiB) | $(cell mem-kiln.anon_kib 2 $mib) | $(cell mem-qemu.anon_kib 2 $mib) | $(ratio mem-kiln.anon_kib mem-qemu.anon_kib) | |"
echo "| 4b | $clones sandboxes from one template, RSS / PSS summed (MiB) | $((rss_sum / 1024)) / $((pss_sum / 1024)) | no sandbox mode | | |"
for r in "seq_write_mib_s|5a|virtio-blk sequential write, 256 KiB requests, 4 in flight (MiB/s)" \
    "seq_read_mib_s|5b|virtio-blk sequential read, 256 KiB requests, 4 in flight (MiB/s)" \
    "randread_qd1_iops|5c|virtio-blk 4 KiB random reads, 1 in flight (IOPS)" \
    "randwrite_qd1_iops|5d|virtio-blk 4 KiB random writes, 1 in flight (IOPS)" \
    "randread_deep_iops|5e|virtio-blk 4 KiB random reads, 16 in flight (IOPS)" \
    "randwrite_deep_iops|5f|virtio-blk 4 KiB random writes, 16 in flight (IOPS)"; do
    IFS='|' read -r key num what <<<"$r"
    echo "| $num | $what | $(cell "blk-kiln.$key" 0) | $(cell "blk-qemu.$key" 0) | $(ratio "blk-kiln.$key" "blk-qemu.$key" rate) | host file (fio): $(cell "blk-host.$key" 0); kiln / host $(ratio "blk-kiln.$key" "blk-host.$key" rate | sed 's/x$//') |"
done
echo "| 6a | virtio-net UDP throughput guest to host, tap in a namespace (MiB/s) | $(cell net-kiln.tx_mib_s 1) | $(cell net-qemu.tx_mib_s 1) | $(ratio net-kiln.tx_mib_s net-qemu.tx_mib_s rate) | |"
echo "| 6b | virtio-net UDP throughput host to guest (MiB/s) | $(cell net-kiln.rx_mib_s 1) | $(cell net-qemu.rx_mib_s 1) | $(ratio net-kiln.rx_mib_s net-qemu.rx_mib_s rate) | |"
echo "| 6c | virtio-net request/response: ICMP echo with the host kernel, median (us) | $(cell net-kiln.rtt_us 0) | $(cell net-qemu.rtt_us 0) | $(ratio net-kiln.rtt_us net-qemu.rtt_us) | |"
echo "| 7 | API \`GET /\` answer while the guest keeps its disk busy: median / p99 / max (ms) | $(cell load-kiln.api_median_ms 2) / $(cell load-kiln.api_p99_ms 1) / $(cell load-kiln.api_max_ms 1) | not measured | | |"
echo
echo "Rows 1, 3 and 4 boot the test agent in both VMMs (each with its own minimal machine;"
echo "QEMU: microvm, acpi=off, KVM). Row 3: kiln run --restore of a kiln snapshot vs QEMU -incoming"
echo "from a migration file, both of the agent waiting on its console; the time runs from the"
echo "VMM's start to the agent's answer to a byte sent every 2 ms. Row 2: init's first line on the"
echo "console (QEMU gets kiln's default command line for these hosts). Row 3b: the tree of kiln's"
echo "minimal guest (its initramfs) for podman and chroot. Row 4b: kiln run -- sleep, ${clones} at once."
echo "Rows 5: the test agent's blk-bench (ring 3, through virtio-drivers) on a 64 MiB image file,"
echo "2000 random requests; kiln's and QEMU's default caching (the host's page cache); fio on the same file,"
echo "1 s per pattern (its own overhead included: a ceiling for the page cache, not a hard limit)."
echo "Rows 6: the agent's net-bulk (16 MiB each way, every datagram checked, lost ones sent again) and"
echo "net-ping (50 echoes) against the host in a namespace (tests/bench_net.rs); the guest side runs at ring 3."
echo "Row 7: GET / over --api-sock in a loop while the agent runs blk-bench and blk-flush on a 256 MiB"
echo "image (each disk has its own thread; before that, a FLUSH held the API up to 0.6 s here)."
echo "Row 2 under QEMU: one attempt, killed after 90 s; the cell gives the last console line."
echo "The sandbox template was made by one boot: $(cell template-boot 1) s."
for f in "$results"/*.failed; do
    [ -e "$f" ] || continue
    echo
    echo "failures (${f##*/}):"
    cat "$f"
done
