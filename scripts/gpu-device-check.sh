#!/usr/bin/env bash
# GPU engine check on a machine with a real GPU: the GPU tests (parity with
# the CPU engine on the reference models and PP-OCRv4 detection, the GPU
# conformance allowlist) and a CPU-vs-GPU benchmark at batch 1 and 32.
#
# The lent GPU machines (see the device tool's notes) have no Rust toolchain
# and no network, so crates cannot be fetched or built there. The check is
# therefore two steps:
#
#   1. here (a developer machine, x86_64 Linux, glibc <= the device's):
#        scripts/gpu-device-check.sh prepare
#      builds the integration-test binary and the gpu_bench example,
#      strips them, and gathers into .gpu-check/ (git-ignored through
#      .git/info/exclude) what they read: PP-OCRv4 detection, the ONNX node
#      tests (when they fit the 64 MiB a device call carries), and the Vulkan
#      loader packages (libvulkan1 and the GL/EGL dispatch libraries).
#   2. on the device, from the repository root, with .gpu-check carried:
#        scripts/gpu-device-check.sh run
#      unpacks the loader, points Vulkan at the NVIDIA driver when needed,
#      runs the GPU tests with OUTPOST_REQUIRE_ALL=1 and the benchmark, and
#      writes tests.log and bench.md to $OUT (or .gpu-check/out).
#
# Expected time: prepare ~2-6 min on 2 cores with a warm target directory
# (one rebuild of outpost-runtime at opt-level 3, strip, apt-get download);
# run ~2-4 min (loader unpack seconds, tests ~30 s, benchmark ~1-2 min).
set -euo pipefail
cd "$(dirname "$0")/.."
G=.gpu-check

prepare() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost/target}"
  export OUTPOST_CACHE="${OUTPOST_CACHE:-$HOME/.cache/outpost}"
  grep -qx "/$G/" .git/info/exclude 2>/dev/null || echo "/$G/" >>.git/info/exclude
  rm -rf "$G" && mkdir -p "$G/bin" "$G/gl" "$G/cache"
  # Our crate optimized as well (dependencies already are in the dev
  # profile): the benchmark times host code around the GPU too.
  local cfg=(--config 'profile.dev.package."outpost-runtime".opt-level=3')
  local it
  it=$(cargo test "${cfg[@]}" -p outpost-runtime --test it --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  cargo build "${cfg[@]}" -p outpost-runtime --example gpu_bench
  [[ -x "$it" ]] || { echo "test binary not found" >&2; exit 1; }
  strip -o "$G/bin/it" "$it"
  strip -o "$G/bin/gpu_bench" "$CARGO_TARGET_DIR/debug/examples/gpu_bench"
  # ~44 MB each stripped, ~9 MB each compressed: a device call carries 64 MiB.
  xz -T2 -6 -f "$G/bin/it" "$G/bin/gpu_bench"
  # The tests find their fixtures through the path they were built in.
  pwd >"$G/built-in"
  local det="$OUTPOST_CACHE/rapidocr/1.4.4"
  if [[ -f "$det/ch_PP-OCRv4_det_infer.onnx" ]]; then
    mkdir -p "$G/cache/rapidocr/1.4.4"
    cp "$det"/ch_PP-OCRv4_det_infer.* "$G/cache/rapidocr/1.4.4/"
    touch "$G/cache/rapidocr/1.4.4/.complete"
  else
    echo "PP-OCR models not fetched (python3 scripts/fetch_rapidocr.py): the device run will fail on them" >&2
  fi
  local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd "$G/gl" && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  local suite
  suite=$(ls -d "$OUTPOST_CACHE"/onnx-node-tests/*/ 2>/dev/null | tail -1)
  if [[ -n "$suite" ]]; then
    tar -C "$(dirname "$suite")" -czf "$G/node-tests.tgz" "$(basename "$suite")"
    local total
    total=$(du -sm "$G" | cut -f1)
    if ((total > 60)); then
      echo "ONNX node tests left out: .gpu-check would be ${total} MiB (limit 64)" >&2
      rm "$G/node-tests.tgz"
    fi
  fi
  du -sh "$G" "$G"/*
  echo "prepared; on the device: scripts/gpu-device-check.sh run (carry .gpu-check)"
}

run() {
  [[ -f "$G/bin/it.xz" ]] || { echo "run 'scripts/gpu-device-check.sh prepare' first, and carry $G" >&2; exit 2; }
  local out="${OUT:-$G/out}"
  mkdir -p "$out"
  local bin=/tmp/gpu-check-bin
  mkdir -p "$bin"
  for b in it gpu_bench; do
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$G/bin/$b.xz" "$bin/$b"
    chmod +x "$bin/$b"
  done
  for f in "$G"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [[ -z "${VK_DRIVER_FILES:-}" && -f "$icd" ]]; then
    export VK_DRIVER_FILES="$icd"
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  fi
  export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
  nvidia-smi -L || true
  local built
  built=$(cat "$G/built-in")
  if [[ "$built" != "$PWD" && ! -e "$built" ]]; then
    mkdir -p "$(dirname "$built")"
    ln -s "$PWD" "$built"
  fi
  export OUTPOST_CACHE="$PWD/$G/cache" OUTPOST_REQUIRE_ALL=1
  local filters=(gpu:: package::a_gpu)
  if [[ -f "$G/node-tests.tgz" ]]; then
    mkdir -p "$OUTPOST_CACHE/onnx-node-tests"
    tar -C "$OUTPOST_CACHE/onnx-node-tests" -xzf "$G/node-tests.tgz"
    touch "$OUTPOST_CACHE"/onnx-node-tests/*/.complete
    filters+=(conformance::onnx_node_conformance_gpu)
  fi
  local rc=0
  "$bin/it" "${filters[@]}" --test-threads 1 --nocapture 2>&1 | grep -v XDG_RUNTIME_DIR \
    | tee "$out/tests.log" || rc=1
  "$bin/gpu_bench" --budget-ms "${BUDGET_MS:-2000}" 2>&1 | tee "$out/bench.md" || rc=1
  exit "$rc"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
