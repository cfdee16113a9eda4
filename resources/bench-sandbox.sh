#!/usr/bin/env bash
# Sandbox benchmark: `kiln run -- true` end to end and in parts, beside
# what a user would pick instead, all in one run on one Debian 12 tree:
#   - kiln on the default minimal guest, and on the Debian root image;
#   - podman run --rm of that tree (podman import; runc, cgroupfs and no
#     default ulimits, the settings that work on the nested test hosts);
#   - unshare + chroot into the tree (namespaces, no isolation of the kernel);
#   - QEMU microvm with KVM booting the minimal kernel and initramfs (one
#     attempt; it reports how that ended).
# Rounds interleave the tools so that they share the host's noise; the
# table gives medians. Figures only, no pass/fail.
#
#   sudo resources/bench-sandbox.sh [RUNS]      RUNS defaults to 5
#
# Installs podman and runc if missing. Leaves nothing behind: the tree,
# the podman image and its storage changes are removed at the end.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$KILN_ROOT"

runs=${1:-5}
need_count RUNS "$runs"
[ "$(id -u)" = 0 ] || die "needs root (podman import, unshare, mkfs of the Debian image); run with sudo"
timeout=${KILN_BENCH_TIMEOUT:-600}

kiln=${KILN:-target/release/kiln}
cargo build --release -q
./resources/guests.sh >/dev/null

bench_workdir bench-sandbox
image_tag=localhost/kiln-bench-debian:$$
podman_prepare "$work"
bench_cleanup() { "${podman_[@]}" rmi -f "$image_tag" >/dev/null 2>&1 || true; }

echo "preparing: the Debian image and its tree, the podman image" >&2
image=$work/debian-root.ext4
./resources/debian-root.sh -o "$image" --tree "$work/root" >/dev/null
tar -C "$work/root" -c . | "${podman_[@]}" import -q - "$image_tag" >/dev/null


# One timed run of a command that must print "ok" and exit 0; appends the
# wall time to $results/NAME, or notes the failure.
results=$work/results
mkdir "$results"
timed() {
    local name=$1 t0 t1 out rc=0
    shift
    t0=$(now)
    out=$(timeout "$timeout" "$@" 2>"$work/err") || rc=$?
    t1=$(now)
    if [ "$rc" = 0 ] && [ "$out" = ok ]; then
        echo "$t1 - $t0" | bc -l >>"$results/$name"
    else
        echo "$name: exit $rc, output '$out': $(tail -n 1 "$work/err")" >>"$results/failures"
    fi
}

# kiln with -v: the parts of the run from its log, in seconds since start.
kiln_parts() {
    local name=$1 t0 t1 rc=0
    shift
    t0=$(now)
    timeout "$timeout" "$kiln" run -v "$@" -- sh -c 'echo ok' >"$work/out" 2>"$work/log" || rc=$?
    t1=$(now)
    if [ "$rc" != 0 ] || [ "$(cat "$work/out")" != ok ]; then
        echo "$name: exit $rc: $(grep -v ' INFO \|info:' "$work/log" | tail -n 1)" >>"$results/failures"
        return
    fi
    echo "$t1 - $t0" | bc -l >>"$results/$name"
    sandbox_marks "$work/log" "$results/$name" "setup=VM set up" \
        "agent=guest agent connected" "ended=command ended" "gone=VM gone"
}

for i in $(seq "$runs"); do
    echo "round $i/$runs" >&2
    kiln_parts kiln-minimal
    kiln_parts kiln-debian --rootfs "$image"
    timed podman "${podman_[@]}" run --rm --network=none "$image_tag" sh -c 'echo ok'
    timed chroot unshare -mpfiun chroot "$work/root" sh -c 'echo ok'
done

# QEMU microvm, once: the same kernel and initramfs, its init running
# `true` (the -- true on the command line) and powering off.
qemu_result="not tried (qemu-system-x86_64 missing)"
if command -v qemu-system-x86_64 >/dev/null; then
    t0=$(now)
    rc=0
    timeout 120 qemu-system-x86_64 -M microvm,acpi=off -enable-kvm -cpu host -m 256M -smp 1 \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
        -kernel build/guest/minimal/vmlinux -initrd build/guest/initramfs.cpio \
        -append "console=ttyS0 reboot=t panic=-1 -- true" </dev/null >"$work/qemu.out" 2>&1 || rc=$?
    t1=$(now)
    secs=$(printf '%.1f' "$(echo "$t1 - $t0" | bc -l)")
    if grep -q '^KILN-EXIT: 0' "$work/qemu.out"; then
        qemu_result="ran true in $secs s"
    else
        last=$(tr -d '\r' <"$work/qemu.out" | grep -v '^\s*$' | tail -n 1 | cut -c1-160)
        qemu_result="did not run the command (exit $rc after $secs s; last output: ${last:-none})"
    fi
fi

row() {
    local name=$1 what=$2 n
    n=$(cat "$results/$name" 2>/dev/null | wc -l)
    printf '| %s | %s | %s |\n' "$what" "$(median <"$results/$name" 2>/dev/null || echo -)" "$n/$runs"
}
part() { median <"$results/$1" 2>/dev/null || echo -; }

echo
echo "Sandbox start-up, \`true\` end to end ($(date -u +%Y-%m-%d), $(nproc) cores, $runs rounds; seconds, median):"
echo
echo "| what | wall s | runs ok |"
echo "|---|---|---|"
row kiln-minimal "kiln run -- true (minimal guest)"
row kiln-debian "kiln run --rootfs debian-root.ext4 -- true"
row podman "podman run --rm (runc) on the same tree"
row chroot "unshare -mpfiun chroot on the same tree"
echo "| QEMU microvm, KVM, minimal kernel | $qemu_result | |"
echo
echo "kiln's parts (seconds since kiln started, median):"
echo
echo "| guest | VMM set up | agent connected | command ended | VM gone | wall |"
echo "|---|---|---|---|---|---|"
for g in kiln-minimal kiln-debian; do
    echo "| ${g#kiln-} | $(part $g.setup) | $(part $g.agent) | $(part $g.ended) | $(part $g.gone) | $(part $g) |"
done
if [ -s "$results/failures" ]; then
    echo
    echo "failures:"
    cat "$results/failures"
fi
