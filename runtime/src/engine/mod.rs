//! Engines: what actually computes. One trait, one implementation per
//! backend; the model chooses and reports which one runs it.

pub(crate) mod cpu;
pub(crate) mod gpu;

use std::fmt;

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::Tensor;

use crate::error::Result;

/// The kinds of engine, and `Auto` to let the runtime choose per device and
/// model. An explicit `Gpu` request for a model the GPU engine cannot run
/// (no adapter, an operator it lacks) is a typed error, never a silent CPU
/// run; `Auto` falls back to the CPU and says why ([`EngineDecision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tract-onnx on the CPU, everywhere.
    Cpu,
    /// wgpu compute (Vulkan, Metal, DX12).
    Gpu,
    /// Probe the GPU, try to lower the model, time both engines once at
    /// batch 1 and keep the faster. Never what a model runs on.
    Auto,
}

/// Which engine runs a model, why, and the micro-benchmark when one ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineDecision {
    /// The engine that runs the model (`cpu` or `gpu`).
    pub engine: EngineKind,
    /// Why, in words: requested, the GPU's refusal, or the timings.
    pub reason: String,
    /// Median batch-1 run on the CPU engine, microseconds, when measured.
    pub cpu_us: Option<f64>,
    /// Median batch-1 run on the GPU engine, microseconds, when measured.
    pub gpu_us: Option<f64>,
    /// What the GPU probe found, when it ran.
    pub gpu: Option<gpu::GpuProbe>,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Cpu => "cpu",
            EngineKind::Gpu => "gpu",
            EngineKind::Auto => "auto",
        })
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(EngineKind::Cpu),
            "gpu" => Ok(EngineKind::Gpu),
            "auto" => Ok(EngineKind::Auto),
            other => Err(format!(
                "unknown engine {other:?} (expected cpu, gpu or auto)"
            )),
        }
    }
}

/// A prepared model on one engine: immutable and shared between threads.
pub trait Engine: Send + Sync + fmt::Debug {
    fn kind(&self) -> EngineKind;
    /// Per-call state; cheap to create, reusable across calls on one thread.
    fn spawn(&self) -> Result<Box<dyn EngineState>>;
}

/// Mutable per-session state of an engine.
pub trait EngineState: Send {
    /// Runs the model on inputs already validated against the schema.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>>;
}
