//! Pre-flight checks: refuse what must not run rather than run it wrongly.
//!
//! The list of known defects comes from the ONNX backend conformance suite
//! run against tract 0.23.9 (runtime/tests/conformance): each entry here is a
//! case where tract returned a silently wrong result, not an error.

use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};

use super::{Constants, attr, attr_s, input, qualified_op};
use crate::error::{Error, Result, UnsupportedReason};

/// Checks the whole model, including subgraphs (If/Loop/Scan bodies).
pub(crate) fn check(model: &ModelProto, origin: Option<&str>) -> Result<()> {
    let constants = Constants::of(model);
    if let Some(g) = &model.graph {
        check_graph(g, &constants, origin)?;
    }
    Ok(())
}

fn check_graph(g: &GraphProto, constants: &Constants, origin: Option<&str>) -> Result<()> {
    let float16: Vec<&str> = g
        .input
        .iter()
        .chain(&g.value_info)
        .filter(|v| {
            matches!(
                v.r#type.as_ref().and_then(|t| t.value.as_ref()),
                Some(tract_onnx::pb::type_proto::Value::TensorType(t)) if t.elem_type == FLOAT16
            )
        })
        .map(|v| v.name.as_str())
        .collect();
    for t in &g.initializer {
        // TensorProto.DataLocation.EXTERNAL = 1 (onnx.proto3).
        if t.data_location == Some(1) || !t.external_data.is_empty() {
            return Err(Error::unsupported(
                origin,
                UnsupportedReason::ExternalData {
                    tensor: t.name.clone(),
                },
            ));
        }
    }
    for n in &g.node {
        if let Some(why) = known_wrong(n, constants, &float16) {
            return Err(Error::unsupported(
                origin,
                UnsupportedReason::KnownWrongResult {
                    node: n.name.clone(),
                    op: qualified_op(n),
                    why,
                },
            ));
        }
        for a in &n.attribute {
            if let Some(sub) = &a.g {
                check_graph(sub, constants, origin)?;
            }
            for sub in &a.graphs {
                check_graph(sub, constants, origin)?;
            }
        }
    }
    Ok(())
}

const FLOAT16: i32 = 10;

/// Describes why tract 0.23.9 would compute this node wrongly, if it would.
/// `float16` lists the tensors declared as float16.
pub(crate) fn known_wrong(
    n: &NodeProto,
    constants: &Constants,
    float16: &[&str],
) -> Option<String> {
    let default = n.domain.is_empty() || n.domain == "ai.onnx";
    if !default {
        return None;
    }
    match n.op_type.as_str() {
        // Conformance: test_{lstm,gru,simple_rnn}_reverse return the forward
        // pass. Their bidirectional cases pass.
        "LSTM" | "GRU" | "RNN" => {
            let dir = attr_s(n, "direction").unwrap_or_else(|| "forward".into());
            (dir == "reverse").then(|| format!("direction={dir}"))
        }
        // Conformance: test_{depthtospace,spacetodepth}_crd_mode_example
        // return the DCR layout.
        "DepthToSpace" | "SpaceToDepth" => {
            let mode = attr_s(n, "mode").unwrap_or_else(|| "DCR".into());
            (mode == "CRD").then(|| "mode=CRD".to_owned())
        }
        // Conformance: test_bitshift_*_negative_shift / *_shift_ge_width.
        // tract shifts with Rust's operators: a shift by a negative amount or
        // by the bit width or more wraps (or panics in debug builds) where
        // ONNX defines the result. Only constant, in-range amounts are safe.
        "BitShift" => bitshift_unsafe(n, constants),
        // Conformance: test_swiglu_alpha_expanded. tract's Swish ignores alpha.
        "Swish" => attr(n, "alpha")
            .filter(|a| a.f != 1.0)
            .map(|a| format!("alpha={}", a.f)),
        // Conformance: test_celu_float16 returns half the expected values.
        "Celu" => input(n, 0)
            .filter(|i| float16.contains(i))
            .map(|_| "float16 input".to_owned()),
        _ => None,
    }
}

fn bitshift_unsafe(n: &NodeProto, constants: &Constants) -> Option<String> {
    let Some(amount) = input(n, 1).and_then(|name| constants.tensors.get(name)) else {
        return Some(
            "shift amount is not a constant, so it cannot be checked to lie in [0, bit width)"
                .into(),
        );
    };
    let bits = match amount.data_type {
        2 | 3 => 8,   // uint8, int8
        4 | 5 => 16,  // uint16, int16
        6 | 12 => 32, // int32, uint32
        7 | 13 => 64, // int64, uint64
        other => return Some(format!("shift amount of ONNX type {other}")),
    };
    let values = super::int_values(amount)?;
    values
        .iter()
        .find(|v| **v < 0 || **v >= bits)
        .map(|v| format!("shift amount {v} outside [0, {bits})"))
}
