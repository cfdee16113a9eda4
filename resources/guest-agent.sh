#!/bin/bash
# Build kiln's guest agent (guest/agent) as a static binary for the guest:
# build/guest/kiln-agent. The machine's own target (x86_64-unknown-linux-gnu)
# with `+crt-static` gives a static-pie executable that needs no libc in
# the guest; naming the target explicitly keeps the flag away from build
# scripts. Its own target directory keeps kiln's build cache untouched;
# symbols stripped, optimised for size and aborting on panic, since every
# byte of the initramfs is unpacked by the guest kernel (emulated on
# nested kvm_pvm hosts).
# Prints the binary's path.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

target=x86_64-unknown-linux-gnu
target_dir="$KILN_BUILD_DIR/work/agent-target"
out="$KILN_BUILD_DIR/guest/kiln-agent"
log="$KILN_BUILD_DIR/work/guest-agent.log"
mkdir -p "$KILN_BUILD_DIR/work"
: >"$log"
(cd "$KILN_ROOT" && RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols -C opt-level=s -C panic=abort -C codegen-units=1" \
    run_logged "$log" cargo build --release --locked -p kiln-agent \
        --target "$target" --target-dir "$target_dir") || die "building the guest agent failed (log: $log)"
bin="$target_dir/$target/release/kiln-agent"
if readelf -l "$bin" | grep -q 'program interpreter'; then
    die "$bin is dynamically linked; it must be static for the guest"
fi
install_file "$bin" "$out"
echo "$out"
