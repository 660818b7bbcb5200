#!/usr/bin/env bash
# Builds every cargo-fuzz target (protocol/fuzz: the wire and trust
# decoders; telemetry/fuzz: window and reference profiles) and runs each for
# a short smoke run (OUTPOST_FUZZ_SECONDS, default 30) from its seed corpus
# in <crate>/fuzz/corpus/. New inputs go to a temporary folder, so the repo's
# seeds stay as committed. A crash fails the run and leaves its input under
# <crate>/fuzz/artifacts/.
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

seconds="${OUTPOST_FUZZ_SECONDS:-30}"
# Sanitizer builds differ from the main ones: keep them apart.
export CARGO_TARGET_DIR="${OUTPOST_FUZZ_TARGET_DIR:-$HOME/.cache/outpost/fuzz-target}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for crate in protocol telemetry; do
  cd "$root/$crate"
  cargo +nightly fuzz build -O
  for target in $(cargo +nightly fuzz list); do
    mkdir -p "$work/$crate/$target"
    echo "== fuzz $crate/$target (${seconds}s)"
    log="$work/$crate/$target.log"
    if ! cargo +nightly fuzz run -O "$target" "$work/$crate/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
      tail -n 60 "$log" >&2
      echo "fuzz target $crate/$target failed (input saved under $crate/fuzz/artifacts/$target/)" >&2
      exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
  done
done
