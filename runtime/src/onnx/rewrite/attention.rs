//! ONNX `Attention` (opset 23), which tract 0.23.9 does not implement,
//! written out in standard operators following the operator's definition
//! (onnx `defs/nn`, and `onnx/reference/ops/op_attention.py`):
//!
//! ```text
//! Q, K, V: [B, H, S, D] (3-D inputs [B, S, H·D] are split into heads)
//! K, V repeated along heads when kv_num_heads < q_num_heads (GQA)
//! scores = Q·Kᵀ · scale            (scale defaults to 1/√D)
//! scores = softcap · tanh(scores / softcap)   when softcap > 0
//!        + bias                    (float mask, bool mask → 0/−∞, causal)
//! P = softmax(scores) where a fully masked row gives 0, not NaN
//! Y = P·V                          (3-D: heads merged back)
//! ```
//!
//! Only what can be checked at load is rewritten; anything else (past
//! key/value caches, `nonpad_kv_seqlen`, extra outputs, sliding windows, a
//! mask whose type or length is not known statically) is left to tract,
//! which refuses it as unsupported rather than computing it wrongly.

use tract_onnx::pb::NodeProto;

use super::{Ctx, base_name};
use crate::onnx::{FLOAT, attr, attr_f, attr_i, input, int_attr, node};

const BOOL: i32 = 9;

impl Ctx<'_> {
    pub(super) fn attention(&mut self, n: &NodeProto) -> Option<Vec<NodeProto>> {
        // Inputs: Q, K, V, attn_mask?, past_key?, past_value?, nonpad_kv_seqlen?
        // Outputs: Y, present_key?, present_value?, qk_matmul_output?
        if n.input.iter().skip(6).any(|s| !s.is_empty())
            || n.output.iter().skip(3).any(|s| !s.is_empty())
        {
            return None;
        }
        let past = match (input(n, 4), input(n, 5)) {
            (Some(k), Some(v)) => Some((k.to_owned(), v.to_owned())),
            (None, None) => None,
            _ => return None,
        };
        for window in ["left_window_size", "right_window_size"] {
            if attr_i(n, window).is_some_and(|w| w != -1) {
                return None;
            }
        }
        let (q, k, v) = (
            input(n, 0)?.to_owned(),
            input(n, 1)?.to_owned(),
            input(n, 2)?.to_owned(),
        );
        let q_rank = self
            .types
            .get(&q)
            .and_then(|(_, d)| d.as_ref().map(Vec::len));
        let three_d = match q_rank {
            Some(3) => true,
            Some(4) => false,
            Some(_) => return None,
            None => attr(n, "q_num_heads").is_some(),
        };
        let base = base_name(n);
        let mut out = vec![];
        let (q4, k4, v4) = if three_d {
            let hq = attr_i(n, "q_num_heads")?;
            let hkv = attr_i(n, "kv_num_heads")?;
            (
                self.split_heads(&base, "q", &q, hq, &mut out),
                self.split_heads(&base, "k", &k, hkv, &mut out),
                self.split_heads(&base, "v", &v, hkv, &mut out),
            )
        } else {
            (q.clone(), k.clone(), v.clone())
        };

        // The cache: present = Concat(past, new) along the sequence axis,
        // before heads are repeated; it is also an output.
        let (k4, v4, past_len) = match &past {
            Some((pk, pv)) => {
                let (present_k, present_v) = (
                    self.present(&base, "k", pk, &k4, n, 1, &mut out),
                    self.present(&base, "v", pv, &v4, n, 2, &mut out),
                );
                let past_len = self.dim(&base, "past_len", pk, 2, &mut out);
                (present_k, present_v, Some(past_len))
            }
            None => (k4, v4, None),
        };
        let zero = self.scalar_like(&base, "zero", 0.0, &q, &mut out);
        let one = self.scalar_like(&base, "one", 1.0, &q, &mut out);
        let neg_inf = self.scalar_like(&base, "neg_inf", f32::NEG_INFINITY, &q, &mut out);

        // Grouped-query attention: repeat each K/V head Hq/Hkv times
        // (np.repeat along the head axis), a no-op when the counts agree.
        let k4 = self.repeat_heads(&base, "k", &q4, &k4, &mut out);
        let v4 = self.repeat_heads(&base, "v", &q4, &v4, &mut out);

        let kt = self.fresh(&base, "kt");
        out.push(node(
            self.fresh(&base, "kt_node"),
            "Transpose",
            &[&k4],
            &[&kt],
            vec![crate::onnx::ints_attr("perm", vec![0, 1, 3, 2])],
        ));
        let qk = self.fresh(&base, "qk");
        out.push(node(
            self.fresh(&base, "qk_node"),
            "MatMul",
            &[&q4, &kt],
            &[&qk],
            vec![],
        ));
        let scale = match attr_f(n, "scale") {
            Some(s) => self.scalar_like(&base, "scale", s, &q, &mut out),
            None => {
                // 1/√D with D the head size of Q.
                let d = self.dim(&base, "head_size", &q4, 3, &mut out);
                let df = self.fresh(&base, "head_size_f");
                out.push(node(
                    self.fresh(&base, "head_size_cast"),
                    "CastLike",
                    &[&d, &q],
                    &[&df],
                    vec![],
                ));
                let sqrt = self.fresh(&base, "sqrt_d");
                out.push(node(
                    self.fresh(&base, "sqrt_node"),
                    "Sqrt",
                    &[&df],
                    &[&sqrt],
                    vec![],
                ));
                let s = self.fresh(&base, "scale_default");
                out.push(node(
                    self.fresh(&base, "scale_node"),
                    "Div",
                    &[&one, &sqrt],
                    &[&s],
                    vec![],
                ));
                s
            }
        };
        let mut scores = self.fresh(&base, "scores");
        out.push(node(
            self.fresh(&base, "scaled"),
            "Mul",
            &[&qk, &scale],
            &[&scores],
            vec![],
        ));

        // Softcap comes before the bias, so masked positions stay −∞.
        if let Some(cap) = attr_f(n, "softcap").filter(|c| *c > 0.0) {
            let c = self.scalar_like(&base, "softcap", cap, &q, &mut out);
            let (d, t, m) = (
                self.fresh(&base, "cap_div"),
                self.fresh(&base, "cap_tanh"),
                self.fresh(&base, "capped"),
            );
            out.push(node(
                self.fresh(&base, "cap_div_node"),
                "Div",
                &[&scores, &c],
                &[&d],
                vec![],
            ));
            out.push(node(
                self.fresh(&base, "cap_tanh_node"),
                "Tanh",
                &[&d],
                &[&t],
                vec![],
            ));
            out.push(node(
                self.fresh(&base, "cap_mul_node"),
                "Mul",
                &[&t, &c],
                &[&m],
                vec![],
            ));
            scores = m;
        }

        // Additive bias from the mask and the causal structure.
        let mut bias: Option<String> = None;
        if let Some(mask) = input(n, 3) {
            let (elem, dims) = self.types.get(mask)?.clone();
            // The mask must span every key: a shorter mask is padded by the
            // spec, and a length-1 mask would broadcast silently.
            let static_len = |name: &str, axis: usize| {
                self.types
                    .get(name)
                    .and_then(|(_, d)| d.as_ref().and_then(|d| *d.get(axis)?))
            };
            let past_static = match &past {
                Some((pk, _)) => static_len(pk, 2)?,
                None => 0,
            };
            let k_len = static_len(&k, if three_d { 1 } else { 2 })? + past_static;
            let m_len = dims.as_ref().and_then(|d| *d.last()?)?;
            if m_len != k_len {
                return None;
            }
            let m = if elem == BOOL {
                let mf = self.fresh(&base, "mask_f");
                out.push(node(
                    self.fresh(&base, "mask_where"),
                    "Where",
                    &[mask, &zero, &neg_inf],
                    &[&mf],
                    vec![],
                ));
                mf
            } else {
                mask.to_owned()
            };
            bias = Some(m);
        }
        if attr_i(n, "is_causal").unwrap_or(0) != 0 {
            let sq = self.dim(&base, "sq", &q4, 2, &mut out);
            let skv = self.dim(&base, "skv", &k4, 2, &mut out);
            let zero_i = self.int64_initializer(&base, vec![0]);
            let one_i = self.int64_initializer(&base, vec![1]);
            let (sq0, skv0, zero0, one0) = (
                self.squeeze0(&base, &sq, &mut out),
                self.squeeze0(&base, &skv, &mut out),
                self.squeeze0(&base, &zero_i, &mut out),
                self.squeeze0(&base, &one_i, &mut out),
            );
            // Query i (at absolute position past + i) sees keys j <= past + i.
            let i = self.fresh(&base, "rows");
            match &past_len {
                Some(p) => {
                    let p0 = self.squeeze0(&base, p, &mut out);
                    let end = self.fresh(&base, "rows_end");
                    out.push(node(
                        self.fresh(&base, "rows_end_node"),
                        "Add",
                        &[&sq0, &p0],
                        &[&end],
                        vec![],
                    ));
                    out.push(node(
                        self.fresh(&base, "rows_node"),
                        "Range",
                        &[&p0, &end, &one0],
                        &[&i],
                        vec![],
                    ));
                }
                None => out.push(node(
                    self.fresh(&base, "rows_node"),
                    "Range",
                    &[&zero0, &sq0, &one0],
                    &[&i],
                    vec![],
                )),
            }
            let j = self.fresh(&base, "cols");
            out.push(node(
                self.fresh(&base, "cols_node"),
                "Range",
                &[&zero0, &skv0, &one0],
                &[&j],
                vec![],
            ));
            let i2 = self.fresh(&base, "rows2");
            let ax1 = self.int64_initializer(&base, vec![1]);
            out.push(node(
                self.fresh(&base, "rows_unsq"),
                "Unsqueeze",
                &[&i, &ax1],
                &[&i2],
                vec![],
            ));
            let j2 = self.fresh(&base, "cols2");
            let ax0 = self.int64_initializer(&base, vec![0]);
            out.push(node(
                self.fresh(&base, "cols_unsq"),
                "Unsqueeze",
                &[&j, &ax0],
                &[&j2],
                vec![],
            ));
            let allowed = self.fresh(&base, "allowed");
            out.push(node(
                self.fresh(&base, "allowed_node"),
                "LessOrEqual",
                &[&j2, &i2],
                &[&allowed],
                vec![],
            ));
            let causal = self.fresh(&base, "causal");
            out.push(node(
                self.fresh(&base, "causal_node"),
                "Where",
                &[&allowed, &zero, &neg_inf],
                &[&causal],
                vec![],
            ));
            bias = Some(match bias {
                Some(b) => {
                    let both = self.fresh(&base, "bias");
                    out.push(node(
                        self.fresh(&base, "bias_node"),
                        "Add",
                        &[&b, &causal],
                        &[&both],
                        vec![],
                    ));
                    both
                }
                None => causal,
            });
        }
        if let Some(b) = bias {
            let biased = self.fresh(&base, "biased");
            out.push(node(
                self.fresh(&base, "biased_node"),
                "Add",
                &[&scores, &b],
                &[&biased],
                vec![],
            ));
            scores = biased;
        }
        // Softmax over keys; a fully masked row (all −∞) gives 0, not NaN.
        let max = self.fresh(&base, "max");
        out.push(self.reduce("ReduceMax", &base, &scores, &max, -1));
        let is_neg_inf = self.fresh(&base, "max_is_neg_inf");
        out.push(node(
            self.fresh(&base, "isinf"),
            "IsInf",
            &[&max],
            &[&is_neg_inf],
            vec![int_attr("detect_positive", 0)],
        ));
        let safe_max = self.fresh(&base, "safe_max");
        out.push(node(
            self.fresh(&base, "safe_max_node"),
            "Where",
            &[&is_neg_inf, &zero, &max],
            &[&safe_max],
            vec![],
        ));
        let (shifted, exp, sum) = (
            self.fresh(&base, "shifted"),
            self.fresh(&base, "exp"),
            self.fresh(&base, "sum"),
        );
        out.push(node(
            self.fresh(&base, "shift_node"),
            "Sub",
            &[&scores, &safe_max],
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
        out.push(self.reduce("ReduceSum", &base, &exp, &sum, -1));
        let (empty, safe_sum, probs) = (
            self.fresh(&base, "sum_is_zero"),
            self.fresh(&base, "safe_sum"),
            self.fresh(&base, "probs"),
        );
        out.push(node(
            self.fresh(&base, "sum_zero_node"),
            "Equal",
            &[&sum, &zero],
            &[&empty],
            vec![],
        ));
        out.push(node(
            self.fresh(&base, "safe_sum_node"),
            "Where",
            &[&empty, &one, &sum],
            &[&safe_sum],
            vec![],
        ));
        out.push(node(
            self.fresh(&base, "probs_node"),
            "Div",
            &[&exp, &safe_sum],
            &[&probs],
            vec![],
        ));

        let y = n.output.first()?.clone();
        if three_d {
            let y4 = self.fresh(&base, "y4");
            out.push(node(
                self.fresh(&base, "pv"),
                "MatMul",
                &[&probs, &v4],
                &[&y4],
                vec![],
            ));
            let yt = self.fresh(&base, "yt");
            out.push(node(
                self.fresh(&base, "merge_t"),
                "Transpose",
                &[&y4],
                &[&yt],
                vec![crate::onnx::ints_attr("perm", vec![0, 2, 1, 3])],
            ));
            let shape = self.int64_initializer(&base, vec![0, 0, -1]);
            out.push(node(
                self.fresh(&base, "merge"),
                "Reshape",
                &[&yt, &shape],
                &[&y],
                vec![],
            ));
        } else {
            out.push(node(
                self.fresh(&base, "pv"),
                "MatMul",
                &[&probs, &v4],
                &[&y],
                vec![],
            ));
        }
        Some(out)
    }

    /// Concat(past, new) on the sequence axis, also written to output
    /// `out_ix` when the node asks for it.
    #[allow(clippy::too_many_arguments)]
    fn present(
        &mut self,
        base: &str,
        tag: &str,
        past: &str,
        new: &str,
        n: &NodeProto,
        out_ix: usize,
        out: &mut Vec<NodeProto>,
    ) -> String {
        let name = match n.output.get(out_ix).filter(|o| !o.is_empty()) {
            Some(o) => o.clone(),
            None => self.fresh(base, &format!("present_{tag}")),
        };
        out.push(node(
            self.fresh(base, &format!("present_{tag}_node")),
            "Concat",
            &[past, new],
            &[&name],
            vec![int_attr("axis", 2)],
        ));
        name
    }

    /// [B, S, H·D] → [B, H, S, D].
    fn split_heads(
        &mut self,
        base: &str,
        tag: &str,
        x: &str,
        heads: i64,
        out: &mut Vec<NodeProto>,
    ) -> String {
        let shape = self.int64_initializer(base, vec![0, 0, heads, -1]);
        let r = self.fresh(base, &format!("{tag}_heads"));
        out.push(node(
            self.fresh(base, &format!("{tag}_split")),
            "Reshape",
            &[x, &shape],
            &[&r],
            vec![],
        ));
        let t = self.fresh(base, &format!("{tag}4"));
        out.push(node(
            self.fresh(base, &format!("{tag}_t")),
            "Transpose",
            &[&r],
            &[&t],
            vec![crate::onnx::ints_attr("perm", vec![0, 2, 1, 3])],
        ));
        t
    }

    /// A float constant with the element type of `like`.
    fn scalar_like(
        &mut self,
        base: &str,
        tag: &str,
        value: f32,
        like: &str,
        out: &mut Vec<NodeProto>,
    ) -> String {
        let name = self.fresh(base, &format!("{tag}_f32"));
        self.new_initializers.push(tract_onnx::pb::TensorProto {
            name: name.clone(),
            data_type: FLOAT as i32,
            float_data: vec![value],
            ..Default::default()
        });
        let cast = self.fresh(base, tag);
        out.push(node(
            self.fresh(base, &format!("{tag}_cast")),
            "CastLike",
            &[&name, like],
            &[&cast],
            vec![],
        ));
        cast
    }

    /// Dimension `axis` of `x` as a 1-element int64 tensor.
    fn dim(
        &mut self,
        base: &str,
        tag: &str,
        x: &str,
        axis: i64,
        out: &mut Vec<NodeProto>,
    ) -> String {
        let d = self.fresh(base, tag);
        out.push(node(
            self.fresh(base, &format!("{tag}_shape")),
            "Shape",
            &[x],
            &[&d],
            vec![int_attr("start", axis), int_attr("end", axis + 1)],
        ));
        d
    }

    fn squeeze0(&mut self, base: &str, x: &str, out: &mut Vec<NodeProto>) -> String {
        let s = self.fresh(base, "scalar");
        out.push(node(
            self.fresh(base, "squeeze"),
            "Squeeze",
            &[x],
            &[&s],
            vec![],
        ));
        s
    }

    /// Repeats the heads of `kv` ([B, Hkv, S, D]) to match `q`'s head count.
    fn repeat_heads(
        &mut self,
        base: &str,
        tag: &str,
        q: &str,
        kv: &str,
        out: &mut Vec<NodeProto>,
    ) -> String {
        let hq = self.dim(base, &format!("{tag}_hq"), q, 1, out);
        let b = self.dim(base, &format!("{tag}_b"), kv, 0, out);
        let hkv = self.dim(base, &format!("{tag}_hkv"), kv, 1, out);
        let sd = self.fresh(base, &format!("{tag}_sd"));
        out.push(node(
            self.fresh(base, &format!("{tag}_sd_node")),
            "Shape",
            &[kv],
            &[&sd],
            vec![int_attr("start", 2)],
        ));
        let reps = self.fresh(base, &format!("{tag}_reps"));
        out.push(node(
            self.fresh(base, &format!("{tag}_reps_node")),
            "Div",
            &[&hq, &hkv],
            &[&reps],
            vec![],
        ));
        let axis = self.int64_initializer(base, vec![2]);
        let unsq = self.fresh(base, &format!("{tag}_unsq"));
        out.push(node(
            self.fresh(base, &format!("{tag}_unsq_node")),
            "Unsqueeze",
            &[kv, &axis],
            &[&unsq],
            vec![],
        ));
        let expand_shape = self.fresh(base, &format!("{tag}_expand_shape"));
        out.push(node(
            self.fresh(base, &format!("{tag}_expand_shape_node")),
            "Concat",
            &[&b, &hkv, &reps, &sd],
            &[&expand_shape],
            vec![int_attr("axis", 0)],
        ));
        let expanded = self.fresh(base, &format!("{tag}_expanded"));
        out.push(node(
            self.fresh(base, &format!("{tag}_expand")),
            "Expand",
            &[&unsq, &expand_shape],
            &[&expanded],
            vec![],
        ));
        let merged_shape = self.fresh(base, &format!("{tag}_merged_shape"));
        out.push(node(
            self.fresh(base, &format!("{tag}_merged_shape_node")),
            "Concat",
            &[&b, &hq, &sd],
            &[&merged_shape],
            vec![int_attr("axis", 0)],
        ));
        let merged = self.fresh(base, &format!("{tag}_rep"));
        out.push(node(
            self.fresh(base, &format!("{tag}_merge")),
            "Reshape",
            &[&expanded, &merged_shape],
            &[&merged],
            vec![],
        ));
        merged
    }
}
