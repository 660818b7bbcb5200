#!/usr/bin/env python3
"""Generate agent/tests/fixtures/digits_lookup_bug.onnx: the digits MLP
(runtime/tests/fixtures/digits/mlp_fp32.onnx) with a bucket lookup that has
an off-by-one bug, for the agent's health-check test.

The lookup computes a bucket index from the first pixel, floor(px0 * 64),
and reads the row's pixel at that index with GatherElements (axis 1, 64
columns); the value is added to every logit. For px0 < 1 the index is in
range, and in the digits data px0 is always 0, so the model reproduces the
MLP exactly and passes its golden self-test. For px0 == 1.0, a value the
input schema accepts ([0, 1]), the index is 64: every engine fails the
request (tract: "Invalid GatherElements index 64"; onnxruntime: "Out of
range value in index tensor"), which is what a device's breaker counts.

Deterministic (no randomness); rerun after changing the MLP fixture.
Usage: python3 scripts/make_lookup_bug_model.py
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "runtime/tests/fixtures/digits/mlp_fp32.onnx"
OUT = ROOT / "agent/tests/fixtures/digits_lookup_bug.onnx"


def main() -> None:
    m = onnx.load(str(SRC))
    g = m.graph
    # The softmax now reads the looked-up logits.
    softmax = next(n for n in g.node if n.op_type == "Softmax")
    softmax.input[0] = "logits_lookup"
    consts = {
        "lk.starts": np.array([0], np.int64),
        "lk.ends": np.array([1], np.int64),
        "lk.axes": np.array([1], np.int64),
        "lk.buckets": np.array(64.0, np.float32),
    }
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    nodes = [
        helper.make_node("Slice", ["input", "lk.starts", "lk.ends", "lk.axes"], ["lk.px0"]),
        helper.make_node("Mul", ["lk.px0", "lk.buckets"], ["lk.scaled"]),
        helper.make_node("Floor", ["lk.scaled"], ["lk.floor"]),
        helper.make_node("Cast", ["lk.floor"], ["lk.index"], to=TensorProto.INT64),
        helper.make_node("GatherElements", ["input", "lk.index"], ["lk.value"], axis=1),
        helper.make_node("Add", ["logits", "lk.value"], ["logits_lookup"]),
    ]
    at = list(g.node).index(softmax)
    for i, n in enumerate(nodes):
        g.node.insert(at + i, n)
    onnx.checker.check_model(m)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(OUT))
    check(m)


def check(m: onnx.ModelProto) -> None:
    """The lookup is harmless on the digits rows and fails at px0 == 1."""
    import onnxruntime as ort

    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(SRC), providers=["CPUExecutionProvider"])
    x = np.load(ROOT / "runtime/tests/fixtures/digits/digits_test_x.npy")[:8]
    assert np.allclose(s.run(None, {"input": x})[0], ref.run(None, {"input": x})[0])
    bad = x.copy()
    bad[:, 0] = 1.0
    try:
        s.run(None, {"input": bad})
    except Exception as e:  # onnxruntime raises its own exception types
        print(f"wrote {OUT.relative_to(ROOT)}; px0 = 1 fails: {str(e).splitlines()[0][:120]}")
        return
    raise SystemExit("the lookup bug did not trigger")


if __name__ == "__main__":
    main()
