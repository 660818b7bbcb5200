//! Work on the ONNX protobuf before tract translates it: decoding with
//! typed errors, pre-flight checks, and graph rewrites that make quantized
//! models load (QGemm), compute correctly (the Softmax guard) and run fast
//! (the float execution strategy).
//!
//! Design: rewrites happen on the `ModelProto`, not on tract's typed graph.
//! The ONNX graph is a stable, documented format (onnx/onnx `docs/IR.md`),
//! every rewrite is expressible with standard operators, and the result can
//! be checked against the ONNX reference evaluator. Working on tract's
//! internal graph would tie us to tract internals that change each release.

pub(crate) mod guard;
pub(crate) mod rewrite;

use std::collections::HashMap;

use prost::Message;
use tract_onnx::pb::{
    self, AttributeProto, ModelProto, NodeProto, TensorProto, attribute_proto::AttributeType,
};

use crate::error::{Error, Result};

/// Decodes ONNX protobuf bytes and checks the minimum a graph needs.
pub(crate) fn decode(bytes: &[u8], origin: Option<&str>) -> Result<ModelProto> {
    if bytes.is_empty() {
        return Err(Error::malformed(origin, "the model file is empty"));
    }
    let model = ModelProto::decode(bytes)
        .map_err(|e| Error::malformed(origin, format!("not an ONNX protobuf: {e}")))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::malformed(origin, "the model has no graph"))?;
    if graph.output.is_empty() {
        return Err(Error::malformed(origin, "the graph declares no output"));
    }
    Ok(model)
}

/// Makes every graph input's declared shape usable by tract: a caller's
/// override wins; otherwise negative sizes (`-1`, which exporters write for
/// "dynamic" although ONNX forbids it) and missing sizes become symbols, and
/// symbol names tract cannot parse (`?`, `p2o.DynamicDimension.0`) are
/// renamed consistently (the same name maps to the same symbol).
pub(crate) fn normalize_inputs(
    model: &mut ModelProto,
    overrides: &[(String, Vec<crate::schema::Dim>)],
) {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let Some(graph) = model.graph.as_mut() else {
        return;
    };
    let inits: std::collections::HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    let mut renamed: HashMap<String, String> = HashMap::new();
    let valid = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    for (ix, input) in graph.input.iter_mut().enumerate() {
        if inits.contains(&input.name) {
            continue;
        }
        let Some(pb::type_proto::Value::TensorType(tensor)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            continue;
        };
        if let Some((_, dims)) = overrides.iter().find(|(n, _)| n == &input.name) {
            let dim = dims
                .iter()
                .map(|d| Dimension {
                    value: Some(match d {
                        crate::schema::Dim::Fixed(v) => Value::DimValue(*v as i64),
                        crate::schema::Dim::Symbolic(s) => Value::DimParam(s.clone()),
                    }),
                    ..Default::default()
                })
                .collect();
            tensor.shape = Some(pb::TensorShapeProto { dim });
            continue;
        }
        let Some(shape) = tensor.shape.as_mut() else {
            continue;
        };
        for (axis, d) in shape.dim.iter_mut().enumerate() {
            let fresh =
                |renamed: &HashMap<String, String>| format!("d{}_{ix}_{axis}", renamed.len());
            match &d.value {
                Some(Value::DimValue(v)) if *v >= 0 => {}
                Some(Value::DimParam(p)) if valid(p) => {}
                Some(Value::DimParam(p)) => {
                    let next = fresh(&renamed);
                    let name = renamed.entry(p.clone()).or_insert(next).clone();
                    d.value = Some(Value::DimParam(name));
                }
                _ => {
                    let name = fresh(&renamed);
                    renamed.insert(name.clone(), name.clone());
                    d.value = Some(Value::DimParam(name));
                }
            }
        }
    }
}

/// The opset version of the default (`ai.onnx`) domain.
pub(crate) fn default_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(1)
}

/// Operators used by the graph, as `domain::Op` for non-default domains.
pub(crate) fn op_types(model: &ModelProto) -> Vec<String> {
    let mut ops: Vec<String> = model
        .graph
        .iter()
        .flat_map(|g| g.node.iter())
        .map(qualified_op)
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

pub(crate) fn qualified_op(n: &NodeProto) -> String {
    if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}::{}", n.domain, n.op_type)
    }
}

pub(crate) fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(crate) fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

pub(crate) fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

pub(crate) fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

pub(crate) fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub(crate) fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

pub(crate) fn ints_attr(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints,
        ..Default::default()
    }
}

pub(crate) fn node(
    name: String,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name,
        op_type: op.into(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        attribute,
        ..Default::default()
    }
}

/// Dims and element type of each initializer (and `Constant` node output),
/// the facts the rewrites need about constant operands.
#[derive(Debug, Default)]
pub(crate) struct Constants {
    pub(crate) dims: HashMap<String, Vec<i64>>,
    pub(crate) tensors: HashMap<String, TensorProto>,
}

impl Constants {
    pub(crate) fn of(model: &ModelProto) -> Self {
        let mut c = Constants::default();
        if let Some(g) = &model.graph {
            for t in &g.initializer {
                c.dims.insert(t.name.clone(), t.dims.clone());
                c.tensors.insert(t.name.clone(), t.clone());
            }
            for n in &g.node {
                if n.op_type == "Constant"
                    && let (Some(out), Some(t)) = (
                        n.output.first(),
                        attr(n, "value").and_then(|a| a.t.as_ref()),
                    )
                {
                    c.dims.insert(out.clone(), t.dims.clone());
                    c.tensors.insert(out.clone(), t.clone());
                }
            }
        }
        c
    }

    /// Number of elements of a constant, if known.
    pub(crate) fn numel(&self, name: &str) -> Option<i64> {
        self.dims.get(name).map(|d| d.iter().product())
    }

    pub(crate) fn rank(&self, name: &str) -> Option<usize> {
        self.dims.get(name).map(Vec::len)
    }
}

/// Input `ix` of a node, `None` when absent or given as the empty name
/// (ONNX's way of skipping an optional input, IR.md "Optional inputs").
pub(crate) fn input(node: &NodeProto, ix: usize) -> Option<&str> {
    node.input
        .get(ix)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

pub(crate) const FLOAT: i64 = pb::tensor_proto::DataType::Float as i64;
pub(crate) const INT32: i64 = pb::tensor_proto::DataType::Int32 as i64;
pub(crate) const INT64: i32 = pb::tensor_proto::DataType::Int64 as i32;

/// Integer values of a constant tensor of any integer type, from its typed
/// field or its little-endian `raw_data` (onnx.proto3, TensorProto).
pub(crate) fn int_values(t: &TensorProto) -> Option<Vec<i64>> {
    let raw = &t.raw_data;
    if !raw.is_empty() {
        let v: Vec<i64> = match t.data_type {
            2 => raw.iter().map(|b| i64::from(*b)).collect(),
            3 => raw.iter().map(|b| i64::from(*b as i8)).collect(),
            4 => raw
                .chunks_exact(2)
                .map(|c| i64::from(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            5 => raw
                .chunks_exact(2)
                .map(|c| i64::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            6 => raw
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            12 => raw
                .chunks_exact(4)
                .map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            7 | 13 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            _ => return None,
        };
        return Some(v);
    }
    match t.data_type {
        2..=6 => Some(t.int32_data.iter().map(|v| i64::from(*v)).collect()),
        7 => Some(t.int64_data.clone()),
        12 | 13 => Some(t.uint64_data.iter().map(|v| *v as i64).collect()),
        _ => None,
    }
}
