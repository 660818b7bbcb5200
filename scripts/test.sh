#!/usr/bin/env bash
# Runs every test of the workspace: the native test suite, the runtime's
# tests for aarch64 under qemu (tract's ARM kernels), and a smoke run of
# every fuzz target of outpost-protocol.
#
# Optional prerequisites (generated data, the aarch64 toolchain, nightly +
# cargo-fuzz) are skipped with a printed reason, except when
# OUTPOST_REQUIRE_ALL=1 (CI), where a missing one fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing() { # what, why
  if [[ "${OUTPOST_REQUIRE_ALL:-}" == 1 ]]; then
    echo "$1: missing $2, and OUTPOST_REQUIRE_ALL=1" >&2
    exit 1
  fi
  echo "SKIPPED $1: missing $2"
}

cargo test --workspace --all-targets --exclude outpost-firmware-tests
# The whole-system scenarios run last, on the outpost and outpost-agent
# binaries the line above built, with their SUMMARY lines shown.
cargo test -p outpost-firmware-tests --all-targets -- --nocapture

aarch64_tests() {
  local why=""
  command -v aarch64-linux-gnu-gcc >/dev/null || why="aarch64-linux-gnu-gcc (apt install gcc-aarch64-linux-gnu)"
  command -v qemu-aarch64-static >/dev/null || why="qemu-aarch64-static (apt install qemu-user-static)"
  rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu \
    || why="the Rust target (rustup target add aarch64-unknown-linux-gnu)"
  if [[ -n "${OUTPOST_AARCH64_UNAVAILABLE:-}" ]]; then
    # CI could not install the cross toolchain (no network to it, say): the
    # issue asks to print why and go on rather than fail the whole run.
    echo "SKIPPED aarch64 tests: ${OUTPOST_AARCH64_UNAVAILABLE}"
    return
  fi
  if [[ -n "$why" ]]; then
    missing "aarch64 tests" "$why"
    return
  fi
  # Under emulation the runtime's suite is ~10x slower; it is the part that
  # exercises tract's ARM kernels, so it is the part we run there.
  cargo test -p outpost-runtime --target aarch64-unknown-linux-gnu
}

fuzz_smoke() {
  if ! cargo +nightly --version >/dev/null 2>&1; then
    missing "fuzz smoke runs" "the nightly toolchain (rustup toolchain install nightly)"
  elif ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    missing "fuzz smoke runs" "cargo-fuzz (cargo install cargo-fuzz)"
  else
    scripts/fuzz-smoke.sh
  fi
}

aarch64_tests
fuzz_smoke
