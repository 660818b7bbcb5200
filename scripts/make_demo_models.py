#!/usr/bin/env python3
"""Writes the deliberately bad model of `outpost demo`:
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


if __name__ == "__main__":
    main()
