//! The ONNX backend node tests, generated from the pinned `onnx` package by
//! `scripts/gen_onnx_node_tests.py` into the cache, run against the CPU
//! engine with a checked-in allowlist (as tract keeps
//! `test-rt/suite-onnx/node.txt`).
//!
//! - `tests/conformance/cpu.txt`: cases that must pass (optionally with
//!   `rtol=`/`atol=` overrides).
//! - `tests/conformance/cpu-refused.txt`: cases the runtime must refuse at
//!   load because tract computes them wrongly; refusing is the correct answer.
//!
//! Every other case is still run and counted, so the summary shows the
//! whole picture, and any case that returns a *wrong result* without being
//! refused fails the test unless it is listed as a known mismatch in
//! `tests/conformance/cpu-mismatch.txt` (with the reason).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use outpost_runtime::{
    EngineKind, Error, LoadOptions, Model, QuantStrategy, Tensor, UnsupportedReason,
};
use prost::Message;
use tract_onnx::pb;

use crate::common::{latest_complete, skip_or_fail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Pass,
    /// Outputs differ from the expected ones.
    Wrong,
    /// Refused at load as a known wrong result.
    Refused,
    /// Any other load or run error (unsupported operator, …).
    Error,
    /// The case's data could not be read (sequences, optionals).
    Unreadable,
}

#[derive(Debug, Clone, Copy)]
struct Tolerance {
    rtol: f64,
    atol: f64,
}

const DEFAULT_TOL: Tolerance = Tolerance {
    rtol: 1e-3,
    atol: 1e-5,
};

fn suite_dir() -> Option<PathBuf> {
    latest_complete("onnx-node-tests")
}

fn list(name: &str) -> BTreeMap<String, Tolerance> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut parts = line.split_whitespace();
        let Some(case) = parts.next() else { continue };
        let mut tol = DEFAULT_TOL;
        for p in parts {
            if let Some(v) = p.strip_prefix("rtol=") {
                tol.rtol = v.parse().unwrap();
            } else if let Some(v) = p.strip_prefix("atol=") {
                tol.atol = v.parse().unwrap();
            }
        }
        out.insert(case.to_owned(), tol);
    }
    out
}

fn read_tensor(path: &Path) -> Option<Tensor> {
    let bytes = std::fs::read(path).ok()?;
    let proto = pb::TensorProto::decode(&*bytes).ok()?;
    std::panic::catch_unwind(|| {
        tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::MmapDataResolver, &proto, None)
            .ok()
    })
    .ok()
    .flatten()
}

fn read_set(dir: &Path, prefix: &str) -> Option<Vec<Tensor>> {
    let mut out = vec![];
    for i in 0.. {
        let p = dir.join(format!("{prefix}_{i}.pb"));
        if !p.exists() {
            break;
        }
        out.push(read_tensor(&p)?);
    }
    Some(out)
}

/// Feeds parameter inputs as constants, as a deployed model has them:
/// integer inputs (axes, pads, shapes, indices) and inputs that only ever
/// feed a node's non-first inputs (weights, scales, zero points). Returns
/// the indices of the inputs still fed at run time.
fn constant_integer_inputs(model: &mut pb::ModelProto, dir: &Path) -> Option<Vec<usize>> {
    let graph = model.graph.as_mut()?;
    let inits: BTreeSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    let mut first_use: BTreeSet<String> = BTreeSet::new();
    let mut any_use: BTreeSet<String> = BTreeSet::new();
    for n in &graph.node {
        for (i, name) in n.input.iter().enumerate() {
            any_use.insert(name.clone());
            if i == 0 {
                first_use.insert(name.clone());
            }
        }
    }
    // Inputs used inside subgraphs (Loop/If/Scan bodies) stay inputs.
    let has_subgraphs = graph.node.iter().any(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    });
    let mut kept = vec![];
    let mut new_inputs = vec![];
    let mut data_ix = 0;
    for vi in std::mem::take(&mut graph.input) {
        if inits.contains(&vi.name) {
            new_inputs.push(vi);
            continue;
        }
        let elem = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => t.elem_type,
            _ => 0,
        };
        let file = dir.join(format!("test_data_set_0/input_{data_ix}.pb"));
        let parameter =
            !has_subgraphs && any_use.contains(&vi.name) && !first_use.contains(&vi.name);
        if elem == 7 || elem == 6 || parameter {
            let mut proto = pb::TensorProto::decode(&*std::fs::read(&file).ok()?).ok()?;
            proto.name = vi.name.clone();
            graph.initializer.push(proto);
        } else {
            kept.push(data_ix);
            new_inputs.push(vi);
        }
        data_ix += 1;
    }
    graph.input = new_inputs;
    Some(kept)
}

fn close(expected: &Tensor, got: &Tensor, tol: Tolerance) -> bool {
    if expected.shape() != got.shape() {
        return false;
    }
    let dt = expected.datum_type();
    if dt.is_float() {
        let (Ok(e), Ok(g)) = (expected.cast_to::<f64>(), got.cast_to::<f64>()) else {
            return false;
        };
        let (e, g) = (
            e.to_plain_array_view::<f64>().unwrap(),
            g.to_plain_array_view::<f64>().unwrap(),
        );
        e.iter().zip(g).all(|(e, g)| {
            (e.is_nan() && g.is_nan()) || e == g || (e - g).abs() <= tol.atol + tol.rtol * e.abs()
        })
    } else {
        let got = if got.datum_type() != dt {
            got.cast_to_dt(dt).map(|c| c.into_owned()).ok()
        } else {
            Some(got.clone())
        };
        got.is_some_and(|g| &g == expected)
    }
}

fn run_case(
    dir: &Path,
    engine: EngineKind,
    strategy: QuantStrategy,
    tol: Tolerance,
) -> (Outcome, String) {
    let Ok(bytes) = std::fs::read(dir.join("model.onnx")) else {
        return (Outcome::Unreadable, "no model".into());
    };
    let Ok(mut proto) = pb::ModelProto::decode(&*bytes) else {
        return (Outcome::Unreadable, "model".into());
    };
    let Some(kept) = constant_integer_inputs(&mut proto, dir) else {
        return (Outcome::Unreadable, "inputs".into());
    };
    let data = dir.join("test_data_set_0");
    let (Some(inputs), Some(expected)) = (read_set(&data, "input"), read_set(&data, "output"))
    else {
        return (Outcome::Unreadable, "test data".into());
    };
    let inputs: Vec<Tensor> = kept
        .iter()
        .filter_map(|&i| inputs.get(i).cloned())
        .collect();
    let opts = LoadOptions {
        strategy,
        engine: Some(engine),
        ..LoadOptions::default()
    };
    let model = match Model::from_onnx_bytes(&proto.encode_to_vec(), "case", None, &opts) {
        Ok(m) => m,
        Err(Error::Unsupported {
            reason: UnsupportedReason::KnownWrongResult { why, .. },
            ..
        }) => {
            return (Outcome::Refused, why);
        }
        Err(e) => return (Outcome::Error, e.to_string()),
    };
    let got = match model.run(inputs) {
        Ok(o) => o,
        Err(e) => return (Outcome::Error, e.to_string()),
    };
    if got.len() < expected.len() {
        return (
            Outcome::Wrong,
            format!("{} outputs, expected {}", got.len(), expected.len()),
        );
    }
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        if !close(e, g, tol) {
            return (
                Outcome::Wrong,
                format!("output {i}: expected {e:?}, got {g:?}"),
            );
        }
    }
    (Outcome::Pass, String::new())
}

const INTEGER_OPS: &[&str] = &[
    "qlinearconv",
    "qlinearmatmul",
    "matmulinteger",
    "convinteger",
];

#[test]
fn onnx_node_conformance_cpu() {
    let Some(suite) = suite_dir() else {
        skip_or_fail("ONNX node tests not generated: run `python3 scripts/gen_onnx_node_tests.py`");
        return;
    };
    let must_pass = list("cpu.txt");
    let must_refuse = list("cpu-refused.txt");
    let known_mismatch = list("cpu-mismatch.txt");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&suite)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    let mut problems = vec![];
    let mut report = vec![];
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let tol = must_pass.get(&name).copied().unwrap_or(DEFAULT_TOL);
        let (outcome, detail) = run_case(dir, EngineKind::Cpu, QuantStrategy::Integer, tol);
        *counts.entry(outcome).or_default() += 1;
        report.push(format!(
            "{name}\t{outcome:?}\t{}",
            truncate(&detail).replace('\n', " ")
        ));
        if must_pass.contains_key(&name) && outcome != Outcome::Pass {
            problems.push(format!(
                "{name}: listed in cpu.txt but {outcome:?}: {}",
                truncate(&detail)
            ));
        }
        if must_refuse.contains_key(&name) && outcome != Outcome::Refused {
            problems.push(format!("{name}: listed in cpu-refused.txt but {outcome:?}"));
        }
        if outcome == Outcome::Wrong && !known_mismatch.contains_key(&name) {
            problems.push(format!(
                "{name}: silent wrong result, not refused at load: {}",
                truncate(&detail)
            ));
        }
        // The float execution strategy rewrites integer operators: it must
        // agree with the specification on their conformance cases too.
        let lower = name.to_lowercase();
        if outcome == Outcome::Pass
            && INTEGER_OPS
                .iter()
                .any(|op| lower.starts_with(&format!("test_{op}")))
        {
            let (o, d) = run_case(dir, EngineKind::Cpu, QuantStrategy::Dequantized, tol);
            if o != Outcome::Pass {
                problems.push(format!(
                    "{name}: passes with integer kernels but {o:?} dequantized: {}",
                    truncate(&d)
                ));
            }
        }
    }
    if let Ok(path) = std::env::var("OUTPOST_CONFORMANCE_WRITE") {
        std::fs::write(path, report.join("\n") + "\n").unwrap();
    }
    eprintln!(
        "conformance cpu ({}): {} cases; pass {}, refused {}, error {}, wrong {}, unreadable {}; allowlist {}",
        suite.display(),
        cases.len(),
        counts.get(&Outcome::Pass).unwrap_or(&0),
        counts.get(&Outcome::Refused).unwrap_or(&0),
        counts.get(&Outcome::Error).unwrap_or(&0),
        counts.get(&Outcome::Wrong).unwrap_or(&0),
        counts.get(&Outcome::Unreadable).unwrap_or(&0),
        must_pass.len(),
    );
    assert!(
        problems.is_empty(),
        "{} conformance problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The allowlist only grows: 1,295 cases pass (1,289 at the default
    // tolerance, 6 float16 graphs at a float16 tolerance).
    assert!(
        must_pass.len() >= 1295,
        "the allowlist shrank to {}",
        must_pass.len()
    );
}

/// The same suite against the GPU engine (`tests/conformance/gpu.txt`, and
/// `gpu-mismatch.txt` for known wrong results with their reason). A case
/// the GPU engine cannot lower is refused at load with a typed error
/// (counted as `Error`): an explicit GPU request never runs on the CPU.
#[test]
fn onnx_node_conformance_gpu() {
    let Some(suite) = suite_dir() else {
        skip_or_fail("ONNX node tests not generated: run `python3 scripts/gen_onnx_node_tests.py`");
        return;
    };
    if !crate::gpu::gpu_available() {
        return;
    }
    let must_pass = list("gpu.txt");
    let known_mismatch = list("gpu-mismatch.txt");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&suite)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    let mut problems = vec![];
    let mut report = vec![];
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let tol = must_pass.get(&name).copied().unwrap_or(DEFAULT_TOL);
        let (outcome, detail) = run_case(dir, EngineKind::Gpu, QuantStrategy::Auto, tol);
        *counts.entry(outcome).or_default() += 1;
        report.push(format!(
            "{name}\t{outcome:?}\t{}",
            truncate(&detail).replace('\n', " ")
        ));
        if must_pass.contains_key(&name) && outcome != Outcome::Pass {
            problems.push(format!(
                "{name}: listed in gpu.txt but {outcome:?}: {}",
                truncate(&detail)
            ));
        }
        if outcome == Outcome::Wrong && !known_mismatch.contains_key(&name) {
            problems.push(format!(
                "{name}: silent wrong result on the GPU engine: {}",
                truncate(&detail)
            ));
        }
    }
    if let Ok(path) = std::env::var("OUTPOST_CONFORMANCE_WRITE_GPU") {
        std::fs::write(path, report.join("\n") + "\n").unwrap();
    }
    eprintln!(
        "conformance gpu ({}, {}): {} cases; pass {}, refused {}, error or not lowered {}, wrong {}, unreadable {}; allowlist {}",
        suite.display(),
        outpost_runtime::gpu::probe().describe(),
        cases.len(),
        counts.get(&Outcome::Pass).unwrap_or(&0),
        counts.get(&Outcome::Refused).unwrap_or(&0),
        counts.get(&Outcome::Error).unwrap_or(&0),
        counts.get(&Outcome::Wrong).unwrap_or(&0),
        counts.get(&Outcome::Unreadable).unwrap_or(&0),
        must_pass.len(),
    );
    assert!(
        problems.is_empty(),
        "{} GPU conformance problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The allowlist only grows.
    assert!(
        must_pass.len() >= GPU_ALLOWLIST_MIN,
        "the GPU allowlist shrank to {}",
        must_pass.len()
    );
}

const GPU_ALLOWLIST_MIN: usize = 360;

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}
