//! Typed errors of the runtime. Every failure on outside input (a model file,
//! a package, a tensor from a caller) ends up here; nothing panics on it.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read. Check the path and permissions.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The model bytes are not a valid model (truncated, garbage, or a graph
    /// that does not hold together). Re-export the model.
    #[error("malformed model{}: {reason}", origin_suffix(.origin))]
    MalformedModel {
        origin: Option<String>,
        reason: String,
    },

    /// The model is well formed but uses something this runtime refuses to run,
    /// because it is unsupported or because the engine is known to compute it
    /// wrongly. The reason names the node and the check.
    #[error("unsupported model{}: {reason}", origin_suffix(.origin))]
    Unsupported {
        origin: Option<String>,
        reason: UnsupportedReason,
    },

    /// The model package is invalid (see [`PackageError`]).
    #[error(transparent)]
    Package(#[from] PackageError),

    /// Inputs given to [`crate::Session::run`] do not match the model's schema.
    #[error(transparent)]
    Input(#[from] InputError),

    /// The engine failed while optimizing or running a valid model on valid
    /// input. This is a bug of the engine or an exhausted resource; the
    /// message carries the engine's own words.
    #[error("{engine} engine failed while {stage}: {message}")]
    Engine {
        engine: &'static str,
        stage: &'static str,
        message: String,
    },

    /// A target profile could not be read.
    #[error("target profile {path}: {reason}")]
    Target { path: PathBuf, reason: String },
}

fn origin_suffix(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|o| format!(" ({o})"))
        .unwrap_or_default()
}

/// Why a model is refused although it is well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsupportedReason {
    /// The engine computes this operator wrongly in this configuration (a
    /// known defect, found by the conformance suite). The model is refused
    /// rather than run wrongly.
    #[error("node {node:?} ({op}): {why}; refused because tract 0.23.9 computes it wrongly")]
    KnownWrongResult {
        node: String,
        op: String,
        why: String,
    },
    /// The model stores tensors outside the file (external data), which a
    /// package may not do: every byte of a model must be covered by the
    /// package's hashes.
    #[error("tensor {tensor:?} uses external data, which is not allowed")]
    ExternalData { tensor: String },
    /// The operator is not implemented by the engine.
    #[error("operator {op} (node {node:?}) is not supported: {detail}")]
    Operator {
        node: String,
        op: String,
        detail: String,
    },
    /// The requested engine is not available in this build or on this device.
    #[error("engine {0} is not available")]
    Engine(String),
}

/// A model package (`.opk`) that cannot be trusted or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The archive is not a readable tar file (truncated or garbage).
    #[error("package {path}: not a valid archive: {reason}")]
    Archive { path: String, reason: String },
    /// A member or the whole package exceeds the configured size limit.
    #[error("package {path}: {what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        path: String,
        what: String,
        size: u64,
        limit: u64,
    },
    /// A member has a name that could escape the package (absolute, `..`),
    /// is not a regular file, or appears twice.
    #[error("package {path}: member {member:?} rejected: {reason}")]
    BadMember {
        path: String,
        member: String,
        reason: String,
    },
    /// `manifest.toml` is missing or invalid; the reason says which field.
    #[error("package {path}: manifest: {reason}")]
    Manifest { path: String, reason: String },
    /// A member's sha256 does not match the manifest: the package was
    /// tampered with or corrupted. Do not use it.
    #[error("package {path}: member {member:?} has sha256 {actual}, manifest says {expected}")]
    HashMismatch {
        path: String,
        member: String,
        expected: String,
        actual: String,
    },
    /// A member listed in the manifest is absent, or a member is present
    /// that the manifest does not list.
    #[error("package {path}: member {member:?} {reason}")]
    Membership {
        path: String,
        member: String,
        reason: String,
    },
}

/// Inputs that do not match the model's schema. Each variant names the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Wrong number of inputs.
    #[error("expected {expected} input(s) ({names}), got {got}")]
    Count {
        expected: usize,
        got: usize,
        names: String,
    },
    /// An input with this name does not exist.
    #[error("unknown input {name:?}; the model's inputs are {known}")]
    UnknownName { name: String, known: String },
    /// A required input was not given.
    #[error("missing input {name:?}")]
    Missing { name: String },
    /// Element type differs from the schema.
    #[error("input {name:?}: expected dtype {expected}, got {got}")]
    DType {
        name: String,
        expected: String,
        got: String,
    },
    /// Shape differs from the schema (rank or a fixed dimension).
    #[error("input {name:?}: expected shape {expected}, got {got:?}")]
    Shape {
        name: String,
        expected: String,
        got: Vec<usize>,
    },
    /// A value lies outside the declared valid range (or is NaN/infinite
    /// where the range forbids it).
    #[error("input {name:?}: value {value} at flat index {index} is outside [{min}, {max}]")]
    OutOfRange {
        name: String,
        index: usize,
        value: f64,
        min: f64,
        max: f64,
    },
    /// A categorical value is not in the declared vocabulary.
    #[error("input {name:?}: value {value} at flat index {index} is not in the vocabulary")]
    UnknownCategory {
        name: String,
        index: usize,
        value: String,
    },
}

impl Error {
    pub(crate) fn malformed(origin: Option<&str>, reason: impl Into<String>) -> Self {
        Error::MalformedModel {
            origin: origin.map(str::to_owned),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(origin: Option<&str>, reason: UnsupportedReason) -> Self {
        Error::Unsupported {
            origin: origin.map(str::to_owned),
            reason,
        }
    }
}

/// Result alias of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;
