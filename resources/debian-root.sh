#!/bin/bash
# Build a Debian 12 (bookworm) root image for `kiln run --rootfs`, from
# Debian's packages with mmdebstrap, with kiln's guest agent as
# /sbin/kiln-agent (kiln boots it with init=/sbin/kiln-agent):
#
#   debian-root.sh [-o PATH] [--size SIZE] [--tree DIR]
#
# Default output: build/guest/debian-root.ext4 (1536 MiB, sparse; about
# 450 MiB used, the rest is room for what a sandboxed command writes).
# Packages: minbase plus $KILN_DEBIAN_ROOT_PACKAGES (python3, gcc, make,
# libc6-dev, coreutils, ca-certificates). Apt sources: the machine's own
# (/etc/apt/sources.list.d/*.sources and /etc/apt/sources.list), so the
# image comes from the same mirror and snapshot as the host's packages.
# Cache: the tree as a tarball in $KILN_CACHE_DIR/debian-root-<sha256 of
# this script, the package list, the sources and mmdebstrap's version>.tar;
# only the agent and mkfs.ext4 run when it is there (a few seconds).
# --tree DIR also leaves the image's tree in DIR (a new directory), for
# comparing with containers and chroot (resources/bench-sandbox.sh).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

usage() { echo "usage: ${0##*/} [-o PATH] [--size SIZE] [--tree DIR]" >&2; exit 2; }
output="$KILN_BUILD_DIR/guest/debian-root.ext4" size=1536M tree=
while [ $# -gt 0 ]; do
    case $1 in
        -o|--output) [ $# -ge 2 ] || usage; output=$2; shift 2 ;;
        --size) [ $# -ge 2 ] || usage; size=$2; shift 2 ;;
        --tree) [ $# -ge 2 ] || usage; tree=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "${0##*/}: unknown argument $1" >&2; usage ;;
    esac
done
[ -z "$tree" ] || [ ! -e "$tree" ] || die "--tree $tree exists; give a new directory"
[ "$(id -u)" = 0 ] || die "mmdebstrap --mode=root and an image with root-owned files need root; run with sudo"

packages=${KILN_DEBIAN_ROOT_PACKAGES:-python3,gcc,make,libc6-dev,coreutils,ca-certificates}
suite=bookworm
ensure_host
sources=$(mktemp /tmp/kiln-debian-sources.XXXXXX)
mkdir -p "$(dirname "$output")"
output=$(cd "$(dirname "$output")" && pwd)/${output##*/}
tmp=$(mktemp -d "$(dirname "$output")/.debian-root.XXXXXX")
trap 'rm -rf "$tmp" "$sources"' EXIT

# The machine's apt sources, deb822 files first (mmdebstrap pastes a file
# given as a mirror into the tree's sources.list; deb822 content works).
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
    cat "$f"
    echo
done >"$sources"
list_lines=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -E '^[[:space:]]*deb[[:space:]]' || true)
shopt -u nullglob
if [ -n "$list_lines" ]; then
    printf '%s\n' "$list_lines" >>"$sources"
fi
[ -s "$sources" ] || die "no apt sources in /etc/apt (sources.list.d/*.sources or sources.list)"

key=$({ cat "$0"; echo "$packages $suite"; cat "$sources"; mmdebstrap --version; } | sha256sum | cut -d' ' -f1)
tarball="$KILN_CACHE_DIR/debian-root-$key.tar"
mkdir -p "$KILN_CACHE_DIR"
with_lock debian-root
if [ ! -s "$tarball" ]; then
    log="$KILN_BUILD_DIR/work/debian-root.log"
    mkdir -p "$(dirname "$log")"
    : >"$log"
    # eatmydata: dpkg's fsyncs are half the time and worthless for an
    # image built from scratch. The customize hook gives the tree its own
    # hostname and an empty resolv.conf instead of the build host's.
    run_logged "$log" mmdebstrap --mode=root --variant=minbase --format=tar \
        --include="$packages" \
        --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
        --customize-hook='echo kiln >"$1/etc/hostname"' \
        --customize-hook='printf "127.0.0.1 localhost\n127.0.1.1 kiln\n::1 localhost ip6-localhost ip6-loopback\n" >"$1/etc/hosts"' \
        --customize-hook=': >"$1/etc/resolv.conf"' \
        --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*_Packages' \
        "$suite" "$tmp/root.tar" "$sources" || die "mmdebstrap failed (log: $log)"
    mv -f "$tmp/root.tar" "$tarball"
fi

agent=$("$KILN_RESOURCES/guest-agent.sh")
mkdir "$tmp/root"
tar -xf "$tarball" -C "$tmp/root" --numeric-owner --xattrs --xattrs-include='*' ||
    die "could not unpack $tarball (delete it to rebuild)"
install -D -m 0755 "$agent" "$tmp/root/sbin/kiln-agent"
# Fixed UUID and hash seed, as rootfs.sh.
run_logged "$tmp/mkfs.log" mkfs.ext4 -q -F -L kiln-debian \
    -U 6b696c6e-0000-4000-8000-000000000003 -E hash_seed=6b696c6e-0000-4000-8000-000000000004 \
    -d "$tmp/root" "$tmp/root.ext4" "$size" || die "mkfs.ext4 failed (is $size big enough for the tree?)"
mv -f "$tmp/root.ext4" "$output"
if [ -n "$tree" ]; then
    mkdir -p "$(dirname "$tree")"
    mv "$tmp/root" "$tree"
fi
echo "$output"
