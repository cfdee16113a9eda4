#!/bin/bash
# Build an ext4 root filesystem image from the same busybox tree as the
# initramfs, without mounting anything (mkfs.ext4 -d). /sbin/init is
# resources/init/init.sh, so `root=/dev/vda` boots it like the initramfs.
#
#   rootfs.sh [-o PATH] [--size 64M] [--modules DIR --load "mod1 ..."]
#
# Default output: build/guest/rootfs.ext4 (64 MiB).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$KILN_RESOURCES/lib/busybox-tree.sh"

usage() { echo "usage: ${0##*/} [-o PATH] [--size SIZE] [--modules DIR --load \"MOD ...\"]" >&2; exit 2; }
output="$KILN_BUILD_DIR/guest/rootfs.ext4" size=64M moddir='' load=''
while [ $# -gt 0 ]; do
    case $1 in
        -o|--output) [ $# -ge 2 ] || usage; output=$2; shift 2 ;;
        --size) [ $# -ge 2 ] || usage; size=$2; shift 2 ;;
        --modules) [ $# -ge 2 ] || usage; moddir=$2; shift 2 ;;
        --load) [ $# -ge 2 ] || usage; load=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "${0##*/}: unknown argument $1" >&2; usage ;;
    esac
done

ensure_host
mkdir -p "$(dirname "$output")"
output=$(cd "$(dirname "$output")" && pwd)/${output##*/}
tmp=$(mktemp -d "$(dirname "$output")/.rootfs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

busybox_tree "$tmp/root" "$moddir" "$load"
# Fixed UUID and hash seed (inode ctimes still differ between runs).
run_logged "$tmp/mkfs.log" mkfs.ext4 -q -F -L kiln-root \
    -U 6b696c6e-0000-4000-8000-000000000001 -E hash_seed=6b696c6e-0000-4000-8000-000000000002 \
    -d "$tmp/root" "$tmp/rootfs.ext4" "$size" || die "mkfs.ext4 failed"
mv -f "$tmp/rootfs.ext4" "$output"
echo "$output"
