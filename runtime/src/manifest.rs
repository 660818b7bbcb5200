//! `manifest.toml` of a model package (ARCHITECTURE §3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::EngineKind;
use crate::schema::TensorSpec;

/// Version of the manifest layout this runtime writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Everything a package says about itself. The sha256 of every other
/// member is listed in `members`, so the manifest's own hash (signed by
/// release keys, see outpost-protocol) covers the whole package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    /// Semantic version of the model.
    pub version: String,
    /// RFC 3339 timestamp.
    pub created_at: String,
    pub format: ModelFormat,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub target: TargetConstraints,
    #[serde(default)]
    pub card: ModelCard,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
    /// Every member but the manifest: name → sha256 and size.
    pub members: BTreeMap<String, MemberDigest>,
}

/// Format of the model member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Onnx,
    Nnef,
}

/// Where the package may be installed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetConstraints {
    /// Allowed CPU architectures (`x86_64`, `aarch64`); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKind>,
}

/// The model card. Fields are optional here so any package can be read;
/// the registry refuses a version whose card lacks a required field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_use: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
    /// Claimed metrics, e.g. `accuracy = 0.97`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evaluation: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limitations: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_class: Option<String>,
}

/// Training reproducibility.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Training {
    pub dataset_version: Option<String>,
    pub seed: Option<u64>,
    pub environment: Option<String>,
}

/// How the package was prepared for the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// tract release that wrote the pre-optimized member.
    pub tract_version: String,
    /// Execution strategy chosen when packing (`float`, `integer`, `dequantized`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// CPU architecture the strategy was measured on. A device of the same
    /// architecture uses the recorded strategy instead of measuring at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_on: Option<String>,
}

/// Digest of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDigest {
    pub sha256: String,
    pub size: u64,
}
