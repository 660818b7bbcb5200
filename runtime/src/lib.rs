//! Outpost's inference runtime: load fp32 and int8 ONNX models (or `.opk`
//! packages), optimize once, run many times on the CPU through tract, or on
//! a GPU through wgpu where the device has one and the model gains from it.
//!
//! ```no_run
//! use outpost_runtime::{LoadOptions, Model, Tensor};
//! # fn main() -> Result<(), outpost_runtime::Error> {
//! let model = Model::load("digits_cnn_qop.onnx", &LoadOptions::default())?;
//! println!("{} runs with the {:?} strategy", model.info().name, model.info().strategy.strategy);
//! let mut session = model.session()?; // one per thread; cheap
//! let image = Tensor::zero::<f32>(&[1, 1, 8, 8]).map_err(|e| outpost_runtime::Error::Engine {
//!     engine: "cpu", stage: "example", message: e.to_string() })?;
//! let outputs = session.run(vec![image])?; // inputs are checked against the schema first
//! println!("{:?}", outputs[0]);
//! # Ok(()) }
//! ```
//!
//! What the runtime adds to tract:
//! - quantized models that tract cannot load or gets wrong: onnxruntime's
//!   `com.microsoft::QGemm` is rewritten to standard operators; a Softmax
//!   between quantize operators is kept in float (tract 0.23.9 folds it into
//!   a wrong element-wise lookup table); operators tract computes wrongly are
//!   refused at load ([`UnsupportedReason::KnownWrongResult`]);
//! - an execution strategy per model chosen by measurement ([`StrategyDecision`]);
//! - input validation against the schema, typed errors, and no panics on
//!   bad model files or bad inputs;
//! - model packages ([`Package`]) with a pre-optimized form for fast cold start.
#![forbid(unsafe_code)]

mod engine;
/// The GPU engine's capability probe (the engine itself is chosen through
/// [`LoadOptions::engine`]).
pub mod gpu {
    pub use crate::engine::gpu::{GpuProbe, probe};
}
mod error;
pub mod manifest;
mod model;
mod nnef;
pub mod npy;
mod onnx;
pub mod package;
mod schema;
mod strategy;
mod target;

pub use engine::{EngineDecision, EngineKind};
pub use error::{Error, InputError, PackageError, Result, UnsupportedReason};
pub use manifest::Manifest;
pub use model::{GraphSource, LoadOptions, Model, ModelInfo, Rewrites, Session};
pub use nnef::TRACT_VERSION;
pub use package::{Package, PackageBuilder, PackageLimits};
pub use schema::{Dim, TensorSpec, ValueRange};
pub use strategy::{ExecStrategy, QuantForm, QuantStrategy, StrategyDecision};
pub use target::TargetProfile;
/// Element types of [`Tensor`].
pub use tract_onnx::prelude::DatumType;
/// The tensor type at the API boundary: a dense, dtype-tagged buffer.
///
/// Design: we use tract's tensor rather than wrapping it; it already carries
/// every ONNX dtype and converts to and from ndarray without copies. A GPU
/// engine converts at its own boundary.
pub use tract_onnx::prelude::Tensor;

/// Builds the pre-optimized form of an ONNX model (tract NNEF with tract's
/// extensions), after the runtime's rewrites and strategy choice, for
/// `model.nnef.tar` in a package. Returns the bytes and what was chosen; a
/// packer records `decision.strategy.as_str()` and the architecture it ran
/// on in the manifest's `runtime` table, so a device of the same
/// architecture loading the ONNX member skips measuring.
pub fn preoptimize(onnx_bytes: &[u8], opts: &LoadOptions) -> Result<(Vec<u8>, StrategyDecision)> {
    let mut proto = onnx::decode(onnx_bytes, None)?;
    onnx::normalize_inputs(&mut proto, &opts.input_shapes);
    onnx::guard::check(&proto, None)?;
    let form = strategy::quant_form(&proto);
    let threads = opts.threads.unwrap_or(1);
    let (prepared, decision) = strategy::choose(&proto, form, opts, threads, None)?;
    Ok((nnef::write(&prepared.typed)?, decision))
}
