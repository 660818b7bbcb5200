//! Fleet drift (`outpost drift MODEL@VERSION`): the windows of one model
//! version, already selected by the caller (version, group, time range),
//! merged and compared with the version's reference, per feature and per
//! output, with completeness beside drift and a per-device-class view to
//! tell a data-pipeline fault from model decay. Pure: no store, no clock.
//!
//! ```
//! # use std::collections::BTreeMap;
//! # use outpost_telemetry::{ProfileSet, ReferenceOptions, ReferenceProfile};
//! # use outpost_fleet::drift::{DriftSettings, fleet_drift, render_table};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mut csv = String::from("x,score\n");
//! # for i in 0..500 { csv += &format!("{},{}\n", i % 50, f64::from(i % 10) / 10.0); }
//! # let options = ReferenceOptions { outputs: vec!["score".into()], ..Default::default() };
//! # let reference = ReferenceProfile::from_csv(csv.as_bytes(), &options)?;
//! let windows = ProfileSet::new(); // from the store, filtered by version, group, time
//! let classes: BTreeMap<String, String> = BTreeMap::new(); // device id → target class
//! let report = fleet_drift(&reference, &windows, &classes, &DriftSettings::default())?;
//! assert_eq!(report.windows, 0);
//! println!("{}", render_table(&report));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use outpost_telemetry::{
    Completeness, DriftOptions, Inconclusive, MergeError, Profile, ProfileSet, ReferenceProfile,
    Role, Statistic, Test, Verdict,
};
use serde::{Deserialize, Serialize};

use crate::rollout::column_drift;

/// Settings of the fleet drift report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftSettings {
    /// Decision settings of the statistics (α, minimum count, PSI threshold).
    pub stats: DriftOptions,
    /// A column whose complete share (not missing, NaN or infinite) is
    /// below this is a completeness fault (default 0.98).
    pub min_complete: f64,
    /// An error rate above this is a fault (default 0.05).
    pub max_error_rate: f64,
    /// A class whose accuracy is this far below the fleet's is decaying
    /// (default 0.05).
    pub accuracy_gap: f64,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            stats: DriftOptions::default(),
            min_complete: 0.98,
            max_error_rate: 0.05,
            accuracy_gap: 0.05,
        }
    }
}

/// Why no report could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DriftError {
    /// The settings are out of range (α outside (0, 1), a negative threshold).
    #[error("drift settings: {0}")]
    Settings(String),
    /// Windows of the same reference would not merge (inconsistent shapes).
    #[error("windows do not merge: {0}")]
    Merge(#[from] MergeError),
}

/// A statistic in serializable form; non-finite numbers are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatisticReport {
    /// `psi`, `ks`, …
    pub test: String,
    pub value: Option<f64>,
    pub error_bound: Option<f64>,
    pub p_value: Option<f64>,
    pub threshold: Option<f64>,
    /// `drift`, `no_drift`, `not_enough_data`, `degenerate`, `within_error_bound`.
    pub verdict: String,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl From<&Statistic> for StatisticReport {
    fn from(s: &Statistic) -> Self {
        let test = match s.test {
            Test::Psi => "psi",
            Test::KolmogorovSmirnov => "ks",
            Test::JensenShannon => "jensen_shannon",
            Test::ChiSquare => "chi_square",
            Test::Wasserstein => "wasserstein",
            Test::MannWhitney => "mann_whitney",
            Test::AccuracyDifference => "accuracy_difference",
            _ => "other",
        };
        StatisticReport {
            test: test.into(),
            value: finite(s.value),
            error_bound: finite(s.error_bound),
            p_value: s.p_value.and_then(finite),
            threshold: finite(s.threshold),
            verdict: verdict_name(s.verdict).into(),
        }
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Drift => "drift",
        Verdict::NoDrift => "no_drift",
        Verdict::Inconclusive(Inconclusive::NotEnoughData) => "not_enough_data",
        Verdict::Inconclusive(Inconclusive::Degenerate) => "degenerate",
        Verdict::Inconclusive(Inconclusive::WithinErrorBound) => "within_error_bound",
        _ => "inconclusive",
    }
}

/// Completeness of one column, counts and shares of all observations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletenessReport {
    pub count: u64,
    pub missing: u64,
    pub nan: u64,
    pub infinite: u64,
    pub out_of_range: u64,
    pub unseen_category: u64,
    /// Share of observations that are present and finite (`None` without any).
    pub complete_rate: Option<f64>,
}

impl From<&Completeness> for CompletenessReport {
    fn from(c: &Completeness) -> Self {
        let infinite = c.pos_inf.saturating_add(c.neg_inf);
        let bad = c.missing.saturating_add(c.nan).saturating_add(infinite);
        CompletenessReport {
            count: c.count,
            missing: c.missing,
            nan: c.nan,
            infinite,
            out_of_range: c.out_of_range,
            unseen_category: c.unseen_category,
            complete_rate: (c.count > 0)
                .then(|| c.count.saturating_sub(bad) as f64 / c.count as f64),
        }
    }
}

/// One feature or output against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    pub name: String,
    /// `input` or `output`.
    pub role: String,
    /// Exact, on the reference's frozen bins (error bound 0).
    pub psi: Option<StatisticReport>,
    /// From the KLL sketches, sketch error in the bound (numeric columns
    /// whose windows carry sketches).
    pub ks: Option<StatisticReport>,
    pub completeness: CompletenessReport,
    /// PSI or KS says drift.
    pub drift: bool,
}

/// What a class's figures point to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suspect {
    Healthy,
    /// Incomplete inputs or many failed requests: look at the data path
    /// (sensors, preprocessing, the app) before the model.
    DataPipeline,
    /// Complete inputs from another distribution than training: the world
    /// moved; retrain or recalibrate.
    InputDrift,
    /// Inputs as in training, yet accuracy below the fleet's or outputs
    /// drifting: the model itself.
    ModelDecay,
    /// Too few requests to say.
    NotEnoughData,
}

/// The correlation view: one device class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRow {
    pub class: String,
    pub devices: usize,
    pub windows: usize,
    pub requests: u64,
    pub error_rate: Option<f64>,
    /// The lowest complete share over the inputs.
    pub complete_rate: Option<f64>,
    /// The largest input PSI, and the inputs that drift.
    pub max_psi: Option<f64>,
    pub drifted: Vec<String>,
    /// Outputs that drift.
    pub prediction_drift: Vec<String>,
    pub accuracy: Option<f64>,
    pub labels: u64,
    pub suspect: Suspect,
}

/// The fleet drift report (`outpost drift`, `GET /v1/drift/…`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub windows: usize,
    pub devices: usize,
    /// Windows not counted on this reference (another version), skipped.
    pub skipped: usize,
    /// Earliest window start and latest window end, Unix seconds.
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub accuracy: Option<f64>,
    pub labels: u64,
    pub inputs: Vec<ColumnDrift>,
    /// Prediction drift: the model's outputs against the reference outputs.
    pub predictions: Vec<ColumnDrift>,
    pub by_class: Vec<ClassRow>,
}

#[derive(Debug, Default)]
struct Group {
    total: Option<Profile>,
    devices: BTreeSet<String>,
    windows: usize,
}

impl Group {
    fn add(&mut self, device: &str, profile: &Profile) -> Result<(), MergeError> {
        match &mut self.total {
            Some(t) => t.merge(profile)?,
            None => self.total = Some(profile.clone()),
        }
        self.devices.insert(device.to_owned());
        self.windows += 1;
        Ok(())
    }
}

/// Merges `windows` (each counted once) and compares them with `reference`.
/// `classes` maps a device id to its class (target profile); devices not
/// in it are in class `unknown`.
///
/// # Errors
/// [`DriftError::Settings`] for bad settings; [`DriftError::Merge`] if
/// windows of this reference have inconsistent shapes.
pub fn fleet_drift(
    reference: &ReferenceProfile,
    windows: &ProfileSet,
    classes: &BTreeMap<String, String>,
    settings: &DriftSettings,
) -> Result<DriftReport, DriftError> {
    // Fails early on bad options (the statistics would fail per column).
    outpost_telemetry::psi(&[1, 1], &[1, 1], &settings.stats)
        .map_err(|e| DriftError::Settings(e.to_string()))?;
    let mut fleet = Group::default();
    let mut by_class: BTreeMap<String, Group> = BTreeMap::new();
    let (mut skipped, mut since, mut until) = (0usize, None::<u64>, None::<u64>);
    for (key, profile) in windows.windows() {
        if profile.check_against(reference).is_err() {
            skipped += 1;
            continue;
        }
        fleet.add(&key.device, profile)?;
        let class = classes
            .get(&key.device)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        by_class
            .entry(class)
            .or_default()
            .add(&key.device, profile)?;
        since = Some(since.map_or(key.start, |s| s.min(key.start)));
        let end = key.start.saturating_add(u64::from(key.length));
        until = Some(until.map_or(end, |u| u.max(end)));
    }
    let columns = |p: &Profile| -> Vec<ColumnDrift> {
        column_drift(reference, p, &[], &settings.stats)
            .into_iter()
            .zip(reference.columns().iter().zip(&p.columns))
            .map(|((name, psi, ks), (r, c))| {
                let is_drift =
                    |s: &Option<Statistic>| s.is_some_and(|s| s.verdict == Verdict::Drift);
                ColumnDrift {
                    name: name.to_owned(),
                    role: match r.role() {
                        Role::Output => "output",
                        _ => "input",
                    }
                    .into(),
                    drift: is_drift(&psi) || is_drift(&ks),
                    psi: psi.as_ref().map(StatisticReport::from),
                    ks: ks.as_ref().map(StatisticReport::from),
                    completeness: c.completeness().into(),
                }
            })
            .collect()
    };
    let (inputs, predictions): (Vec<_>, Vec<_>) = fleet
        .total
        .as_ref()
        .map(&columns)
        .unwrap_or_default()
        .into_iter()
        .partition(|c| c.role == "input");
    let rate = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    let (requests, errors) = fleet
        .total
        .as_ref()
        .map_or((0, 0), |p| (p.requests, p.errors));
    let fleet_accuracy = fleet.total.as_ref().and_then(|p| p.feedback.accuracy());
    let labels = fleet.total.as_ref().map_or(0, |p| p.feedback.total());
    let rows = by_class
        .into_iter()
        .filter_map(|(class, g)| {
            let p = g.total?;
            let cols = columns(&p);
            let ins: Vec<&ColumnDrift> = cols.iter().filter(|c| c.role == "input").collect();
            let complete_rate = ins
                .iter()
                .filter_map(|c| c.completeness.complete_rate)
                .min_by(f64::total_cmp);
            let max_psi = ins
                .iter()
                .filter_map(|c| c.psi.as_ref().and_then(|s| s.value))
                .max_by(f64::total_cmp);
            let drifted: Vec<String> = ins.iter().filter(|c| c.drift).map(|c| c.name.clone()).collect();
            let prediction_drift: Vec<String> = cols
                .iter()
                .filter(|c| c.role == "output" && c.drift)
                .map(|c| c.name.clone())
                .collect();
            let error_rate = rate(p.errors, p.requests);
            let accuracy = p.feedback.accuracy();
            let labels = p.feedback.total();
            let suspect = if p.requests < settings.stats.min_count {
                Suspect::NotEnoughData
            } else if complete_rate.is_some_and(|c| c < settings.min_complete)
                || error_rate.is_some_and(|e| e > settings.max_error_rate)
            {
                Suspect::DataPipeline
            } else if !drifted.is_empty() {
                Suspect::InputDrift
            } else if !prediction_drift.is_empty()
                || (labels >= settings.stats.min_count
                    && matches!((accuracy, fleet_accuracy), (Some(a), Some(f)) if a < f - settings.accuracy_gap))
            {
                Suspect::ModelDecay
            } else {
                Suspect::Healthy
            };
            Some(ClassRow {
                class,
                devices: g.devices.len(),
                windows: g.windows,
                requests: p.requests,
                error_rate,
                complete_rate,
                max_psi,
                drifted,
                prediction_drift,
                accuracy,
                labels,
                suspect,
            })
        })
        .collect();
    Ok(DriftReport {
        windows: fleet.windows,
        devices: fleet.devices.len(),
        skipped,
        since,
        until,
        requests,
        errors,
        error_rate: rate(errors, requests),
        accuracy: fleet_accuracy,
        labels,
        inputs,
        predictions,
        by_class: rows,
    })
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn stat(s: &Option<StatisticReport>) -> String {
    match s {
        Some(s) => format!(
            "{} ±{} p={}",
            num(s.value, 3),
            num(s.error_bound, 3),
            s.p_value.map_or_else(|| "-".into(), |p| format!("{p:.2e}"))
        ),
        None => "-".into(),
    }
}

/// The report as the CLI prints it: a summary line, a table of features
/// and outputs, and the per-class correlation table.
pub fn render_table(r: &DriftReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} windows from {} devices ({} skipped), {} requests, error rate {}, accuracy {} ({} labels)",
        r.windows,
        r.devices,
        r.skipped,
        r.requests,
        pct(r.error_rate),
        pct(r.accuracy),
        r.labels
    );
    let _ = writeln!(
        out,
        "\n{:<20} {:<6} {:<28} {:<28} {:>9} {:>8} {:>8} {:>6}",
        "COLUMN", "ROLE", "PSI ±BOUND", "KS ±BOUND", "COMPLETE", "MISSING", "NAN/INF", "DRIFT"
    );
    for c in r.inputs.iter().chain(&r.predictions) {
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:<28} {:<28} {:>9} {:>8} {:>8} {:>6}",
            c.name,
            c.role,
            stat(&c.psi),
            stat(&c.ks),
            pct(c.completeness.complete_rate),
            c.completeness.missing,
            c.completeness.nan.saturating_add(c.completeness.infinite),
            if c.drift { "yes" } else { "no" }
        );
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>7} {:>8} {:>9} {:>9} {:>8} {:>9}  {:<14} DRIFTING",
        "CLASS", "DEVICES", "REQUESTS", "ERRORS", "COMPLETE", "MAX PSI", "ACCURACY", "SUSPECT"
    );
    for row in &r.by_class {
        let suspect = match row.suspect {
            Suspect::Healthy => "healthy",
            Suspect::DataPipeline => "data pipeline",
            Suspect::InputDrift => "input drift",
            Suspect::ModelDecay => "model decay",
            Suspect::NotEnoughData => "not enough",
        };
        let drifting: Vec<&str> = row
            .drifted
            .iter()
            .chain(&row.prediction_drift)
            .map(String::as_str)
            .collect();
        let _ = writeln!(
            out,
            "{:<16} {:>7} {:>8} {:>9} {:>9} {:>8} {:>9}  {:<14} {}",
            row.class,
            row.devices,
            row.requests,
            pct(row.error_rate),
            pct(row.complete_rate),
            num(row.max_psi, 3),
            pct(row.accuracy),
            suspect,
            if drifting.is_empty() {
                "-".to_owned()
            } else {
                drifting.join(", ")
            }
        );
    }
    out
}
