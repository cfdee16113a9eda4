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
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number, not '$runs'"
[ "$(id -u)" = 0 ] || die "needs root (podman, unshare); run with sudo"
boots=$((runs < 3 ? runs : 3))
clones=10
timeout=${KILN_BENCH_TIMEOUT:-600}
kiln=${KILN:-target/release/kiln}
probe_py=resources/lib/vmprobe.py

command -v qemu-system-x86_64 >/dev/null || ./resources/setup-host.sh >/dev/null
cargo build --release -q
agent=$(tests/agent/build.sh 2>/dev/null)
./resources/guests.sh >/dev/null
kernel=build/guest/minimal/vmlinux
initrd=build/guest/initramfs.cpio

work=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
image_tag=localhost/kiln-bench-minimal:$$
pids=()
podman_prepare "$work"
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "${podman_[@]}" rmi -f "$image_tag" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM
# kiln's sandbox templates go here, so the first sandbox run makes one.
export KILN_CACHE_DIR=$work/cache
results=$work/results
mkdir "$results"

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

# probe NAME KEY SCALE VMPROBE-ARGS...: runs vmprobe.py; appends KEY's
# value times SCALE to $results/NAME, or the line to $results/NAME.failed.
probe() {
    local name=$1 key=$2 scale=$3 line v
    shift 3
    line=$(python3 "$probe_py" "$@" 2>&1 | tail -n 1) || true
    v=$(grep -o "\b$key=[0-9.]*" <<<"$line" | cut -d= -f2 || true)
    if [ -n "$v" ]; then
        echo "$v * $scale" | bc -l >>"$results/$name"
    else
        echo "$line" >>"$results/$name.failed"
    fi
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

echo "preparing: snapshots of the waiting test agent, the sandbox template, the podman image" >&2
# The agent waiting on its console, saved by each VMM.
"$kiln" run --memory 128M --kernel "$agent" --cmdline agent.test=wait \
    --api-sock "$work/api.sock" >"$work/agent.out" 2>&1 &
pids+=("$!")
for _ in $(seq 300); do grep -q 'AGENT: wait' "$work/agent.out" && break; sleep 0.1; done
"$kiln" snapshot --api-sock "$work/api.sock" --leave-paused "$work/kiln-snap" >/dev/null 2>&1 ||
    echo "kiln snapshot failed: $(tail -n 1 "$work/agent.out")" >>"$results/restore-kiln.failed"
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
pids=()
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
    probe start-kiln first_s 1000 first "AGENT: start" -- \
        "$kiln" run --memory 128M --kernel "$agent" --cmdline agent.test=selftest
    probe start-qemu first_s 1000 first "AGENT: start" -- \
        "${qemu[@]}" -kernel "$agent" -append agent.test=selftest
    # 3. A snapshot restored to the guest's first answer.
    [ -d "$work/kiln-snap" ] && probe restore-kiln first_s 1000 first --poke "check wait ok" -- \
        "$kiln" run --restore "$work/kiln-snap"
    [ -s "$work/qemu.mig" ] && probe restore-qemu first_s 1000 first --poke "check wait ok" -- \
        "${qemu[@]}" -kernel "$agent" -append agent.test=wait -incoming "exec:cat $work/qemu.mig"
    # 3b. `true` in a fresh sandbox.
    timed sandbox-kiln "$kiln" run -- true
    timed sandbox-podman "${podman_[@]}" run --rm --network=none "$image_tag" true
    timed sandbox-chroot unshare -mpfiun chroot "$work/tree" /bin/true
    # 4. VMM memory: peak RSS minus the guest memory it touched.
    probe mem-kiln overhead_kib 0.0009765625 memory "AGENT: wait" 128 -- \
        "$kiln" run --memory 128M --cpus 1 --kernel "$agent" --cmdline agent.test=wait
    probe mem-qemu overhead_kib 0.0009765625 memory "AGENT: wait" 128 -- \
        "${qemu[@]}" -kernel "$agent" -append agent.test=wait
done

# 2. Boot to init: kiln a few times, QEMU once (it cannot boot stock
# Linux on the nested hosts; the table says how the attempt ended).
for i in $(seq "$boots"); do
    echo "Linux boot $i/$boots" >&2
    probe boot-kiln first_s 1 first --timeout 600 "KILN-INIT:" -- \
        "$kiln" run --memory 128M --kernel "$kernel" --initrd "$initrd" --cmdline "-- true"
done
echo "Linux boot under QEMU (one attempt, at most 90 s)" >&2
probe boot-qemu first_s 1 first --timeout 90 "KILN-INIT:" -- \
    "${qemu[@]}" -no-reboot -kernel "$kernel" -initrd "$initrd" -append "$cmdline -- true"

# 4b. Memory of clones of one template, each running sleep.
echo "starting $clones sandboxes from one template" >&2
for i in $(seq "$clones"); do
    "$kiln" run -v -- sleep 120 >/dev/null 2>"$work/clone$i.log" &
    pids+=("$!")
done
for i in $(seq "$clones"); do
    for _ in $(seq 1200); do
        grep -q 'sandbox: command sent' "$work/clone$i.log" && break
        sleep 0.1
    done
done
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
rss_sum=0 pss_sum=0
for p in "${pids[@]}"; do
    rss_sum=$((rss_sum + $(kib "$p" Rss)))
    pss_sum=$((pss_sum + $(kib "$p" Pss)))
done
# (SIGKILL: kiln would pass a SIGTERM on to each guest's sleep.)
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

# ---- the table ----------------------------------------------------------
med() { if [ -s "$results/$1" ]; then median "${2:-3}" <"$results/$1"; else echo -; fi; }
# cell NAME [DECIMALS]: the median, or why there is none.
cell() {
    if [ -s "$results/$1" ]; then
        med "$1" "${2:-3}"
    elif [ -s "$results/$1.failed" ]; then
        # vmprobe.py's why= (spaces made underscores), else the whole line.
        local why
        why=$(head -n 1 "$results/$1.failed")
        [[ $why == *why=* ]] && why=$(sed 's/.*why=//; s/_/ /g' <<<"$why")
        echo "no result: $(cut -c1-140 <<<"$why")"
    else
        echo "-"
    fi
}
ratio() {
    local a b
    a=$(med "$1") b=$(med "$2")
    if [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] && [ "$(echo "$a > 0" | bc -l)" = 1 ]; then
        printf '%.1fx' "$(echo "$b / $a" | bc -l)"
    else
        echo "-"
    fi
}

echo
echo "kiln beside QEMU microvm and containers ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r);"
echo "KVM: $kvm_kind; $(qemu-system-x86_64 --version | head -n 1); medians of $runs rounds, Linux boots $boots):"
echo
echo "| # | what is measured | kiln | QEMU microvm (KVM) | QEMU / kiln | others |"
echo "|---|---|---|---|---|---|"
echo "| 1 | VMM start to the guest's first console line (test agent, ms) | $(cell start-kiln 1) | $(cell start-qemu 1) | $(ratio start-kiln start-qemu) | |"
echo "| 2 | VMM start to init's first line (minimal Linux 6.1 + initramfs, s) | $(cell boot-kiln 1) | $(cell boot-qemu 1) | $(ratio boot-kiln boot-qemu) | |"
echo "| 3 | snapshot restored to the guest's first answer on its console (test agent, ms) | $(cell restore-kiln 1) | $(cell restore-qemu 1) | $(ratio restore-kiln restore-qemu) | |"
echo "| 3b | \`true\` in a fresh sandbox, end to end (s; kiln from its template) | $(cell sandbox-kiln 2) | no sandbox mode | | podman run --rm: $(cell sandbox-podman 3); unshare+chroot: $(cell sandbox-chroot 3) |"
echo "| 4 | VMM memory overhead: peak RSS minus guest memory touched (1 vCPU, 128 MiB, MiB) | $(cell mem-kiln 1) | $(cell mem-qemu 1) | $(ratio mem-kiln mem-qemu) | |"
echo "| 4b | $clones sandboxes from one template, RSS / PSS summed (MiB) | $((rss_sum / 1024)) / $((pss_sum / 1024)) | no sandbox mode | | |"
echo
echo "Rows 1, 3 and 4 boot the test agent in both VMMs (each with its own minimal machine;"
echo "QEMU: microvm, acpi=off, KVM). Row 3: kiln run --restore of a kiln snapshot vs QEMU -incoming"
echo "from a migration file, both of the agent waiting on its console; the time runs from the"
echo "VMM's start to the agent's answer to a byte sent every 2 ms. Row 2: init's first line on the"
echo "console (QEMU gets kiln's default command line for these hosts). Row 3b: the tree of kiln's"
echo "minimal guest (its initramfs) for podman and chroot. Row 4b: kiln run -- sleep, ${clones} at once."
echo "Row 2 under QEMU: one attempt, killed after 90 s; the cell gives the last console line."
echo "The sandbox template was made by one boot: $(cell template-boot 1) s."
for f in "$results"/*.failed; do
    [ -e "$f" ] || continue
    echo
    echo "failures (${f##*/}):"
    cat "$f"
done
