//! Graph rewrites on the ONNX protobuf, each expressed with standard ONNX
//! operators so the rewritten graph means what the original meant.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};

use super::{
    Constants, FLOAT, INT32, INT64, attr_f, attr_i, default_opset, float_attr, input, int_attr,
    ints_attr, node,
};

/// What the rewrites changed, for `outpost model inspect` and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RewriteReport {
    /// `com.microsoft::QGemm` nodes turned into DequantizeLinear + Gemm + QuantizeLinear.
    pub(crate) qgemm: usize,
    /// Softmax/LogSoftmax nodes between quantize ops decomposed into
    /// ReduceMax/Exp/ReduceSum (see [`guard_softmax`]).
    pub(crate) softmax_guarded: usize,
    /// Integer operators (QLinearConv, QLinearMatMul, MatMulInteger,
    /// ConvInteger) rewritten to float kernels on dequantized weights.
    pub(crate) dequantized: usize,
    /// Attention (opset 23) nodes expanded into MatMul/Softmax form.
    pub(crate) attention: usize,
    /// Activation QuantizeLinear → DequantizeLinear pairs removed
    /// ([`Mode::WeightsOnly`]).
    pub(crate) activation_qdq_removed: usize,
}

/// How integer arithmetic is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Leave integer operators to tract's integer kernels.
    Integer,
    /// Integer operators become DequantizeLinear + float op + QuantizeLinear:
    /// the same values, float kernels.
    Dequantized,
    /// As `Dequantized`, then activation QuantizeLinear → DequantizeLinear
    /// pairs are dropped: weights stay int8 in the file and are dequantized
    /// at load, activations are computed in float. Results differ from the
    /// quantized model's by its activation rounding.
    WeightsOnly,
}

/// Rewrites in place for the execution `mode`.
pub(crate) fn rewrite(model: &mut ModelProto, mode: Mode) -> RewriteReport {
    let dequantize = mode != Mode::Integer;
    let opset = default_opset(model);
    let constants = Constants::of(model);
    let Some(graph) = model.graph.as_mut() else {
        return RewriteReport::default();
    };
    let mut names: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| {
            n.output
                .iter()
                .cloned()
                .chain(std::iter::once(n.name.clone()))
        })
        .chain(graph.initializer.iter().map(|t| t.name.clone()))
        .chain(graph.input.iter().map(|i| i.name.clone()))
        .collect();
    let producers: HashMap<String, String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.clone(), n.op_type.clone())))
        .collect();
    let mut consumers: HashMap<String, Vec<String>> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            consumers
                .entry(i.clone())
                .or_default()
                .push(n.op_type.clone());
        }
    }
    for o in &graph.output {
        consumers
            .entry(o.name.clone())
            .or_default()
            .push("<graph output>".into());
    }

    let mut ctx = Ctx {
        opset,
        types: type_info(graph),
        constants: &constants,
        names: &mut names,
        new_initializers: vec![],
        report: RewriteReport::default(),
    };
    let old = std::mem::take(&mut graph.node);
    let mut nodes = Vec::with_capacity(old.len());
    for n in old {
        let ms = n.domain == "com.microsoft";
        let default = n.domain.is_empty() || n.domain == "ai.onnx";
        match n.op_type.as_str() {
            "QGemm" if ms => {
                ctx.report.qgemm += 1;
                nodes.extend(ctx.qgemm(&n));
            }
            "Attention" if default => match ctx.attention(&n) {
                Some(replacement) => {
                    ctx.report.attention += 1;
                    nodes.extend(replacement);
                }
                None => nodes.push(n),
            },
            "Softmax" | "LogSoftmax" if default && between_quant(&n, &producers, &consumers) => {
                ctx.report.softmax_guarded += 1;
                nodes.extend(ctx.decompose_softmax(&n));
            }
            "QLinearConv" | "QLinearMatMul" if default && dequantize => {
                ctx.report.dequantized += 1;
                nodes.extend(ctx.qlinear(&n));
            }
            "MatMulInteger" | "ConvInteger" if default && dequantize => match ctx.integer(&n) {
                Some(replacement) => {
                    ctx.report.dequantized += 1;
                    nodes.extend(replacement);
                }
                None => nodes.push(n),
            },
            _ => nodes.push(n),
        }
    }
    graph.node = nodes;
    graph.initializer.extend(ctx.new_initializers);
    let mut report = ctx.report;
    if mode == Mode::WeightsOnly {
        report.activation_qdq_removed = drop_activation_qdq(graph, &constants, opset);
    }
    report
}

/// Replaces QuantizeLinear → DequantizeLinear pairs on activations (the
/// quantized input is not a constant) by the Clip they imply: quantization
/// saturates to the integer range, and onnxruntime's quantizer relies on
/// that to fold Relu into the QuantizeLinear (zero point at the bottom of
/// the range), so the clamp must stay; only the rounding goes. Pairs with a
/// non-constant or per-axis scale are kept. Returns the number replaced.
fn drop_activation_qdq(
    graph: &mut tract_onnx::pb::GraphProto,
    constants: &Constants,
    opset: i64,
) -> usize {
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
    for (ix, n) in graph.node.iter().enumerate() {
        for i in &n.input {
            consumers.entry(i.clone()).or_default().push(ix);
        }
    }
    let mut remove = HashSet::new();
    let mut clips: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut new_inits = vec![];
    for (ix, q) in graph.node.iter().enumerate() {
        let (Some(x), Some(y)) = (input(q, 0), q.output.first()) else {
            continue;
        };
        if q.op_type != "QuantizeLinear" || constants.tensors.contains_key(x) || outputs.contains(y)
        {
            continue;
        }
        let users = consumers.get(y).cloned().unwrap_or_default();
        if users.is_empty()
            || !users
                .iter()
                .all(|&u| graph.node[u].op_type == "DequantizeLinear")
        {
            continue;
        }
        let Some((lo, hi)) = clip_range(q, constants) else {
            continue;
        };
        let Some(first_out) = graph.node[users[0]].output.first().cloned() else {
            continue;
        };
        let (lo_name, hi_name) = (
            format!("{first_out}/outpost_clip_lo"),
            format!("{first_out}/outpost_clip_hi"),
        );
        let clip = if opset >= 11 {
            for (name, v) in [(&lo_name, lo), (&hi_name, hi)] {
                new_inits.push(TensorProto {
                    name: name.clone(),
                    data_type: FLOAT as i32,
                    float_data: vec![v],
                    ..Default::default()
                });
            }
            node(
                format!("{first_out}/outpost_clip"),
                "Clip",
                &[x, &lo_name, &hi_name],
                &[&first_out],
                vec![],
            )
        } else {
            let attrs = vec![super::float_attr("min", lo), super::float_attr("max", hi)];
            node(
                format!("{first_out}/outpost_clip"),
                "Clip",
                &[x],
                &[&first_out],
                attrs,
            )
        };
        clips.insert(ix, vec![clip]);
        for u in users {
            remove.insert(u);
            if let Some(out) = graph.node[u].output.first().filter(|o| **o != first_out) {
                rename.insert(out.clone(), first_out.clone());
            }
        }
    }
    let pairs = clips.len();
    let mut kept: Vec<NodeProto> = vec![];
    for (ix, mut n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        if let Some(clip) = clips.remove(&ix) {
            kept.extend(clip);
            continue;
        }
        if remove.contains(&ix) {
            continue;
        }
        for i in &mut n.input {
            if let Some(r) = rename.get(i) {
                *i = r.clone();
            }
        }
        kept.push(n);
    }
    for o in &graph.output {
        if let Some(src) = rename.get(&o.name) {
            kept.push(node(
                format!("{}/outpost_identity", o.name),
                "Identity",
                &[src],
                &[&o.name],
                vec![],
            ));
        }
    }
    graph.node = kept;
    graph.initializer.extend(new_inits);
    pairs
}

/// The float range a per-tensor QuantizeLinear saturates to:
/// `[(qmin − zp)·scale, (qmax − zp)·scale]`.
fn clip_range(q: &NodeProto, constants: &Constants) -> Option<(f32, f32)> {
    let scale_t = constants.tensors.get(input(q, 1)?)?;
    if scale_t.dims.iter().product::<i64>() != 1 {
        return None;
    }
    let scale = match (scale_t.float_data.first(), scale_t.raw_data.get(..4)) {
        (Some(f), _) => *f,
        (None, Some(b)) if scale_t.data_type == FLOAT as i32 => {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        _ => return None,
    };
    let (zp, qmin, qmax) = match input(q, 2) {
        None => (0, 0, 255),
        Some(z) => {
            let t = constants.tensors.get(z)?;
            if t.dims.iter().product::<i64>() != 1 {
                return None;
            }
            let v = *super::int_values(t)?.first()?;
            match t.data_type {
                2 => (v, 0, 255),
                3 => (v, -128, 127),
                _ => return None,
            }
        }
    };
    Some((((qmin - zp) as f32) * scale, ((qmax - zp) as f32) * scale))
}

/// Is this node fed by a DequantizeLinear or feeding only QuantizeLinear ops?
fn between_quant(
    n: &NodeProto,
    producers: &HashMap<String, String>,
    consumers: &HashMap<String, Vec<String>>,
) -> bool {
    let fed_by_dq = n
        .input
        .first()
        .and_then(|i| producers.get(i))
        .is_some_and(|op| op == "DequantizeLinear");
    let feeds_q = n
        .output
        .first()
        .and_then(|o| consumers.get(o))
        .is_some_and(|c| !c.is_empty() && c.iter().all(|op| op == "QuantizeLinear"));
    fed_by_dq || feeds_q
}

/// The prefix for names derived from a node: its name, else its first output.
fn base_name(n: &NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

mod attention;

/// Element type and static dims (`None` where symbolic) of a named tensor,
/// from graph inputs, value_info and initializers.
type TypeInfo = HashMap<String, (i32, Option<Vec<Option<i64>>>)>;

fn type_info(graph: &tract_onnx::pb::GraphProto) -> TypeInfo {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    let mut out = TypeInfo::new();
    for vi in graph
        .input
        .iter()
        .chain(&graph.value_info)
        .chain(&graph.output)
    {
        if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
            vi.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            let dims = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) if v >= 0 => Some(v),
                        _ => None,
                    })
                    .collect()
            });
            out.insert(vi.name.clone(), (t.elem_type, dims));
        }
    }
    for t in &graph.initializer {
        out.insert(
            t.name.clone(),
            (t.data_type, Some(t.dims.iter().map(|d| Some(*d)).collect())),
        );
    }
    out
}

struct Ctx<'a> {
    opset: i64,
    types: TypeInfo,
    constants: &'a Constants,
    names: &'a mut HashSet<String>,
    new_initializers: Vec<TensorProto>,
    report: RewriteReport,
}

impl Ctx<'_> {
    /// A name not used anywhere in the graph yet.
    fn fresh(&mut self, base: &str, tag: &str) -> String {
        let mut i = 0usize;
        loop {
            let candidate = format!(
                "{base}/outpost_{tag}{}",
                if i == 0 {
                    String::new()
                } else {
                    format!("_{i}")
                }
            );
            if self.names.insert(candidate.clone()) {
                return candidate;
            }
            i += 1;
        }
    }

    /// A per-tensor scale or zero point stored as a 1-element 1-D tensor is
    /// turned into a scalar, so DequantizeLinear with an `axis` does not read
    /// it as per-axis. Non-constant or per-axis operands are returned as is.
    fn scalarized(&mut self, name: &str) -> String {
        match self.constants.tensors.get(name) {
            Some(t) if !t.dims.is_empty() && t.dims.iter().product::<i64>() == 1 => {
                let mut scalar = t.clone();
                scalar.dims.clear();
                scalar.name = self.fresh(name, "scalar");
                let n = scalar.name.clone();
                self.new_initializers.push(scalar);
                n
            }
            _ => name.to_owned(),
        }
    }

    /// A constant per-axis tensor reshaped to broadcast along `axis` of a
    /// tensor of rank `rank` (e.g. a ConvInteger weight zero point `[M]` to
    /// `[M,1,1,1]`).
    fn broadcastable(&mut self, name: &str, axis: usize, rank: usize) -> Option<String> {
        let t = self.constants.tensors.get(name)?;
        let numel: i64 = t.dims.iter().product();
        if numel == 1 {
            return Some(self.scalarized(name));
        }
        let mut dims = vec![1i64; rank];
        *dims.get_mut(axis)? = numel;
        let mut reshaped = t.clone();
        reshaped.dims = dims;
        reshaped.name = self.fresh(name, "bcast");
        let n = reshaped.name.clone();
        self.new_initializers.push(reshaped);
        Some(n)
    }

    fn int64_initializer(&mut self, base: &str, values: Vec<i64>) -> String {
        let name = self.fresh(base, "axes");
        self.new_initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![values.len() as i64],
            data_type: INT64,
            int64_data: values,
            ..Default::default()
        });
        name
    }

    fn dq(
        &mut self,
        base: &str,
        tag: &str,
        x: &str,
        scale: &str,
        zp: Option<&str>,
        axis: Option<i64>,
    ) -> (NodeProto, String) {
        let out = self.fresh(base, tag);
        let mut inputs = vec![x, scale];
        if let Some(zp) = zp {
            inputs.push(zp);
        }
        let attrs = axis
            .filter(|_| self.opset >= 13)
            .map(|a| vec![int_attr("axis", a)])
            .unwrap_or_default();
        let name = self.fresh(base, &format!("{tag}_node"));
        (node(name, "DequantizeLinear", &inputs, &[&out], attrs), out)
    }

    /// Bias of integer ops: int32 with scale `x_scale * w_scale`, zero point 0
    /// (ONNX QLinearConv spec, input `B`; ORT contrib QGemm, input `C`).
    fn bias(
        &mut self,
        base: &str,
        b: &str,
        a_scale: &str,
        w_scale: &str,
        out: &mut Vec<NodeProto>,
    ) -> String {
        let cast = self.fresh(base, "bias_f");
        let scale = self.fresh(base, "bias_scale");
        let bias = self.fresh(base, "bias");
        out.push(node(
            self.fresh(base, "bias_cast"),
            "Cast",
            &[b],
            &[&cast],
            vec![int_attr("to", FLOAT)],
        ));
        out.push(node(
            self.fresh(base, "bias_scale_mul"),
            "Mul",
            &[a_scale, w_scale],
            &[&scale],
            vec![],
        ));
        out.push(node(
            self.fresh(base, "bias_mul"),
            "Mul",
            &[&cast, &scale],
            &[&bias],
            vec![],
        ));
        bias
    }

    /// `com.microsoft::QGemm` (onnxruntime contrib op) → DequantizeLinear on A
    /// and B, float Gemm, QuantizeLinear on Y when `y_scale` is given.
    /// Inputs: A, a_scale, a_zp, B, b_scale, b_zp, C?, y_scale?, y_zp?.
    /// C is int32 with scale `alpha * a_scale * b_scale`; Y = alpha·A'B' + C.
    fn qgemm(&mut self, n: &NodeProto) -> Vec<NodeProto> {
        let base = base_name(n);
        let alpha = attr_f(n, "alpha").unwrap_or(1.0);
        let trans_a = attr_i(n, "transA").unwrap_or(0);
        let trans_b = attr_i(n, "transB").unwrap_or(0);
        let mut out = vec![];
        let (a, a_s, a_zp) = (
            input(n, 0).unwrap_or_default(),
            input(n, 1).unwrap_or_default(),
            input(n, 2),
        );
        let (b, b_s, b_zp) = (
            input(n, 3).unwrap_or_default(),
            input(n, 4).unwrap_or_default(),
            input(n, 5),
        );
        let a_s = self.scalarized(a_s);
        let a_zp = a_zp.map(|z| self.scalarized(z));
        let b_s_name = self.scalarized(b_s);
        let b_zp = b_zp.map(|z| self.scalarized(z));
        let (dq_a, af) = self.dq(&base, "a", a, &a_s, a_zp.as_deref(), None);
        // B is [K,N] (or [N,K] when transposed): per-channel scales run along N.
        let axis = if trans_b != 0 { 0 } else { 1 };
        let (dq_b, bf) = self.dq(&base, "b", b, &b_s_name, b_zp.as_deref(), Some(axis));
        out.push(dq_a);
        out.push(dq_b);
        let mut gemm_inputs = vec![af, bf];
        if let Some(c) = input(n, 6) {
            let c = self.bias(&base, c, &a_s, &b_s_name, &mut out);
            gemm_inputs.push(c);
        }
        let y = n.output.first().cloned().unwrap_or_default();
        let quantized = input(n, 7).is_some();
        let yf = if quantized {
            self.fresh(&base, "y_f")
        } else {
            y.clone()
        };
        let gi: Vec<&str> = gemm_inputs.iter().map(String::as_str).collect();
        out.push(node(
            self.fresh(&base, "gemm"),
            "Gemm",
            &gi,
            &[&yf],
            vec![
                float_attr("alpha", alpha),
                float_attr("beta", alpha),
                int_attr("transA", trans_a),
                int_attr("transB", trans_b),
            ],
        ));
        if let Some(y_s) = input(n, 7) {
            let mut q_in = vec![yf.as_str(), y_s];
            if let Some(zp) = input(n, 8) {
                q_in.push(zp);
            }
            out.push(node(
                self.fresh(&base, "q"),
                "QuantizeLinear",
                &q_in,
                &[&y],
                vec![],
            ));
        }
        out
    }

    /// Softmax(x) = Exp(x - max) / ReduceSum(Exp(x - max)), written out so the
    /// quantized neighbours cannot swallow it.
    ///
    /// Design: tract 0.23.9 folds `DequantizeLinear → op → QuantizeLinear`
    /// chains into one element-wise lookup table whenever `op`'s axes mapping
    /// looks element-wise, and Softmax's does (same shape in, same shape
    /// out), although Softmax mixes values along its axis. The result is
    /// silently wrong (PP-OCR's direction classifier returns [1.0, 1.0]).
    /// In the decomposed form the dequantized tensor feeds two nodes
    /// (ReduceMax and Sub), which ends tract's chain walk, and every node
    /// left is honest about its axes.
    fn decompose_softmax(&mut self, n: &NodeProto) -> Vec<NodeProto> {
        let base = base_name(n);
        let log = n.op_type == "LogSoftmax";
        let x = input(n, 0).unwrap_or_default().to_owned();
        let y = n.output.first().cloned().unwrap_or_default();
        let mut out = vec![];
        // Before opset 13 the input is coerced to 2-D at `axis` (default 1).
        let legacy = self.opset < 13;
        let axis = attr_i(n, "axis").unwrap_or(if legacy { 1 } else { -1 });
        let (x2, red_axis, y2) = if legacy {
            let flat = self.fresh(&base, "flat");
            out.push(node(
                self.fresh(&base, "flatten"),
                "Flatten",
                &[&x],
                &[&flat],
                vec![int_attr("axis", axis)],
            ));
            (flat, 1, self.fresh(&base, "y2"))
        } else {
            (x.clone(), axis, y.clone())
        };
        let max = self.fresh(&base, "max");
        let shifted = self.fresh(&base, "shifted");
        let exp = self.fresh(&base, "exp");
        let sum = self.fresh(&base, "sum");
        out.push(self.reduce("ReduceMax", &base, &x2, &max, red_axis));
        out.push(node(
            self.fresh(&base, "sub"),
            "Sub",
            &[&x2, &max],
            &[&shifted],
            vec![],
        ));
        out.push(node(
            self.fresh(&base, "exp_node"),
            "Exp",
            &[&shifted],
            &[&exp],
            vec![],
        ));
        out.push(self.reduce("ReduceSum", &base, &exp, &sum, red_axis));
        if log {
            let log_sum = self.fresh(&base, "log_sum");
            out.push(node(
                self.fresh(&base, "log"),
                "Log",
                &[&sum],
                &[&log_sum],
                vec![],
            ));
            out.push(node(
                self.fresh(&base, "out"),
                "Sub",
                &[&shifted, &log_sum],
                &[&y2],
                vec![],
            ));
        } else {
            out.push(node(
                self.fresh(&base, "out"),
                "Div",
                &[&exp, &sum],
                &[&y2],
                vec![],
            ));
        }
        if legacy {
            let shape = self.fresh(&base, "shape");
            out.push(node(
                self.fresh(&base, "shape_node"),
                "Shape",
                &[&x],
                &[&shape],
                vec![],
            ));
            out.push(node(
                self.fresh(&base, "reshape"),
                "Reshape",
                &[&y2, &shape],
                &[&y],
                vec![],
            ));
        }
        out
    }

    /// A keepdims reduction along one axis, in the form the model's opset
    /// expects (axes became an input in opset 13 for ReduceSum and in opset 18
    /// for the other reductions).
    fn reduce(&mut self, op: &str, base: &str, x: &str, y: &str, axis: i64) -> NodeProto {
        let axes_as_input = match op {
            "ReduceSum" => self.opset >= 13,
            _ => self.opset >= 18,
        };
        let name = self.fresh(base, &op.to_lowercase());
        if axes_as_input {
            let axes = self.int64_initializer(base, vec![axis]);
            node(name, op, &[x, &axes], &[y], vec![int_attr("keepdims", 1)])
        } else {
            node(
                name,
                op,
                &[x],
                &[y],
                vec![ints_attr("axes", vec![axis]), int_attr("keepdims", 1)],
            )
        }
    }

    /// QLinearConv / QLinearMatMul → DequantizeLinear, float Conv/MatMul,
    /// QuantizeLinear (the QDQ form the ONNX spec defines them by).
    fn qlinear(&mut self, n: &NodeProto) -> Vec<NodeProto> {
        let base = base_name(n);
        let conv = n.op_type == "QLinearConv";
        let get = |i| input(n, i).unwrap_or_default().to_owned();
        let (x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp) = (
            get(0),
            get(1),
            input(n, 2),
            get(3),
            get(4),
            input(n, 5),
            get(6),
            input(n, 7),
        );
        let mut out = vec![];
        let x_s = self.scalarized(&x_s);
        let x_zp = x_zp.map(|z| self.scalarized(z));
        let w_s2 = self.scalarized(&w_s);
        let w_zp = w_zp.map(|z| self.scalarized(z));
        let (d, xf) = self.dq(&base, "x", &x, &x_s, x_zp.as_deref(), None);
        out.push(d);
        // Conv weights are [M, C/g, k...]: per-channel along 0. MatMul's B is
        // [..., K, N]: per-column along its last axis.
        let axis = if conv {
            0
        } else {
            self.constants.rank(&w).map(|r| r as i64 - 1).unwrap_or(1)
        };
        let (d, wf) = self.dq(&base, "w", &w, &w_s2, w_zp.as_deref(), Some(axis));
        out.push(d);
        let mut inputs = vec![xf, wf];
        if conv && let Some(b) = input(n, 8) {
            let b = self.bias(&base, b, &x_s, &w_s2, &mut out);
            inputs.push(b);
        }
        let yf = self.fresh(&base, "y_f");
        let ins: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let attrs = if conv { n.attribute.clone() } else { vec![] };
        out.push(node(
            self.fresh(&base, "float"),
            if conv { "Conv" } else { "MatMul" },
            &ins,
            &[&yf],
            attrs,
        ));
        let y = n.output.first().cloned().unwrap_or_default();
        let mut q_in = vec![yf.as_str(), y_s.as_str()];
        if let Some(zp) = y_zp {
            q_in.push(zp);
        }
        out.push(node(
            self.fresh(&base, "q"),
            "QuantizeLinear",
            &q_in,
            &[&y],
            vec![],
        ));
        out
    }

    /// MatMulInteger / ConvInteger → float MatMul/Conv on `Cast(x) - zp`,
    /// cast back to int32 so consumers see the type they expect. Exact while
    /// accumulators stay below 2^24. Returns `None` (keep the integer op) when
    /// a zero point is per-row and not constant.
    fn integer(&mut self, n: &NodeProto) -> Option<Vec<NodeProto>> {
        let base = base_name(n);
        let conv = n.op_type == "ConvInteger";
        let (a, b) = (input(n, 0)?.to_owned(), input(n, 1)?.to_owned());
        let mut out = vec![];
        // The first operand's zero point must be per-tensor for the rewrite.
        let a_zp = match input(n, 2) {
            Some(z) if self.constants.numel(z).is_some_and(|k| k != 1) => return None,
            Some(z) => Some(self.scalarized(z)),
            None => None,
        };
        let b_zp = match input(n, 3) {
            None => None,
            Some(z) if self.constants.numel(z) == Some(1) => Some(self.scalarized(z)),
            Some(z) => {
                let rank = self.constants.rank(&b).unwrap_or(if conv { 4 } else { 2 });
                let axis = if conv { 0 } else { rank - 1 };
                Some(self.broadcastable(z, axis, rank)?)
            }
        };
        let af = self.centered(&base, "a", &a, a_zp.as_deref(), &mut out);
        let bf = self.centered(&base, "b", &b, b_zp.as_deref(), &mut out);
        let yf = self.fresh(&base, "y_f");
        let attrs = if conv { n.attribute.clone() } else { vec![] };
        out.push(node(
            self.fresh(&base, "float"),
            if conv { "Conv" } else { "MatMul" },
            &[&af, &bf],
            &[&yf],
            attrs,
        ));
        let y = n.output.first().cloned().unwrap_or_default();
        out.push(node(
            self.fresh(&base, "to_int"),
            "Cast",
            &[&yf],
            &[&y],
            vec![int_attr("to", INT32)],
        ));
        Some(out)
    }

    fn centered(
        &mut self,
        base: &str,
        tag: &str,
        x: &str,
        zp: Option<&str>,
        out: &mut Vec<NodeProto>,
    ) -> String {
        let xf = self.fresh(base, &format!("{tag}_f"));
        out.push(node(
            self.fresh(base, &format!("{tag}_cast")),
            "Cast",
            &[x],
            &[&xf],
            vec![int_attr("to", FLOAT)],
        ));
        let Some(zp) = zp else { return xf };
        let zpf = self.fresh(base, &format!("{tag}_zp_f"));
        out.push(node(
            self.fresh(base, &format!("{tag}_zp_cast")),
            "Cast",
            &[zp],
            &[&zpf],
            vec![int_attr("to", FLOAT)],
        ));
        let c = self.fresh(base, &format!("{tag}_centered"));
        out.push(node(
            self.fresh(base, &format!("{tag}_sub")),
            "Sub",
            &[&xf, &zpf],
            &[&c],
            vec![],
        ));
        c
    }
}
