//! Lowering: the ONNX graph (after the runtime's rewrites, integer operators
//! already turned into DequantizeLinear + float op + QuantizeLinear) becomes
//! a list of GPU operations, or a typed refusal naming the first node the
//! GPU engine cannot run.
//!
//! Design: we lower the ONNX graph, not tract's typed graph. ONNX semantics
//! are specified (onnx/onnx `docs/Operators.md`) and stable; tract's internal
//! operators change every release. Shapes are resolved per call from the
//! concrete input shapes (`exec.rs`), so a symbolic batch needs nothing here.
//!
//! Quantized models: weights (a DequantizeLinear of constants) are
//! dequantized to float once, here, on the CPU. Activation QuantizeLinear →
//! DequantizeLinear pairs run on the GPU as one exact "fake quantize" kernel
//! (round half to even, saturate, rescale), so intermediate values are the
//! quantized model's.

use std::collections::HashMap;

use tract_onnx::pb::{ModelProto, NodeProto};

use super::host::{self, Konst};
use crate::onnx::{attr, attr_f, attr_i, attr_s, default_opset, input};

pub(crate) type ValueId = usize;

/// Element type of a GPU value; all are held as f32 on the device
/// (8-bit integers exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DType {
    F32,
    U8,
    I8,
}

impl DType {
    fn of_onnx(t: i32) -> Option<DType> {
        match t {
            1 => Some(DType::F32),
            2 => Some(DType::U8),
            3 => Some(DType::I8),
            _ => None,
        }
    }

    pub(crate) fn range(self) -> (f32, f32) {
        match self {
            DType::U8 => (0.0, 255.0),
            DType::I8 => (-128.0, 127.0),
            DType::F32 => (f32::MIN, f32::MAX),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The i-th graph input.
    Input(usize),
    /// A constant uploaded once at load.
    Const(Konst),
    /// Computed by a node.
    Node,
}

#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub(crate) dtype: DType,
    pub(crate) source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnaryOp {
    Relu = 1,
    Clip = 2,
    Sigmoid = 3,
    HardSigmoid = 4,
    HardSwish = 5,
    LeakyRelu = 6,
    Tanh = 7,
    Exp = 8,
    /// `x * a[c] + b[c]` (BatchNormalization folded at load).
    Affine = 9,
    Dequantize = 10,
    Quantize = 11,
    FakeQuantize = 12,
    Abs = 13,
    Neg = 14,
    Sqrt = 15,
    Floor = 17,
    Ceil = 18,
    Reciprocal = 19,
    Log = 20,
    Round = 21,
    Elu = 22,
    Softplus = 23,
    Sin = 24,
    Cos = 25,
    CastInt = 26,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    Pow = 4,
    Max = 5,
    Min = 6,
    PRelu = 7,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// Window attributes shared by Conv, ConvTranspose and the pools, for the
/// spatial axes (1 or 2 of them).
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) kernel: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) dilations: Vec<usize>,
    /// begin..., end...
    pub(crate) pads: Vec<usize>,
    pub(crate) auto_pad: AutoPad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolKind {
    Max = 0,
    AvgExcludePad = 1,
    AvgIncludePad = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReduceOp {
    Softmax = 0,
    LogSoftmax = 1,
    Sum = 2,
    Mean = 3,
    Max = 4,
    Min = 5,
    Prod = 6,
    SumSquare = 7,
    L2 = 8,
    L1 = 9,
    LogSumExp = 10,
}

/// Fused activation after Conv/Gemm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Act {
    None,
    Relu,
    Clip(f32, f32),
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Unary {
        op: UnaryOp,
        alpha: f32,
        beta: f32,
        lo: f32,
        hi: f32,
        /// Per-channel operands (scale or multiplier, zero point or offset)
        /// along `axis`; one value each when per tensor.
        channel: Option<(usize, Vec<f32>, Vec<f32>)>,
    },
    Binary(BinaryOp),
    MatMul,
    Gemm {
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    },
    Conv {
        window: Window,
        groups: usize,
        act: Act,
    },
    ConvTranspose {
        window: Window,
        groups: usize,
        output_padding: Vec<usize>,
        output_shape: Option<Vec<usize>>,
    },
    Pool {
        kind: PoolKind,
        window: Window,
        ceil_mode: bool,
        global: bool,
    },
    /// Softmax family along one axis; `legacy` is the opset < 13 form that
    /// flattens from `axis` to the end.
    Softmax {
        op: ReduceOp,
        axis: i64,
        legacy: bool,
    },
    Reduce {
        op: ReduceOp,
        axes: Option<Vec<i64>>,
        keepdims: bool,
    },
    Resize {
        linear: bool,
        coord: u32,
        nearest: u32,
        scales: Option<Vec<f32>>,
        sizes: Option<Vec<usize>>,
    },
    /// Reshape, Flatten, Squeeze, Unsqueeze, Identity, a float Cast: the
    /// same buffer under another shape.
    Alias(Reshape),
    Transpose(Option<Vec<usize>>),
    Concat(i64),
    Slice {
        starts: Vec<i64>,
        ends: Vec<i64>,
        axes: Option<Vec<i64>>,
        steps: Option<Vec<i64>>,
    },
    Expand(Vec<i64>),
}

#[derive(Debug, Clone)]
pub(crate) enum Reshape {
    Same,
    To { shape: Vec<i64>, allowzero: bool },
    Flatten(i64),
    Squeeze(Option<Vec<i64>>),
    Unsqueeze(Vec<i64>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) op: Op,
    pub(crate) inputs: Vec<ValueId>,
    pub(crate) output: ValueId,
}

/// A lowered model.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    pub(crate) values: Vec<Value>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) inputs: Vec<ValueId>,
    pub(crate) outputs: Vec<ValueId>,
    /// Q → DQ pairs run as one fake-quantize kernel.
    pub(crate) fused_qdq: usize,
    /// Activations folded into the preceding Conv.
    pub(crate) fused_act: usize,
}

/// Why a model cannot run on the GPU engine: the node, its operator, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsupported {
    pub(crate) node: String,
    pub(crate) op: String,
    pub(crate) detail: String,
}

type Lowered<T> = std::result::Result<T, Unsupported>;

struct Ctx<'a> {
    graph: Graph,
    names: HashMap<String, ValueId>,
    consts: HashMap<String, Konst>,
    uses: HashMap<String, Vec<&'a NodeProto>>,
    graph_outputs: Vec<String>,
    opset: i64,
}

/// Lowers a (rewritten) ONNX model.
pub(crate) fn lower(model: &ModelProto) -> Lowered<Graph> {
    let none = |detail: &str| Unsupported {
        node: String::new(),
        op: String::new(),
        detail: detail.to_owned(),
    };
    let g = model.graph.as_ref().ok_or_else(|| none("no graph"))?;
    let mut cx = Ctx {
        graph: Graph {
            values: vec![],
            nodes: vec![],
            inputs: vec![],
            outputs: vec![],
            fused_qdq: 0,
            fused_act: 0,
        },
        names: HashMap::new(),
        consts: HashMap::new(),
        uses: HashMap::new(),
        graph_outputs: g.output.iter().map(|o| o.name.clone()).collect(),
        opset: default_opset(model),
    };
    if g.node
        .iter()
        .any(|n| !(n.domain.is_empty() || n.domain == "ai.onnx"))
    {
        let n = g
            .node
            .iter()
            .find(|n| !(n.domain.is_empty() || n.domain == "ai.onnx"));
        return Err(Unsupported {
            node: n.map(|n| n.name.clone()).unwrap_or_default(),
            op: n
                .map(|n| format!("{}::{}", n.domain, n.op_type))
                .unwrap_or_default(),
            detail: "operators outside the default ONNX domain".into(),
        });
    }
    for t in &g.initializer {
        if let Some(k) = host::from_proto(t) {
            cx.consts.insert(t.name.clone(), k);
        }
    }
    for n in &g.node {
        for i in &n.input {
            cx.uses.entry(i.clone()).or_default().push(n);
        }
    }
    let inits: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    for (ix, vi) in g
        .input
        .iter()
        .filter(|vi| !inits.contains(vi.name.as_str()))
        .enumerate()
    {
        let elem = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(tract_onnx::pb::type_proto::Value::TensorType(t)) => t.elem_type,
            _ => 0,
        };
        let dtype = DType::of_onnx(elem).ok_or_else(|| Unsupported {
            node: vi.name.clone(),
            op: "graph input".into(),
            detail: format!(
                "element type {elem} (the GPU engine computes float32 and 8-bit integers)"
            ),
        })?;
        let id = cx.push(dtype, Source::Input(ix));
        cx.names.insert(vi.name.clone(), id);
        cx.graph.inputs.push(id);
    }
    let mut skip: std::collections::HashSet<*const NodeProto> = Default::default();
    for n in &g.node {
        if skip.contains(&(n as *const NodeProto)) {
            continue;
        }
        cx.node(n, &mut skip).map_err(|detail| Unsupported {
            node: n.name.clone(),
            op: n.op_type.clone(),
            detail,
        })?;
    }
    for o in &g.output {
        let id = match cx.names.get(&o.name) {
            Some(&id) => id,
            None => match cx.consts.get(&o.name) {
                Some(k) => {
                    let dtype = k.gpu_dtype().ok_or_else(|| Unsupported {
                        node: o.name.clone(),
                        op: "graph output".into(),
                        detail: "a constant output of a type the GPU engine does not hold".into(),
                    })?;
                    let k = k.clone();
                    cx.push(dtype, Source::Const(k))
                }
                None => {
                    return Err(Unsupported {
                        node: o.name.clone(),
                        op: "graph output".into(),
                        detail: "no node produces it".into(),
                    });
                }
            },
        };
        cx.graph.outputs.push(id);
    }
    Ok(cx.graph)
}

fn ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn usizes(v: &[i64], what: &str) -> Result<Vec<usize>, String> {
    v.iter()
        .map(|&x| usize::try_from(x).map_err(|_| format!("negative {what} {x}")))
        .collect()
}

impl<'a> Ctx<'a> {
    fn push(&mut self, dtype: DType, source: Source) -> ValueId {
        self.graph.values.push(Value { dtype, source });
        self.graph.values.len() - 1
    }

    fn konst(&self, n: &NodeProto, ix: usize) -> Option<&Konst> {
        input(n, ix).and_then(|name| self.consts.get(name))
    }

    /// A constant input needed on the CPU (shapes, scales, clip bounds).
    fn need_konst(&self, n: &NodeProto, ix: usize, what: &str) -> Result<&Konst, String> {
        self.konst(n, ix)
            .ok_or_else(|| format!("{what} (input {ix}) must be a constant"))
    }

    /// A tensor input on the GPU: a computed value or a constant uploaded once.
    fn value(&mut self, n: &NodeProto, ix: usize) -> Result<ValueId, String> {
        let name = input(n, ix).ok_or_else(|| format!("input {ix} is missing"))?;
        if let Some(&id) = self.names.get(name) {
            return Ok(id);
        }
        let k = self
            .consts
            .get(name)
            .ok_or_else(|| format!("input {name:?} is produced by no node"))?
            .clone();
        let dtype = k
            .gpu_dtype()
            .ok_or_else(|| format!("constant {name:?} has element type {}", k.elem))?;
        let id = self.push(dtype, Source::Const(k));
        self.names.insert(name.to_owned(), id);
        Ok(id)
    }

    fn emit(
        &mut self,
        n: &NodeProto,
        op: Op,
        inputs: Vec<ValueId>,
        dtype: DType,
    ) -> Result<(), String> {
        let out = n.output.first().ok_or("the node has no output")?;
        for extra in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
            if self.uses.contains_key(extra) || self.graph_outputs.contains(extra) {
                return Err(format!(
                    "its output {extra:?} (an optional output) is not computed"
                ));
            }
        }
        let id = self.push(dtype, Source::Node);
        self.names.insert(out.clone(), id);
        self.graph.nodes.push(Node {
            name: n.name.clone(),
            op,
            inputs,
            output: id,
        });
        Ok(())
    }

    fn float_input(&mut self, n: &NodeProto, ix: usize) -> Result<ValueId, String> {
        let id = self.value(n, ix)?;
        if self.graph.values[id].dtype != DType::F32 {
            return Err(format!(
                "input {ix} is an integer tensor; the GPU engine computes float32"
            ));
        }
        Ok(id)
    }

    /// The only consumer of `out` when there is exactly one and `out` is not
    /// a graph output.
    fn sole_consumer(&self, out: &str) -> Option<&'a NodeProto> {
        match self.uses.get(out).map(Vec::as_slice) {
            Some([only]) if !self.graph_outputs.iter().any(|o| o == out) => Some(*only),
            _ => None,
        }
    }

    fn node(
        &mut self,
        n: &'a NodeProto,
        skip: &mut std::collections::HashSet<*const NodeProto>,
    ) -> Result<(), String> {
        let op = n.op_type.as_str();
        // Constant folding on the CPU: weights, their dequantization, shapes.
        if op == "Constant" {
            let k = attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .and_then(host::from_proto)
                .or_else(|| attr(n, "value_float").map(|a| Konst::scalar(1, f64::from(a.f))))
                .or_else(|| attr(n, "value_int").map(|a| Konst::scalar(7, a.i as f64)))
                .or_else(|| {
                    attr(n, "value_floats")
                        .map(|a| Konst::vector(1, a.floats.iter().map(|&f| f64::from(f)).collect()))
                })
                .or_else(|| {
                    attr(n, "value_ints")
                        .map(|a| Konst::vector(7, a.ints.iter().map(|&i| i as f64).collect()))
                })
                .ok_or("a Constant of an unsupported form")?;
            let out = n.output.first().ok_or("no output")?;
            self.consts.insert(out.clone(), k);
            return Ok(());
        }
        let all_const = n
            .input
            .iter()
            .all(|i| i.is_empty() || self.consts.contains_key(i));
        if all_const
            && !n.input.is_empty()
            && let Some(k) = self.fold(n)?
        {
            let out = n.output.first().ok_or("no output")?;
            self.consts.insert(out.clone(), k);
            return Ok(());
        }
        match op {
            "Relu" | "Sigmoid" | "Tanh" | "Exp" | "Abs" | "Neg" | "Sqrt" | "Floor" | "Ceil"
            | "Reciprocal" | "Log" | "Round" | "HardSwish" | "Softplus" | "Sin" | "Cos" => {
                let u = match op {
                    "Relu" => UnaryOp::Relu,
                    "Sigmoid" => UnaryOp::Sigmoid,
                    "Tanh" => UnaryOp::Tanh,
                    "Exp" => UnaryOp::Exp,
                    "Abs" => UnaryOp::Abs,
                    "Neg" => UnaryOp::Neg,
                    "Sqrt" => UnaryOp::Sqrt,
                    "Floor" => UnaryOp::Floor,
                    "Ceil" => UnaryOp::Ceil,
                    "Reciprocal" => UnaryOp::Reciprocal,
                    "Log" => UnaryOp::Log,
                    "Round" => UnaryOp::Round,
                    "HardSwish" => UnaryOp::HardSwish,
                    "Softplus" => UnaryOp::Softplus,
                    "Sin" => UnaryOp::Sin,
                    _ => UnaryOp::Cos,
                };
                let x = self.float_input(n, 0)?;
                self.emit(n, unary(u, 0.0, 0.0), vec![x], DType::F32)
            }
            "LeakyRelu" | "Elu" | "HardSigmoid" => {
                let (u, alpha, beta) = match op {
                    "LeakyRelu" => (UnaryOp::LeakyRelu, attr_f(n, "alpha").unwrap_or(0.01), 0.0),
                    "Elu" => (UnaryOp::Elu, attr_f(n, "alpha").unwrap_or(1.0), 0.0),
                    _ => (
                        UnaryOp::HardSigmoid,
                        attr_f(n, "alpha").unwrap_or(0.2),
                        attr_f(n, "beta").unwrap_or(0.5),
                    ),
                };
                let x = self.float_input(n, 0)?;
                self.emit(n, unary(u, alpha, beta), vec![x], DType::F32)
            }
            "Clip" => {
                let (lo, hi) = if self.opset < 11 {
                    (
                        attr_f(n, "min").unwrap_or(f32::MIN),
                        attr_f(n, "max").unwrap_or(f32::MAX),
                    )
                } else {
                    let bound = |ix, default| -> Result<f32, String> {
                        match input(n, ix) {
                            None => Ok(default),
                            Some(_) => self
                                .need_konst(n, ix, "a bound")?
                                .scalar_f32()
                                .ok_or_else(|| "a bound is not a scalar".to_owned()),
                        }
                    };
                    (bound(1, f32::MIN)?, bound(2, f32::MAX)?)
                };
                let x = self.float_input(n, 0)?;
                let mut u = unary(UnaryOp::Clip, 0.0, 0.0);
                if let Op::Unary { lo: l, hi: h, .. } = &mut u {
                    (*l, *h) = (lo, hi);
                }
                self.emit(n, u, vec![x], DType::F32)
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "PRelu" => {
                if n.input.len() != 2 {
                    return Err(format!("{} inputs (the GPU engine takes 2)", n.input.len()));
                }
                let b = match op {
                    "Add" | "Sum" => BinaryOp::Add,
                    "Sub" => BinaryOp::Sub,
                    "Mul" => BinaryOp::Mul,
                    "Div" => BinaryOp::Div,
                    "Pow" => BinaryOp::Pow,
                    "Max" => BinaryOp::Max,
                    "Min" => BinaryOp::Min,
                    _ => BinaryOp::PRelu,
                };
                let x = self.float_input(n, 0)?;
                let z = self.float_input(n, 1)?;
                self.emit(n, Op::Binary(b), vec![x, z], DType::F32)
            }
            "BatchNormalization" => {
                if attr_i(n, "training_mode").unwrap_or(0) != 0 {
                    return Err("training mode".into());
                }
                let eps = f64::from(attr_f(n, "epsilon").unwrap_or(1e-5));
                let get = |ix, what| -> Result<Vec<f64>, String> {
                    Ok(self.need_konst(n, ix, what)?.data.clone())
                };
                let (scale, bias, mean, var) = (
                    get(1, "scale")?,
                    get(2, "B")?,
                    get(3, "mean")?,
                    get(4, "var")?,
                );
                if [bias.len(), mean.len(), var.len()] != [scale.len(); 3] {
                    return Err("parameters of different lengths".into());
                }
                // Folded at load: y = x * a + b, a = scale / sqrt(var + eps).
                let a: Vec<f64> = scale
                    .iter()
                    .zip(&var)
                    .map(|(s, v)| s / (v + eps).sqrt())
                    .collect();
                let b: Vec<f32> = bias
                    .iter()
                    .zip(&mean)
                    .zip(&a)
                    .map(|((b, m), a)| (b - m * a) as f32)
                    .collect();
                let a = a.into_iter().map(|v| v as f32).collect();
                let x = self.float_input(n, 0)?;
                let u = Op::Unary {
                    op: UnaryOp::Affine,
                    alpha: 0.0,
                    beta: 0.0,
                    lo: 0.0,
                    hi: 0.0,
                    channel: Some((1, a, b)),
                };
                self.emit(n, u, vec![x], DType::F32)
            }
            "DequantizeLinear" => self.dequantize(n, skip),
            "QuantizeLinear" => self.quantize(n, skip),
            "Cast" => {
                let to = attr_i(n, "to").unwrap_or(0) as i32;
                let x = self.value(n, 0)?;
                let from = self.graph.values[x].dtype;
                match (from, DType::of_onnx(to)) {
                    (_, Some(DType::F32)) => {
                        self.emit(n, Op::Alias(Reshape::Same), vec![x], DType::F32)
                    }
                    (f, Some(t)) if f == t => self.emit(n, Op::Alias(Reshape::Same), vec![x], t),
                    (DType::F32, Some(t)) => {
                        let (lo, hi) = t.range();
                        let u = Op::Unary {
                            op: UnaryOp::CastInt,
                            alpha: 0.0,
                            beta: 0.0,
                            lo,
                            hi,
                            channel: None,
                        };
                        self.emit(n, u, vec![x], t)
                    }
                    _ => Err(format!("cast to element type {to}")),
                }
            }
            "Dropout"
                if input(n, 2).is_some()
                    && self
                        .konst(n, 2)
                        .is_none_or(|k| k.data.iter().any(|&v| v != 0.0)) =>
            {
                Err("training mode (random masking) is not run by the GPU engine".into())
            }
            "Identity" | "Dropout" => {
                let x = self.value(n, 0)?;
                let dt = self.graph.values[x].dtype;
                self.emit(n, Op::Alias(Reshape::Same), vec![x], dt)
            }
            "Reshape" => {
                let shape = self.need_konst(n, 1, "the shape")?.ints();
                let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
                let x = self.value(n, 0)?;
                let dt = self.graph.values[x].dtype;
                self.emit(n, Op::Alias(Reshape::To { shape, allowzero }), vec![x], dt)
            }
            "Flatten" => {
                let x = self.value(n, 0)?;
                let dt = self.graph.values[x].dtype;
                let axis = attr_i(n, "axis").unwrap_or(1);
                self.emit(n, Op::Alias(Reshape::Flatten(axis)), vec![x], dt)
            }
            "Squeeze" | "Unsqueeze" => {
                let axes = if self.opset >= 13 {
                    match input(n, 1) {
                        Some(_) => Some(self.need_konst(n, 1, "the axes")?.ints()),
                        None => None,
                    }
                } else {
                    ints(n, "axes")
                };
                let x = self.value(n, 0)?;
                let dt = self.graph.values[x].dtype;
                let r = if op == "Squeeze" {
                    Reshape::Squeeze(axes)
                } else {
                    Reshape::Unsqueeze(axes.ok_or("Unsqueeze without axes")?)
                };
                self.emit(n, Op::Alias(r), vec![x], dt)
            }
            "Transpose" => {
                let perm = match ints(n, "perm") {
                    Some(p) => Some(usizes(&p, "axis")?),
                    None => None,
                };
                let x = self.value(n, 0)?;
                let dt = self.graph.values[x].dtype;
                self.emit(n, Op::Transpose(perm), vec![x], dt)
            }
            "Concat" => {
                let axis = attr_i(n, "axis").ok_or("no axis")?;
                let mut ins = vec![];
                for ix in 0..n.input.len() {
                    ins.push(self.value(n, ix)?);
                }
                let dt = ins
                    .first()
                    .map(|&v| self.graph.values[v].dtype)
                    .ok_or("no inputs")?;
                if ins.iter().any(|&v| self.graph.values[v].dtype != dt) {
                    return Err("inputs of different types".into());
                }
                self.emit(n, Op::Concat(axis), ins, dt)
            }
            "Slice" => {
                let (starts, ends, axes, steps) = if self.opset < 10 {
                    (
                        ints(n, "starts").ok_or("no starts")?,
                        ints(n, "ends").ok_or("no ends")?,
                        ints(n, "axes"),
                        None,
                    )
                } else {
                    let opt = |ix, what| -> Result<Option<Vec<i64>>, String> {
                        match input(n, ix) {
                            Some(_) => Ok(Some(self.need_konst(n, ix, what)?.ints())),
                            None => Ok(None),
                        }
                    };
                    (
                        self.need_konst(n, 1, "starts")?.ints(),
                        self.need_konst(n, 2, "ends")?.ints(),
                        opt(3, "axes")?,
                        opt(4, "steps")?,
                    )
                };
                let x = self.value(n, 0)?;
                let dt = self.graph.values[x].dtype;
                self.emit(
                    n,
                    Op::Slice {
                        starts,
                        ends,
                        axes,
                        steps,
                    },
                    vec![x],
                    dt,
                )
            }
            "Expand" => {
                let shape = self.need_konst(n, 1, "the shape")?.ints();
                let x = self.value(n, 0)?;
                let dt = self.graph.values[x].dtype;
                self.emit(n, Op::Expand(shape), vec![x], dt)
            }
            "MatMul" => {
                let a = self.float_input(n, 0)?;
                let b = self.float_input(n, 1)?;
                self.emit(n, Op::MatMul, vec![a, b], DType::F32)
            }
            "Gemm" => {
                let mut ins = vec![self.float_input(n, 0)?, self.float_input(n, 1)?];
                if input(n, 2).is_some() {
                    ins.push(self.float_input(n, 2)?);
                }
                let op = Op::Gemm {
                    trans_a: attr_i(n, "transA").unwrap_or(0) != 0,
                    trans_b: attr_i(n, "transB").unwrap_or(0) != 0,
                    alpha: attr_f(n, "alpha").unwrap_or(1.0),
                    beta: attr_f(n, "beta").unwrap_or(1.0),
                };
                self.emit(n, op, ins, DType::F32)
            }
            "Conv" | "ConvTranspose" => self.conv(n, skip),
            "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => {
                let global = op.starts_with("Global");
                let kind = match op {
                    "MaxPool" | "GlobalMaxPool" => PoolKind::Max,
                    _ if attr_i(n, "count_include_pad").unwrap_or(0) != 0 => {
                        PoolKind::AvgIncludePad
                    }
                    _ => PoolKind::AvgExcludePad,
                };
                if op == "MaxPool" && attr_i(n, "storage_order").unwrap_or(0) != 0 {
                    return Err("storage_order = 1".into());
                }
                let window = if global {
                    Window {
                        kernel: vec![],
                        strides: vec![],
                        dilations: vec![],
                        pads: vec![],
                        auto_pad: AutoPad::NotSet,
                    }
                } else {
                    let kernel =
                        usizes(&ints(n, "kernel_shape").ok_or("no kernel_shape")?, "kernel")?;
                    window(n, kernel)?
                };
                // Max pooling selects values: 8-bit tensors (QOperator
                // models pool in the integer domain) pool as they are.
                let x = if kind == PoolKind::Max {
                    self.value(n, 0)?
                } else {
                    self.float_input(n, 0)?
                };
                let dt = self.graph.values[x].dtype;
                let op = Op::Pool {
                    kind,
                    window,
                    ceil_mode: attr_i(n, "ceil_mode").unwrap_or(0) != 0,
                    global,
                };
                self.emit(n, op, vec![x], dt)
            }
            "Softmax" | "LogSoftmax" => {
                let legacy = self.opset < 13;
                let axis = attr_i(n, "axis").unwrap_or(if legacy { 1 } else { -1 });
                let op = if op == "Softmax" {
                    ReduceOp::Softmax
                } else {
                    ReduceOp::LogSoftmax
                };
                let x = self.float_input(n, 0)?;
                self.emit(n, Op::Softmax { op, axis, legacy }, vec![x], DType::F32)
            }
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd"
            | "ReduceSumSquare" | "ReduceL2" | "ReduceL1" | "ReduceLogSumExp" => {
                let r = match op {
                    "ReduceSum" => ReduceOp::Sum,
                    "ReduceMean" => ReduceOp::Mean,
                    "ReduceMax" => ReduceOp::Max,
                    "ReduceMin" => ReduceOp::Min,
                    "ReduceProd" => ReduceOp::Prod,
                    "ReduceSumSquare" => ReduceOp::SumSquare,
                    "ReduceL2" => ReduceOp::L2,
                    "ReduceL1" => ReduceOp::L1,
                    _ => ReduceOp::LogSumExp,
                };
                // Axes moved from attribute to input: ReduceSum at 13, the
                // others at 18 (Operators.md).
                let as_input = self.opset >= 18 || (op == "ReduceSum" && self.opset >= 13);
                let axes = if as_input {
                    match input(n, 1) {
                        Some(_) => Some(self.need_konst(n, 1, "the axes")?.ints()),
                        None => None,
                    }
                } else {
                    ints(n, "axes")
                };
                let noop = attr_i(n, "noop_with_empty_axes").unwrap_or(0) != 0;
                let x = self.float_input(n, 0)?;
                if noop && axes.as_ref().is_none_or(Vec::is_empty) {
                    return self.emit(n, Op::Alias(Reshape::Same), vec![x], DType::F32);
                }
                let keepdims = attr_i(n, "keepdims").unwrap_or(1) != 0;
                self.emit(
                    n,
                    Op::Reduce {
                        op: r,
                        axes,
                        keepdims,
                    },
                    vec![x],
                    DType::F32,
                )
            }
            "Resize" | "Upsample" => self.resize(n),
            other => Err(format!("{other} is not implemented by the GPU engine")),
        }
    }

    /// Folds a node whose inputs are all constants, for the operators that
    /// build weights and shapes. `None`: not foldable here (it then runs on
    /// the GPU like any node).
    fn fold(&self, n: &NodeProto) -> Result<Option<Konst>, String> {
        let k = |ix| self.konst(n, ix);
        Ok(match n.op_type.as_str() {
            "DequantizeLinear" => {
                let (Some(x), Some(s)) = (k(0), k(1)) else {
                    return Ok(None);
                };
                Some(host::dequantize(
                    x,
                    s,
                    k(2),
                    attr_i(n, "axis").unwrap_or(1),
                )?)
            }
            "Cast" => k(0).map(|x| x.cast(attr_i(n, "to").unwrap_or(1) as i32)),
            "Identity" => k(0).cloned(),
            "Reshape" => match (k(0), k(1)) {
                (Some(x), Some(s)) => {
                    Some(x.reshape(&s.ints(), attr_i(n, "allowzero").unwrap_or(0) != 0)?)
                }
                _ => None,
            },
            "Flatten" => k(0).map(|x| {
                let axis = attr_i(n, "axis").unwrap_or(1);
                let r = x.shape.len() as i64;
                let axis = if axis < 0 { axis + r } else { axis } as usize;
                let outer: usize = x.shape[..axis.min(x.shape.len())].iter().product();
                x.with_shape(vec![outer, x.numel() / outer.max(1)])
            }),
            "Squeeze" if self.opset < 13 || n.input.len() < 2 => k(0).map(|x| {
                let axes = ints(n, "axes");
                let r = x.shape.len() as i64;
                let shape = x
                    .shape
                    .iter()
                    .enumerate()
                    .filter(|(i, d)| match &axes {
                        Some(a) => !a
                            .iter()
                            .any(|&ax| (if ax < 0 { ax + r } else { ax }) == *i as i64),
                        None => **d != 1,
                    })
                    .map(|(_, d)| *d)
                    .collect();
                x.with_shape(shape)
            }),
            "Unsqueeze" => {
                let axes = if self.opset >= 13 {
                    k(1).map(Konst::ints)
                } else {
                    ints(n, "axes")
                };
                match (k(0), axes) {
                    (Some(x), Some(axes)) => {
                        let r = (x.shape.len() + axes.len()) as i64;
                        let mut axes: Vec<usize> = axes
                            .iter()
                            .map(|&a| (if a < 0 { a + r } else { a }) as usize)
                            .collect();
                        axes.sort_unstable();
                        let mut shape = x.shape.clone();
                        for a in axes {
                            if a > shape.len() {
                                return Err("Unsqueeze axis out of range".into());
                            }
                            shape.insert(a, 1);
                        }
                        Some(x.with_shape(shape))
                    }
                    _ => None,
                }
            }
            "Add" | "Sub" | "Mul" | "Div" => match (k(0), k(1)) {
                (Some(a), Some(b)) => host::binary(&n.op_type, a, b),
                _ => None,
            },
            _ => None,
        })
    }

    fn channel_params(
        &self,
        n: &NodeProto,
        scale: &Konst,
        zp: Option<&Konst>,
    ) -> Result<(usize, Vec<f32>, Vec<f32>), String> {
        if attr_i(n, "block_size").unwrap_or(0) != 0 {
            return Err("blocked quantization".into());
        }
        let s: Vec<f32> = scale.data.iter().map(|&v| v as f32).collect();
        let z: Vec<f32> = match zp {
            Some(z) if z.numel() == s.len() => z.data.iter().map(|&v| v as f32).collect(),
            Some(_) => return Err("zero point and scale differ in length".into()),
            None => vec![0.0; s.len()],
        };
        let axis = if s.len() > 1 {
            let a = attr_i(n, "axis").unwrap_or(1);
            if a < 0 {
                return Err("a negative quantization axis on a tensor of unknown rank".into());
            }
            a as usize
        } else {
            0
        };
        Ok((axis, s, z))
    }

    fn dequantize(
        &mut self,
        n: &'a NodeProto,
        _skip: &mut std::collections::HashSet<*const NodeProto>,
    ) -> Result<(), String> {
        let scale = self.need_konst(n, 1, "the scale")?.clone();
        let zp = self.konst(n, 2).cloned();
        let (axis, s, z) = self.channel_params(n, &scale, zp.as_ref())?;
        let x = self.value(n, 0)?;
        if self.graph.values[x].dtype == DType::F32 {
            return Err("a float input (only 8-bit integers are dequantized)".into());
        }
        let op = Op::Unary {
            op: UnaryOp::Dequantize,
            alpha: 0.0,
            beta: 0.0,
            lo: 0.0,
            hi: 0.0,
            channel: Some((axis, s, z)),
        };
        self.emit(n, op, vec![x], DType::F32)
    }

    fn quantize(
        &mut self,
        n: &'a NodeProto,
        skip: &mut std::collections::HashSet<*const NodeProto>,
    ) -> Result<(), String> {
        let scale = self.need_konst(n, 1, "the scale")?.clone();
        let zp = self.konst(n, 2).cloned();
        let out_type = match (&zp, attr_i(n, "output_dtype").unwrap_or(0)) {
            (Some(z), _) => z.elem,
            (None, 0) => 2,
            (None, t) => t as i32,
        };
        let dtype = match DType::of_onnx(out_type) {
            Some(t @ (DType::U8 | DType::I8)) => t,
            _ => return Err(format!("quantization to element type {out_type}")),
        };
        let (lo, hi) = dtype.range();
        let (axis, s, z) = self.channel_params(n, &scale, zp.as_ref())?;
        let x = self.float_input(n, 0)?;
        // An activation Q → DQ pair with the same parameters is one exact
        // fake-quantize step; the 8-bit tensor itself is never needed.
        let out = n.output.first().ok_or("no output")?;
        if let Some(dq) = self.sole_consumer(out)
            && dq.op_type == "DequantizeLinear"
            && input(dq, 0) == Some(out.as_str())
            && let Some(dq_scale) = self.konst(dq, 1)
            && dq_scale.data == scale.data
            && match (self.konst(dq, 2), &zp) {
                (Some(a), Some(b)) => a.data == b.data,
                (None, None) => true,
                (Some(a), None) | (None, Some(a)) => a.data.iter().all(|&v| v == 0.0),
            }
            && (s.len() == 1 || attr_i(dq, "axis").unwrap_or(1) == axis as i64)
        {
            let op = Op::Unary {
                op: UnaryOp::FakeQuantize,
                alpha: 0.0,
                beta: 0.0,
                lo,
                hi,
                channel: Some((axis, s, z)),
            };
            skip.insert(dq as *const NodeProto);
            self.graph.fused_qdq += 1;
            return self.emit(dq, op, vec![x], DType::F32);
        }
        let op = Op::Unary {
            op: UnaryOp::Quantize,
            alpha: 0.0,
            beta: 0.0,
            lo,
            hi,
            channel: Some((axis, s, z)),
        };
        self.emit(n, op, vec![x], dtype)
    }

    fn conv(
        &mut self,
        n: &'a NodeProto,
        skip: &mut std::collections::HashSet<*const NodeProto>,
    ) -> Result<(), String> {
        let x = self.float_input(n, 0)?;
        let w = self.float_input(n, 1)?;
        let kernel = match ints(n, "kernel_shape") {
            Some(k) => usizes(&k, "kernel")?,
            None => match &self.graph.values[w].source {
                Source::Const(k) => k.shape.get(2..).map(<[usize]>::to_vec).unwrap_or_default(),
                _ => return Err("kernel_shape is needed when the weights are not constant".into()),
            },
        };
        if kernel.is_empty() || kernel.len() > 2 {
            return Err(format!(
                "{}-D convolution (the GPU engine runs 1-D and 2-D)",
                kernel.len()
            ));
        }
        let window = window(n, kernel)?;
        let groups = usize::try_from(attr_i(n, "group").unwrap_or(1)).map_err(|_| "bad group")?;
        let mut ins = vec![x, w];
        if input(n, 2).is_some() {
            ins.push(self.float_input(n, 2)?);
        }
        if n.op_type == "ConvTranspose" {
            let output_padding = usizes(&ints(n, "output_padding").unwrap_or_default(), "padding")?;
            let output_shape = match ints(n, "output_shape") {
                Some(s) => Some(usizes(&s, "size")?),
                None => None,
            };
            let op = Op::ConvTranspose {
                window,
                groups,
                output_padding,
                output_shape,
            };
            return self.emit(n, op, ins, DType::F32);
        }
        // A Relu or constant Clip that is the convolution's only consumer
        // runs inside the convolution kernel.
        let out = n.output.first().ok_or("no output")?;
        let mut act = Act::None;
        let mut target = n;
        if let Some(next) = self.sole_consumer(out) {
            match next.op_type.as_str() {
                "Relu" => act = Act::Relu,
                "Clip" if self.opset >= 11 => {
                    let b = |ix, d: f32| match input(next, ix) {
                        None => Some(d),
                        Some(_) => self.konst(next, ix).and_then(Konst::scalar_f32),
                    };
                    if let (Some(lo), Some(hi)) = (b(1, f32::MIN), b(2, f32::MAX)) {
                        act = Act::Clip(lo, hi);
                    }
                }
                _ => {}
            }
            if act != Act::None {
                skip.insert(next as *const NodeProto);
                self.graph.fused_act += 1;
                target = next;
            }
        }
        self.emit(
            target,
            Op::Conv {
                window,
                groups,
                act,
            },
            ins,
            DType::F32,
        )
    }

    fn resize(&mut self, n: &NodeProto) -> Result<(), String> {
        let mode = attr_s(n, "mode").unwrap_or_else(|| "nearest".into());
        let linear = match mode.as_str() {
            "nearest" => false,
            "linear" | "bilinear" => true,
            other => return Err(format!("mode {other}")),
        };
        if attr_i(n, "antialias").unwrap_or(0) != 0 {
            return Err("antialias".into());
        }
        if attr(n, "axes").is_some() {
            return Err("the axes attribute".into());
        }
        if attr_s(n, "keep_aspect_ratio_policy").is_some_and(|p| p != "stretch") {
            return Err("keep_aspect_ratio_policy".into());
        }
        let coord = if n.op_type == "Upsample" || self.opset < 11 {
            1
        } else {
            match attr_s(n, "coordinate_transformation_mode")
                .as_deref()
                .unwrap_or("half_pixel")
            {
                "half_pixel" => 0,
                "asymmetric" => 1,
                "align_corners" => 2,
                "pytorch_half_pixel" => 3,
                "tf_half_pixel_for_nn" => 4,
                other => return Err(format!("coordinate_transformation_mode {other}")),
            }
        };
        let nearest = match attr_s(n, "nearest_mode")
            .as_deref()
            .unwrap_or("round_prefer_floor")
        {
            "round_prefer_floor" => 0,
            "round_prefer_ceil" => 1,
            "floor" => 2,
            "ceil" => 3,
            other => return Err(format!("nearest_mode {other}")),
        };
        let (scales_ix, sizes_ix) = if n.op_type == "Upsample" || self.opset < 11 {
            (1, usize::MAX)
        } else {
            (2, 3)
        };
        let scales = match input(n, scales_ix) {
            Some(_) => {
                let s = self.need_konst(n, scales_ix, "the scales")?;
                (s.numel() > 0).then(|| s.data.iter().map(|&v| v as f32).collect::<Vec<f32>>())
            }
            None if n.op_type == "Upsample" => ints(n, "scales").map(|_| vec![]),
            None => None,
        };
        let scales = match (n.op_type.as_str(), scales) {
            ("Upsample", Some(v)) if v.is_empty() => Some(
                attr(n, "scales")
                    .map(|a| a.floats.clone())
                    .unwrap_or_default(),
            ),
            (_, s) => s,
        };
        let sizes = match input(n, sizes_ix) {
            Some(_) => Some(usizes(
                &self.need_konst(n, sizes_ix, "the sizes")?.ints(),
                "size",
            )?),
            None => None,
        };
        if scales.is_none() && sizes.is_none() {
            return Err("neither scales nor sizes".into());
        }
        // Nearest resizing selects values, whatever their type.
        let x = if linear {
            self.float_input(n, 0)?
        } else {
            self.value(n, 0)?
        };
        let dt = self.graph.values[x].dtype;
        let op = Op::Resize {
            linear,
            coord,
            nearest,
            scales,
            sizes,
        };
        self.emit(n, op, vec![x], dt)
    }
}

fn unary(op: UnaryOp, alpha: f32, beta: f32) -> Op {
    Op::Unary {
        op,
        alpha,
        beta,
        lo: 0.0,
        hi: 0.0,
        channel: None,
    }
}

fn window(n: &NodeProto, kernel: Vec<usize>) -> Result<Window, String> {
    let r = kernel.len();
    let strides = usizes(&ints(n, "strides").unwrap_or_else(|| vec![1; r]), "stride")?;
    let dilations = usizes(
        &ints(n, "dilations").unwrap_or_else(|| vec![1; r]),
        "dilation",
    )?;
    let pads = usizes(&ints(n, "pads").unwrap_or_else(|| vec![0; 2 * r]), "pad")?;
    if strides.len() != r || dilations.len() != r || pads.len() != 2 * r {
        return Err("window attributes of different ranks".into());
    }
    if strides.contains(&0) || dilations.contains(&0) {
        return Err("a zero stride or dilation".into());
    }
    let auto_pad = match attr_s(n, "auto_pad").as_deref().unwrap_or("NOTSET") {
        "NOTSET" | "" => AutoPad::NotSet,
        "SAME_UPPER" => AutoPad::SameUpper,
        "SAME_LOWER" => AutoPad::SameLower,
        "VALID" => AutoPad::Valid,
        other => return Err(format!("auto_pad {other}")),
    };
    Ok(Window {
        kernel,
        strides,
        dilations,
        pads,
        auto_pad,
    })
}

impl Graph {
    /// Number of GPU kernels one run dispatches, about (for logs).
    pub(crate) fn kernel_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| !matches!(n.op, Op::Alias(_)))
            .count()
    }
}
