//! Pre-flight checks: refuse what must not run rather than run it wrongly.
//!
//! The list of known defects comes from the ONNX backend conformance suite
//! run against tract 0.23.9 (runtime/tests/conformance): each entry here is a
//! case where tract returned a silently wrong result, not an error.

use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};

use super::{attr_s, qualified_op};
use crate::error::{Error, Result, UnsupportedReason};

/// Checks the whole model, including subgraphs (If/Loop/Scan bodies).
pub(crate) fn check(model: &ModelProto, origin: Option<&str>) -> Result<()> {
    if let Some(g) = &model.graph {
        check_graph(g, origin)?;
    }
    Ok(())
}

fn check_graph(g: &GraphProto, origin: Option<&str>) -> Result<()> {
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
        if let Some(why) = known_wrong(n) {
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
                check_graph(sub, origin)?;
            }
            for sub in &a.graphs {
                check_graph(sub, origin)?;
            }
        }
    }
    Ok(())
}

/// Describes why tract 0.23.9 would compute this node wrongly, if it would.
pub(crate) fn known_wrong(n: &NodeProto) -> Option<String> {
    let default = n.domain.is_empty() || n.domain == "ai.onnx";
    if !default {
        return None;
    }
    match n.op_type.as_str() {
        // Conformance: test_rnn_seq_length-style reverse cases return the
        // forward pass (onnx test cases *_reverse / *_bidirectional).
        "LSTM" | "GRU" | "RNN" => {
            let dir = attr_s(n, "direction").unwrap_or_else(|| "forward".into());
            (dir != "forward").then(|| format!("direction={dir}"))
        }
        // Conformance: test_depthtospace_crd_mode* return the DCR layout.
        "DepthToSpace" | "SpaceToDepth" => {
            let mode = attr_s(n, "mode").unwrap_or_else(|| "DCR".into());
            (mode == "CRD").then(|| "mode=CRD".to_owned())
        }
        _ => None,
    }
}
