//! The GPU engine: hand-written WGSL compute kernels on wgpu (Vulkan,
//! Metal, DX12; OpenGL where wgpu falls back to it).
//!
//! Design: chosen over burn's wgpu backend by measurement (docs/architecture.md,
//! "GPU engine"): wgpu alone adds ~2 minutes to a clean build on 2 cores and
//! a few MB to a binary; burn with its wgpu backend took ~32 minutes and made
//! a 78 MB test binary, for operators we need a dozen kernels to cover.
//!
//! - `context`: the capability probe, the device and the compiled kernels;
//! - `lower`: ONNX graph → GPU operations, or the node it cannot run;
//! - `exec`: per-shape plans (buffers reused by liveness) and runs;
//! - `host`: constants and what is folded on the CPU at load.

mod context;
mod exec;
mod host;
mod lower;

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::{DatumType, Tensor};

pub use context::{GpuProbe, probe};
pub(crate) use lower::Unsupported;

use super::{Engine, EngineKind, EngineState};
use crate::error::{Error, Result};
use context::{Gpu, engine_error};
use lower::{DType, Graph};

/// A lowered model on the GPU: immutable, shared between sessions.
pub(crate) struct GpuEngine {
    gpu: Arc<Gpu>,
    graph: Arc<Graph>,
    consts: Arc<Vec<Option<Arc<wgpu::Buffer>>>>,
    /// What the CPU engine returns for each output, which the GPU engine
    /// returns too.
    output_types: Vec<DatumType>,
}

impl std::fmt::Debug for GpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuEngine")
            .field("adapter", &self.gpu.probe.adapter)
            .field("kernels", &self.graph.kernel_count())
            .finish()
    }
}

/// Why the GPU engine cannot take a model: no usable adapter, or a node it
/// cannot run.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    NoDevice(Box<GpuProbe>),
    Unsupported(Unsupported),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoDevice(p) => f.write_str(&p.describe()),
            Refusal::Unsupported(u) => write!(
                f,
                "the GPU engine cannot run node {:?} ({}): {}",
                u.node, u.op, u.detail
            ),
        }
    }
}

impl GpuEngine {
    /// Lowers a rewritten ONNX model (integer operators already in
    /// DequantizeLinear + float form) onto the GPU.
    pub(crate) fn new(
        proto: &ModelProto,
        output_types: Vec<DatumType>,
    ) -> std::result::Result<GpuEngine, Refusal> {
        let gpu = context::context().map_err(Refusal::NoDevice)?;
        let graph = lower::lower(proto).map_err(Refusal::Unsupported)?;
        let consts = exec::upload_constants(&gpu, &graph);
        Ok(GpuEngine {
            gpu,
            graph: Arc::new(graph),
            consts: Arc::new(consts),
            output_types,
        })
    }

    /// Kernels one run dispatches, and the fusions made at load.
    pub(crate) fn summary(&self) -> (usize, usize, usize) {
        (
            self.graph.kernel_count(),
            self.graph.fused_qdq,
            self.graph.fused_act,
        )
    }

    pub(crate) fn adapter(&self) -> String {
        self.gpu.probe.describe()
    }
}

impl Engine for GpuEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Gpu
    }

    fn spawn(&self) -> Result<Box<dyn EngineState>> {
        Ok(Box::new(GpuState {
            gpu: self.gpu.clone(),
            graph: self.graph.clone(),
            consts: self.consts.clone(),
            output_types: self.output_types.clone(),
            plans: HashMap::new(),
        }))
    }
}

/// Plans kept per session; a session seeing more shapes than this starts over.
const MAX_PLANS: usize = 8;

struct GpuState {
    gpu: Arc<Gpu>,
    graph: Arc<Graph>,
    consts: Arc<Vec<Option<Arc<wgpu::Buffer>>>>,
    output_types: Vec<DatumType>,
    plans: HashMap<Vec<Vec<usize>>, exec::Plan>,
}

impl EngineState for GpuState {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let data = inputs
            .iter()
            .map(|t| {
                let f = t
                    .cast_to::<f32>()
                    .map_err(|e| engine_error("reading inputs", e.to_string()))?;
                f.to_plain_array_view::<f32>()
                    .map(|v| v.iter().copied().collect())
                    .map_err(|e| engine_error("reading inputs", e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        if !self.plans.contains_key(&shapes) {
            if self.plans.len() >= MAX_PLANS {
                self.plans.clear();
            }
            let plan = self.gpu.scoped("planning", || {
                exec::plan(&self.gpu, &self.graph, &self.consts, &shapes)
            })?;
            self.plans.insert(shapes.clone(), plan);
        }
        let plan = self
            .plans
            .get(&shapes)
            .ok_or_else(|| engine_error("planning", "plan missing"))?;
        let outs = plan.run(&self.gpu, &self.graph, &data)?;
        outs.into_iter()
            .enumerate()
            .map(|(i, (shape, values, dtype))| {
                to_tensor(&shape, values, dtype, self.output_types.get(i).copied())
            })
            .collect()
    }
}

fn to_tensor(
    shape: &[usize],
    values: Vec<f32>,
    dtype: DType,
    want: Option<DatumType>,
) -> Result<Tensor> {
    let err = |e: tract_onnx::prelude::TractError| engine_error("reading outputs", e.to_string());
    let t = match dtype {
        DType::F32 => Tensor::from_shape(shape, &values).map_err(err)?,
        DType::U8 => {
            let v: Vec<u8> = values.iter().map(|&x| x as u8).collect();
            Tensor::from_shape(shape, &v).map_err(err)?
        }
        DType::I8 => {
            let v: Vec<i8> = values.iter().map(|&x| x as i8).collect();
            Tensor::from_shape(shape, &v).map_err(err)?
        }
    };
    match want {
        Some(dt) if dt != t.datum_type() => t.cast_to_dt(dt).map(|c| c.into_owned()).map_err(err),
        _ => Ok(t),
    }
}

/// Turns a refusal into the error an explicit GPU request gets.
pub(crate) fn refusal_error(r: Refusal, origin: Option<&str>) -> Error {
    use crate::error::UnsupportedReason;
    let reason = match r {
        Refusal::NoDevice(p) => UnsupportedReason::Engine(format!("gpu ({})", p.describe())),
        Refusal::Unsupported(u) => UnsupportedReason::Operator {
            node: u.node,
            op: u.op,
            detail: format!("{} (GPU engine)", u.detail),
        },
    };
    Error::unsupported(origin, reason)
}
