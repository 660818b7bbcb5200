//! Engines: what actually computes. One trait, one implementation per
//! backend; the model chooses and reports which one runs it.

pub(crate) mod cpu;

use std::fmt;

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::Tensor;

use crate::error::Result;

/// The kinds of engine. `Gpu` (wgpu) is not built yet: asking for it gets
/// a typed error, never a silent CPU run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tract-onnx on the CPU, everywhere.
    Cpu,
    /// wgpu compute (Vulkan, Metal, DX12).
    Gpu,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Cpu => "cpu",
            EngineKind::Gpu => "gpu",
        })
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(EngineKind::Cpu),
            "gpu" => Ok(EngineKind::Gpu),
            other => Err(format!("unknown engine {other:?} (expected cpu or gpu)")),
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
