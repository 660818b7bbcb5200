//! Execution: for one set of input shapes, every value's shape, a buffer per
//! live value (reused once its last reader ran), and one recorded dispatch
//! per kernel. Plans are built on the first call with new shapes and kept.

use std::sync::Arc;

use super::context::{Gpu, Kernel, engine_error};
use super::host::{broadcast, broadcast_strides, reshape_dims};
use super::lower::{Act, AutoPad, DType, Graph, Op, Reshape, Source, UnaryOp, ValueId, Window};
use crate::error::{Error, Result};

const MAX_RANK: usize = 6;

/// One kernel launch.
struct Step {
    kernel: Kernel,
    bind: wgpu::BindGroup,
    groups: (u32, u32, u32),
}

/// A graph specialised to input shapes.
pub(crate) struct Plan {
    shapes: Vec<Vec<usize>>,
    steps: Vec<Step>,
    /// Buffer of each value (computed and inputs); constants live in the engine.
    inputs: Vec<Arc<wgpu::Buffer>>,
    outputs: Vec<(usize, Arc<wgpu::Buffer>)>,
    staging: Vec<wgpu::Buffer>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("steps", &self.steps.len())
            .finish()
    }
}

fn plan_err(node: &str, what: impl std::fmt::Display) -> Error {
    engine_error("planning", format!("node {node:?}: {what}"))
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

/// Output spatial size and begin padding of one window axis.
fn window_axis(w: &Window, i: usize, input: usize, ceil_mode: bool) -> Option<(usize, usize)> {
    let (k, s, d) = (w.kernel[i], w.strides[i], w.dilations[i]);
    let r = w.kernel.len();
    let span = d * (k - 1) + 1;
    match w.auto_pad {
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = input.div_ceil(s);
            let total = ((out - 1) * s + span).saturating_sub(input);
            let begin = if w.auto_pad == AutoPad::SameUpper {
                total / 2
            } else {
                total - total / 2
            };
            Some((out, begin))
        }
        AutoPad::Valid => Some(((input.checked_sub(span)?) / s + 1, 0)),
        AutoPad::NotSet => {
            let padded = input + w.pads[i] + w.pads[i + r];
            let room = padded.checked_sub(span)?;
            let mut out = if ceil_mode {
                room.div_ceil(s)
            } else {
                room / s
            } + 1;
            // A last window that starts in the end padding is dropped.
            if ceil_mode && (out - 1) * s >= input + w.pads[i] {
                out -= 1;
            }
            Some((out, w.pads[i]))
        }
    }
}

fn groups_1d(n: usize) -> (u32, u32, u32) {
    let groups = n.div_ceil(64).max(1);
    let x = groups.min(65535);
    (x as u32, groups.div_ceil(x) as u32, 1)
}

fn f(v: f32) -> u32 {
    v.to_bits()
}

/// Params of the copy kernel for a region of `dims` read at `src` strides
/// (elements, may be negative) and written at `dst` strides.
fn copy_params(
    dims: &[usize],
    src: &[i64],
    src_off: i64,
    dst: &[usize],
    dst_off: usize,
) -> Vec<u32> {
    let mut p = vec![numel(dims) as u32, dims.len() as u32];
    let pad = |v: &mut Vec<u32>, xs: Vec<u32>| {
        let len = xs.len();
        v.extend(xs);
        v.extend(std::iter::repeat_n(1, MAX_RANK - len));
    };
    pad(&mut p, dims.iter().map(|&d| d as u32).collect());
    pad(&mut p, src.iter().map(|&s| s as i32 as u32).collect());
    p.push(src_off as i32 as u32);
    pad(&mut p, dst.iter().map(|&s| s as u32).collect());
    p.push(dst_off as u32);
    p
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// A dispatch before buffers are bound: kernel, params, inputs.
struct Launch {
    kernel: Kernel,
    params: Vec<u32>,
    inputs: Vec<ValueId>,
    /// Extra constant operands (per-channel parameters) as host data.
    extra: Vec<Vec<f32>>,
    groups: (u32, u32, u32),
}

impl Launch {
    fn linear(kernel: Kernel, params: Vec<u32>, inputs: Vec<ValueId>, n: usize) -> Launch {
        Launch {
            kernel,
            params,
            inputs,
            extra: vec![],
            groups: groups_1d(n),
        }
    }
}

/// Shapes of every value, and the launches of each node.
type Specialised = (Vec<Vec<usize>>, Vec<Vec<Launch>>);

/// An output's shape, values and element type.
pub(crate) type Output = (Vec<usize>, Vec<f32>, DType);

/// Shapes of every value and the launches of every node.
fn specialise(g: &Graph, input_shapes: &[Vec<usize>]) -> Result<Specialised> {
    let mut shapes: Vec<Vec<usize>> = vec![vec![]; g.values.len()];
    for (id, v) in g.values.iter().enumerate() {
        match &v.source {
            Source::Input(i) => {
                shapes[id] = input_shapes
                    .get(*i)
                    .cloned()
                    .ok_or_else(|| engine_error("planning", "missing input"))?;
            }
            Source::Const(k) => shapes[id] = k.shape.clone(),
            Source::Node => {}
        }
    }
    let mut launches = Vec::with_capacity(g.nodes.len());
    for node in &g.nodes {
        let err = |what: &str| plan_err(&node.name, what);
        let ins: Vec<&[usize]> = node.inputs.iter().map(|&i| shapes[i].as_slice()).collect();
        let x = ins.first().copied().unwrap_or(&[]);
        let out_id = node.output;
        let mut l = vec![];
        let out_shape: Vec<usize> = match &node.op {
            Op::Unary {
                op,
                alpha,
                beta,
                lo,
                hi,
                channel,
            } => {
                let n = numel(x);
                let (inner, c, s, z) = match channel {
                    Some((axis, s, z)) if s.len() > 1 => {
                        let axis = *axis;
                        if x.get(axis) != Some(&s.len()) {
                            return Err(err("per-channel parameters do not match the axis"));
                        }
                        (numel(&x[axis + 1..]), s.len(), s.clone(), z.clone())
                    }
                    Some((_, s, z)) => (1, 1, s.clone(), z.clone()),
                    None => (1, 1, vec![1.0], vec![0.0]),
                };
                let p = vec![
                    n as u32,
                    *op as u32,
                    inner.max(1) as u32,
                    c as u32,
                    f(*alpha),
                    f(*beta),
                    f(*lo),
                    f(*hi),
                ];
                let mut launch = Launch::linear(Kernel::Unary, p, vec![node.inputs[0]], n);
                launch.extra = vec![s, z];
                l.push(launch);
                x.to_vec()
            }
            Op::Binary(op) => {
                let (a, b) = (ins[0], ins[1]);
                let out = broadcast(a, b).ok_or_else(|| err("shapes do not broadcast"))?;
                if out.len() > MAX_RANK {
                    return Err(err("rank above 6"));
                }
                let mut p = vec![numel(&out) as u32, *op as u32, out.len() as u32];
                let pad = |p: &mut Vec<u32>, v: Vec<usize>| {
                    let len = v.len();
                    p.extend(v.into_iter().map(|d| d as u32));
                    p.extend(std::iter::repeat_n(1, MAX_RANK - len));
                };
                pad(&mut p, out.clone());
                pad(&mut p, broadcast_strides(a, &out));
                pad(&mut p, broadcast_strides(b, &out));
                l.push(Launch::linear(
                    Kernel::Binary,
                    p,
                    node.inputs.clone(),
                    numel(&out),
                ));
                out
            }
            Op::Alias(r) => match r {
                Reshape::Same => x.to_vec(),
                Reshape::To { shape, allowzero } => {
                    reshape_dims(x, shape, *allowzero).map_err(|e| err(&e))?
                }
                Reshape::Flatten(axis) => {
                    let a = if *axis < 0 {
                        axis + x.len() as i64
                    } else {
                        *axis
                    };
                    let a = usize::try_from(a)
                        .ok()
                        .filter(|&a| a <= x.len())
                        .ok_or_else(|| err("axis"))?;
                    vec![numel(&x[..a]), numel(&x[a..])]
                }
                Reshape::Squeeze(axes) => {
                    let axes: Vec<usize> = match axes {
                        Some(a) => a
                            .iter()
                            .map(|&a| norm_axis(a, x.len()).ok_or_else(|| err("axis")))
                            .collect::<Result<_>>()?,
                        None => (0..x.len()).filter(|&i| x[i] == 1).collect(),
                    };
                    (0..x.len())
                        .filter(|i| !axes.contains(i))
                        .map(|i| x[i])
                        .collect()
                }
                Reshape::Unsqueeze(axes) => {
                    let r = x.len() + axes.len();
                    let mut axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| norm_axis(a, r).ok_or_else(|| err("axis")))
                        .collect::<Result<_>>()?;
                    axes.sort_unstable();
                    let mut s = x.to_vec();
                    for a in axes {
                        s.insert(a, 1);
                    }
                    s
                }
            },
            Op::Transpose(perm) => {
                let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..x.len()).rev().collect());
                if perm.len() != x.len() || x.len() > MAX_RANK {
                    return Err(err("permutation"));
                }
                let st = strides(x);
                let out: Vec<usize> = perm
                    .iter()
                    .map(|&p| x.get(p).copied().unwrap_or(1))
                    .collect();
                let src: Vec<i64> = perm
                    .iter()
                    .map(|&p| st.get(p).copied().unwrap_or(0) as i64)
                    .collect();
                let p = copy_params(&out, &src, 0, &strides(&out), 0);
                l.push(Launch::linear(
                    Kernel::Copy,
                    p,
                    vec![node.inputs[0]],
                    numel(&out),
                ));
                out
            }
            Op::Concat(axis) => {
                let axis = norm_axis(*axis, x.len()).ok_or_else(|| err("axis"))?;
                let mut out = x.to_vec();
                out[axis] = ins.iter().map(|s| s.get(axis).copied().unwrap_or(0)).sum();
                if x.len() > MAX_RANK {
                    return Err(err("rank above 6"));
                }
                let ost = strides(&out);
                let mut off = 0;
                for (s, &id) in ins.iter().zip(&node.inputs) {
                    if s.len() != out.len() {
                        return Err(err("inputs of different ranks"));
                    }
                    if numel(s) > 0 {
                        let src: Vec<i64> = strides(s).iter().map(|&v| v as i64).collect();
                        let p = copy_params(s, &src, 0, &ost, off * ost[axis]);
                        l.push(Launch::linear(Kernel::Copy, p, vec![id], numel(s)));
                    }
                    off += s[axis];
                }
                out
            }
            Op::Slice {
                starts,
                ends,
                axes,
                steps,
            } => {
                let r = x.len();
                let axes: Vec<usize> = match axes {
                    Some(a) => a
                        .iter()
                        .map(|&a| norm_axis(a, r).ok_or_else(|| err("axis")))
                        .collect::<Result<_>>()?,
                    None => (0..starts.len()).collect(),
                };
                let st = strides(x);
                let mut out = x.to_vec();
                let mut src: Vec<i64> = st.iter().map(|&v| v as i64).collect();
                let mut off = 0i64;
                for (j, &a) in axes.iter().enumerate() {
                    let dim = x[a] as i64;
                    let step = steps.as_ref().and_then(|s| s.get(j).copied()).unwrap_or(1);
                    if step == 0 {
                        return Err(err("zero step"));
                    }
                    let clampi = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
                    let fix = |v: i64| if v < 0 { v + dim } else { v };
                    let (s, e) = (
                        starts.get(j).copied().unwrap_or(0),
                        ends.get(j).copied().unwrap_or(i64::MAX),
                    );
                    let (s, e) = if step > 0 {
                        (clampi(fix(s), 0, dim), clampi(fix(e), 0, dim))
                    } else {
                        (clampi(fix(s), 0, dim - 1), clampi(fix(e), -1, dim - 1))
                    };
                    let len = if step > 0 {
                        ((e - s).max(0) + step - 1) / step
                    } else {
                        ((s - e).max(0) + (-step) - 1) / (-step)
                    };
                    out[a] = len as usize;
                    off += s * st[a] as i64;
                    src[a] = st[a] as i64 * step;
                }
                if r > MAX_RANK {
                    return Err(err("rank above 6"));
                }
                if numel(&out) > 0 {
                    let p = copy_params(&out, &src, off, &strides(&out), 0);
                    l.push(Launch::linear(
                        Kernel::Copy,
                        p,
                        vec![node.inputs[0]],
                        numel(&out),
                    ));
                }
                out
            }
            Op::Expand(shape) => {
                let target: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
                let out = broadcast(x, &target).ok_or_else(|| err("shapes do not broadcast"))?;
                if out.len() > MAX_RANK {
                    return Err(err("rank above 6"));
                }
                let src: Vec<i64> = broadcast_strides(x, &out)
                    .iter()
                    .map(|&v| v as i64)
                    .collect();
                let p = copy_params(&out, &src, 0, &strides(&out), 0);
                l.push(Launch::linear(
                    Kernel::Copy,
                    p,
                    vec![node.inputs[0]],
                    numel(&out),
                ));
                out
            }
            Op::MatMul | Op::Gemm { .. } => {
                let (a, b) = (ins[0], ins[1]);
                let gemm = matches!(node.op, Op::Gemm { .. });
                let (ta, tb, alpha, beta) = match node.op {
                    Op::Gemm {
                        trans_a,
                        trans_b,
                        alpha,
                        beta,
                    } => (trans_a, trans_b, alpha, beta),
                    _ => (false, false, 1.0, 1.0),
                };
                if gemm && (a.len() != 2 || b.len() != 2) {
                    return Err(err("Gemm needs 2-D inputs"));
                }
                if a.is_empty() || b.is_empty() {
                    return Err(err("scalar operand"));
                }
                // numpy matmul: 1-D operands are promoted, then squeezed.
                let a2: Vec<usize> = if a.len() == 1 {
                    vec![1, a[0]]
                } else {
                    a.to_vec()
                };
                let b2: Vec<usize> = if b.len() == 1 {
                    vec![b[0], 1]
                } else {
                    b.to_vec()
                };
                let (ar, br) = (a2.len(), b2.len());
                let (m, ka) = if ta {
                    (a2[ar - 1], a2[ar - 2])
                } else {
                    (a2[ar - 2], a2[ar - 1])
                };
                let (kb, n) = if tb {
                    (b2[br - 1], b2[br - 2])
                } else {
                    (b2[br - 2], b2[br - 1])
                };
                if ka != kb {
                    return Err(err("inner dimensions differ"));
                }
                let (abatch, bbatch) = (&a2[..ar - 2], &b2[..br - 2]);
                let batch = broadcast(abatch, bbatch)
                    .ok_or_else(|| err("batch dimensions do not broadcast"))?;
                let nb = numel(&batch);
                let bstride = |own: &[usize], mat: usize| -> Result<usize> {
                    if numel(own) == 1 {
                        Ok(0)
                    } else if own.len() == batch.len() && own == batch.as_slice() {
                        Ok(mat)
                    } else {
                        Err(err("partially broadcast batch dimensions"))
                    }
                };
                let (asb, bsb) = (bstride(abatch, m * ka)?, bstride(bbatch, ka * n)?);
                let (asm, ask) = if ta { (1, m) } else { (ka, 1) };
                let (bsk, bsn) = if tb { (1, ka) } else { (n, 1) };
                let mut inputs = vec![node.inputs[0], node.inputs[1]];
                let (has_bias, csm, csn) = match ins.get(2) {
                    Some(c) if gemm => {
                        inputs.push(node.inputs[2]);
                        let (cm, cn) = match c.len() {
                            0 => (1, 1),
                            1 => (1, c[0]),
                            2 => (c[0], c[1]),
                            _ => return Err(err("bias of rank above 2")),
                        };
                        if (cm != 1 && cm != m) || (cn != 1 && cn != n) {
                            return Err(err("bias does not broadcast"));
                        }
                        (
                            1u32,
                            if cm == 1 { 0 } else { cn },
                            if cn == 1 { 0 } else { 1 },
                        )
                    }
                    _ => (0, 0, 0),
                };
                let p = vec![
                    m as u32,
                    n as u32,
                    ka as u32,
                    nb as u32,
                    asb as u32,
                    asm as u32,
                    ask as u32,
                    bsb as u32,
                    bsk as u32,
                    bsn as u32,
                    0,
                    csm as u32,
                    csn as u32,
                    has_bias,
                    f(alpha),
                    f(beta),
                    0,
                    0,
                    0,
                ];
                if nb > 65535 {
                    return Err(err("more than 65535 matrices"));
                }
                l.push(Launch {
                    kernel: Kernel::MatMul,
                    params: p,
                    inputs,
                    extra: vec![],
                    groups: (
                        n.div_ceil(16).max(1) as u32,
                        m.div_ceil(16).max(1) as u32,
                        nb.max(1) as u32,
                    ),
                });
                let mut out = batch.clone();
                if a.len() > 1 {
                    out.push(m);
                }
                if b.len() > 1 {
                    out.push(n);
                }
                out
            }
            Op::Conv {
                window,
                groups,
                act,
            } => conv_launch(node, &ins, window, *groups, *act, None, &mut l)?,
            Op::ConvTranspose {
                window,
                groups,
                output_padding,
                output_shape,
            } => conv_launch(
                node,
                &ins,
                window,
                *groups,
                Act::None,
                Some((output_padding, output_shape.as_deref())),
                &mut l,
            )?,
            Op::Pool {
                kind,
                window,
                ceil_mode,
                global,
            } => {
                if x.len() < 3 || x.len() > 4 {
                    return Err(err("pooling of other than 1-D or 2-D maps"));
                }
                let spatial = &x[2..];
                let w = if *global {
                    Window {
                        kernel: spatial.to_vec(),
                        strides: vec![1; spatial.len()],
                        dilations: vec![1; spatial.len()],
                        pads: vec![0; 2 * spatial.len()],
                        auto_pad: AutoPad::NotSet,
                    }
                } else {
                    window.clone()
                };
                if w.kernel.len() != spatial.len() {
                    return Err(err("window rank differs from the input's"));
                }
                let (h, wd) = if spatial.len() == 2 {
                    (spatial[0], spatial[1])
                } else {
                    (1, spatial[0])
                };
                let w2 = to_2d(&w);
                let (oh, ph) = window_axis(&w2, 0, h, *ceil_mode)
                    .ok_or_else(|| err("window larger than input"))?;
                let (ow, pw) = window_axis(&w2, 1, wd, *ceil_mode)
                    .ok_or_else(|| err("window larger than input"))?;
                let total = x[0] * x[1] * oh * ow;
                let p = vec![
                    total as u32,
                    h as u32,
                    wd as u32,
                    oh as u32,
                    ow as u32,
                    w2.kernel[0] as u32,
                    w2.kernel[1] as u32,
                    w2.strides[0] as u32,
                    w2.strides[1] as u32,
                    ph as u32,
                    pw as u32,
                    w2.dilations[0] as u32,
                    w2.dilations[1] as u32,
                    *kind as u32,
                ];
                l.push(Launch::linear(Kernel::Pool, p, vec![node.inputs[0]], total));
                let mut out = vec![x[0], x[1]];
                if spatial.len() == 2 {
                    out.push(oh);
                }
                out.push(ow);
                out
            }
            Op::Softmax { op, axis, legacy } => {
                let a = norm_axis(*axis, x.len()).ok_or_else(|| err("axis"))?;
                let (outer, d, inner) = if *legacy {
                    (numel(&x[..a]), numel(&x[a..]), 1)
                } else {
                    (numel(&x[..a]), x[a], numel(&x[a + 1..]))
                };
                let rows = outer * inner;
                l.push(Launch::linear(
                    Kernel::Reduce,
                    vec![rows as u32, d as u32, inner as u32, *op as u32],
                    vec![node.inputs[0]],
                    rows,
                ));
                x.to_vec()
            }
            Op::Reduce { op, axes, keepdims } => {
                let mut ax: Vec<usize> = match axes {
                    Some(a) if !a.is_empty() => a
                        .iter()
                        .map(|&a| norm_axis(a, x.len()).ok_or_else(|| err("axis")))
                        .collect::<Result<_>>()?,
                    _ => (0..x.len()).collect(),
                };
                ax.sort_unstable();
                ax.dedup();
                if ax.windows(2).any(|w| w[1] != w[0] + 1) {
                    return Err(err("reduction over non-adjacent axes"));
                }
                let (first, last) = (
                    ax.first().copied().unwrap_or(0),
                    ax.last().copied().unwrap_or(0),
                );
                let (outer, d, inner) = if ax.is_empty() {
                    (1, 1, 1)
                } else {
                    (
                        numel(&x[..first]),
                        numel(&x[first..=last]),
                        numel(&x[last + 1..]),
                    )
                };
                let rows = outer * inner;
                l.push(Launch::linear(
                    Kernel::Reduce,
                    vec![rows as u32, d as u32, inner as u32, *op as u32],
                    vec![node.inputs[0]],
                    rows,
                ));
                (0..x.len())
                    .filter_map(|i| {
                        if ax.contains(&i) {
                            keepdims.then_some(1)
                        } else {
                            Some(x[i])
                        }
                    })
                    .collect()
            }
            Op::Resize {
                linear,
                coord,
                nearest,
                scales,
                sizes,
            } => {
                let r = x.len();
                if r < 2 {
                    return Err(err("resize of a rank below 2"));
                }
                let out: Vec<usize> = match (sizes, scales) {
                    (Some(s), _) if s.len() == r => s.clone(),
                    (_, Some(s)) if s.len() == r => x
                        .iter()
                        .zip(s)
                        .map(|(&d, &k)| (d as f32 * k).floor() as usize)
                        .collect(),
                    _ => return Err(err("scales or sizes of another rank")),
                };
                if out[..r - 2] != x[..r - 2] {
                    return Err(err("resize of other than the last two axes"));
                }
                let scale = |i: usize| match scales {
                    Some(s) if sizes.is_none() => s[i],
                    _ => out[i] as f32 / x[i] as f32,
                };
                let total = numel(&out);
                let p = vec![
                    total as u32,
                    x[r - 2] as u32,
                    x[r - 1] as u32,
                    out[r - 2] as u32,
                    out[r - 1] as u32,
                    u32::from(*linear),
                    *coord,
                    *nearest,
                    f(scale(r - 2)),
                    f(scale(r - 1)),
                    f(x[r - 2] as f32 * scale(r - 2)),
                    f(x[r - 1] as f32 * scale(r - 1)),
                ];
                l.push(Launch::linear(
                    Kernel::Resize,
                    p,
                    vec![node.inputs[0]],
                    total,
                ));
                out
            }
        };
        shapes[out_id] = out_shape;
        launches.push(l);
    }
    Ok((shapes, launches))
}

fn to_2d(w: &Window) -> Window {
    if w.kernel.len() == 2 {
        return w.clone();
    }
    Window {
        kernel: vec![1, w.kernel[0]],
        strides: vec![1, w.strides[0]],
        dilations: vec![1, w.dilations[0]],
        pads: vec![0, w.pads[0], 0, w.pads[1]],
        auto_pad: w.auto_pad,
    }
}

fn conv_launch(
    node: &super::lower::Node,
    ins: &[&[usize]],
    window: &Window,
    groups: usize,
    act: Act,
    transpose: Option<(&Vec<usize>, Option<&[usize]>)>,
    l: &mut Vec<Launch>,
) -> Result<Vec<usize>> {
    let err = |what: &str| plan_err(&node.name, what);
    let (x, w) = (ins[0], ins[1]);
    let r = window.kernel.len();
    if x.len() != r + 2 || w.len() != r + 2 || groups == 0 {
        return Err(err("input, weights and kernel of different ranks"));
    }
    let (n, c) = (x[0], x[1]);
    let m = if transpose.is_some() {
        w[1] * groups
    } else {
        w[0]
    };
    if c % groups != 0 || m % groups != 0 {
        return Err(err("channels not divisible by the groups"));
    }
    if transpose.is_none() && w[1] * groups != c || transpose.is_some() && w[0] != c {
        return Err(err("weights do not match the input channels"));
    }
    if let Some(b) = ins.get(2)
        && numel(b) != m
    {
        return Err(err("bias length"));
    }
    let w2 = to_2d(window);
    let (h, wd) = if r == 2 { (x[2], x[3]) } else { (1, x[2]) };
    let ((oh, ph), (ow, pw)) = match transpose {
        None => (
            window_axis(&w2, 0, h, false).ok_or_else(|| err("kernel larger than input"))?,
            window_axis(&w2, 1, wd, false).ok_or_else(|| err("kernel larger than input"))?,
        ),
        Some((opad, oshape)) => {
            let opad: Vec<usize> = if opad.is_empty() {
                vec![0; r]
            } else {
                opad.clone()
            };
            let opad2 = if r == 2 {
                opad.clone()
            } else {
                vec![0, opad[0]]
            };
            let oshape2: Option<Vec<usize>> =
                oshape.map(|s| if r == 2 { s.to_vec() } else { vec![1, s[0]] });
            let axis = |i: usize, input: usize| -> Option<(usize, usize)> {
                let (k, s, d) = (w2.kernel[i], w2.strides[i], w2.dilations[i]);
                let full = s * (input - 1) + opad2[i] + (k - 1) * d + 1;
                let same = matches!(w2.auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
                let target = match (&oshape2, same) {
                    (Some(o), _) => Some(*o.get(i)?),
                    (None, true) => Some(input * s),
                    _ => None,
                };
                match target {
                    Some(out) => {
                        let total = full.checked_sub(out)?;
                        // SAME_UPPER puts the odd pad at the end, as for
                        // Conv (the ONNX reference and its node tests).
                        let begin = if w2.auto_pad == AutoPad::SameLower {
                            total - total / 2
                        } else {
                            total / 2
                        };
                        Some((out, begin))
                    }
                    None => {
                        let pads = w2.pads[i] + w2.pads[i + 2];
                        Some((full.checked_sub(pads)?, w2.pads[i]))
                    }
                }
            };
            (
                axis(0, h).ok_or_else(|| err("output shape"))?,
                axis(1, wd).ok_or_else(|| err("output shape"))?,
            )
        }
    };
    let total = n * m * oh * ow;
    let (act_code, lo, hi) = match act {
        Act::None => (0, 0.0, 0.0),
        Act::Relu => (1, 0.0, 0.0),
        Act::Clip(lo, hi) => (2, lo, hi),
    };
    let p = vec![
        total as u32,
        n as u32,
        c as u32,
        h as u32,
        wd as u32,
        m as u32,
        oh as u32,
        ow as u32,
        w2.kernel[0] as u32,
        w2.kernel[1] as u32,
        w2.strides[0] as u32,
        w2.strides[1] as u32,
        ph as u32,
        pw as u32,
        w2.dilations[0] as u32,
        w2.dilations[1] as u32,
        groups as u32,
        u32::from(ins.len() > 2),
        act_code,
        f(lo),
        f(hi),
    ];
    let kernel = if transpose.is_some() {
        Kernel::ConvTranspose
    } else {
        Kernel::Conv
    };
    l.push(Launch::linear(kernel, p, node.inputs.clone(), total));
    Ok(if r == 2 {
        vec![n, m, oh, ow]
    } else {
        vec![n, m, ow]
    })
}

/// Device buffers of the constants, uploaded once per engine.
pub(crate) fn upload_constants(gpu: &Gpu, g: &Graph) -> Vec<Option<Arc<wgpu::Buffer>>> {
    g.values
        .iter()
        .map(|v| match &v.source {
            Source::Const(k) => Some(Arc::new(storage_init(gpu, &k.f32s()))),
            _ => None,
        })
        .collect()
}

fn storage_init(gpu: &Gpu, data: &[f32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    let bytes: &[u8] = if data.is_empty() {
        &[0; 4]
    } else {
        bytemuck::cast_slice(data)
    };
    gpu.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

fn storage(gpu: &Gpu, elems: usize, extra: wgpu::BufferUsages) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (elems.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | extra,
        mapped_at_creation: false,
    })
}

/// Builds the plan for these input shapes.
pub(crate) fn plan(
    gpu: &Gpu,
    g: &Graph,
    consts: &[Option<Arc<wgpu::Buffer>>],
    input_shapes: &[Vec<usize>],
) -> Result<Plan> {
    let (shapes, launches) = specialise(g, input_shapes)?;
    for s in &shapes {
        if (numel(s) as u64) * 4 > gpu.max_binding {
            return Err(engine_error(
                "planning",
                format!(
                    "a tensor of shape {s:?} exceeds the device's largest binding of {} bytes",
                    gpu.max_binding
                ),
            ));
        }
    }
    // Alias roots: values sharing a buffer.
    let mut root: Vec<ValueId> = (0..g.values.len()).collect();
    for node in &g.nodes {
        if matches!(node.op, Op::Alias(_)) {
            root[node.output] = root[node.inputs[0]];
        }
    }
    // Last reader of each root; graph outputs live to the end.
    let mut last: Vec<Option<usize>> = vec![None; g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for &v in &node.inputs {
            last[root[v]] = Some(last[root[v]].map_or(i, |l| l.max(i)));
        }
    }
    for &o in &g.outputs {
        last[root[o]] = Some(usize::MAX);
    }
    // Buffers: inputs own theirs; computed roots share a pool by liveness.
    let copy = wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let mut pool: Vec<(usize, Arc<wgpu::Buffer>)> = vec![];
    let mut buf: Vec<Option<Arc<wgpu::Buffer>>> = consts.to_vec();
    let mut inputs = vec![];
    for &i in &g.inputs {
        let b = Arc::new(storage(gpu, numel(&shapes[i]), copy));
        inputs.push(b.clone());
        buf[i] = Some(b);
    }
    let mut steps = vec![];
    let mut pooled: Vec<Option<(usize, Arc<wgpu::Buffer>)>> = vec![None; g.values.len()];
    for (i, (node, ls)) in g.nodes.iter().zip(launches).enumerate() {
        let out = node.output;
        if matches!(node.op, Op::Alias(_)) {
            buf[out] = buf[root[out]].clone();
        } else {
            let need = numel(&shapes[out]).max(1);
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, (cap, _))| *cap >= need && *cap <= need.saturating_mul(4))
                .min_by_key(|(_, (cap, _))| *cap)
                .map(|(ix, _)| ix);
            let entry = match best {
                Some(ix) => pool.swap_remove(ix),
                None => (need, Arc::new(storage(gpu, need, copy))),
            };
            buf[out] = Some(entry.1.clone());
            pooled[out] = Some(entry);
        }
        for l in ls {
            let bind = |id: ValueId| -> Result<Arc<wgpu::Buffer>> {
                buf[id]
                    .clone()
                    .ok_or_else(|| engine_error("planning", format!("value {id} has no buffer")))
            };
            let mut bufs: Vec<Arc<wgpu::Buffer>> =
                l.inputs.iter().map(|&v| bind(v)).collect::<Result<_>>()?;
            for e in &l.extra {
                bufs.push(Arc::new(storage_init(gpu, e)));
            }
            let params = {
                use wgpu::util::DeviceExt;
                gpu.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents: bytemuck::cast_slice(&l.params),
                        usage: wgpu::BufferUsages::STORAGE,
                    })
            };
            let output = bind(out)?;
            let slot = |k: usize| {
                bufs.get(k)
                    .map_or(&gpu.placeholder, |b| b.as_ref())
                    .as_entire_binding()
            };
            let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &gpu.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: params.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: output.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: slot(0),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: slot(1),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: slot(2),
                    },
                ],
            });
            steps.push(Step {
                kernel: l.kernel,
                bind,
                groups: l.groups,
            });
        }
        // Free roots read for the last time here (never this node's output).
        let mut seen = vec![];
        for &v in &node.inputs {
            let r = root[v];
            if last[r] == Some(i) && r != root[out] && !seen.contains(&r) {
                seen.push(r);
                if let Some(entry) = pooled[r].take() {
                    pool.push(entry);
                }
            }
        }
        // An output nobody reads is released at once.
        if last[root[out]].is_none()
            && let Some(entry) = pooled[out].take()
        {
            pool.push(entry);
        }
    }
    let mut outputs = vec![];
    let mut staging = vec![];
    for &o in &g.outputs {
        let b = buf[o]
            .clone()
            .ok_or_else(|| engine_error("planning", "an output has no buffer"))?;
        let bytes = (numel(&shapes[o]).max(1) * 4) as u64;
        staging.push(gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }));
        outputs.push((o, b));
    }
    Ok(Plan {
        shapes,
        steps,
        inputs,
        outputs,
        staging,
    })
}

impl Plan {
    /// Runs on `data` (one f32 vector per input); returns each output's
    /// shape and values.
    pub(crate) fn run(&self, gpu: &Gpu, g: &Graph, data: &[Vec<f32>]) -> Result<Vec<Output>> {
        gpu.scoped("running", || {
            for (b, d) in self.inputs.iter().zip(data) {
                if !d.is_empty() {
                    gpu.queue.write_buffer(b, 0, bytemuck::cast_slice(d));
                }
            }
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                });
                for s in &self.steps {
                    pass.set_pipeline(gpu.pipeline(s.kernel));
                    pass.set_bind_group(0, &s.bind, &[]);
                    pass.dispatch_workgroups(s.groups.0, s.groups.1, s.groups.2);
                }
            }
            for ((_, b), st) in self.outputs.iter().zip(&self.staging) {
                enc.copy_buffer_to_buffer(b.as_ref(), 0, st, 0, st.size());
            }
            gpu.queue.submit([enc.finish()]);
            let (tx, rx) = std::sync::mpsc::channel();
            for (i, st) in self.staging.iter().enumerate() {
                let tx = tx.clone();
                st.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send((i, r));
                });
            }
            drop(tx);
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| engine_error("running", e.to_string()))?;
            for (i, r) in rx.iter() {
                r.map_err(|e| engine_error("reading outputs", format!("output {i}: {e}")))?;
            }
            let mut out = vec![];
            for ((o, _), st) in self.outputs.iter().zip(&self.staging) {
                let shape = self.shapes[*o].clone();
                let n = numel(&shape);
                let values = {
                    let view = st
                        .slice(..)
                        .get_mapped_range()
                        .map_err(|e| engine_error("reading outputs", e.to_string()))?;
                    let all: &[f32] = bytemuck::cast_slice(&view);
                    all[..n].to_vec()
                };
                st.unmap();
                out.push((shape, values, g.values[*o].dtype));
            }
            Ok(out)
        })
    }
}

/// Unary op codes must match `kernels.wgsl`.
const _: () = assert!(UnaryOp::CastInt as u32 == 26);
