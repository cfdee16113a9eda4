# shellcheck shell=bash
# Helpers shared by the scripts in resources/. Source it; don't run it.
#
# Environment:
#   KILN_CACHE_DIR  cache for downloaded .debs, kernel sources and built
#                   kernels (default /var/cache/kiln). Never required to exist.
#   KILN_BUILD_DIR  output directory (default <repo>/build).
#   KILN_VERBOSE=1  show the output of long commands instead of hiding it.

KILN_RESOURCES=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN_ROOT=$(cd "$KILN_RESOURCES/.." && pwd)
KILN_BUILD_DIR=${KILN_BUILD_DIR:-$KILN_ROOT/build}
KILN_CACHE_DIR=${KILN_CACHE_DIR:-/var/cache/kiln}
export DEBIAN_FRONTEND=noninteractive

die() {
    echo "${0##*/}: error: $*" >&2
    exit 1
}

# run_logged LOG CMD...: run CMD with its output appended to LOG. On failure
# print the command and the end of LOG, and return CMD's status.
run_logged() {
    local log=$1 rc=0
    shift
    mkdir -p "$(dirname "$log")"
    if [ "${KILN_VERBOSE:-0}" = 1 ]; then
        "$@" 2>&1 | tee -a "$log"
        rc=${PIPESTATUS[0]}
    else
        "$@" >>"$log" 2>&1 || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        {
            echo "${0##*/}: command failed (exit $rc): $*"
            echo "---- last 60 lines of $log ----"
            tail -n 60 "$log"
            echo "----"
        } >&2
    fi
    return "$rc"
}

# ensure_host: install the host packages (fast no-op when all are present).
ensure_host() {
    "$KILN_RESOURCES/setup-host.sh" >/dev/null
}

# apt_update_once: `apt-get update`, at most once per script run.
_kiln_apt_updated=0
apt_update_once() {
    [ "$_kiln_apt_updated" = 0 ] || return 1
    _kiln_apt_updated=1
    run_logged "$(mktemp /tmp/kiln-apt-update.XXXXXX.log)" apt-get update -q ||
        die "apt-get update failed"
}

# apt_candidate PKG: print the candidate version of PKG, running
# `apt-get update` once if apt does not know the package yet.
apt_candidate() {
    local pkg=$1 ver
    while :; do
        ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
        if [ -n "$ver" ] && [ "$ver" != "(none)" ]; then
            echo "$ver"
            return
        fi
        apt_update_once || die "apt knows no package named $pkg"
    done
}

# fetch_deb PKG VERSION: print the path of PKG_VERSION's .deb in the cache,
# downloading it with `apt-get download` if it is not there yet.
fetch_deb() {
    local pkg=$1 ver=$2 dir="$KILN_CACHE_DIR/debs" tmp deb log
    mkdir -p "$dir"
    deb="$dir/${pkg}_${ver//:/%3a}.deb"
    if [ -s "$deb" ] && dpkg-deb --info "$deb" >/dev/null 2>&1; then
        echo "$deb"
        return
    fi
    tmp=$(mktemp -d "$dir/.download.XXXXXX")
    log="$tmp/apt.log"
    # The _apt sandbox user may not be able to write into $tmp; apt then
    # downloads as root and warns, which is fine.
    if ! (cd "$tmp" && run_logged "$log" apt-get download -q "$pkg=$ver"); then
        # The lists may be stale (version gone from the mirror): refresh once.
        (cd "$tmp" && run_logged "$log" apt-get update -q &&
            run_logged "$log" apt-get download -q "$pkg=$ver") ||
            { rm -rf "$tmp"; die "could not download $pkg=$ver"; }
    fi
    set -- "$tmp"/*.deb
    [ -f "$1" ] || { rm -rf "$tmp"; die "apt-get download $pkg=$ver produced no .deb"; }
    mv -f "$1" "$deb"
    rm -rf "$tmp"
    echo "$deb"
}

# with_lock NAME: take an exclusive lock (held until the script exits) so
# two concurrent runs don't build the same thing into the same place.
with_lock() {
    local lockdir="$KILN_CACHE_DIR/locks"
    mkdir -p "$lockdir"
    exec {_kiln_lock_fd}>"$lockdir/$1.lock"
    flock "$_kiln_lock_fd"
}

# install_file SRC DST: copy SRC to DST atomically, unless identical.
install_file() {
    local src=$1 dst=$2
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        return
    fi
    mkdir -p "$(dirname "$dst")"
    cp -f "$src" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
}

# For the benchmarks (bench-*.sh).
# median [DECIMALS]: the median of the numbers on stdin ("-" for none),
# with DECIMALS (default 3) decimals.
median() {
    sort -g | awk -v d="${1:-3}" '{a[NR]=$1} END {
        if (NR == 0) print "-";
        else printf "%.*f\n", d, (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2 }'
}

# boot_once LOG CMDLINE [KILN ARGS...]: boots $kernel with $initrd under
# $kiln (-v, timeout $timeout, the console to LOG.out, kiln's log to LOG),
# init running what CMDLINE passes it; then sets `boot_ms` (init's first
# output, from the boot timer) and `init_exit` (KILN-EXIT), empty when
# missing.
boot_once() {
    local log=$1 cmdline=$2
    shift 2
    timeout "$timeout" "$kiln" run --kernel "$kernel" --initrd "$initrd" --cmdline "$cmdline" -v "$@" \
        </dev/null >"$log.out" 2>"$log" || true
    boot_ms=$(sed -n 's/.*boot-timer: guest boot time \([0-9.]*\) ms wall.*/\1/p' "$log" | head -n 1)
    init_exit=$(sed -n 's/^KILN-EXIT: //p' "$log.out" | tr -d '\r')
}

# now: the time in seconds, with nanoseconds.
now() { date +%s.%N; }

# sandbox_marks LOG PREFIX KEY=TEXT...: for each KEY=TEXT, the seconds of
# kiln's "sandbox: TEXT at N s" line in LOG (TEXT is a sed pattern),
# appended to the file PREFIX.KEY.
sandbox_marks() {
    local log=$1 prefix=$2 kv
    shift 2
    for kv in "$@"; do
        sed -n "s/.*sandbox: ${kv#*=} at \([0-9.]*\) s.*/\1/p" "$log" >>"$prefix.${kv%%=*}"
    done
}

# podman_prepare WORK: install podman and runc if missing and set the
# array `podman_` to podman with the settings it needs on the nested test
# hosts (../shared/PLATFORM.md): runc (crun refuses the hybrid cgroup
# tree), cgroupfs, and a containers.conf in WORK without default ulimits.
podman_prepare() {
    local p
    for p in podman runc; do
        dpkg -s "$p" >/dev/null 2>&1 ||
            run_logged /tmp/kiln-bench-apt.log apt-get install -y -q --no-install-recommends podman runc ||
            die "could not install podman and runc"
    done
    printf '[containers]\ndefault_ulimits = []\n' >"$1/containers.conf"
    podman_=(env "CONTAINERS_CONF=$1/containers.conf" podman --runtime runc --cgroup-manager cgroupfs)
}

# need_count NAME VALUE: dies unless VALUE is a positive whole number.
need_count() {
    [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive number, not '$2'"
}

# bench_workdir NAME: sets `work` to a new directory /var/tmp/kiln-NAME.*,
# `pids` to an empty list, and traps so that at exit (also on Ctrl-C or
# SIGTERM) every PID in `pids` is killed, the function `bench_cleanup`
# runs if the script defined one, and the directory is removed.
bench_workdir() {
    work=$(mktemp -d "/var/tmp/kiln-$1.XXXXXX")
    pids=()
    trap _bench_exit EXIT
    trap "exit 130" INT
    trap "exit 143" TERM
}

_bench_exit() {
    kill_pids
    if declare -F bench_cleanup >/dev/null; then bench_cleanup; fi
    rm -rf "$work"
}

# kill_pids: SIGKILL for every PID in `pids` (a sandbox's kiln would pass
# a SIGTERM on to its command first), and waits for them.
kill_pids() {
    local p
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

# rollup_kib PID KEY: the KiB figure KEY (Rss, Pss, ...) of the process's
# /proc/PID/smaps_rollup, 0 when it is gone.
rollup_kib() {
    awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0
}

# start_clones KILN WORK N SECONDS: starts N `KILN run -v -- sleep SECONDS`
# sandboxes in the background (logs WORK/cloneI.log), appends their PIDs
# to the array `pids`, and returns once each has sent its command (or
# after two minutes).
start_clones() {
    local kiln=$1 work=$2 n=$3 secs=$4 i
    for i in $(seq "$n"); do
        "$kiln" run -v -- sleep "$secs" >/dev/null 2>"$work/clone$i.log" &
        pids+=("$!")
    done
    for i in $(seq "$n"); do
        for _ in $(seq 1200); do
            grep -q 'sandbox: command sent' "$work/clone$i.log" && break
            sleep 0.1
        done
    done
}
