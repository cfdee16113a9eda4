#!/bin/bash
# Build kiln's busybox initramfs (newc cpio; gzip-compressed when PATH
# ends in .gz).
#
#   initramfs.sh [-o PATH] [--modules DIR --load "mod1 mod2 ..."]
#
# Default output: build/guest/initramfs.cpio, uncompressed: on nested
# kvm_pvm hosts the guest kernel's ring 0 is emulated, and inflating a
# gzip archive there costs tens of seconds. /init is
# resources/init/init.sh. --modules DIR (a lib/modules/<release> tree, e.g.
# build/guest/debian/modules) with --load copies those modules (plus their
# dependencies from DIR/modules.dep) into /lib/modules and has init insmod
# them in that order.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$KILN_RESOURCES/lib/busybox-tree.sh"

usage() { echo "usage: ${0##*/} [-o PATH] [--modules DIR --load \"MOD ...\"]" >&2; exit 2; }
output="$KILN_BUILD_DIR/guest/initramfs.cpio" moddir='' load=''
while [ $# -gt 0 ]; do
    case $1 in
        -o|--output) [ $# -ge 2 ] || usage; output=$2; shift 2 ;;
        --modules) [ $# -ge 2 ] || usage; moddir=$2; shift 2 ;;
        --load) [ $# -ge 2 ] || usage; load=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "${0##*/}: unknown argument $1" >&2; usage ;;
    esac
done

ensure_host
mkdir -p "$(dirname "$output")"
output=$(cd "$(dirname "$output")" && pwd)/${output##*/}
tmp=$(mktemp -d "$(dirname "$output")/.initramfs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

busybox_tree "$tmp/root" "$moddir" "$load"
cp -p "$tmp/root/sbin/init" "$tmp/root/init"
(cd "$tmp/root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --renumber-inodes --ignore-devno --quiet) >"$tmp/initramfs.cpio"
case $output in
    *.gz) gzip -9n <"$tmp/initramfs.cpio" >"$tmp/out" ;;
    *) mv "$tmp/initramfs.cpio" "$tmp/out" ;;
esac
install_file "$tmp/out" "$output"
echo "$output"
