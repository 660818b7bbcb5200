#!/usr/bin/env python3
"""Generate the digits reference models and goldens used by the runtime tests.

Writes into runtime/tests/fixtures/digits/ (override with --out):

  digits_test_x.npy / digits_test_y.npy   the fixed test split (float32 [N,64], int64 [N])
  {mlp,cnn}_{fp32,qdq_pt,qdq_pc,qop,dyn}.onnx
  <variant>.ref.npy                       output of onnx.reference.ReferenceEvaluator
  <variant>.ort.npy                       output of onnxruntime (CPU EP, graph optimizations disabled)
  manifest.json                           what each variant contains, accuracies, hashes, tool versions

Both models are trained here in plain numpy (Adam, fixed seeds), so nothing is downloaded.
Deterministic: BLAS/OpenMP threads are forced to 1 and every RNG is seeded, so a rerun with
the versions in scripts/requirements.txt reproduces byte-identical files.

Usage: python3 scripts/make_reference_models.py [--out DIR]
"""

import os

# Single-threaded BLAS/OpenMP before numpy / onnxruntime are imported: summation order (and so
# every trained weight) must not depend on the thread count of the machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import sklearn  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "runtime" / "tests" / "fixtures" / "digits"

OPSET = 17
# IR version 8 is the one that goes with opset 17 (onnx.helper.VERSION_TABLE); every
# onnxruntime since 1.13 loads it.
IR_VERSION = 8
SPLIT = {"test_size": 0.25, "random_state": 0, "stratify": "y", "shuffle": True}
CALIB_COUNT = 200  # first 200 images of the training split
CALIB_BATCH = 20
MS_DOMAIN = "com.microsoft"
FORMS = ("fp32", "qdq_pt", "qdq_pc", "qop", "dyn")

# QOperator: quantize only the compute ops (+ the ops that pass 8-bit through). With ORT's default
# list, Add and Softmax would also become com.microsoft QLinearAdd / QLinearSoftmax; we keep those
# two in float so the QOperator graphs contain exactly QLinearConv, QGemm and QLinearMatMul.
QOP_OP_TYPES = ["Conv", "Gemm", "MatMul", "Relu", "MaxPool", "Flatten"]


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def load_split():
    digits = load_digits()
    x = (digits.data.astype(np.float32) / np.float32(16.0)).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=SPLIT["test_size"], random_state=SPLIT["random_state"], stratify=y
    )
    return (
        np.ascontiguousarray(x_tr, dtype=np.float32),
        np.ascontiguousarray(x_te, dtype=np.float32),
        np.ascontiguousarray(y_tr, dtype=np.int64),
        np.ascontiguousarray(y_te, dtype=np.int64),
    )


# ----------------------------------------------------------------------------------------------
# tiny numpy trainer
# ----------------------------------------------------------------------------------------------
class Adam:
    def __init__(self, params, lr=3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
        self.params = params  # dict name -> array (updated in place)
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, weight_decay
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads):
        self.t += 1
        c1 = 1.0 - self.b1**self.t
        c2 = 1.0 - self.b2**self.t
        for k, p in self.params.items():
            g = grads[k]
            if self.wd and p.ndim > 1:  # decay weights, not biases
                g = g + self.wd * p
            self.m[k] = self.b1 * self.m[k] + (1.0 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1.0 - self.b2) * g * g
            upd = self.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + self.eps)
            p -= upd.astype(p.dtype)


def softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def xent_grad(logits, y):
    """Mean cross-entropy loss and its gradient w.r.t. the logits."""
    p = softmax_np(logits)
    n = logits.shape[0]
    loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
    g = p
    g[np.arange(n), y] -= 1.0
    return float(loss), (g / n).astype(np.float32)


def he(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def train_loop(params, forward_backward, x, y, *, epochs, batch, lr, seed, wd=1e-4):
    rng = np.random.default_rng(seed)
    opt = Adam(params, lr=lr, weight_decay=wd)
    n = x.shape[0]
    for ep in range(epochs):
        # simple step decay for the last third
        opt.lr = lr if ep < (2 * epochs) // 3 else lr * 0.2
        perm = rng.permutation(n)
        tot = 0.0
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            loss, grads = forward_backward(params, x[idx], y[idx])
            opt.step(grads)
            tot += loss * len(idx)
    return tot / n


# --- MLP: Gemm(64->32, transB=1) + Relu, MatMul(32->10) + Add, Softmax ---
def mlp_init(seed):
    rng = np.random.default_rng(seed)
    return {
        "W1": he(rng, (32, 64), 64),  # Gemm B with transB=1, i.e. [out, in]
        "b1": np.zeros(32, np.float32),
        "W2": he(rng, (32, 10), 32),  # MatMul B, [in, out]
        "b2": np.zeros(10, np.float32),
    }


def mlp_logits(p, x):
    h_pre = x @ p["W1"].T + p["b1"]
    h = np.maximum(h_pre, 0)
    return h @ p["W2"] + p["b2"], (h_pre, h)


def mlp_fb(p, x, y):
    logits, (h_pre, h) = mlp_logits(p, x)
    loss, g = xent_grad(logits, y)
    grads = {"W2": h.T @ g, "b2": g.sum(0)}
    gh = (g @ p["W2"].T) * (h_pre > 0)
    grads["W1"] = gh.T @ x
    grads["b1"] = gh.sum(0)
    return loss, grads


# --- CNN: Conv3x3(1->8)+Relu, Conv3x3(8->16)+Relu+MaxPool2, Flatten, Gemm(256->10), Softmax ---
def im2col(x):
    """x [B,C,8,8] -> cols [B*64, C*9] for a 3x3 kernel, stride 1, pad 1 (ONNX weight order)."""
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=2)
    # [B,C,9,H,W] -> [B,H,W,C,9]
    return np.ascontiguousarray(cols.transpose(0, 3, 4, 1, 2)).reshape(b * h * w, c * 9)


def col2im(dcols, shape):
    b, c, h, w = shape
    d = dcols.reshape(b, h, w, c, 9).transpose(0, 3, 4, 1, 2)  # [B,C,9,H,W]
    dxp = np.zeros((b, c, h + 2, w + 2), np.float32)
    k = 0
    for i in range(3):
        for j in range(3):
            dxp[:, :, i : i + h, j : j + w] += d[:, :, k]
            k += 1
    return dxp[:, :, 1 : h + 1, 1 : w + 1]


def conv_fwd(x, wt, bias):
    b, _, h, w = x.shape
    o = wt.shape[0]
    cols = im2col(x)
    out = cols @ wt.reshape(o, -1).T + bias
    return out.reshape(b, h, w, o).transpose(0, 3, 1, 2), cols


def conv_bwd(dout, cols, wt, x_shape):
    o = wt.shape[0]
    d = dout.transpose(0, 2, 3, 1).reshape(-1, o)
    dw = (d.T @ cols).reshape(wt.shape)
    db = d.sum(0)
    dx = col2im(d @ wt.reshape(o, -1), x_shape)
    return dx, dw, db


def maxpool_fwd(x):
    b, c, h, w = x.shape
    win = x.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)
    arg = win.argmax(-1)
    return np.take_along_axis(win, arg[..., None], -1)[..., 0], arg


def maxpool_bwd(dout, arg, x_shape):
    b, c, h, w = x_shape
    dwin = np.zeros((b, c, h // 2, w // 2, 4), np.float32)
    np.put_along_axis(dwin, arg[..., None], dout[..., None], -1)
    return dwin.reshape(b, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(x_shape)


def cnn_init(seed):
    rng = np.random.default_rng(seed)
    return {
        "Wc1": he(rng, (8, 1, 3, 3), 9),
        "bc1": np.zeros(8, np.float32),
        "Wc2": he(rng, (16, 8, 3, 3), 72),
        "bc2": np.zeros(16, np.float32),
        "Wf": he(rng, (10, 256), 256),  # Gemm B with transB=1
        "bf": np.zeros(10, np.float32),
    }


def cnn_forward(p, x):
    x = x.reshape(-1, 1, 8, 8)
    c1, cols1 = conv_fwd(x, p["Wc1"], p["bc1"])
    r1 = np.maximum(c1, 0)
    c2, cols2 = conv_fwd(r1, p["Wc2"], p["bc2"])
    r2 = np.maximum(c2, 0)
    pool, arg = maxpool_fwd(r2)
    flat = pool.reshape(x.shape[0], -1)
    logits = flat @ p["Wf"].T + p["bf"]
    return logits, (x, c1, cols1, r1, c2, cols2, r2, arg, flat)


def cnn_fb(p, x, y):
    logits, (x4, c1, cols1, r1, c2, cols2, r2, arg, flat) = cnn_forward(p, x)
    loss, g = xent_grad(logits, y)
    grads = {"Wf": g.T @ flat, "bf": g.sum(0)}
    dflat = g @ p["Wf"]
    dpool = dflat.reshape(-1, 16, 4, 4)
    dr2 = maxpool_bwd(dpool, arg, r2.shape) * (c2 > 0)
    dr1, grads["Wc2"], grads["bc2"] = conv_bwd(dr2, cols2, p["Wc2"], r1.shape)
    dc1 = dr1 * (c1 > 0)
    _, grads["Wc1"], grads["bc1"] = conv_bwd(dc1, cols1, p["Wc1"], x4.shape)
    return loss, grads


# ----------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------
def _finish(graph, name):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="outpost-make_reference_models",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    model.doc_string = f"Outpost digits {name} reference model (scripts/make_reference_models.py)"
    onnx.checker.check_model(model, full_check=True)
    return model


def export_mlp(p):
    inits = [
        numpy_helper.from_array(p["W1"], "fc1.weight"),
        numpy_helper.from_array(p["b1"], "fc1.bias"),
        numpy_helper.from_array(p["W2"], "fc2.weight"),
        numpy_helper.from_array(p["b2"], "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("MatMul", ["relu1_out", "fc2.weight"], ["fc2_mm"], name="fc2_matmul"),
        helper.make_node("Add", ["fc2_mm", "fc2.bias"], ["logits"], name="fc2_add"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    return _finish(graph, "mlp")


def export_cnn(p):
    inits = [
        numpy_helper.from_array(p["Wc1"], "conv1.weight"),
        numpy_helper.from_array(p["bc1"], "conv1.bias"),
        numpy_helper.from_array(p["Wc2"], "conv2.weight"),
        numpy_helper.from_array(p["bc2"], "conv2.bias"),
        numpy_helper.from_array(p["Wf"], "fc.weight"),
        numpy_helper.from_array(p["bf"], "fc.bias"),
    ]
    conv_attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1", **conv_attrs),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Conv", ["relu1_out", "conv2.weight", "conv2.bias"], ["conv2_out"], name="conv2", **conv_attrs),
        helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("MaxPool", ["relu2_out"], ["pool_out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool_out"], ["flat_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    return _finish(graph, "cnn")


def export_softmax_qdq():
    """Fallback model Q->DQ->Softmax->Q->DQ over [N,10] (only written if no QDQ variant has it)."""
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(1.0 / 256.0, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["x_q"], name="q_in"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_in"),
        helper.make_node("Softmax", ["x_dq"], ["sm"], name="softmax", axis=1),
        helper.make_node("QuantizeLinear", ["sm", "y_scale", "y_zp"], ["sm_q"], name="q_out"),
        helper.make_node("DequantizeLinear", ["sm_q", "y_scale", "y_zp"], ["probabilities"], name="dq_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "softmax_qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    return _finish(graph, "softmax_qdq")


# ----------------------------------------------------------------------------------------------
# quantization
# ----------------------------------------------------------------------------------------------
class DigitsCalibrationReader(CalibrationDataReader):
    def __init__(self, x, shape):
        self.batches = [
            np.ascontiguousarray(x[i : i + CALIB_BATCH].reshape((-1,) + shape), np.float32)
            for i in range(0, len(x), CALIB_BATCH)
        ]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return {"input": self.batches[self.pos - 1]}

    def rewind(self):
        self.pos = 0


def make_variants(name, fp32_model, calib_x, in_shape, out_dir, notes):
    """Writes {name}_{form}.onnx for every form; returns ({form: path or None}, {form: options})."""
    paths = {}
    fp32_path = out_dir / f"{name}_fp32.onnx"
    onnx.save_model(fp32_model, fp32_path)
    paths["fp32"] = fp32_path

    opts = {}
    with tempfile.TemporaryDirectory() as td:
        src = Path(td) / f"{name}_fp32.onnx"
        onnx.save_model(fp32_model, src)
        # reduce_range (7-bit int8 weights) where onnxruntime runs integer kernels (QOperator):
        # on x86 CPUs without VNNI its u8*s8 kernels add pairs of products in saturating int16,
        # so full-range int8 weights make ORT's output depend on the CPU (and differ from the exact
        # int32 math of the reference). The QDQ variants run as float ops with ORT's graph
        # optimizations disabled, so they keep full-range int8 weights.
        for form, fmt, per_channel, op_types, reduce_range in (
            ("qdq_pt", QuantFormat.QDQ, False, None, False),
            ("qdq_pc", QuantFormat.QDQ, True, None, False),
            ("qop", QuantFormat.QOperator, False, QOP_OP_TYPES, True),
        ):
            out = out_dir / f"{name}_{form}.onnx"
            try:
                quantize_static(
                    src,
                    out,
                    DigitsCalibrationReader(calib_x, in_shape),
                    quant_format=fmt,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    op_types_to_quantize=op_types,
                    calibrate_method=CalibrationMethod.MinMax,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
                paths[form] = out
                opts[form] = {
                    "api": "quantize_static",
                    "quant_format": fmt.name,
                    "per_channel": per_channel,
                    "reduce_range": reduce_range,
                    "activation_type": "QUInt8",
                    "weight_type": "QInt8",
                    "calibrate_method": "MinMax",
                    "calibration_images": int(len(calib_x)),
                    "op_types_to_quantize": op_types or "onnxruntime default",
                }
            except Exception as e:  # record and carry on
                paths[form] = None
                notes[f"{name}_{form}"] = f"quantize_static failed: {type(e).__name__}: {e}"

        # Dynamic: Conv must become ConvInteger. ORT's CPU ConvInteger kernel only takes uint8
        # weights, so the CNN uses QUInt8 weights (u8*u8 has no int16 saturation); the MLP keeps
        # QInt8 weights with reduce_range for the reason given above.
        if name == "cnn":
            op_types, wtype, reduce_range = ["MatMul", "Conv"], QuantType.QUInt8, False
        else:
            op_types, wtype, reduce_range = ["MatMul"], QuantType.QInt8, True
        out = out_dir / f"{name}_dyn.onnx"
        try:
            quantize_dynamic(src, out, op_types_to_quantize=op_types, per_channel=False,
                             reduce_range=reduce_range, weight_type=wtype)
            paths["dyn"] = out
            opts["dyn"] = {
                "api": "quantize_dynamic",
                "per_channel": False,
                "reduce_range": reduce_range,
                "weight_type": wtype.name,
                "op_types_to_quantize": op_types,
                "note": "quantize_dynamic rewrites Gemm as MatMul+Add, so Gemm also becomes MatMulInteger",
            }
        except Exception as e:
            paths["dyn"] = None
            notes[f"{name}_dyn"] = f"quantize_dynamic failed: {type(e).__name__}: {e}"
    return paths, opts


# ----------------------------------------------------------------------------------------------
# reference evaluator extensions (com.microsoft contrib ops)
# ----------------------------------------------------------------------------------------------
def _saturate_round(v, zp_dtype):
    info = np.iinfo(zp_dtype)
    return np.clip(np.rint(v), info.min, info.max).astype(zp_dtype)


class QGemm(OpRun):
    """com.microsoft QGemm, as onnxruntime's CPU kernel computes it.

    acc = (A' - a_zp) @ (B' - b_zp) + C            (int32; C already at scale a_scale*b_scale)
    Y   = acc * alpha * a_scale * b_scale          (float output when y_scale is absent)
    Y   = saturate(round_half_even(Y / y_scale) + y_zp)  (quantized output otherwise)
    b_scale / b_zero_point may be scalars or per-column (length N) vectors.
    """

    op_domain = MS_DOMAIN

    def _run(self, A, a_scale, a_zero_point, B, b_scale, b_zero_point=None, C=None,
             y_scale=None, y_zero_point=None, alpha=None, transA=None, transB=None):
        alpha = 1.0 if alpha is None else float(alpha)
        a = A.astype(np.int64)
        b = B.astype(np.int64)
        if transA:
            a = a.T
        if transB:
            b = b.T  # now [K, N]
        a = a - np.int64(np.asarray(a_zero_point).reshape(-1)[0])
        if b_zero_point is not None:
            b = b - np.asarray(b_zero_point).astype(np.int64).reshape(1, -1)
        acc = a @ b
        if C is not None:
            acc = acc + C.astype(np.int64)
        acc = acc.astype(np.int32)
        scale = (np.float32(alpha) * np.asarray(a_scale, np.float32).reshape(-1)[0]
                 * np.asarray(b_scale, np.float32).reshape(1, -1)).astype(np.float32)
        if y_scale is None:
            return ((acc.astype(np.float32) * scale).astype(np.float32),)
        scale = (scale / np.asarray(y_scale, np.float32).reshape(-1)[0]).astype(np.float32)
        zp = np.asarray(y_zero_point)
        v = acc.astype(np.float32) * scale + np.float32(zp.reshape(-1)[0])
        return (_saturate_round(v, zp.dtype),)


class QLinearSoftmax(OpRun):
    """com.microsoft QLinearSoftmax (only used if Softmax is ever quantized in QOperator form)."""

    op_domain = MS_DOMAIN

    def _run(self, X, X_scale, x_zero_point, y_scale, y_zero_point, axis=None, opset=None):
        if axis is None:
            axis = 1 if (opset or 13) < 13 else -1
        x = (X.astype(np.float32) - np.float32(x_zero_point)) * np.float32(X_scale)
        x = x - x.max(axis=axis, keepdims=True)
        e = np.exp(x)
        s = e / e.sum(axis=axis, keepdims=True)
        zp = np.asarray(y_zero_point)
        return (_saturate_round(s / np.float32(y_scale) + np.float32(zp), zp.dtype),)


def _per_axis(v, rank, axis):
    v = np.asarray(v)
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis % rank] = v.size
    return v.reshape(shape)


class DequantizeLinear(OpRun):
    """ai.onnx DequantizeLinear-13 for 8-bit integers.

    onnx 1.23's reference evaluator only ships DequantizeLinear for opset >= 19 and refuses to run
    it in an opset-17 model; for int8/uint8 inputs opset 13 and 19 have the same semantics.
    """

    op_domain = ""

    def _run(self, x, x_scale, x_zero_point=None, axis=None, block_size=None, output_dtype=None):
        # block_size / output_dtype are filled in from the newest schema's defaults; opset 13 has neither.
        if block_size or output_dtype:
            raise NotImplementedError("block_size/output_dtype are not part of DequantizeLinear-13")
        axis = 1 if axis is None else int(axis)
        xf = x.astype(np.float32)
        if x_zero_point is not None:
            xf = xf - _per_axis(x_zero_point, x.ndim, axis).astype(np.float32)
        return ((xf * _per_axis(x_scale, x.ndim, axis).astype(np.float32)).astype(np.float32),)


CUSTOM_OPS = [QGemm, QLinearSoftmax, DequantizeLinear]


# ----------------------------------------------------------------------------------------------
# analysis helpers
# ----------------------------------------------------------------------------------------------
def op_types(model):
    return sorted({(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}") for n in model.graph.node})


def op_counts(model):
    counts = {}
    for n in model.graph.node:
        k = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def has_softmax_qdq_pattern(model):
    """True if some Softmax has QuantizeLinear->DequantizeLinear->Softmax->QuantizeLinear->DequantizeLinear."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in model.graph.node:
        if n.op_type != "Softmax":
            continue
        dq = producer.get(n.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        for q2 in consumers.get(n.output[0], []):
            if q2.op_type != "QuantizeLinear":
                continue
            if any(dq2.op_type == "DequantizeLinear" for dq2 in consumers.get(q2.output[0], [])):
                return True
    return False


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_ort(path, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["probabilities"], {"input": x})[0], dtype=np.float32)


def run_ref(model, x):
    ev = ReferenceEvaluator(model, new_ops=CUSTOM_OPS)
    return np.asarray(ev.run(["probabilities"], {"input": x})[0], dtype=np.float32)


def accuracy(probs, y):
    return None if probs is None else round(float((probs.argmax(1) == y).mean() * 100.0), 4)


# ----------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.ERROR)  # quantizer chatter
    t0 = time.time()

    x_tr, x_te, y_tr, y_te = load_split()
    np.save(out_dir / "digits_test_x.npy", x_te)
    np.save(out_dir / "digits_test_y.npy", y_te)
    print(f"split: train {x_tr.shape} test {x_te.shape}")

    # --- train ---
    mlp_p = mlp_init(seed=1)
    loss = train_loop(mlp_p, mlp_fb, x_tr, y_tr, epochs=60, batch=32, lr=3e-3, seed=11)
    mlp_acc = (mlp_logits(mlp_p, x_te)[0].argmax(1) == y_te).mean() * 100
    print(f"mlp: final train loss {loss:.4f}, numpy test acc {mlp_acc:.2f}%  ({time.time() - t0:.1f}s)")

    cnn_p = cnn_init(seed=2)
    loss = train_loop(cnn_p, cnn_fb, x_tr, y_tr, epochs=30, batch=32, lr=3e-3, seed=12)
    cnn_acc = (cnn_forward(cnn_p, x_te)[0].argmax(1) == y_te).mean() * 100
    print(f"cnn: final train loss {loss:.4f}, numpy test acc {cnn_acc:.2f}%  ({time.time() - t0:.1f}s)")

    models = {
        "mlp": (export_mlp(mlp_p), (64,), ["N", 64]),
        "cnn": (export_cnn(cnn_p), (1, 8, 8), ["N", 1, 8, 8]),
    }
    calib_x = x_tr[:CALIB_COUNT]

    notes = {}
    entries = {}
    softmax_pattern_any = False
    for name, (fp32_model, in_shape, in_dims) in models.items():
        paths, qopts = make_variants(name, fp32_model, calib_x, in_shape, out_dir, notes)
        x_in = np.ascontiguousarray(x_te.reshape((-1,) + in_shape))
        for form in FORMS:
            variant = f"{name}_{form}"
            path = paths.get(form)
            if path is None:
                entries[variant] = {"file": None, "model": name, "form": form, "produced": False,
                                    "note": notes.get(variant)}
                continue
            model = onnx.load(path)
            # full_check adds strict shape inference, which onnx cannot do through com.microsoft ops
            # (onnx does not know their schemas; the checker skips those nodes).
            has_contrib = any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
            onnx.checker.check_model(model, full_check=not has_contrib)

            ort_out = run_ort(path, x_in)
            np.save(out_dir / f"{variant}.ort.npy", ort_out)
            try:
                ref_out = run_ref(model, x_in)
                np.save(out_dir / f"{variant}.ref.npy", ref_out)
            except Exception as e:
                ref_out = None
                notes[f"{variant}.ref"] = f"ReferenceEvaluator failed: {type(e).__name__}: {e}"

            pattern = has_softmax_qdq_pattern(model)
            softmax_pattern_any |= pattern and form.startswith("qdq")
            entries[variant] = {
                "file": path.name,
                "model": name,
                "form": form,
                "produced": True,
                "input": {"name": "input", "shape": in_dims, "dtype": "float32"},
                "output": {"name": "probabilities", "shape": ["N", 10], "dtype": "float32"},
                "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
                "ir_version": model.ir_version,
                "ops": op_types(model),
                "op_counts": op_counts(model),
                "has_softmax_qdq_pattern": pattern,
                "quantization": qopts.get(form),
                "golden_ref": f"{variant}.ref.npy" if ref_out is not None else None,
                "golden_ort": f"{variant}.ort.npy",
                "accuracy_ref": accuracy(ref_out, y_te),
                "accuracy_ort": accuracy(ort_out, y_te),
                "max_abs_diff_ref_vs_ort": None if ref_out is None else float(np.abs(ref_out - ort_out).max()),
                "argmax_mismatch_ref_vs_ort": None if ref_out is None else int((ref_out.argmax(1) != ort_out.argmax(1)).sum()),
                "size_bytes": path.stat().st_size,
                "sha256": sha256(path),
            }
            if ref_out is None:
                entries[variant]["note"] = notes.get(f"{variant}.ref")

    if not softmax_pattern_any:
        # ORT did not quantize Softmax in QDQ form: ship a tiny model that has the pattern.
        path = out_dir / "softmax_qdq.onnx"
        model = export_softmax_qdq()
        onnx.save_model(model, path)
        rng = np.random.default_rng(3)
        xs = (rng.standard_normal((64, 10)) * 4).astype(np.float32)
        np.save(out_dir / "softmax_qdq_x.npy", xs)
        ort_out = run_ort(path, xs)
        ref_out = run_ref(model, xs)
        np.save(out_dir / "softmax_qdq.ort.npy", ort_out)
        np.save(out_dir / "softmax_qdq.ref.npy", ref_out)
        entries["softmax_qdq"] = {
            "file": path.name, "model": "softmax", "form": "qdq_pt", "produced": True,
            "input": {"name": "input", "shape": ["N", 10], "dtype": "float32", "data": "softmax_qdq_x.npy"},
            "output": {"name": "probabilities", "shape": ["N", 10], "dtype": "float32"},
            "ops": op_types(model), "op_counts": op_counts(model),
            "has_softmax_qdq_pattern": has_softmax_qdq_pattern(model),
            "golden_ref": "softmax_qdq.ref.npy", "golden_ort": "softmax_qdq.ort.npy",
            "accuracy_ref": None, "accuracy_ort": None,
            "max_abs_diff_ref_vs_ort": float(np.abs(ref_out - ort_out).max()),
            "size_bytes": path.stat().st_size, "sha256": sha256(path),
        }

    manifest = {
        "generator": "scripts/make_reference_models.py",
        "dataset": {
            "source": "sklearn.datasets.load_digits (bundled with scikit-learn, no download)",
            "preprocessing": "pixels (0..16) as float32 divided by 16",
            "split": {**SPLIT, "function": "sklearn.model_selection.train_test_split"},
            "n_train": int(len(y_tr)),
            "n_test": int(len(y_te)),
            "test_x": {"file": "digits_test_x.npy", "dtype": "float32", "shape": list(x_te.shape),
                        "sha256": sha256(out_dir / "digits_test_x.npy")},
            "test_y": {"file": "digits_test_y.npy", "dtype": "int64", "shape": list(y_te.shape),
                        "sha256": sha256(out_dir / "digits_test_y.npy")},
            "calibration": f"first {CALIB_COUNT} training images, batches of {CALIB_BATCH}, MinMax",
            "cnn_input": "the same rows reshaped to [N,1,8,8]",
        },
        "goldens": {
            "ref": "onnx.reference.ReferenceEvaluator (+ custom OpRuns: com.microsoft QGemm/QLinearSoftmax, ai.onnx DequantizeLinear-13)",
            "ort": "onnxruntime InferenceSession, CPUExecutionProvider, ORT_DISABLE_ALL, 1 thread",
            "dtype": "float32", "shape": ["N_test", 10],
        },
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "opset": OPSET,
        "ir_version_fp32": IR_VERSION,
        "softmax_qdq_pattern_in": sorted(k for k, v in entries.items() if v.get("has_softmax_qdq_pattern")),
        # every problem met: a variant that could not be produced or a failed reference run
        "problems": notes,
        "caveats": [
            "onnxruntime's u8*s8 integer kernels on x86 CPUs without VNNI sum pairs of products in "
            "saturating int16; the qop variants and mlp_dyn therefore use reduce_range (7-bit int8 "
            "weights) so ORT's integer results equal exact int32 math on any CPU.",
            "The .ref goldens are the exact-math reference; quantized intermediates match ORT exactly, "
            "float outputs differ by float rounding only (see max_abs_diff_ref_vs_ort).",
            "Byte-identical reruns are guaranteed for the pinned versions on the same kind of CPU; "
            "BLAS/MLAS float kernels on another ISA may change the last bits of trained weights or "
            "calibration ranges.",
        ],
        "variants": entries,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")

    # --- summary ---
    print()
    hdr = f"{'variant':<12} {'acc ref':>8} {'acc ort':>8} {'maxdiff':>10} {'size':>7}  ops"
    print(hdr)
    print("-" * len(hdr))
    for k, v in entries.items():
        if not v.get("produced"):
            print(f"{k:<12} NOT PRODUCED: {v.get('note')}")
            continue
        ar = "-" if v["accuracy_ref"] is None else f"{v['accuracy_ref']:.2f}"
        ao = "-" if v["accuracy_ort"] is None else f"{v['accuracy_ort']:.2f}"
        md = "-" if v["max_abs_diff_ref_vs_ort"] is None else f"{v['max_abs_diff_ref_vs_ort']:.3g}"
        pat = " [Q-DQ-Softmax-Q-DQ]" if v["has_softmax_qdq_pattern"] else ""
        print(f"{k:<12} {ar:>8} {ao:>8} {md:>10} {v['size_bytes']:>7}  {','.join(v['ops'])}{pat}")
    total = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    print(f"\nfixture folder {out_dir}: {total} bytes in {sum(1 for _ in out_dir.iterdir())} files")
    if notes:
        print("notes:")
        for k, v in notes.items():
            print(f"  {k}: {v}")
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
