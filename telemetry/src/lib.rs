//! Outpost's profiles and statistics: fixed-bin counters, KLL sketches and
//! completeness counters per feature and output, and the drift and canary
//! statistics computed from them, each with its error bound (ARCHITECTURE §5).
//!
//! This crate is laid out by the workspace issue and filled by the telemetry
//! issue; it has no public items yet.
#![forbid(unsafe_code)]
