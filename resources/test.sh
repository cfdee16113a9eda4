#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a prepared one:
#   1. Debian packages (setup-host.sh),
#   2. guest artifacts: our minimal kernel, Debian's stock kernel, the
#      initramfs and root image (cached kernel builds are reused),
#   3. formatting and lint checks (also of the build without teaching mode),
#   4. every unit and integration test (real guests through the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
./resources/setup-host.sh
./resources/guests.sh --debian

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Teaching mode compiled out (resources/bench-trace.sh measures that build).
cargo clippy --no-default-features -- -D warnings
cargo build --release
cargo test --workspace --release --no-fail-fast -- --test-threads=2
