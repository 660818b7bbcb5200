//! outpost-telemetry's integration tests (one binary).
#![allow(clippy::unwrap_used)]

mod codec;
mod common;
mod merge;
mod python;
mod recorder;
mod reference;
mod simulation;
mod size;
