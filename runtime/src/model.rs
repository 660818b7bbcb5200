//! Loading: bytes → checked ONNX → rewrites → tract typed model → plan.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::engine::cpu::{CpuEngine, guarded};
use crate::engine::gpu::{self, GpuEngine, Refusal};
use crate::engine::{Engine, EngineDecision, EngineKind, EngineState};
use crate::error::{Error, Result, UnsupportedReason};
use crate::onnx::{self, guard, rewrite};
use crate::package::{Package, PackageLimits};
use crate::schema::{self, Dim, TensorSpec};
use crate::strategy::{self, QuantForm, QuantStrategy, StrategyDecision};
use crate::target::TargetProfile;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Engine to run on; `None` takes the target profile's preference, or
    /// CPU. A target that prefers the GPU gets [`EngineKind::Auto`]: the
    /// GPU when it can run the model and is faster, else the CPU, with the
    /// reason in [`ModelInfo::engine_decision`].
    pub engine: Option<EngineKind>,
    /// CPU threads; `None` takes the target profile's count, or 1.
    pub threads: Option<usize>,
    /// Execution strategy for quantized models.
    pub strategy: QuantStrategy,
    /// Largest model (or package) accepted, in bytes.
    pub max_model_bytes: u64,
    /// Use a package's pre-optimized NNEF member when it is present.
    pub use_preoptimized: bool,
    /// The device's target profile.
    pub target: Option<TargetProfile>,
    /// Input shapes that replace the declared ones, by input name: fix the
    /// spatial size of a detector whose graph tract cannot type with
    /// symbolic height and width, or pin the batch.
    pub input_shapes: Vec<(String, Vec<Dim>)>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            engine: None,
            threads: None,
            strategy: QuantStrategy::Auto,
            max_model_bytes: 1 << 30,
            use_preoptimized: true,
            target: None,
            input_shapes: vec![],
        }
    }
}

impl LoadOptions {
    fn threads(&self) -> usize {
        self.threads
            .or(self.target.as_ref().map(|t| t.threads))
            .unwrap_or(1)
            .max(1)
    }
}

/// Where the running graph came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphSource {
    /// Translated from ONNX at load.
    Onnx,
    /// Read from the package's pre-optimized NNEF member.
    Nnef,
}

/// What was loaded and how it will run; printed by `outpost model inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Operator types of the ONNX graph as shipped (`domain::Op` outside ai.onnx).
    pub ops: Vec<String>,
    pub opset: i64,
    pub onnx_nodes: usize,
    /// Nodes of the optimized plan.
    pub plan_nodes: usize,
    /// Bytes of the ONNX model.
    pub size_bytes: u64,
    pub quantization: QuantForm,
    /// Execution strategy, why, and the timings when measured.
    pub strategy: StrategyDecision,
    pub rewrites: Rewrites,
    pub engine: EngineKind,
    /// Why this engine: requested, the GPU's refusal, or the measurement.
    pub engine_decision: EngineDecision,
    pub threads: usize,
    pub source: GraphSource,
    /// Why a present pre-optimized form was not used.
    pub preoptimized_skipped: Option<String>,
    #[serde(serialize_with = "ser_ms")]
    pub load_time: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// Graph rewrites applied at load (see `runtime/src/onnx/rewrite.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rewrites {
    pub qgemm: usize,
    pub softmax_guarded: usize,
    pub dequantized: usize,
    pub attention: usize,
    pub activation_qdq_removed: usize,
}

impl From<rewrite::RewriteReport> for Rewrites {
    fn from(r: rewrite::RewriteReport) -> Self {
        Rewrites {
            qgemm: r.qgemm,
            softmax_guarded: r.softmax_guarded,
            dequantized: r.dequantized,
            attention: r.attention,
            activation_qdq_removed: r.activation_qdq_removed,
        }
    }
}

/// A loaded, optimized model: immutable, cheap to clone, shareable between
/// threads. Run it through a [`Session`].
#[derive(Debug, Clone)]
pub struct Model {
    engine: Arc<dyn Engine>,
    info: Arc<ModelInfo>,
}

/// Per-caller state for running a [`Model`]: reuse one per thread.
pub struct Session {
    model: Model,
    state: Box<dyn EngineState>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.model.info.name)
            .finish()
    }
}

/// A typed, decluttered model ready for an engine, plus what we learnt
/// building it.
pub(crate) struct Prepared {
    pub(crate) typed: TypedModel,
    pub(crate) rewrites: rewrite::RewriteReport,
    /// The engine, when measuring already built it.
    pub(crate) engine: Option<CpuEngine>,
}

impl Model {
    /// Loads an `.onnx` file or an `.opk` package (recognised by content).
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > opts.max_model_bytes {
            return Err(Error::malformed(
                Some(&path.display().to_string()),
                format!(
                    "file is {len} bytes, over the limit of {}",
                    opts.max_model_bytes
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        if crate::package::looks_like_package(&bytes) {
            let limits = PackageLimits {
                max_total_bytes: opts.max_model_bytes,
                ..PackageLimits::default()
            };
            let pkg = Package::from_bytes(&bytes, &path.display().to_string(), &limits)?;
            Model::from_package(&pkg, opts)
        } else {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Model::from_onnx_bytes(&bytes, &name, Some(&path.display().to_string()), opts)
        }
    }

    /// Loads ONNX bytes. `origin` names the source in errors.
    pub fn from_onnx_bytes(
        bytes: &[u8],
        name: &str,
        origin: Option<&str>,
        opts: &LoadOptions,
    ) -> Result<Model> {
        let started = Instant::now();
        let mut proto = onnx::decode(bytes, origin)?;
        onnx::normalize_inputs(&mut proto, &opts.input_shapes);
        guard::check(&proto, origin)?;
        Self::from_proto(proto, bytes.len() as u64, name, origin, opts, started)
    }

    /// Loads a verified package: its pre-optimized form when present and
    /// usable, else its ONNX model. The manifest's schema (ranges,
    /// vocabularies) is enforced on every call.
    pub fn from_package(pkg: &Package, opts: &LoadOptions) -> Result<Model> {
        let started = Instant::now();
        let m = pkg.manifest();
        let origin = Some(pkg.origin());
        let onnx_bytes = pkg.model_bytes()?;
        let mut proto = onnx::decode(onnx_bytes, origin)?;
        onnx::normalize_inputs(&mut proto, &opts.input_shapes);
        // Checked before either form is used: a package whose model is
        // refused is refused whatever pre-optimized form it carries.
        guard::check(&proto, origin)?;
        let mut skipped = None;
        // The GPU engine lowers the ONNX model; the pre-optimized form is
        // tract's. An explicit GPU request goes through the ONNX member and
        // is refused there when the GPU cannot run it, never served by the CPU.
        let gpu_requested = wanted_engine(opts) == EngineKind::Gpu;
        if gpu_requested && pkg.preoptimized().is_some() {
            skipped = Some("the GPU engine was requested; it lowers the ONNX model".into());
        }
        let mut model = match (opts.use_preoptimized && !gpu_requested, pkg.preoptimized()) {
            (true, Some(nnef_bytes)) => {
                match m.runtime.as_ref().map(|r| r.tract_version.as_str()) {
                    Some(crate::nnef::TRACT_VERSION) => {
                        match Self::from_nnef(
                            &proto,
                            nnef_bytes,
                            onnx_bytes.len() as u64,
                            &m.name,
                            opts,
                            started,
                        ) {
                            Ok(model) => Some(model),
                            Err(e) => {
                                skipped = Some(format!("pre-optimized form failed to load: {e}"));
                                None
                            }
                        }
                    }
                    other => {
                        skipped = Some(format!(
                            "pre-optimized form was written by tract {}, this runtime uses {}",
                            other.unwrap_or("(unknown)"),
                            crate::nnef::TRACT_VERSION
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        if model.is_none() {
            // A strategy measured at pack time on this architecture saves
            // measuring again at load.
            let recorded = m.runtime.as_ref().and_then(|r| {
                let arch = r.measured_on.as_deref()?;
                let strategy = match r.strategy.as_deref()? {
                    "integer" => QuantStrategy::Integer,
                    "dequantized" => QuantStrategy::Dequantized,
                    "weights_only" => QuantStrategy::WeightsOnly,
                    _ => return None,
                };
                (arch == std::env::consts::ARCH && opts.strategy == QuantStrategy::Auto)
                    .then_some((strategy, arch))
            });
            let load_opts = match recorded {
                Some((strategy, _)) => LoadOptions {
                    strategy,
                    ..opts.clone()
                },
                None => opts.clone(),
            };
            let mut loaded = Self::from_proto(
                proto,
                onnx_bytes.len() as u64,
                &m.name,
                origin,
                &load_opts,
                started,
            )?;
            if let Some((_, arch)) = recorded {
                let info = Arc::make_mut(&mut loaded.info);
                if info.strategy.reason == "requested" {
                    info.strategy.reason = format!(
                        "measured when the package was built, on {arch}; recorded in its manifest"
                    );
                }
            }
            model = Some(loaded);
        }
        let Some(mut model) = model else {
            return Err(Error::malformed(origin, "no loadable model form"));
        };
        let info = Arc::make_mut(&mut model.info);
        info.version = Some(m.version.clone());
        info.preoptimized_skipped = skipped;
        // The manifest's specs add ranges, vocabularies and labels; the
        // model's own facts stay authoritative for dtype and shape.
        for spec in &mut info.inputs {
            if let Some(declared) = m.inputs.iter().find(|d| d.name == spec.name) {
                spec.range = declared.range;
                spec.vocabulary = declared.vocabulary.clone();
                spec.feature_names = declared.feature_names.clone();
            }
        }
        for spec in &mut info.outputs {
            if let Some(declared) = m.outputs.iter().find(|d| d.name == spec.name) {
                spec.labels = declared.labels.clone();
            }
        }
        info.load_time = started.elapsed();
        Ok(model)
    }

    fn from_nnef(
        proto: &ModelProto,
        nnef_bytes: &[u8],
        size: u64,
        name: &str,
        opts: &LoadOptions,
        started: Instant,
    ) -> Result<Model> {
        let typed = crate::nnef::read(nnef_bytes)?;
        let form = strategy::quant_form(proto);
        let decision = strategy::recorded_in_nnef(&typed, form);
        let prepared = Prepared {
            typed,
            rewrites: Default::default(),
            engine: None,
        };
        Self::finish(
            proto,
            prepared,
            size,
            name,
            opts,
            started,
            form,
            decision,
            GraphSource::Nnef,
        )
    }

    fn from_proto(
        proto: ModelProto,
        size: u64,
        name: &str,
        origin: Option<&str>,
        opts: &LoadOptions,
        started: Instant,
    ) -> Result<Model> {
        let form = strategy::quant_form(&proto);
        let (prepared, decision) = strategy::choose(&proto, form, opts, opts.threads(), origin)?;
        Self::finish(
            &proto,
            prepared,
            size,
            name,
            opts,
            started,
            form,
            decision,
            GraphSource::Onnx,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        proto: &ModelProto,
        prepared: Prepared,
        size: u64,
        name: &str,
        opts: &LoadOptions,
        started: Instant,
        form: QuantForm,
        strategy: StrategyDecision,
        source: GraphSource,
    ) -> Result<Model> {
        let inputs = specs(&prepared.typed, true)?;
        let outputs = specs(&prepared.typed, false)?;
        let threads = opts.threads();
        let rewrites = prepared.rewrites.clone();
        let (engine, plan_nodes, engine_decision) =
            choose_engine(proto, prepared, opts, threads, strategy.strategy)?;
        let kind = engine.kind();
        let info = ModelInfo {
            name: name.to_owned(),
            version: None,
            inputs,
            outputs,
            ops: onnx::op_types(proto),
            opset: onnx::default_opset(proto),
            onnx_nodes: proto.graph.as_ref().map_or(0, |g| g.node.len()),
            plan_nodes,
            size_bytes: size,
            quantization: form,
            strategy,
            rewrites: rewrites.into(),
            engine: kind,
            engine_decision,
            threads,
            source,
            preoptimized_skipped: None,
            load_time: started.elapsed(),
        };
        Ok(Model {
            engine,
            info: Arc::new(info),
        })
    }

    /// Which engine runs this model and why (see [`EngineDecision`]).
    pub fn engine_decision(&self) -> &EngineDecision {
        &self.info.engine_decision
    }

    /// What was loaded and how it runs.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Input specs in the order [`Session::run`] expects them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.info.inputs
    }

    /// A session: per-call state for one thread.
    pub fn session(&self) -> Result<Session> {
        Ok(Session {
            model: self.clone(),
            state: self.engine.spawn()?,
        })
    }

    /// One-off run (creates a session each time; prefer [`Model::session`]).
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.session()?.run(inputs)
    }
}

impl Session {
    /// Runs on inputs given in the model's input order. Inputs are validated
    /// against the schema first: a wrong input is an [`Error::Input`].
    pub fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        schema::validate_inputs(&self.model.info.inputs, &inputs)?;
        self.state.run(inputs)
    }

    /// Runs on named inputs, in any order.
    pub fn run_named(&mut self, mut named: Vec<(String, Tensor)>) -> Result<Vec<Tensor>> {
        let specs = &self.model.info.inputs;
        if let Some((unknown, _)) = named
            .iter()
            .find(|(n, _)| !specs.iter().any(|s| &s.name == n))
        {
            return Err(crate::error::InputError::UnknownName {
                name: unknown.clone(),
                known: specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into());
        }
        let mut ordered = Vec::with_capacity(specs.len());
        for spec in specs {
            let ix = named
                .iter()
                .position(|(n, _)| n == &spec.name)
                .ok_or_else(|| crate::error::InputError::Missing {
                    name: spec.name.clone(),
                })?;
            ordered.push(named.swap_remove(ix).1);
        }
        self.run(ordered)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// The engine asked for: the caller's, else the target profile's (a
/// target preferring the GPU means "the GPU where it pays"), else the CPU.
fn wanted_engine(opts: &LoadOptions) -> EngineKind {
    match (
        opts.engine,
        opts.target.as_ref().map(|t| t.preferred_engine),
    ) {
        (Some(e), _) => e,
        (None, Some(EngineKind::Gpu | EngineKind::Auto)) => EngineKind::Auto,
        (None, _) => EngineKind::Cpu,
    }
}

/// Builds the engine that runs the model and records why.
///
/// Design: an explicit `gpu` is a contract (refused when the GPU cannot run
/// the model); `auto` is a preference, settled on this device by a probe, a
/// lowering attempt and a one-off batch-1 micro-benchmark of both engines.
/// Every CPU outcome of `auto` carries its reason, so a fallback is never
/// silent.
fn choose_engine(
    proto: &ModelProto,
    prepared: Prepared,
    opts: &LoadOptions,
    threads: usize,
    strategy: strategy::ExecStrategy,
) -> Result<(Arc<dyn Engine>, usize, EngineDecision)> {
    let wanted = wanted_engine(opts);
    let decision = |engine, reason: String, cpu_us, gpu_us, probe| EngineDecision {
        engine,
        reason,
        cpu_us,
        gpu_us,
        gpu: probe,
    };
    let cpu = |prepared: Prepared| -> Result<CpuEngine> {
        match prepared.engine {
            Some(engine) => Ok(engine),
            None => CpuEngine::new(prepared.typed, threads),
        }
    };
    if wanted == EngineKind::Cpu {
        let why = if opts.engine.is_some() {
            "requested"
        } else if opts.target.is_some() {
            "the target profile prefers the CPU"
        } else {
            "default (no engine requested, no target profile)"
        };
        let engine = cpu(prepared)?;
        let nodes = engine.plan_nodes();
        return Ok((
            Arc::new(engine),
            nodes,
            decision(EngineKind::Cpu, why.into(), None, None, None),
        ));
    }
    let output_types = output_types(&prepared.typed)?;
    // The GPU runs the float form of the graph: integer operators become
    // DequantizeLinear + float op + QuantizeLinear, the same values.
    let mut rewritten = proto.clone();
    let mode = if strategy == strategy::ExecStrategy::WeightsOnly {
        rewrite::Mode::WeightsOnly
    } else {
        rewrite::Mode::Dequantized
    };
    rewrite::rewrite(&mut rewritten, mode);
    let gpu_engine = GpuEngine::new(&rewritten, output_types);
    let probe = Some(gpu::probe());
    if wanted == EngineKind::Gpu {
        let engine = gpu_engine.map_err(|r| gpu::refusal_error(r, None))?;
        let (kernels, qdq, act) = engine.summary();
        let reason = format!(
            "requested; {} ({kernels} kernels, {qdq} quantize pairs and {act} activations fused)",
            engine.adapter()
        );
        return Ok((
            Arc::new(engine),
            kernels,
            decision(EngineKind::Gpu, reason, None, None, probe),
        ));
    }
    let bench = strategy::bench_inputs(&prepared.typed);
    let cpu_engine = cpu(prepared)?;
    let nodes = cpu_engine.plan_nodes();
    let gpu_engine = match gpu_engine {
        Ok(g) => g,
        Err(refusal) => {
            let what = match &refusal {
                Refusal::NoDevice(_) => "no usable GPU",
                Refusal::Unsupported(_) => "the GPU engine cannot run this model",
            };
            return Ok((
                Arc::new(cpu_engine),
                nodes,
                decision(
                    EngineKind::Cpu,
                    format!("{what}, running on the CPU: {refusal}"),
                    None,
                    None,
                    probe,
                ),
            ));
        }
    };
    let Some(inputs) = bench else {
        let (kernels, _, _) = gpu_engine.summary();
        return Ok((
            Arc::new(gpu_engine),
            kernels,
            decision(
                EngineKind::Gpu,
                "not measured (inputs have dynamic dimensions besides the batch); the target \
                 prefers the GPU and it runs every node"
                    .into(),
                None,
                None,
                probe,
            ),
        ));
    };
    let cpu_t = strategy::time(&cpu_engine, &inputs, None)?;
    // A GPU run that fails here is a GPU problem, reported, not a load failure.
    let gpu_t = match strategy::time(&gpu_engine, &inputs, Some(cpu_t * 50)) {
        Ok(t) => t,
        Err(e) => {
            return Ok((
                Arc::new(cpu_engine),
                nodes,
                decision(
                    EngineKind::Cpu,
                    format!("the GPU engine failed its trial run, running on the CPU: {e}"),
                    None,
                    None,
                    probe,
                ),
            ));
        }
    };
    let (cpu_us, gpu_us) = (cpu_t.as_secs_f64() * 1e6, gpu_t.as_secs_f64() * 1e6);
    let adapter = gpu_engine.adapter();
    let measured = format!(
        "measured at load with batch 1: CPU {cpu_us:.0} µs, GPU {gpu_us:.0} µs on {adapter}"
    );
    if gpu_t < cpu_t {
        let (kernels, _, _) = gpu_engine.summary();
        Ok((
            Arc::new(gpu_engine),
            kernels,
            decision(EngineKind::Gpu, measured, Some(cpu_us), Some(gpu_us), probe),
        ))
    } else {
        Ok((
            Arc::new(cpu_engine),
            nodes,
            decision(
                EngineKind::Cpu,
                format!("the CPU is faster: {measured}"),
                Some(cpu_us),
                Some(gpu_us),
                probe,
            ),
        ))
    }
}

fn output_types(model: &TypedModel) -> Result<Vec<DatumType>> {
    let err = |e: TractError| Error::Engine {
        engine: "cpu",
        stage: "reading the schema",
        message: e.to_string(),
    };
    model
        .output_outlets()
        .map_err(err)?
        .iter()
        .map(|o| Ok(model.outlet_fact(*o).map_err(err)?.datum_type))
        .collect()
}

/// Translates a (rewritten) ONNX proto into a decluttered typed model.
pub(crate) fn translate(proto: &ModelProto, origin: Option<&str>) -> Result<TypedModel> {
    let inference = guarded("translating ONNX", || {
        tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_proto_model(proto)
    })
    .map_err(|e| unsupported_or_engine(e, origin))?;
    guarded("typing and decluttering", || {
        inference.into_typed()?.into_decluttered()
    })
    .map_err(|e| unsupported_or_engine(e, origin))
}

/// tract reports unknown operators as errors mentioning `Unimplemented`;
/// those are unsupported models, not engine failures.
fn unsupported_or_engine(e: Error, origin: Option<&str>) -> Error {
    match e {
        Error::Engine { message, .. }
            if message.contains("Unimplemented") || message.contains("unimplemented") =>
        {
            Error::unsupported(
                origin,
                UnsupportedReason::Operator {
                    node: String::new(),
                    op: String::new(),
                    detail: message,
                },
            )
        }
        other => other,
    }
}

fn specs(model: &TypedModel, inputs: bool) -> Result<Vec<TensorSpec>> {
    let outlets = if inputs {
        model.input_outlets()
    } else {
        model.output_outlets()
    }
    .map_err(|e| Error::Engine {
        engine: "cpu",
        stage: "reading the schema",
        message: e.to_string(),
    })?;
    outlets
        .iter()
        .map(|o| {
            let fact = model.outlet_fact(*o).map_err(|e| Error::Engine {
                engine: "cpu",
                stage: "reading the schema",
                message: e.to_string(),
            })?;
            let name = model.node(o.node).name.clone();
            let name = model.outlet_label(*o).map(str::to_owned).unwrap_or(name);
            let shape = fact
                .shape
                .iter()
                .map(|d| match d.to_i64() {
                    Ok(v) if v >= 0 => Dim::Fixed(v as u64),
                    _ => Dim::Symbolic(d.to_string()),
                })
                .collect();
            Ok(TensorSpec {
                name,
                dtype: schema::dtype_name(fact.datum_type),
                shape,
                feature_names: vec![],
                range: None,
                vocabulary: vec![],
                labels: vec![],
            })
        })
        .collect()
}
