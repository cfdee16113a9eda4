#!/bin/bash
# Prepare the default guest artifacts in one go:
#   host packages, the minimal kernel (build/guest/minimal/), its ACPI
#   variant (build/guest/acpi/, for the ACPI tests), the busybox
#   initramfs (build/guest/initramfs.cpio) and rootfs
#   (build/guest/rootfs.ext4);
#   with --debian (or KILN_DEBIAN=1) also Debian's cloud kernel
#   (build/guest/debian/) and an initramfs that loads its virtio modules
#   (build/guest/debian/initramfs.cpio; list in KILN_DEBIAN_MODULES), and
#   the Debian 12 root image for `kiln run --rootfs`
#   (build/guest/debian-root.ext4, resources/debian-root.sh; needs root).
# Installs the minimal kernel and the initramfs as the default guest of
# `kiln run -- CMD` (see below). Prints every produced path, one per line,
# at the end.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

debian=${KILN_DEBIAN:-0}
for arg in "$@"; do
    case $arg in
        --debian) debian=1 ;;
        -h|--help) echo "usage: ${0##*/} [--debian]" >&2; exit 2 ;;
        *) echo "${0##*/}: unknown argument $arg" >&2; exit 2 ;;
    esac
done

r=$KILN_RESOURCES
"$r/setup-host.sh" >/dev/null
paths=$("$r/minimal-kernel.sh")
paths+=$'\n'$("$r/minimal-kernel.sh" acpi)
paths+=$'\n'$("$r/initramfs.sh")
paths+=$'\n'$("$r/rootfs.sh")
if [ "$debian" = 1 ]; then
    paths+=$'\n'$("$r/debian-kernel.sh")
    paths+=$'\n'$("$r/initramfs.sh" -o "$KILN_BUILD_DIR/guest/debian/initramfs.cpio" \
        --modules "$KILN_BUILD_DIR/guest/debian/modules" \
        --load "${KILN_DEBIAN_MODULES:-virtio_mmio virtio_pci virtio_blk virtio_net pvpanic_mmio}")
    paths+=$'\n'$("$r/debian-root.sh")
fi
# The default guest of `kiln run -- CMD` (src/sandbox/mod.rs, guest_dir):
# $KILN_GUEST_DIR, else /var/lib/kiln/guest for root, else
# ${XDG_DATA_HOME:-~/.local/share}/kiln/guest.
guest_dir=${KILN_GUEST_DIR:-}
if [ -z "$guest_dir" ]; then
    if [ "$(id -u)" = 0 ]; then
        guest_dir=/var/lib/kiln/guest
    else
        guest_dir=${XDG_DATA_HOME:-$HOME/.local/share}/kiln/guest
    fi
fi
install_file "$KILN_BUILD_DIR/guest/minimal/vmlinux" "$guest_dir/vmlinux"
install_file "$KILN_BUILD_DIR/guest/initramfs.cpio" "$guest_dir/initramfs.cpio"
paths+=$'\n'"$guest_dir/vmlinux"$'\n'"$guest_dir/initramfs.cpio"
echo "$paths"
