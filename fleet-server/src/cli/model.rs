//! `outpost model inspect|run`: try a model from the shell, no server
//! needed; `pack` and `sign` live in their own modules, the registry
//! commands (push, list, approve, …) in `registry`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use outpost_runtime::{
    Dim, EngineKind, LoadOptions, Model, ModelInfo, QuantStrategy, TargetProfile, npy,
};

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Show a model's inputs, outputs, operators, quantization and how it will run.
    Inspect {
        /// An .onnx file or an .opk package.
        file: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run a model on .npy inputs and write its outputs to an .npz file.
    Run {
        /// An .onnx file or an .opk package.
        file: PathBuf,
        /// NAME=FILE.npy for each input (or just FILE.npy for a single-input model).
        #[arg(long = "input", short = 'i', required = true)]
        inputs: Vec<String>,
        /// Where to write the outputs (.npz, one array per output name).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Run this many times and print latency figures.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Build an .opk package from an ONNX model, a model card and reference data.
    Pack(super::pack::PackArgs),
    /// Add a release-key signature to a package's release metadata (k-of-n:
    /// each holder signs the same file in turn).
    Sign(super::sign::SignArgs),
    /// Upload a package (and its .release) to the registry, with a progress
    /// bar; an interrupted push resumes where it stopped.
    Push(super::registry::PushArgs),
    /// List registered versions and where each runs.
    List {
        /// Only this model.
        #[arg(long)]
        name: Option<String>,
        /// Only this status (draft, approved, canary, deployed, deprecated,
        /// retired, rejected).
        #[arg(long)]
        status: Option<String>,
    },
    /// A version's card, status, approvals, evaluation and devices.
    Show(super::registry::VersionArgs),
    /// Approve a draft (role approver; not its submitter).
    Approve {
        #[command(flatten)]
        v: super::registry::VersionArgs,
        /// What the approval vouches for: domain, risk or legal (risk class
        /// high needs risk and legal).
        #[arg(long, default_value = "domain")]
        kind: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a draft (role approver).
    Reject {
        #[command(flatten)]
        v: super::registry::VersionArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move a version along its lifecycle: canary, deployed, approved
    /// (halt a canary), deprecated (role operator).
    Promote {
        #[command(flatten)]
        v: super::registry::VersionArgs,
        /// The status to move to.
        #[arg(long)]
        to: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deploy an approved version to every device (of a group) at once,
    /// without probation: a fleet's first install. Later versions go out
    /// with `outpost rollout start` (role operator).
    Deploy {
        #[command(flatten)]
        v: super::registry::VersionArgs,
        /// Only devices in this inventory group.
        #[arg(long)]
        group: Option<String>,
        /// Deploy even though another version is deployed (skips the canary).
        #[arg(long)]
        force: bool,
    },
    /// Deprecate a version (role operator).
    Deprecate {
        #[command(flatten)]
        v: super::registry::VersionArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Retire a deprecated version: signed retire directives go to every
    /// device running it (role operator).
    Retire {
        #[command(flatten)]
        v: super::registry::VersionArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Attach an impact assessment to a draft (role operator).
    Attach {
        #[command(flatten)]
        v: super::registry::VersionArgs,
        /// The document.
        #[arg(long)]
        impact_assessment: PathBuf,
    },
    /// Versions the retirement policy (age, measured decay) picks; --mark
    /// marks them.
    Retirement {
        #[arg(long)]
        mark: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// Engine: cpu or gpu.
    #[arg(long)]
    engine: Option<EngineKind>,
    /// CPU threads.
    #[arg(long)]
    threads: Option<usize>,
    /// Quantized models: auto (measure), integer, dequantized or weights-only.
    #[arg(long, default_value = "auto")]
    strategy: QuantStrategy,
    /// Device target profile (targets/*.toml) for engine and threads.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Ignore a package's pre-optimized form and load its ONNX model.
    #[arg(long)]
    no_preoptimized: bool,
    /// Override an input's declared shape: NAME=N,3,640,640 (numbers are
    /// fixed, names are symbolic). Needed for detectors whose dynamic height
    /// and width tract cannot type.
    #[arg(long = "shape", value_parser = parse_shape)]
    shapes: Vec<(String, Vec<Dim>)>,
}

fn parse_shape(s: &str) -> Result<(String, Vec<Dim>), String> {
    let (name, dims) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=D1,D2,…"))?;
    let dims = dims
        .split(',')
        .map(|d| {
            let d = d.trim();
            match d.parse::<u64>() {
                Ok(v) => Ok(Dim::Fixed(v)),
                Err(_)
                    if !d.is_empty()
                        && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    Ok(Dim::Symbolic(d.to_owned()))
                }
                Err(_) => Err(format!(
                    "{s:?}: dimension {d:?} is neither a number nor a name"
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_owned(), dims))
}

impl LoadArgs {
    fn options(&self) -> Result<LoadOptions> {
        let target = match &self.target {
            Some(p) => Some(TargetProfile::load(p)?),
            None => None,
        };
        Ok(LoadOptions {
            engine: self.engine,
            threads: self.threads,
            strategy: self.strategy,
            use_preoptimized: !self.no_preoptimized,
            target,
            input_shapes: self.shapes.clone(),
            ..LoadOptions::default()
        })
    }
}

pub(crate) fn run(cmd: ModelCommand, json: bool, conn: &super::Conn) -> Result<()> {
    use super::registry as reg;
    match cmd {
        ModelCommand::Push(args) => reg::push(&conn.client(), args, json),
        ModelCommand::List { name, status } => reg::list(&conn.client(), name, status, json),
        ModelCommand::Show(v) => reg::show(&conn.client(), &v, json),
        ModelCommand::Approve { v, kind, comment } => {
            reg::approve(&conn.client(), &v, &kind, comment, json)
        }
        ModelCommand::Reject { v, reason } => reg::reject(&conn.client(), &v, reason, json),
        ModelCommand::Promote { v, to, reason } => {
            reg::transition(&conn.client(), &v, &to, reason, json)
        }
        ModelCommand::Deprecate { v, reason } => {
            reg::transition(&conn.client(), &v, "deprecated", reason, json)
        }
        ModelCommand::Deploy { v, group, force } => {
            reg::deploy(&conn.client(), &v, group, force, json)
        }
        ModelCommand::Retire { v, reason } => {
            reg::transition(&conn.client(), &v, "retired", reason, json)
        }
        ModelCommand::Attach {
            v,
            impact_assessment,
        } => reg::attach(&conn.client(), &v, &impact_assessment, json),
        ModelCommand::Retirement { mark } => reg::retirement(&conn.client(), mark, json),
        ModelCommand::Inspect { file, load } => {
            let model = Model::load(&file, &load.options()?)
                .with_context(|| format!("loading {}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(model.info())?);
            } else {
                print_info(model.info());
            }
            Ok(())
        }
        ModelCommand::Run {
            file,
            inputs,
            output,
            repeat,
            load,
        } => run_model(&file, &inputs, output, repeat.max(1), &load, json),
        ModelCommand::Pack(args) => super::pack::run(args, json),
        ModelCommand::Sign(args) => super::sign::run(args, json),
    }
}

fn print_info(i: &ModelInfo) {
    println!(
        "model        {}{}",
        i.name,
        i.version
            .as_ref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    );
    println!(
        "size         {} bytes, opset {}, {} ONNX nodes, {} plan nodes",
        i.size_bytes, i.opset, i.onnx_nodes, i.plan_nodes
    );
    println!("ops          {}", i.ops.join(" "));
    println!(
        "quantization {}",
        serde_json::to_string(&i.quantization)
            .unwrap_or_default()
            .trim_matches('"')
    );
    println!(
        "strategy     {} — {}",
        serde_json::to_string(&i.strategy.strategy)
            .unwrap_or_default()
            .trim_matches('"'),
        i.strategy.reason
    );
    let r = &i.rewrites;
    if r.qgemm + r.softmax_guarded + r.dequantized + r.attention > 0 {
        println!(
            "rewrites     {} QGemm → Gemm, {} Softmax kept in float, {} integer ops dequantized, {} Attention expanded",
            r.qgemm, r.softmax_guarded, r.dequantized, r.attention
        );
    }
    println!(
        "engine       {} ({} thread{})",
        i.engine,
        i.threads,
        if i.threads == 1 { "" } else { "s" }
    );
    println!(
        "loaded from  {} in {:.1} ms",
        serde_json::to_string(&i.source)
            .unwrap_or_default()
            .trim_matches('"'),
        i.load_time.as_secs_f64() * 1e3
    );
    if let Some(why) = &i.preoptimized_skipped {
        println!("note         {why}");
    }
    for s in &i.inputs {
        let range = s
            .range
            .map(|r| format!(" range [{}, {}]", r.min, r.max))
            .unwrap_or_default();
        println!(
            "input        {} {} {}{range}",
            s.name,
            s.dtype,
            s.shape_string()
        );
    }
    for s in &i.outputs {
        let labels = if s.labels.is_empty() {
            String::new()
        } else {
            format!(" labels {}", s.labels.join(","))
        };
        println!(
            "output       {} {} {}{labels}",
            s.name,
            s.dtype,
            s.shape_string()
        );
    }
}

fn run_model(
    file: &PathBuf,
    inputs: &[String],
    output: Option<PathBuf>,
    repeat: usize,
    load: &LoadArgs,
    json: bool,
) -> Result<()> {
    let model = Model::load(file, &load.options()?)
        .with_context(|| format!("loading {}", file.display()))?;
    let specs = model.inputs();
    let mut named = vec![];
    for arg in inputs {
        let (name, path) = match arg.split_once('=') {
            Some((n, p)) => (n.to_owned(), p),
            None if specs.len() == 1 && inputs.len() == 1 => (specs[0].name.clone(), arg.as_str()),
            None => bail!(
                "--input {arg:?}: write NAME=FILE.npy (the model's inputs are {})",
                names(&model)
            ),
        };
        named.push((name, npy::read_npy(path)?));
    }
    let mut session = model.session()?;
    let mut times = Vec::with_capacity(repeat);
    let mut outputs = vec![];
    for _ in 0..repeat {
        let t = Instant::now();
        outputs = session.run_named(named.clone())?;
        times.push(t.elapsed());
    }
    let out_names: Vec<String> = model
        .info()
        .outputs
        .iter()
        .map(|o| o.name.clone())
        .collect();
    let pairs: Vec<(String, outpost_runtime::Tensor)> = out_names
        .iter()
        .cloned()
        .zip(outputs.iter().cloned())
        .collect();
    if let Some(path) = &output {
        npy::write_npz(path, &pairs)?;
    }
    let stats = LatencyStats::of(&times);
    if json {
        let outs: Vec<_> = pairs
            .iter()
            .map(|(n, t)| serde_json::json!({"name": n, "dtype": format!("{:?}", t.datum_type()), "shape": t.shape()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "outputs": outs,
                "written_to": output,
                "repeat": repeat,
                "latency_ms": stats.as_ref().map(|s| serde_json::json!({"min": s.min, "median": s.median, "p90": s.p90, "mean": s.mean})),
                "strategy": model.info().strategy,
            }))?
        );
    } else {
        for (n, t) in &pairs {
            println!("output {n}: {:?} {:?}", t.datum_type(), t.shape());
        }
        if let Some(path) = &output {
            println!("wrote {}", path.display());
        }
        if let Some(s) = stats {
            println!(
                "latency over {repeat} runs: min {:.3} ms, median {:.3} ms, p90 {:.3} ms, mean {:.3} ms",
                s.min, s.median, s.p90, s.mean
            );
        }
    }
    Ok(())
}

fn names(model: &Model) -> String {
    model
        .inputs()
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

struct LatencyStats {
    min: f64,
    median: f64,
    p90: f64,
    mean: f64,
}

impl LatencyStats {
    /// Figures in milliseconds; `None` for a single run.
    fn of(times: &[Duration]) -> Option<Self> {
        if times.len() < 2 {
            return None;
        }
        let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Some(LatencyStats {
            min: ms[0],
            median: at(0.5),
            p90: at(0.9),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        })
    }
}
