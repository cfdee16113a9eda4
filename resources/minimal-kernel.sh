#!/bin/bash
# Build kiln's own small guest kernel from Debian's linux-source package.
#
#   minimal-kernel.sh [VARIANT]      (VARIANT defaults to "minimal")
#
# Config = `make tinyconfig` + resources/kernel/VARIANT.config, merged with
# scripts/kconfig/merge_config.sh and olddefconfig. Every line of the
# fragment is then checked against the final .config.
# Outputs: build/guest/VARIANT/{vmlinux,bzImage,config,version}.
# Cache: $KILN_CACHE_DIR/kernel-VARIANT-<sha256(fragment, this script,
# source package and version)>/, plus the downloaded .deb in
# $KILN_CACHE_DIR/debs/. Source tree and objects live in build/work/.
# KILN_KERNEL_SOURCE_PKG overrides the source package (linux-source-6.1).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

variant=${1:-minimal}
fragment="$KILN_RESOURCES/kernel/$variant.config"
[ -f "$fragment" ] || die "no fragment $fragment (variants: $(cd "$KILN_RESOURCES/kernel" && ls -- *.config | sed 's/\.config$//' | tr '\n' ' '))"
src_pkg=${KILN_KERNEL_SOURCE_PKG:-linux-source-6.1}
out="$KILN_BUILD_DIR/guest/$variant"
self="$KILN_RESOURCES/minimal-kernel.sh"

ensure_host
src_ver=$(apt_candidate "$src_pkg")
key=$({ cat "$fragment"; cat "$self"; echo "$src_pkg=$src_ver"; } | sha256sum | cut -d' ' -f1)
cache="$KILN_CACHE_DIR/kernel-$variant-$key"

publish() {
    install_file "$cache/vmlinux" "$out/vmlinux"
    install_file "$cache/bzImage" "$out/bzImage"
    install_file "$cache/config" "$out/config"
    install_file "$cache/version" "$out/version"
    echo "$out/vmlinux"
    echo "$out/bzImage"
}
cached() { [ -s "$cache/vmlinux" ] && [ -s "$cache/bzImage" ] && [ -s "$cache/config" ] && [ -s "$cache/version" ]; }

if cached; then publish; exit 0; fi
mkdir -p "$KILN_CACHE_DIR"
with_lock "kernel-$variant"
if cached; then publish; exit 0; fi   # another run built it meanwhile

work="$KILN_BUILD_DIR/work"
log="$work/kernel-$variant.log"
mkdir -p "$work"
: >"$log"

# 1. Source tree: build/work/src/<pkg>_<version>/ (pristine; objects go to O=).
src_top="$work/src/${src_pkg}_${src_ver//:/%3a}"
if [ ! -f "$src_top/.kiln-extracted" ]; then
    deb=$(fetch_deb "$src_pkg" "$src_ver")
    rm -rf "$src_top" "$src_top.tmp"
    mkdir -p "$src_top.tmp/deb"
    run_logged "$log" dpkg-deb -x "$deb" "$src_top.tmp/deb"
    tarball=$(find "$src_top.tmp/deb/usr/src" -maxdepth 1 -name 'linux-source-*.tar.*' | head -n 1)
    [ -n "$tarball" ] || die "no linux-source tarball in $deb"
    run_logged "$log" tar -xf "$tarball" -C "$src_top.tmp"
    rm -rf "$src_top.tmp/deb"
    mv "$src_top.tmp" "$src_top"
    touch "$src_top/.kiln-extracted"
fi
src=$(find "$src_top" -mindepth 1 -maxdepth 1 -type d -name 'linux*' | head -n 1)
[ -f "$src/Makefile" ] || die "no kernel source tree under $src_top"

# 2. Object directory, reset when the source tree changes.
obj="$work/kernel-$variant"
if [ "$(cat "$obj/.kiln-source" 2>/dev/null)" != "$src" ]; then
    rm -rf "$obj"
    mkdir -p "$obj"
    echo "$src" >"$obj/.kiln-source"
fi
kmake=(make -C "$src" O="$obj" ARCH=x86_64 KBUILD_BUILD_USER=kiln KBUILD_BUILD_HOST=kiln)

# 3. Configure.
run_logged "$log" "${kmake[@]}" tinyconfig
run_logged "$log" "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment"
run_logged "$log" "${kmake[@]}" olddefconfig

# 4. Check that every option of the fragment is set as asked.
bad=0
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        opt=${BASH_REMATCH[1]}
        grep -qxF -- "$line" "$obj/.config" && continue
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        opt=${BASH_REMATCH[1]}
        grep -q "^$opt=" "$obj/.config" || continue
    else
        continue
    fi
    actual=$(grep -E "^$opt=|^# $opt is not set" "$obj/.config" || true)
    echo "${0##*/}: $variant: $opt: fragment wants '$line', .config has '${actual:-nothing (unknown option or unmet dependency)}'" >&2
    bad=1
done <"$fragment"
[ "$bad" = 0 ] || die "kernel config check failed for $fragment (config: $obj/.config)"

# 5. Build.
run_logged "$log" "${kmake[@]}" -j"$(nproc)" vmlinux bzImage ||
    die "kernel build failed (full log: $log)"

# 6. Sanity-check the results.
vmlinux="$obj/vmlinux"
bzimage="$obj/arch/x86/boot/bzImage"
[ "$(od -An -tx1 -N5 "$vmlinux" | tr -d ' ')" = 7f454c4602 ] || die "$vmlinux is not an ELF64 file"
[ "$(od -An -c -j514 -N4 "$bzimage" | tr -d ' ')" = HdrS ] || die "$bzimage has no bzImage setup header"
if grep -qx 'CONFIG_PVH=y' "$obj/.config"; then
    # XEN_ELFNOTE_PHYS32_ENTRY (type 18) carries the PVH entry point.
    readelf -n "$vmlinux" | grep -Eq '^[[:space:]]+Xen[[:space:]].*(0x00000012|PHYS32_ENTRY)' ||
        die "$vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
fi

# 7. Store in the cache (atomically), then publish into build/guest/.
rm -rf "$cache.tmp.$$"
mkdir -p "$cache.tmp.$$"
cp "$vmlinux" "$cache.tmp.$$/vmlinux"
cp "$bzimage" "$cache.tmp.$$/bzImage"
cp "$obj/.config" "$cache.tmp.$$/config"
echo "$src_pkg=$src_ver" >"$cache.tmp.$$/source"
"${kmake[@]}" -s kernelrelease >"$cache.tmp.$$/version"
rm -rf "$cache"
mv "$cache.tmp.$$" "$cache"
publish
