#!/usr/bin/env bash
# Builds every cargo-fuzz target of outpost-protocol and runs each for a
# short smoke run (OUTPOST_FUZZ_SECONDS, default 30) from the seed corpus in
# protocol/fuzz/corpus/. New inputs go to a temporary folder, so the repo's
# seeds stay as committed. A crash fails the run and leaves its input under
# protocol/fuzz/artifacts/.
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../protocol"

seconds="${OUTPOST_FUZZ_SECONDS:-30}"
# Sanitizer builds differ from the main ones: keep them apart.
export CARGO_TARGET_DIR="${OUTPOST_FUZZ_TARGET_DIR:-$HOME/.cache/outpost/fuzz-target}"

cargo +nightly fuzz build -O
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$work/$target"
  echo "== fuzz $target (${seconds}s)"
  log="$work/$target.log"
  if ! cargo +nightly fuzz run -O "$target" "$work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (input saved under protocol/fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
done
