//! Registry-side evaluation (ARCHITECTURE §9): run a package's eval set
//! (`eval/eval.npz`) with outpost-runtime, set the measured metrics beside
//! the card's claims, and compare with the currently deployed version by
//! McNemar's exact test on the same rows.
//!
//! Accuracy is measured for classifiers (an output of shape `[N, C]`,
//! argmax against integer `labels`); other claimed metrics are listed as
//! not measured rather than guessed.

use std::collections::BTreeMap;
use std::io::Cursor;

use outpost_runtime::{LoadOptions, Model, Package, Tensor};
use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, DiscreteCDF};

use crate::pack::{EVAL_LABELS, EVAL_SET};

/// Rows run per call, bounding memory on large eval sets.
const BATCH: usize = 256;

/// One metric, claimed and measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    pub metric: String,
    pub claimed: Option<f64>,
    pub measured: Option<f64>,
    /// `|claimed − measured| > tolerance`.
    pub mismatch: bool,
}

/// McNemar's test of the new version against the deployed one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub baseline_version: String,
    /// Rows the new version gets right and the baseline wrong.
    pub new_only_correct: u64,
    /// Rows the baseline gets right and the new version wrong.
    pub baseline_only_correct: u64,
    pub new_accuracy: f64,
    pub baseline_accuracy: f64,
    /// Two-sided exact McNemar p-value (binomial on the discordant pairs).
    pub p_value: f64,
    pub test: String,
}

/// What the registry recorded about a version's eval set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub rows: u64,
    pub tolerance: f64,
    pub metrics: Vec<MetricCheck>,
    /// Any metric mismatched.
    pub mismatch: bool,
    pub comparison: Option<Comparison>,
    /// Why something was not measured or compared.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Why the eval set could not be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evaluation of {what}: {reason}")]
pub struct EvalError {
    pub what: String,
    pub reason: String,
}

/// Per-row correctness of one model on one eval set.
fn correctness(pkg: &Package, arrays: &[(String, Tensor)]) -> Result<Vec<bool>, String> {
    let model = Model::from_package(pkg, &LoadOptions::default()).map_err(|e| e.to_string())?;
    let labels = arrays
        .iter()
        .find(|(n, _)| n == EVAL_LABELS)
        .ok_or_else(|| format!("no {EVAL_LABELS:?} array"))?;
    let labels: Vec<i64> = labels
        .1
        .cast_to::<i64>()
        .map_err(|e| format!("labels: {e}"))?
        .to_plain_array_view::<i64>()
        .map_err(|e| format!("labels: {e}"))?
        .iter()
        .copied()
        .collect();
    let inputs: Vec<(String, &Tensor)> = model
        .inputs()
        .iter()
        .map(|spec| {
            arrays
                .iter()
                .find(|(n, _)| *n == spec.name)
                .map(|(n, t)| (n.clone(), t))
                .ok_or_else(|| format!("no array for input {:?}", spec.name))
        })
        .collect::<Result<_, _>>()?;
    let rows = labels.len();
    let mut session = model.session().map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(rows);
    let mut start = 0;
    while start < rows {
        let end = (start + BATCH).min(rows);
        let batch = inputs
            .iter()
            .map(|(n, t)| {
                t.slice(0, start, end)
                    .map(|s| (n.clone(), s))
                    .map_err(|e| format!("input {n}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = session.run_named(batch).map_err(|e| e.to_string())?;
        let first = outputs.first().ok_or("the model has no output")?;
        let shape = first.shape().to_vec();
        if shape.len() != 2 || shape[0] != end - start || shape[1] < 2 {
            return Err(format!(
                "output shape {shape:?} is not [rows, classes]: accuracy is measured for classifiers only"
            ));
        }
        let scores: Vec<f32> = first
            .cast_to::<f32>()
            .map_err(|e| e.to_string())?
            .to_plain_array_view::<f32>()
            .map_err(|e| e.to_string())?
            .iter()
            .copied()
            .collect();
        for (i, row) in scores.chunks(shape[1]).enumerate() {
            let best = (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            out.push(best as i64 == labels[start + i]);
        }
        start = end;
    }
    Ok(out)
}

/// Two-sided exact McNemar p-value for `b` and `c` discordant pairs.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    match Binomial::new(0.5, n) {
        Ok(d) => (2.0 * d.cdf(b.min(c))).min(1.0),
        Err(_) => 1.0,
    }
}

fn accuracy(c: &[bool]) -> f64 {
    if c.is_empty() {
        0.0
    } else {
        c.iter().filter(|x| **x).count() as f64 / c.len() as f64
    }
}

/// Runs `pkg`'s eval set, if it has one (`Ok(None)` otherwise), and
/// compares with `baseline` (version string and package) on the same rows.
pub fn evaluate(
    pkg: &Package,
    claimed: &BTreeMap<String, f64>,
    tolerance: f64,
    baseline: Option<(&str, &Package)>,
) -> Result<Option<EvalReport>, EvalError> {
    let Some(bytes) = pkg.member(EVAL_SET) else {
        return Ok(None);
    };
    let what = format!("{} {}", pkg.manifest().name, pkg.manifest().version);
    let err = |reason: String| EvalError {
        what: what.clone(),
        reason,
    };
    let arrays = outpost_runtime::npy::read_npz(Cursor::new(bytes), EVAL_SET)
        .map_err(|e| err(e.to_string()))?;
    let mut notes = vec![];
    let correct = match correctness(pkg, &arrays) {
        Ok(c) => Some(c),
        Err(e) => {
            notes.push(e);
            None
        }
    };
    let measured: BTreeMap<String, f64> = correct
        .as_ref()
        .map(|c| [("accuracy".to_owned(), accuracy(c))].into())
        .unwrap_or_default();
    let mut names: Vec<&String> = claimed.keys().chain(measured.keys()).collect();
    names.sort();
    names.dedup();
    let metrics: Vec<MetricCheck> = names
        .into_iter()
        .map(|m| {
            let (c, x) = (claimed.get(m).copied(), measured.get(m).copied());
            MetricCheck {
                metric: m.clone(),
                claimed: c,
                measured: x,
                mismatch: matches!((c, x), (Some(c), Some(x)) if (c - x).abs() > tolerance),
            }
        })
        .collect();
    for m in &metrics {
        if m.claimed.is_some() && m.measured.is_none() {
            notes.push(format!(
                "{} is claimed but not measured by the registry",
                m.metric
            ));
        }
    }
    let comparison = match (baseline, &correct) {
        (Some((version, base)), Some(new)) => match correctness(base, &arrays) {
            Ok(old) if old.len() == new.len() => {
                let b = new.iter().zip(&old).filter(|(n, o)| **n && !**o).count() as u64;
                let c = new.iter().zip(&old).filter(|(n, o)| !**n && **o).count() as u64;
                Some(Comparison {
                    baseline_version: version.to_owned(),
                    new_only_correct: b,
                    baseline_only_correct: c,
                    new_accuracy: accuracy(new),
                    baseline_accuracy: accuracy(&old),
                    p_value: mcnemar_exact(b, c),
                    test: "mcnemar_exact".into(),
                })
            }
            Ok(_) => None,
            Err(e) => {
                notes.push(format!(
                    "the deployed version {version} could not run this eval set: {e}"
                ));
                None
            }
        },
        _ => None,
    };
    Ok(Some(EvalReport {
        rows: arrays
            .iter()
            .find(|(n, _)| n == EVAL_LABELS)
            .and_then(|(_, t)| t.shape().first().copied())
            .unwrap_or(0) as u64,
        tolerance,
        mismatch: metrics.iter().any(|m| m.mismatch),
        metrics,
        comparison,
        notes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_exact_matches_known_values() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        // b=0, c=6: 2 · 0.5^6 = 0.03125.
        assert!((mcnemar_exact(0, 6) - 0.03125).abs() < 1e-12);
        assert!((mcnemar_exact(6, 0) - 0.03125).abs() < 1e-12);
        // b=2, c=10: 2 · P(X ≤ 2 | n=12) = 2 · 79/4096.
        assert!((mcnemar_exact(2, 10) - 2.0 * 79.0 / 4096.0).abs() < 1e-12);
    }
}
