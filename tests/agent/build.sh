#!/bin/sh
# Builds the kiln test agent and prints the path of the ELF image.
#   tests/agent/build.sh [TARGET_DIR]     (default: /tmp/kiln-test-agent-target)
# Then:  kiln run --kernel "$(tests/agent/build.sh)" --cmdline agent.test=selftest
set -eu
cd "$(dirname "$0")"        # so that .cargo/config.toml applies
target_dir=${1:-/tmp/kiln-test-agent-target}
# Flags meant for other builds must not replace ours.
env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
    -u CARGO_BUILD_TARGET -u CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS \
    "${CARGO:-cargo}" build --release --target-dir "$target_dir" >&2
echo "$target_dir/x86_64-unknown-linux-gnu/release/kiln-test-agent"
