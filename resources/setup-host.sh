#!/bin/bash
# Install the Debian packages that kiln's build, guest artifacts and tests
# need. Only missing packages are installed (checked with dpkg -s), so a
# rerun on a prepared host takes a fraction of a second.
# Non-interactive (DEBIAN_FRONTEND=noninteractive), no terminal needed.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

packages=(
    build-essential bc flex bison libelf-dev libssl-dev   # kernel build
    cpio busybox-static e2fsprogs kmod                    # initramfs/rootfs
    lz4 xz-utils zstd gzip binutils python3               # kernel unpacking
    iproute2                                              # network tests
    curl                                                  # the API tests (Firecracker's curl sequences)
    qemu-system-x86                                       # the test agent under QEMU microvm
    acpica-tools                                          # ACPI tables (iasl)
    mmdebstrap eatmydata                                  # Debian root image (sandbox)
    chromium-headless-shell                               # kiln report's page, checked in a real browser
)

missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "not root; please install: ${missing[*]}"
    log=$(mktemp /tmp/kiln-setup-host.XXXXXX.log)
    run_logged "$log" apt-get update -q || die "apt-get update failed (log: $log)"
    run_logged "$log" apt-get install -y -q --no-install-recommends \
        -o Dpkg::Use-Pty=0 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" || die "apt-get install failed (log: $log)"
    rm -f "$log"
fi

echo "host ready: ${#packages[@]} packages present${missing:+, installed: ${missing[*]}}"
