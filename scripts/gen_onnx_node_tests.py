#!/usr/bin/env python3
"""Generate the ONNX backend *node* test cases from the pinned ``onnx`` package.

The onnx wheel (1.23.2) does not ship ``onnx/backend/test/data/node`` but it
does ship the case generators (``onnx/backend/test/case/node/*.py``).  This
script runs them through ``onnx.backend.test.case.node.collect_testcases`` and
writes every case in the standard backend-test layout::

    $CACHE/onnx-node-tests/onnx-<version>/<case name>/model.onnx
    $CACHE/onnx-node-tests/onnx-<version>/<case name>/test_data_set_0/input_<i>.pb
    $CACHE/onnx-node-tests/onnx-<version>/<case name>/test_data_set_0/output_<i>.pb

with ``$CACHE = ${OUTPOST_CACHE:-$HOME/.cache/outpost}``.

Value serialisation follows ``onnx.backend.test.cmd_tools.generate_data`` (the
code upstream uses to produce the checked-in data), keyed on the *graph*
input/output type:

* tensor_type   -> ``TensorProto``   (numpy_helper.from_array, or the
                    generator's TensorProto as-is for e.g. float8/int4/string)
* sequence_type -> ``SequenceProto`` (numpy_helper.from_list)
* optional_type -> ``OptionalProto`` (numpy_helper.from_optional)
* map_type      -> ``MapProto``      (numpy_helper.from_dict)

So a ``.pb`` file is only guaranteed to be a ``TensorProto`` when the matching
graph input/output has a tensor type; ``cases.json`` records the kind of every
value so a consumer can pick the right proto message.

Extras written next to the cases:

* ``cases.json`` - one entry per case: name, ir_version, opset imports,
  rtol/atol, and the name/kind of each input and output.
* ``.complete``  - stamp with the number of cases; when present (and the onnx
  version matches) the script does nothing unless ``--force`` is given.

The global numpy RNG is seeded (``--seed``, default 0) before collection so
that generators using ``np.random`` produce the same data on every run.

Usage::

    python3 scripts/gen_onnx_node_tests.py [--force] [--cache DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path


def cache_root(override: str | None) -> Path:
    if override:
        return Path(override)
    env = os.environ.get("OUTPOST_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "outpost"


def _value_kind(type_proto) -> str:
    which = type_proto.WhichOneof("value")
    return {
        "tensor_type": "tensor",
        "sequence_type": "sequence",
        "optional_type": "optional",
        "map_type": "map",
        "sparse_tensor_type": "sparse_tensor",
    }.get(which, str(which))


def _serialize_value(value, value_info) -> bytes:
    """Mirror of onnx.backend.test.cmd_tools.generate_data's value encoding."""
    from onnx import TensorProto, numpy_helper

    t = value_info.type
    name = value_info.name
    if t.HasField("map_type"):
        return numpy_helper.from_dict(value, name).SerializeToString()
    if t.HasField("sequence_type"):
        return numpy_helper.from_list(value, name).SerializeToString()
    if t.HasField("optional_type"):
        return numpy_helper.from_optional(value, name).SerializeToString()
    if not t.HasField("tensor_type"):
        raise ValueError(f"unsupported value type for {name!r}: {t}")
    if isinstance(value, TensorProto):
        return value.SerializeToString()
    return numpy_helper.from_array(value, name).SerializeToString()


def write_case(case, out_dir: Path) -> dict:
    model = case.model
    assert model is not None, case.name
    assert case.data_sets, case.name
    out_dir.mkdir(parents=True)
    (out_dir / "model.onnx").write_bytes(model.SerializeToString())
    graph_inputs = list(model.graph.input)
    graph_outputs = list(model.graph.output)
    for ds_idx, (inputs, outputs) in enumerate(case.data_sets):
        ds_dir = out_dir / f"test_data_set_{ds_idx}"
        ds_dir.mkdir()
        if len(inputs) > len(graph_inputs) or len(outputs) > len(graph_outputs):
            raise ValueError(
                f"{case.name}: {len(inputs)} inputs/{len(outputs)} outputs for a graph "
                f"with {len(graph_inputs)}/{len(graph_outputs)}"
            )
        for j, value in enumerate(inputs):
            (ds_dir / f"input_{j}.pb").write_bytes(
                _serialize_value(value, graph_inputs[j])
            )
        for j, value in enumerate(outputs):
            (ds_dir / f"output_{j}.pb").write_bytes(
                _serialize_value(value, graph_outputs[j])
            )
    return {
        "name": case.name,
        "ir_version": model.ir_version,
        "opset_import": {op.domain or "ai.onnx": op.version for op in model.opset_import},
        "rtol": case.rtol,
        "atol": case.atol,
        "data_sets": len(case.data_sets),
        "inputs": [
            {"name": vi.name, "kind": _value_kind(vi.type)}
            for vi in graph_inputs[: len(case.data_sets[0][0])]
        ],
        "outputs": [
            {"name": vi.name, "kind": _value_kind(vi.type)}
            for vi in graph_outputs[: len(case.data_sets[0][1])]
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="regenerate even if .complete exists")
    ap.add_argument("--cache", help="cache root (default ${OUTPOST_CACHE:-$HOME/.cache/outpost})")
    ap.add_argument("--seed", type=int, default=0, help="numpy global RNG seed (default 0)")
    args = ap.parse_args()

    t0 = time.monotonic()
    import numpy as np
    import onnx

    version = onnx.__version__
    base = cache_root(args.cache) / "onnx-node-tests"
    dest = base / f"onnx-{version}"
    stamp = dest / ".complete"

    if stamp.is_file() and not args.force:
        print(f"{dest}: already complete ({stamp.read_text().strip()}); use --force to regenerate")
        return 0

    from onnx.backend.test.case import node as node_cases

    np.random.seed(args.seed)
    with warnings.catch_warnings():
        # The generators intentionally produce inf/nan/overflow values.
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases(op_type=None)
    t_collect = time.monotonic() - t0

    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate case names from onnx generators")

    # Build into a temp dir and swap in at the end, so an interrupted run never
    # leaves a half-written tree that looks complete.
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-onnx-{version}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    index = []
    kinds: dict[str, int] = {}
    try:
        for case in sorted(cases, key=lambda c: c.name):
            if case.kind != "node":
                continue
            entry = write_case(case, tmp / case.name)
            for v in entry["inputs"] + entry["outputs"]:
                kinds[v["kind"]] = kinds.get(v["kind"], 0) + 1
            index.append(entry)
        meta = {
            "onnx_version": version,
            "numpy_version": np.__version__,
            "seed": args.seed,
            "count": len(index),
            "value_kinds": kinds,
            "value_encoding": {
                "tensor": "onnx.TensorProto",
                "sequence": "onnx.SequenceProto (numpy_helper.from_list)",
                "optional": "onnx.OptionalProto (numpy_helper.from_optional)",
                "map": "onnx.MapProto (numpy_helper.from_dict)",
            },
            "cases": index,
        }
        (tmp / "cases.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        (tmp / ".complete").write_text(f"{len(index)}\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    elapsed = time.monotonic() - t0
    print(
        f"wrote {len(index)} onnx {version} node test cases to {dest} "
        f"in {elapsed:.1f}s (collect {t_collect:.1f}s); value kinds: "
        + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
