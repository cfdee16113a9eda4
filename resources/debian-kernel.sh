#!/bin/bash
# Fetch Debian's stock cloud kernel (the package that
# linux-image-cloud-amd64 depends on) and unpack it for kiln.
# Outputs in build/guest/debian/:
#   vmlinuz   the bzImage
#   vmlinux   the ELF kernel, decompressed from the bzImage's payload
#   modules/  the lib/modules/<release> tree (modules.dep at its top)
#   config    the kernel's .config
#   version   the kernel release string (uname -r)
# Cache: $KILN_CACHE_DIR/debian-kernel-<sha256(this script, package,
# version)>/ and the .deb in $KILN_CACHE_DIR/debs/.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$KILN_RESOURCES/lib/bzimage.sh"

meta=linux-image-cloud-amd64
out="$KILN_BUILD_DIR/guest/debian"
self="$KILN_RESOURCES/debian-kernel.sh"

ensure_host
# The metapackage's candidate depends on the versioned image package, in
# bookworm "linux-image-<abi>-cloud-amd64 (= <version>)". One apt-cache call
# (about 1 s each here: Docker-style hosts disable apt's binary cache).
pkg=
while [ -z "$pkg" ]; do
    read -r pkg ver < <(apt-cache show --no-all-versions "$meta" 2>/dev/null |
        sed -n 's/^Depends:.*\(linux-image-[^ ,]*\)\( (= \([^)]*\))\)\{0,1\}.*/\1 \3/p' | head -n 1) || true
    [ -n "$pkg" ] || apt_update_once || die "$meta (or a linux-image package it depends on) not found by apt"
done
[ -n "${ver:-}" ] || ver=$(apt_candidate "$pkg")
key=$({ cat "$self" "$KILN_RESOURCES/lib/bzimage.sh"; echo "$pkg=$ver"; } | sha256sum | cut -d' ' -f1)
cache="$KILN_CACHE_DIR/debian-kernel-$key"

publish() {
    # Files are replaced atomically (other jobs may be booting them); the
    # module tree is hardlinked from the cache where possible (it is large
    # and read-only) and swapped in with a rename.
    if [ "$(cat "$out/modules/.kiln-key" 2>/dev/null)" != "$key" ]; then
        rm -rf "$out/modules.tmp" "$out/modules.old"
        mkdir -p "$out"
        cp -al "$cache/modules" "$out/modules.tmp" 2>/dev/null ||
            { rm -rf "$out/modules.tmp"; cp -a "$cache/modules" "$out/modules.tmp"; }
        echo "$key" >"$out/modules.tmp/.kiln-key"
        [ ! -e "$out/modules" ] || mv "$out/modules" "$out/modules.old"
        mv "$out/modules.tmp" "$out/modules"
        rm -rf "$out/modules.old"
    fi
    for f in vmlinuz vmlinux config version; do
        install_file "$cache/$f" "$out/$f"
    done
    echo "$out/vmlinuz"
    echo "$out/vmlinux"
    echo "$out/modules"
    echo "$out/version"
}
cached() { [ -s "$cache/vmlinux" ] && [ -s "$cache/version" ] && [ -d "$cache/modules" ]; }

if cached; then publish; exit 0; fi
mkdir -p "$KILN_CACHE_DIR"
with_lock debian-kernel
if cached; then publish; exit 0; fi

deb=$(fetch_deb "$pkg" "$ver")
tmp="$cache.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/deb"
trap 'rm -rf "$tmp"' EXIT
log="$tmp/log"
run_logged "$log" dpkg-deb -x "$deb" "$tmp/deb"

set -- "$tmp"/deb/boot/vmlinuz-*
[ $# = 1 ] && [ -f "$1" ] || die "expected one /boot/vmlinuz-* in $deb, found: $*"
vmlinuz=$1
release=${vmlinuz##*/vmlinuz-}
[ -d "$tmp/deb/lib/modules/$release" ] || die "$deb has no lib/modules/$release"
hdr_release=$(bzimage_release "$vmlinuz")
[ "$hdr_release" = "$release" ] || die "bzImage says release '$hdr_release', file name says '$release'"

# The package does not ship modules.dep & co. (its postinst runs depmod).
run_logged "$log" depmod -b "$tmp/deb" -F "$tmp/deb/boot/System.map-$release" "$release" ||
    die "depmod failed"
[ -s "$tmp/deb/lib/modules/$release/modules.dep" ] || die "depmod wrote no modules.dep"

mv "$vmlinuz" "$tmp/vmlinuz"
bzimage_extract_vmlinux "$tmp/vmlinuz" "$tmp/vmlinux" || die "could not extract vmlinux from $vmlinuz"
elf_is_x86_64 "$tmp/vmlinux" || die "vmlinux extracted from $vmlinuz is not an ELF64 x86-64 file"
mv "$tmp/deb/lib/modules/$release" "$tmp/modules"
mv "$tmp/deb/boot/config-$release" "$tmp/config"
echo "$release" >"$tmp/version"
rm -rf "$tmp/deb" "$log"

rm -rf "$cache"
mv "$tmp" "$cache"
trap - EXIT
publish
