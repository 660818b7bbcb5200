//! Execution strategy for quantized models.
//!
//! Measured on tract 0.23.9, x86_64 (see docs/architecture.md): QDQ models
//! already run float math; QLinearConv runs 4–5× slower than fp32 on the
//! digits CNN, and dynamic quantization 5–10× slower. A user who quantizes
//! expects a smaller model that is not slower. So for models with integer
//! operators we build both forms — tract's integer kernels, and int8 weights
//! dequantized to float at load (the file stays int8) — time them on this
//! device with a batch of one, and keep the faster. On a CPU where tract's
//! integer kernels win (some ARM cores), the measurement picks them.

use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::engine::Engine;
use crate::engine::cpu::CpuEngine;
use crate::error::Result;
use crate::model::{LoadOptions, Prepared, translate};
use crate::onnx;
use crate::onnx::rewrite::{self, Mode};

/// How a model is quantized, read from its operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantForm {
    /// No quantization operators.
    Float,
    /// QuantizeLinear/DequantizeLinear pairs around float operators.
    Qdq,
    /// Integer operators with requantization (QLinearConv, QLinearMatMul, QGemm).
    QOperator,
    /// DynamicQuantizeLinear with MatMulInteger/ConvInteger.
    Dynamic,
    /// More than one of the above.
    Mixed,
}

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantStrategy {
    /// Measure at load and keep the faster.
    #[default]
    Auto,
    /// Keep tract's integer kernels.
    Integer,
    /// Dequantize int8 weights to float at load.
    Dequantized,
    /// Dequantize int8 weights at load and compute activations in float,
    /// dropping activation quantization: as fast as fp32, results differ
    /// from the quantized model's by its activation rounding. Never chosen
    /// by `Auto`.
    WeightsOnly,
}

impl std::str::FromStr for QuantStrategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(QuantStrategy::Auto),
            "integer" => Ok(QuantStrategy::Integer),
            "dequantized" => Ok(QuantStrategy::Dequantized),
            "weights-only" | "weights_only" => Ok(QuantStrategy::WeightsOnly),
            o => Err(format!(
                "unknown strategy {o:?} (expected auto, integer, dequantized or weights-only)"
            )),
        }
    }
}

/// What runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecStrategy {
    /// A float model, run as is.
    Float,
    /// Integer kernels.
    Integer,
    /// Weights stored int8, dequantized to float at load; float kernels.
    Dequantized,
    /// As `Dequantized`, and activations computed in float.
    WeightsOnly,
}

impl ExecStrategy {
    /// The spelling used in manifests (`float`, `integer`, `dequantized`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecStrategy::Float => "float",
            ExecStrategy::Integer => "integer",
            ExecStrategy::Dequantized => "dequantized",
            ExecStrategy::WeightsOnly => "weights_only",
        }
    }
}

/// The strategy chosen, why, and the timings when it was measured.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyDecision {
    pub strategy: ExecStrategy,
    pub reason: String,
    pub integer_ms: Option<f64>,
    pub dequantized_ms: Option<f64>,
}

const INTEGER_OPS: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
];
const PROPERTY: &str = "outpost.strategy";

pub(crate) fn quant_form(proto: &ModelProto) -> QuantForm {
    let ops = onnx::op_types(proto);
    let has = |names: &[&str]| ops.iter().any(|o| names.contains(&o.as_str()));
    let qop = has(&[
        "QLinearConv",
        "QLinearMatMul",
        "com.microsoft::QGemm",
        "QLinearAdd",
        "QLinearMul",
    ]);
    let dynamic = has(&["DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"]);
    let qdq = has(&["DequantizeLinear"]) && !qop && !dynamic;
    match (qdq, qop, dynamic) {
        (false, false, false) => QuantForm::Float,
        (true, false, false) => QuantForm::Qdq,
        (false, true, false) => QuantForm::QOperator,
        (false, false, true) => QuantForm::Dynamic,
        _ => QuantForm::Mixed,
    }
}

fn prepare(proto: &ModelProto, mode: Mode, origin: Option<&str>) -> Result<Prepared> {
    let mut proto = proto.clone();
    let rewrites = rewrite::rewrite(&mut proto, mode);
    let typed = translate(&proto, origin)?;
    Ok(Prepared {
        typed,
        rewrites,
        engine: None,
    })
}

/// The strategy a pre-optimized model was written with.
pub(crate) fn recorded_in_nnef(typed: &TypedModel, form: QuantForm) -> StrategyDecision {
    let recorded = typed
        .properties
        .get(PROPERTY)
        .and_then(|t| t.as_plain_ram()?.to_scalar::<String>().ok().cloned());
    let strategy = match (form, recorded.as_deref()) {
        (QuantForm::Float, _) => ExecStrategy::Float,
        (_, Some("integer")) => ExecStrategy::Integer,
        (_, Some("weights_only")) => ExecStrategy::WeightsOnly,
        _ => ExecStrategy::Dequantized,
    };
    StrategyDecision {
        strategy,
        reason: "chosen when the package was built; stored in its pre-optimized form".into(),
        integer_ms: None,
        dequantized_ms: None,
    }
}

/// Builds the model in the strategy asked for, measuring when asked to, and
/// records the choice in the typed model (it travels in the NNEF form).
pub(crate) fn choose(
    proto: &ModelProto,
    form: QuantForm,
    opts: &LoadOptions,
    threads: usize,
    origin: Option<&str>,
) -> Result<(Prepared, StrategyDecision)> {
    let (mut prepared, decision) = choose_inner(proto, form, opts, threads, origin)?;
    prepared.typed.properties.insert(
        PROPERTY.into(),
        rctensor0(decision.strategy.as_str().to_owned()),
    );
    Ok((prepared, decision))
}

fn choose_inner(
    proto: &ModelProto,
    form: QuantForm,
    opts: &LoadOptions,
    threads: usize,
    origin: Option<&str>,
) -> Result<(Prepared, StrategyDecision)> {
    let ops = onnx::op_types(proto);
    let has_integer = ops.iter().any(|o| INTEGER_OPS.contains(&o.as_str()));
    let decision = |strategy, reason: &str| StrategyDecision {
        strategy,
        reason: reason.to_owned(),
        integer_ms: None,
        dequantized_ms: None,
    };
    if opts.strategy == QuantStrategy::WeightsOnly && form != QuantForm::Float {
        let prepared = prepare(proto, Mode::WeightsOnly, origin)?;
        let reason = format!(
            "requested: int8 weights dequantized at load, activations in float ({} activation \
             quantize/dequantize pairs dropped; results differ from the quantized model's by its \
             activation rounding)",
            prepared.rewrites.activation_qdq_removed
        );
        return Ok((prepared, decision(ExecStrategy::WeightsOnly, &reason)));
    }
    if !has_integer {
        let prepared = prepare(proto, Mode::Integer, origin)?;
        return Ok(match form {
            QuantForm::Float => (prepared, decision(ExecStrategy::Float, "float model")),
            _ => (
                prepared,
                decision(
                    ExecStrategy::Dequantized,
                    "QDQ: int8 weights are dequantized once at load and the graph runs float kernels",
                ),
            ),
        });
    }
    match opts.strategy {
        QuantStrategy::Integer => Ok((
            prepare(proto, Mode::Integer, origin)?,
            decision(ExecStrategy::Integer, "requested"),
        )),
        // WeightsOnly reaches here only for float models, handled above.
        QuantStrategy::Dequantized | QuantStrategy::WeightsOnly => Ok((
            prepare(proto, Mode::Dequantized, origin)?,
            decision(ExecStrategy::Dequantized, "requested"),
        )),
        QuantStrategy::Auto => {
            let mut deq = prepare(proto, Mode::Dequantized, origin)?;
            let Some(inputs) = bench_inputs(&deq.typed) else {
                return Ok((
                    deq,
                    decision(
                        ExecStrategy::Dequantized,
                        "not measured (inputs have dynamic dimensions besides the batch); dequantized \
                         float kernels won every measurement on tract 0.23.9 (docs/architecture.md)",
                    ),
                ));
            };
            let mut int = prepare(proto, Mode::Integer, origin)?;
            let deq_engine = CpuEngine::new(deq.typed.clone(), threads)?;
            let int_engine = CpuEngine::new(int.typed.clone(), threads)?;
            let deq_t = time(&deq_engine, &inputs, None)?;
            // Integer kernels can be far slower: stop timing them once they
            // have clearly lost.
            let int_t = time(&int_engine, &inputs, Some(deq_t * 20))?;
            let (deq_ms, int_ms) = (deq_t.as_secs_f64() * 1e3, int_t.as_secs_f64() * 1e3);
            let measured = |strategy| StrategyDecision {
                strategy,
                reason: format!(
                    "measured at load on this CPU with batch 1: integer kernels {int_ms:.3} ms, \
                     dequantized float kernels {deq_ms:.3} ms"
                ),
                integer_ms: Some(int_ms),
                dequantized_ms: Some(deq_ms),
            };
            if int_t < deq_t {
                int.engine = Some(int_engine);
                Ok((int, measured(ExecStrategy::Integer)))
            } else {
                deq.engine = Some(deq_engine);
                Ok((deq, measured(ExecStrategy::Dequantized)))
            }
        }
    }
}

/// A batch-1 input per model input, when every other dimension is fixed.
pub(crate) fn bench_inputs(model: &TypedModel) -> Option<Vec<Tensor>> {
    let mut out = vec![];
    for o in model.input_outlets().ok()? {
        let fact = model.outlet_fact(*o).ok()?;
        let mut shape = vec![];
        for (i, d) in fact.shape.iter().enumerate() {
            match d.to_i64() {
                Ok(v) if v >= 0 => shape.push(v as usize),
                _ if i == 0 => shape.push(1),
                _ => return None,
            }
        }
        let t = if fact.datum_type == f32::datum_type() {
            tract_ndarray::ArrayD::from_elem(shape, 0.5f32).into_tensor()
        } else {
            Tensor::zero_dt(fact.datum_type, &shape).ok()?
        };
        out.push(t);
    }
    Some(out)
}

/// Median time of one run, over up to ~150 ms of runs after a warm-up.
pub(crate) fn time(
    engine: &dyn Engine,
    inputs: &[Tensor],
    give_up_after: Option<Duration>,
) -> Result<Duration> {
    let mut state = engine.spawn()?;
    state.run(inputs.to_vec())?;
    let mut samples = vec![];
    let budget = Duration::from_millis(150);
    let started = Instant::now();
    while samples.len() < 50 && (samples.len() < 3 || started.elapsed() < budget) {
        let t = Instant::now();
        state.run(inputs.to_vec())?;
        let dt = t.elapsed();
        samples.push(dt);
        if give_up_after.is_some_and(|limit| dt > limit) {
            break;
        }
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}
