//! `outpost model pack`: an `.opk` from an ONNX model, a model card and
//! reference data (ARCHITECTURE §3).
//!
//! Members (besides `manifest.toml`, which lists the sha256 of each):
//! - `model.onnx`; `model.nnef.tar`, the pre-optimized form, unless
//!   disabled or the runtime cannot write one for this model;
//! - `reference.bin`: the reference profile, one column per input feature
//!   (named as in the manifest's `feature_names`) and the output columns of
//!   [`infer::output_columns`];
//! - [`GOLDEN_INPUTS`] and [`GOLDEN_OUTPUTS`]: the self-test, the first
//!   reference rows the model could run and its outputs for them, one array
//!   per input / output name;
//! - [`EVAL_SET`], optional: a labelled evaluation set, one array per input
//!   name plus `labels`, for the registry to check the claimed metrics.

mod annotate;
mod build;
mod data;
mod infer;

use std::path::PathBuf;

use crate::card::{CardError, CardFile};

pub use build::{Packed, pack};
pub use data::ReferenceData;

/// Golden self-test inputs: `.npz`, one array per model input name.
pub const GOLDEN_INPUTS: &str = "golden/inputs.npz";
/// Golden self-test outputs: `.npz`, one array per model output name.
pub const GOLDEN_OUTPUTS: &str = "golden/outputs.npz";
/// The evaluation set: `.npz`, one array per model input name plus
/// [`EVAL_LABELS`], all with the same number of rows.
pub const EVAL_SET: &str = "eval/eval.npz";
/// The array of an evaluation set holding the expected outputs.
pub const EVAL_LABELS: &str = "labels";
/// Golden rows kept by default.
pub const DEFAULT_GOLDEN: usize = 8;

/// Everything `pack` needs; the CLI reads the files.
#[derive(Debug, Clone)]
pub struct PackRequest {
    /// The ONNX model and where it came from (for messages).
    pub onnx: Vec<u8>,
    pub onnx_origin: String,
    pub card: CardFile,
    pub reference: ReferenceData,
    /// An evaluation set (`.npz`) and where it came from.
    pub eval: Option<(Vec<u8>, String)>,
    /// Golden rows to keep (0: no self-test members).
    pub golden: usize,
    /// Name and version when the card has none.
    pub name: Option<String>,
    pub version: Option<String>,
    /// Write the pre-optimized form.
    pub preoptimize: bool,
    /// The manifest's `created_at` (RFC 3339).
    pub created_at: String,
}

/// Why a package was not built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// Reading an input file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `card.toml` is not valid TOML of the card schema (see
    /// `fleet-server/examples/card.toml`).
    #[error("{origin}: {reason}")]
    CardSyntax { origin: String, reason: String },
    /// The card lacks required fields or has invalid values; all are listed.
    #[error(transparent)]
    Card(#[from] CardError),
    /// Name or version missing, given twice differently, or malformed.
    #[error("{0}")]
    Identity(String),
    /// The model cannot be loaded or run by the runtime.
    #[error(transparent)]
    Model(outpost_runtime::Error),
    /// The card's annotations or the reference data do not fit the model's
    /// inputs and outputs (unknown tensor, wrong number of features or
    /// labels, shapes the data cannot fill).
    #[error("{0}")]
    Schema(String),
    /// The reference data cannot be read.
    #[error("{origin}: {reason}")]
    Data { origin: String, reason: String },
    /// The reference profile cannot be built from the data.
    #[error("reference profile: {0}")]
    Reference(#[from] outpost_telemetry::ReferenceError),
    /// The evaluation set is not an `.npz` with the expected arrays.
    #[error("{origin}: {reason}")]
    Eval { origin: String, reason: String },
    /// Running the model on the reference data or writing its results failed.
    #[error("{0}")]
    Run(String),
    /// Assembling the package failed.
    #[error(transparent)]
    Package(#[from] outpost_runtime::PackageError),
}

impl PackError {
    /// Whether the user must fix the inputs (exit code 2) rather than
    /// something failing on the way (exit code 1).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            PackError::CardSyntax { .. }
                | PackError::Card(_)
                | PackError::Identity(_)
                | PackError::Schema(_)
                | PackError::Data { .. }
                | PackError::Reference(_)
                | PackError::Eval { .. }
        )
    }
}
