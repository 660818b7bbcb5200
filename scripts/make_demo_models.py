#!/usr/bin/env python3
"""Writes the deliberately bad models of `outpost demo` and the
whole-system tests.

fleet-server/demo/digits_slow.onnx is the same MLP behind a 64→2048→64
linear detour whose product is the identity (B = pinv(A)): same answers
(to float rounding), about ten times the arithmetic, for the latency gate.

fleet-server/demo/digits_rotated.onnx is the bundled int8 digits MLP
(runtime/tests/fixtures/digits/mlp_qdq_pc.onnx) with its class order rotated by
one: a packaging mistake (labels in the wrong order) that keeps confidence
and output distribution unchanged and drops accuracy to about zero. The
demo's canary rollout must catch it on the accuracy gate.

Deterministic: the same input gives the same bytes.
"""
import pathlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "runtime/tests/fixtures/digits/mlp_qdq_pc.onnx"
DST = ROOT / "fleet-server/demo/digits_rotated.onnx"
SLOW = ROOT / "fleet-server/demo/digits_slow.onnx"
WIDTH = 2048


def main() -> None:
    m = onnx.load(SRC)
    g = m.graph
    out = g.output[0].name  # "probabilities"
    raw = out + "_in_training_order"
    for n in g.node:
        n.output[:] = [raw if o == out else o for o in n.output]
    perm = numpy_helper.from_array(np.array([(i + 1) % 10 for i in range(10)], dtype=np.int64), "class_rotation")
    g.initializer.append(perm)
    g.node.append(helper.make_node("Gather", [raw, "class_rotation"], [out], axis=1, name="rotate_classes"))
    onnx.checker.check_model(m)
    DST.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, DST)
    print(f"wrote {DST.relative_to(ROOT)} ({DST.stat().st_size} bytes)")
    slow()


def slow() -> None:
    m = onnx.load(SRC)
    g = m.graph
    inp = g.input[0].name  # "input"
    detour = inp + "_after_detour"
    for n in g.node:
        n.input[:] = [detour if i == inp else i for i in n.input]
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((64, WIDTH)) / np.sqrt(64)).astype(np.float32)
    b = np.linalg.pinv(a.astype(np.float64)).astype(np.float32)
    g.initializer.extend([numpy_helper.from_array(a, "detour_a"), numpy_helper.from_array(b, "detour_b")])
    g.node.insert(0, helper.make_node("MatMul", [inp, "detour_a"], ["detour_wide"], name="detour_out"))
    g.node.insert(1, helper.make_node("MatMul", ["detour_wide", "detour_b"], [detour], name="detour_back"))
    onnx.checker.check_model(m)
    onnx.save(m, SLOW)
    print(f"wrote {SLOW.relative_to(ROOT)} ({SLOW.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
