//! outpost-telemetry's integration tests (one binary).
#![allow(clippy::unwrap_used)]

mod canary;
mod codec;
mod common;
mod feedback;
mod merge;
mod privacy;
mod python;
mod recorder;
mod reference;
mod sequential;
mod simulation;
mod size;
