#!/usr/bin/env python3
"""Fetch the PP-OCR models shipped in the ``rapidocr_onnxruntime`` wheel and
record onnxruntime reference outputs for them.

Output directory: ``$CACHE/rapidocr/<rapidocr version>/`` with
``$CACHE = ${OUTPOST_CACHE:-$HOME/.cache/outpost}``::

    ch_PP-OCRv4_det_infer.onnx            (+ .input.npy / .ort.npy)
    ch_PP-OCRv4_rec_infer.onnx            (+ .input.npy / .ort.npy)
    ch_ppocr_mobile_v2.0_cls_infer.onnx   (+ .input.npy / .ort.npy)
    cls_qdq_pc.onnx                       QDQ per-channel quantized cls model
    cls_qdq_pc.input.npy                  == ch_ppocr_mobile_v2.0_cls_infer.input.npy
    cls_qdq_pc.ref.npy                    onnx.reference.ReferenceEvaluator output 0
    cls_qdq_pc.ort.npy                    onnxruntime output 0 (default graph optimizations)
    cls_qdq_pc.ort_noopt.npy              onnxruntime output 0 (ORT_DISABLE_ALL)
    manifest.json
    .complete

Steps:

1. ``pip download rapidocr_onnxruntime==RAPIDOCR_VERSION --no-deps`` into a
   temp dir (or use ``--wheel PATH``), check the wheel's sha256, extract the
   three models and check each against the sha256 pinned below.
2. Build one fixed, deterministic input per model (no RNG: a smooth light
   background plus dark vertical "glyph" bars in text lines, quantised to uint8
   and normalised the way rapidocr/PaddleOCR does for all three models:
   ``(px / 255 - 0.5) / 0.5`` -> [-1, 1], HWC -> NCHW), run onnxruntime
   (CPUExecutionProvider, 1 intra-op thread) and save output 0.
3. Regression case for the tract Q/DQ-around-Softmax bug (``cls_qdq_pc``):

   * upgrade the cls model to opset 13 (the first opset where per-channel
     Quantize/DequantizeLinear ``axis`` is valid; the wheel's model is
     opset 11) with ``onnx.version_converter``;
   * turn its 308 ``Constant`` nodes into initializers.  The Paddle export
     stores every weight as a Constant node, and quantize_static only treats
     *initializers* as weights: without this step the weights are quantized
     like activations (per-tensor, calibrated) and ``per_channel=True`` has
     no effect at all;
   * ``onnxruntime.quantization.quantize_static``: QDQ, per_channel=True,
     reduce_range=True, QUInt8 activations / QInt8 weights, MinMax
     calibration on 16 deterministic inputs (seeds 100..115);
   * check that the graph has per-channel (``axis``) DequantizeLinear nodes and
     QuantizeLinear -> DequantizeLinear -> Softmax -> QuantizeLinear ->
     DequantizeLinear, then record ReferenceEvaluator and onnxruntime outputs
     on the fixed cls input.

   Why reduce_range=True: with full 8-bit per-channel weights, ORT's fused
   int8 kernels (QLinearConv etc., graph optimization level >= EXTENDED) on
   x86 CPUs without AVX-VNNI use u8*s8 pairwise adds (vpmaddubsw) that
   saturate; on an AVX2-only AMD EPYC with ORT 1.32.0 that flipped the class
   ([0.0, 1.0] per the QDQ semantics vs ~[0.74, 0.26] from ORT), regardless of
   U8 or S8 activations, while ORT_DISABLE_ALL matched the reference
   evaluator exactly.  7-bit weights avoid the saturation, so ``.ort.npy``
   agrees with ``.ref.npy`` to ~1 LSB (1/255).  ``.ref.npy`` (QDQ spec
   semantics) is the ground truth either way.

   onnx's ReferenceEvaluator only implements Q/DequantizeLinear from opset 19,
   so the reference is computed on an in-memory copy whose default-domain
   opset import is raised 13 -> 19; every op in this graph (Conv, Add, Mul,
   Div, Clip, Relu, HardSigmoid, BatchNormalization, GlobalAveragePool,
   MaxPool, Reshape, Shape, Slice, Concat, Cast, MatMul, Softmax, Identity,
   Constant, Q/DQ on int8) has the same semantics in opset 13 and 19 for the
   types used.  The file on disk stays at opset 13.

Idempotent: does nothing if ``.complete`` exists unless ``--force``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

RAPIDOCR_VERSION = "1.4.4"
WHEEL_NAME = f"rapidocr_onnxruntime-{RAPIDOCR_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"

# key -> (path inside the wheel, sha256, fixed input shape NCHW)
MODELS = {
    "det": (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        (1, 3, 320, 320),
    ),
    "rec": (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        (1, 3, 48, 320),
    ),
    "cls": (
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        (1, 3, 48, 192),
    ),
}

FIXED_INPUT_SEED = 0
# The cls input uses its own seed, picked so that neither the fp32 cls model
# (~[0.24, 0.76]) nor cls_qdq_pc (~[0.44, 0.55]) is saturated on it: a collapsed
# or saturated Q/DQ softmax ([1, 1], [0, 1], swapped classes) cannot pass by luck.
INPUT_SEEDS = {"det": FIXED_INPUT_SEED, "rec": FIXED_INPUT_SEED, "cls": 13}
CALIB_SEEDS = list(range(100, 116))  # 16 calibration inputs
QDQ_OPSET = 13
REF_OPSET = 19
SOFTMAX_PATTERN = [
    "QuantizeLinear",
    "DequantizeLinear",
    "Softmax",
    "QuantizeLinear",
    "DequantizeLinear",
]


def cache_root(override: str | None) -> Path:
    if override:
        return Path(override)
    env = os.environ.get("OUTPOST_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "outpost"


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Deterministic inputs (no numpy RNG, so they do not depend on numpy's
# Generator stream stability).
# --------------------------------------------------------------------------


class _Lcg:
    """Tiny 64-bit LCG (Knuth MMIX constants) -> floats in [0, 1)."""

    def __init__(self, seed: int) -> None:
        self.state = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & (2**64 - 1)

    def uniform(self, lo: float, hi: float) -> float:
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        return lo + (hi - lo) * ((self.state >> 11) / float(1 << 53))

    def integer(self, lo: int, hi: int) -> int:  # [lo, hi)
        return lo + int(self.uniform(0.0, 1.0) * (hi - lo))


def make_input(shape, seed: int):
    """Text-like image: smooth light background + dark bars in text lines,
    quantised to uint8, normalised (px/255 - 0.5)/0.5, NCHW float32."""
    import numpy as np

    n, c, h, w = shape
    assert n == 1 and c == 3
    rng = _Lcg(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3), np.float64)
    for ch in range(3):
        fx = rng.uniform(0.01, 0.05)
        fy = rng.uniform(0.02, 0.08)
        ph = rng.uniform(0.0, 6.283)
        img[..., ch] = 215.0 + 25.0 * np.sin(fx * xx + ph) * np.cos(fy * yy + 0.5 * ph)
    # Text lines: one line for strip-shaped inputs (rec/cls), several for det.
    line_h = 48 if h <= 64 else 40
    n_lines = max(1, h // (line_h + 16)) if h > 64 else 1
    for li in range(n_lines):
        top = (li * (h // n_lines)) + (h // n_lines - line_h) // 2 if h > 64 else 0
        x = int(w * rng.uniform(0.03, 0.08))
        x_end = int(w * (rng.uniform(0.6, 0.92) if h > 64 else 0.92))
        while x < x_end:
            bw = rng.integer(3, 10)
            y0 = top + int(line_h * rng.uniform(0.15, 0.30))
            y1 = top + int(line_h * rng.uniform(0.70, 0.85))
            img[y0:y1, x : x + bw, :] = rng.uniform(15.0, 50.0)
            x += bw + rng.integer(2, 8)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    x = (img.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32)


# --------------------------------------------------------------------------


def fetch_wheel(tmp: Path, wheel_arg: str | None) -> Path:
    if wheel_arg:
        wheel = Path(wheel_arg)
    else:
        cmd = [
            sys.executable, "-m", "pip", "download",
            f"rapidocr_onnxruntime=={RAPIDOCR_VERSION}",
            "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "-q", "-d", str(tmp),
        ]
        subprocess.run(cmd, check=True)
        wheel = tmp / WHEEL_NAME
    if not wheel.is_file():
        raise SystemExit(f"wheel not found: {wheel}")
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {got} != pinned {WHEEL_SHA256}")
    return wheel


def shape_of(vi) -> list:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in tt.shape.dim]


def ort_session(model, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def find_softmax_qdq(model) -> dict:
    """Locate Q -> DQ -> Softmax -> Q -> DQ chains; returns details for the first."""
    from onnx import numpy_helper

    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in model.graph.initializer}

    def const(name):
        if name in inits:
            return numpy_helper.to_array(inits[name]).tolist()
        p = producer.get(name)
        if p is not None and p.op_type == "Constant":
            return numpy_helper.to_array(p.attribute[0].t).tolist()
        return None

    chains = []
    for sm in nodes:
        if sm.op_type != "Softmax":
            continue
        dq0 = producer.get(sm.input[0])
        q0 = producer.get(dq0.input[0]) if dq0 is not None else None
        outs = consumers.get(sm.output[0], [])
        q1 = outs[0] if len(outs) == 1 else None
        outs1 = consumers.get(q1.output[0], []) if q1 is not None else []
        dq1 = outs1[0] if len(outs1) == 1 else None
        chain = [q0, dq0, sm, q1, dq1]
        types = [n.op_type if n is not None else None for n in chain]
        info = {
            "op_types": types,
            "node_names": [n.name if n is not None else None for n in chain],
            "matches": types == SOFTMAX_PATTERN,
            "softmax_attrs": {a.name: a.i for a in sm.attribute},
        }
        if info["matches"]:
            info["softmax_input_scale_zp"] = [const(dq0.input[1]), const(dq0.input[2]) if len(dq0.input) > 2 else None]
            info["softmax_output_scale_zp"] = [const(q1.input[1]), const(q1.input[2]) if len(q1.input) > 2 else None]
            dq_out = consumers.get(dq1.output[0], [])
            info["final_dq_output_is_graph_output"] = dq1.output[0] in {o.name for o in model.graph.output}
            info["final_dq_consumers"] = [n.op_type for n in dq_out]
        chains.append(info)
    return {"chains": chains, "present": any(c["matches"] for c in chains)}


QDQ_VARIANTS = {
    # name: quantize_static settings (besides QDQ + per_channel=True + MinMax)
    "cls_qdq_pc": {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": True},
}


def constants_to_initializers(model) -> int:
    """Move ``Constant(value=tensor)`` nodes into graph.initializer (in place)."""
    import onnx

    keep, moved = [], 0
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            model.graph.initializer.append(t)
            moved += 1
        else:
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return moved


def quantize_cls(cls_path: Path, out_dir: Path, fixed_x, work: Path,
                 variant: str, qopts: dict) -> dict:
    import numpy as np
    import onnx
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    t0 = time.monotonic()
    fmodel = onnx.load(str(cls_path))
    src_opset = {o.domain or "ai.onnx": o.version for o in fmodel.opset_import}
    fmodel = version_converter.convert_version(fmodel, QDQ_OPSET)
    n_const = constants_to_initializers(fmodel)
    onnx.checker.check_model(fmodel)
    input_name = fmodel.graph.input[0].name
    shape = tuple(fixed_x.shape)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: make_input(shape, s)} for s in CALIB_SEEDS])

        def get_next(self):
            return next(self._it, None)

    fpath = work / f"cls_opset{QDQ_OPSET}_init.onnx"
    onnx.save(fmodel, str(fpath))
    qpath = out_dir / f"{variant}.onnx"
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)  # "Please consider pre-processing", "Expected bias ..." noise
    try:
        quantize_static(
            str(fpath),
            str(qpath),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=getattr(QuantType, qopts["activation_type"]),
            weight_type=getattr(QuantType, qopts["weight_type"]),
            reduce_range=qopts["reduce_range"],
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        root.setLevel(old)
    t_quant = time.monotonic() - t0

    qmodel = onnx.load(str(qpath))
    onnx.checker.check_model(qmodel)
    pattern = find_softmax_qdq(qmodel)
    if not pattern["present"]:
        raise SystemExit(f"{variant}.onnx: Softmax QDQ pattern not found: {pattern}")
    per_channel_dq = sum(
        1 for n in qmodel.graph.node
        if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
    )
    if per_channel_dq == 0:
        raise SystemExit(f"{variant}.onnx: no per-channel DequantizeLinear (weights not quantized as weights?)")
    from collections import Counter
    op_counts = dict(sorted(Counter(n.op_type for n in qmodel.graph.node).items()))

    # onnxruntime
    t1 = time.monotonic()
    ort_y = ort_session(qmodel).run(None, {input_name: fixed_x})[0]
    ort_noopt_y = ort_session(qmodel, optimize=False).run(None, {input_name: fixed_x})[0]
    fp32_y = ort_session(fmodel).run(None, {input_name: fixed_x})[0]
    # reference evaluator (opset import raised to REF_OPSET in memory, see docstring)
    rmodel = onnx.ModelProto()
    rmodel.CopyFrom(qmodel)
    for o in rmodel.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = REF_OPSET
    ref_y = ReferenceEvaluator(rmodel).run(None, {input_name: fixed_x})[0]
    t_eval = time.monotonic() - t1

    for name, y in (("ref", ref_y), ("ort", ort_y), ("ort_noopt", ort_noopt_y)):
        y = np.asarray(y)
        if y.shape != (1, 2) or not np.all(np.isfinite(y)) or abs(float(y.sum()) - 1.0) > 0.05:
            raise SystemExit(f"{variant} {name} output is not a probability pair: {y}")
        if float(y.min()) > 0.99:
            raise SystemExit(f"{variant} {name} output looks like the [1, 1] bug: {y}")
    notes = []
    ref_vs_noopt = float(np.abs(np.asarray(ref_y) - np.asarray(ort_noopt_y)).max())
    ref_vs_ort = float(np.abs(np.asarray(ref_y) - np.asarray(ort_y)).max())
    if ref_vs_noopt > 0.02:
        raise SystemExit(f"{variant}: reference {ref_y} disagrees with ORT_DISABLE_ALL {ort_noopt_y}")
    if ref_vs_ort > 0.05:
        notes.append(
            f"optimized ORT output differs from the reference by {ref_vs_ort:.3f} (max abs); "
            "ORT's fused int8 kernels on this CPU do not match QDQ semantics - use .ref.npy"
        )
    if float(np.asarray(ref_y).min()) < 0.05:
        notes.append("reference softmax is nearly saturated on the fixed input")
    for n in notes:
        print(f"warning: {variant}: {n}", file=sys.stderr)

    np.save(out_dir / f"{variant}.input.npy", fixed_x)
    np.save(out_dir / f"{variant}.ref.npy", np.asarray(ref_y))
    np.save(out_dir / f"{variant}.ort.npy", np.asarray(ort_y))
    np.save(out_dir / f"{variant}.ort_noopt.npy", np.asarray(ort_noopt_y))

    return {
        "file": qpath.name,
        "sha256": sha256_file(qpath),
        "source_model": cls_path.name,
        "source_opset": src_opset,
        "opset_import": {o.domain or "ai.onnx": o.version for o in qmodel.opset_import},
        "ir_version": qmodel.ir_version,
        "quantization": {
            "api": "onnxruntime.quantization.quantize_static",
            "quant_format": "QDQ",
            "per_channel": True,
            "activation_type": qopts["activation_type"],
            "weight_type": qopts["weight_type"],
            "reduce_range": qopts["reduce_range"],
            "calibrate_method": "MinMax",
            "preprocessing": (
                f"onnx.version_converter to opset {QDQ_OPSET}; {n_const} Constant nodes moved to "
                "initializers; no quant_pre_process (BatchNormalization stays unfused, float)"
            ),
            "calibration_inputs": f"{len(CALIB_SEEDS)} x make_input({list(shape)}, seed) for seeds {CALIB_SEEDS[0]}..{CALIB_SEEDS[-1]}",
        },
        "op_counts": op_counts,
        "per_channel_dequantize_nodes": per_channel_dq,
        "softmax_qdq_pattern": SOFTMAX_PATTERN,
        "softmax_qdq_pattern_present": pattern["present"],
        "softmax_qdq": pattern["chains"],
        "input_name": input_name,
        "input_shape": list(shape),
        "input_npy": f"{variant}.input.npy",
        "input_seed": INPUT_SEEDS["cls"],
        "ref_npy": f"{variant}.ref.npy",
        "ort_npy": f"{variant}.ort.npy",
        "ort_noopt_npy": f"{variant}.ort_noopt.npy",
        "max_abs_diff": {"ref_vs_ort": ref_vs_ort, "ref_vs_ort_noopt": ref_vs_noopt},
        "notes": notes,
        "reference_evaluator_opset_override": REF_OPSET,
        "outputs": {
            "ref": np.asarray(ref_y).tolist(),
            "ort": np.asarray(ort_y).tolist(),
            "ort_noopt": np.asarray(ort_noopt_y).tolist(),
            "fp32_ort": np.asarray(fp32_y).tolist(),
        },
        "seconds": {"quantize": round(t_quant, 2), "evaluate": round(t_eval, 2)},
    }


def host_info() -> dict:
    """CPU facts that matter for ORT's int8 kernels (VNNI vs vpmaddubsw)."""
    import platform

    info = {"machine": platform.machine()}
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
        info["cpu_flags"] = sorted(f for f in flags if f in {
            "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return info


def build(dest: Path, wheel_arg: str | None) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    times = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="outpost-rapidocr-") as td:
        tdp = Path(td)
        wheel = fetch_wheel(tdp, wheel_arg)
        times["download"] = round(time.monotonic() - t0, 2)
        wheel_sha = sha256_file(wheel)
        models = {}
        with zipfile.ZipFile(wheel) as zf:
            for key, (member, pinned, _shape) in MODELS.items():
                data = zf.read(member)
                got = sha256_bytes(data)
                if got != pinned:
                    raise SystemExit(f"{member}: sha256 {got} != pinned {pinned}")
                out = dest / Path(member).name
                out.write_bytes(data)
                models[key] = out

        entries = {}
        for key, (member, pinned, shape) in MODELS.items():
            t1 = time.monotonic()
            path = models[key]
            m = onnx.load(str(path))
            stem = path.stem
            x = make_input(shape, INPUT_SEEDS[key])
            sess = ort_session(path.read_bytes())
            in_name = sess.get_inputs()[0].name
            out_names = [o.name for o in sess.get_outputs()]
            ys = sess.run(None, {in_name: x})
            np.save(dest / f"{stem}.input.npy", x)
            np.save(dest / f"{stem}.ort.npy", ys[0])
            entries[key] = {
                "file": path.name,
                "sha256": pinned,
                "size": path.stat().st_size,
                "ir_version": m.ir_version,
                "opset_import": {o.domain or "ai.onnx": o.version for o in m.opset_import},
                "producer": f"{m.producer_name} {m.producer_version}".strip(),
                "input_name": in_name,
                "input_shape": list(x.shape),
                "input_dtype": "float32",
                "declared_input_shape": shape_of(m.graph.input[0]),
                "input_seed": INPUT_SEEDS[key],
                "input_npy": f"{stem}.input.npy",
                "input_npy_sha256": sha256_file(dest / f"{stem}.input.npy"),
                "input_range": [float(x.min()), float(x.max())],
                "output_names": out_names,
                "output_shapes": [list(y.shape) for y in ys],
                "declared_output_shapes": [shape_of(o) for o in m.graph.output],
                "ort_npy": f"{stem}.ort.npy",
                "ort_output_stats": {
                    "min": float(ys[0].min()),
                    "max": float(ys[0].max()),
                    "mean": float(ys[0].mean()),
                },
                "seconds": round(time.monotonic() - t1, 2),
            }
        times["reference_outputs"] = round(time.monotonic() - t0 - times["download"], 2)

        cls_x = np.load(dest / entries["cls"]["input_npy"])
        qdq = {}
        for variant, qopts in QDQ_VARIANTS.items():
            t2 = time.monotonic()
            qdq[variant] = quantize_cls(models["cls"], dest, cls_x, tdp, variant, qopts)
            times[variant] = round(time.monotonic() - t2, 2)

    manifest = {
        "rapidocr_onnxruntime": RAPIDOCR_VERSION,
        "wheel": WHEEL_NAME,
        "wheel_sha256": wheel_sha,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "numpy_version": np.__version__,
        "host": host_info(),
        "ort_session": "CPUExecutionProvider, intra/inter_op_num_threads=1, default graph optimizations",
        "input_generation": {
            "function": "scripts/fetch_rapidocr.py:make_input (LCG-driven, no numpy RNG)",
            "seeds": INPUT_SEEDS,
            "normalisation": "(uint8 / 255 - 0.5) / 0.5, HWC->NCHW (rapidocr det/rec/cls preprocessing)",
        },
        "models": entries,
        **qdq,
        "seconds": times,
    }
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if .complete exists")
    ap.add_argument("--cache", help="cache root (default ${OUTPOST_CACHE:-$HOME/.cache/outpost})")
    ap.add_argument("--wheel", help=f"use a local {WHEEL_NAME} instead of pip download")
    args = ap.parse_args()

    t0 = time.monotonic()
    base = cache_root(args.cache) / "rapidocr"
    dest = base / RAPIDOCR_VERSION
    stamp = dest / ".complete"
    if stamp.is_file() and not args.force:
        print(f"{dest}: already complete ({stamp.read_text().strip()}); use --force to rebuild")
        return 0

    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{RAPIDOCR_VERSION}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        manifest = build(tmp, args.wheel)
        manifest["seconds"]["total"] = round(time.monotonic() - t0, 2)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / ".complete").write_text(
            f"rapidocr_onnxruntime {RAPIDOCR_VERSION}: {len(manifest['models'])} models + "
            + " + ".join(QDQ_VARIANTS) + "\n"
        )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    for key, e in manifest["models"].items():
        print(
            f"{key}: {e['file']} sha256={e['sha256'][:16]}.. in {e['input_name']}{e['input_shape']} "
            f"-> {', '.join(f'{n}{s}' for n, s in zip(e['output_names'], e['output_shapes']))} ({e['seconds']}s)"
        )
    for variant in QDQ_VARIANTS:
        q = manifest[variant]
        print(
            f"{variant}: pattern {'->'.join(SOFTMAX_PATTERN)} present={q['softmax_qdq_pattern_present']} "
            f"ref={q['outputs']['ref']} ort={q['outputs']['ort']} ort_noopt={q['outputs']['ort_noopt']} "
            f"fp32={q['outputs']['fp32_ort']}"
        )
    print(f"wrote {dest} in {manifest['seconds']['total']}s ({manifest['seconds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
