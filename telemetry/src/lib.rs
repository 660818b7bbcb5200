//! Outpost's profiles and statistics (ARCHITECTURE §5): what a model saw, per
//! input feature and output, per time window, and how far that is from what
//! it was trained on, each statistic with its error bound and a verdict.
//!
//! The flow, end to end:
//!
//! 1. At pack time, [`ReferenceProfile::from_csv`] (or `from_npy`) freezes
//!    equal-mass bin edges, reference bin counts and a KLL sketch per column;
//!    [`ReferenceProfile::to_bytes`] is the package's `reference.bin`.
//! 2. On the device, a [`Recorder`] counts each [`Request`] into a window:
//!    exact bins, a DataSketches KLL sketch, completeness counters, a
//!    latency histogram, confidence, errors, optional segments;
//!    [`Recorder::feedback`] adds late ground-truth labels to a sparse
//!    [`Confusion`] matrix per window and segment.
//!    [`WindowProfile::to_bytes`] is what the telemetry message carries.
//! 3. On the server, [`WindowProfile::from_bytes`] decodes with a size limit
//!    (typed errors, never a panic); a [`ProfileSet`] keeps each window once,
//!    however often it arrives; [`ProfileSet::rollup`] sums them.
//! 4. [`stats`] compares reference and window: exact [`psi`],
//!    [`jensen_shannon`] and [`chi_square`] on bins; [`kolmogorov_smirnov`],
//!    [`wasserstein`] and [`mann_whitney`] on sketches with the sketch error
//!    added to the decision bound.
//! 5. For a rollout, [`canary_judge`] compares a canary [`Cohort`] with its
//!    control (pass / fail / not yet, with the summary error in every bound)
//!    and [`SequentialCanary`] may be consulted after every window. With
//!    [`LaplaceNoise`] a device sends differentially private bins, and
//!    [`psi_noisy`] / [`jensen_shannon_noisy`] / [`chi_square_noisy`] put the
//!    noise in the error bound.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use outpost_telemetry::{
//!     DriftOptions, ProfileOptions, ProfileSet, Recorder, ReferenceOptions, ReferenceProfile,
//!     Request, Value, Verdict, WindowKey, WindowProfile, WINDOW_DECODE_LIMIT, psi,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 1. Reference data: one feature and the model's score.
//! let mut csv = String::from("temperature,score\n");
//! for i in 0..1000 {
//!     csv += &format!("{},{}\n", 15.0 + f64::from(i % 100) / 10.0, f64::from(i % 10) / 10.0);
//! }
//! let options = ReferenceOptions { outputs: vec!["score".into()], ..Default::default() };
//! let reference = ReferenceProfile::from_csv(csv.as_bytes(), &options)?;
//! let package_bytes = reference.to_bytes();
//!
//! // 2. On the device: the reference comes from the package; windows are recorded.
//! let reference = Arc::new(ReferenceProfile::from_bytes(&package_bytes, 1 << 20)?);
//! let key = WindowKey {
//!     device: "dev-1".into(),
//!     model: "thermo".into(),
//!     version: "1.0.0".into(),
//!     start: 1_700_000_000,
//!     length: 300,
//! };
//! let mut recorder = Recorder::new(reference.clone(), key, ProfileOptions::default())?;
//! for i in 0..500 {
//!     // The device runs hotter than the training data.
//!     let inputs = [Value::Number(20.0 + f64::from(i % 100) / 10.0)];
//!     let outputs = [Value::Number(0.5)];
//!     recorder.record(&Request {
//!         inputs: &inputs,
//!         outputs: &outputs,
//!         latency: Duration::from_micros(800),
//!         ok: true,
//!         confidence: Some(0.9),
//!         segment: None,
//!     })?;
//! }
//! let wire = recorder.finish().to_bytes();
//!
//! // 3. On the server: decode, deduplicate, roll up.
//! let mut set = ProfileSet::new();
//! set.insert(WindowProfile::from_bytes(&wire, WINDOW_DECODE_LIMIT)?);
//! set.insert(WindowProfile::from_bytes(&wire, WINDOW_DECODE_LIMIT)?); // a QoS 1 duplicate
//! let Some(total) = set.rollup()? else { return Ok(()) };
//! assert_eq!(total.requests, 500);
//!
//! // 4. Compare with the reference.
//! let drift = psi(reference.columns()[0].bins(), &total.columns[0].bins(), &DriftOptions::default())?;
//! assert_eq!(drift.verdict, Verdict::Drift);
//! assert_eq!(drift.error_bound, 0.0); // exact counters
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod bins;
mod codec;
mod column;
mod confusion;
mod error;
mod kll;
mod latency;
mod privacy;
mod profile;
mod recorder;
mod reference;
mod set;
pub mod stats;

pub use bins::{BinEdges, CONFIDENCE_BINS, ConfidenceHistogram};
pub use column::{CategoricalProfile, ColumnProfile, Completeness, NumericProfile};
pub use confusion::{Confusion, Feedback};
pub use error::{
    DecodeError, InvalidReason, KllError, MergeError, RecordError, ReferenceError, StatsError,
};
pub use kll::{DEFAULT_KLL_K, Kll, MIN_KLL_K, kll_k_for_rank_error, kll_rank_error};
pub use latency::{DEFAULT_LATENCY_ACCURACY_PPM, LatencyHistogram};
pub use privacy::{LaplaceNoise, NOISE_BOUND_FAILURE};
pub use profile::{Profile, SegmentProfile, WINDOW_DECODE_LIMIT, WindowKey, WindowProfile};
pub use recorder::{ProfileOptions, Recorder, Request, Value};
pub use reference::{
    CategoricalReference, ColumnData, ColumnReference, NumericReference, REFERENCE_DECODE_LIMIT,
    ReferenceKind, ReferenceOptions, ReferenceProfile, Role, ValidRange,
};
pub use set::{ProfileSet, SET_DECODE_LIMIT};
pub use stats::{
    CanaryInconclusive, CanaryOptions, CanaryReport, CanaryVerdict, Cohort, CohortSums, Direction,
    DriftOptions, Inconclusive, Scale, SequentialCanary, SequentialOptions, SequentialReport,
    Statistic, Test, Verdict, accuracy_difference, canary_judge, chi_square, chi_square_noisy,
    jensen_shannon, jensen_shannon_noisy, kolmogorov_smirnov, mann_whitney, psi, psi_noisy,
    wasserstein,
};
