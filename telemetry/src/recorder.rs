//! Recording requests into a window (device side).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::bins::ConfidenceHistogram;
use crate::column::{CategoricalProfile, ColumnProfile, NumericProfile};
use crate::confusion::{Confusion, Feedback};
use crate::error::{KllError, RecordError};
use crate::kll::{DEFAULT_KLL_K, Kll};
use crate::latency::{DEFAULT_LATENCY_ACCURACY_PPM, LatencyHistogram};
use crate::profile::{Profile, SegmentProfile, WindowKey, WindowProfile};
use crate::reference::{ReferenceKind, ReferenceProfile, Role};

/// One value of a request, for one column.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Value<'a> {
    /// A number (NaN and ±inf are counted as such).
    Number(f64),
    /// A category. Numbers given to a categorical column are read as their
    /// decimal text (`3.0` → `"3"`), like the reference loaders do.
    Category(&'a str),
    /// Not supplied.
    Missing,
}

/// One request as the telemetry sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// One value per input column of the reference, in reference order.
    pub inputs: &'a [Value<'a>],
    /// One value per output column; may be empty when `ok` is false.
    pub outputs: &'a [Value<'a>],
    /// Time to serve the request.
    pub latency: Duration,
    /// Whether the request succeeded.
    pub ok: bool,
    /// Prediction confidence in `[0, 1]`, when the model gives one.
    pub confidence: Option<f64>,
    /// Caller-supplied segment key.
    pub segment: Option<&'a str>,
}

/// What a window records besides the exact counters.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileOptions {
    /// KLL `k` for numeric columns; `None` records no sketches (bins only).
    /// See [`crate::kll_k_for_rank_error`] for sizing.
    pub kll_k: Option<u16>,
    /// Most distinct unseen category names kept per column and window.
    pub category_cap: usize,
    /// Most distinct segments per window; later ones go to `segment_overflow`.
    pub segment_budget: usize,
    /// Relative accuracy of the latency histogram, parts per million.
    pub latency_accuracy_ppm: u32,
    /// Classes counted individually in feedback confusion matrices: class
    /// indices at or above it (predicted or actual) go to the "other"
    /// row/column, [`Confusion::OTHER`], so a matrix has at most
    /// `(max_classes + 1)²` cells however many classes a model has.
    pub max_classes: usize,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self {
            kll_k: Some(DEFAULT_KLL_K),
            category_cap: 32,
            segment_budget: 16,
            latency_accuracy_ppm: DEFAULT_LATENCY_ACCURACY_PPM,
            max_classes: 64,
        }
    }
}

/// Records requests into one window. Sans-IO: no clock, the caller says
/// which window it is and when to [`Recorder::finish`].
#[derive(Debug)]
pub struct Recorder {
    reference: Arc<ReferenceProfile>,
    options: ProfileOptions,
    vocabularies: Vec<HashMap<String, usize>>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    window: WindowProfile,
}

impl Recorder {
    /// Starts an empty window.
    ///
    /// # Errors
    /// [`KllError::InvalidK`] when `options.kll_k` is below 8.
    pub fn new(
        reference: Arc<ReferenceProfile>,
        key: WindowKey,
        options: ProfileOptions,
    ) -> Result<Self, KllError> {
        let columns = reference
            .columns()
            .iter()
            .map(|column| match column.kind() {
                ReferenceKind::Numeric(n) => {
                    let kll = options.kll_k.map(Kll::new).transpose()?;
                    Ok(ColumnProfile::Numeric(NumericProfile::new(n.edges(), kll)))
                }
                ReferenceKind::Categorical(c) => Ok(ColumnProfile::Categorical(
                    CategoricalProfile::new(c.vocabulary().len()),
                )),
            })
            .collect::<Result<Vec<_>, KllError>>()?;
        let by_role = |role| {
            (0..reference.columns().len())
                .filter(|&i| reference.columns()[i].role() == role)
                .collect::<Vec<_>>()
        };
        let profile = Profile {
            reference: reference.fingerprint(),
            requests: 0,
            errors: 0,
            latency: LatencyHistogram::with_accuracy_ppm(options.latency_accuracy_ppm),
            confidence: ConfidenceHistogram::default(),
            feedback: Confusion::new(),
            columns,
            segments: BTreeMap::new(),
            segment_overflow: SegmentProfile::default(),
        };
        Ok(Self {
            vocabularies: reference.vocabulary_indexes(),
            inputs: by_role(Role::Input),
            outputs: by_role(Role::Output),
            window: WindowProfile { key, profile },
            reference,
            options,
        })
    }

    /// Records one request. Validates everything first: on error nothing is
    /// recorded.
    ///
    /// # Errors
    /// [`RecordError::ColumnCount`] when the inputs (or, for a successful
    /// request, the outputs) do not match the reference's columns;
    /// [`RecordError::KindMismatch`] for a category in a numeric column.
    pub fn record(&mut self, request: &Request<'_>) -> Result<(), RecordError> {
        // A failed request may come without outputs; a successful one must
        // have them all.
        let outputs = request.outputs;
        self.check("inputs", &self.inputs, request.inputs)?;
        if request.ok || !outputs.is_empty() {
            self.check("outputs", &self.outputs, outputs)?;
        }
        let columns = self.inputs.iter().zip(request.inputs);
        let columns = columns.chain(self.outputs.iter().zip(outputs));
        let profile = &mut self.window.profile;
        let mut segment = segment_of(
            &mut profile.segments,
            &mut profile.segment_overflow,
            request.segment,
            self.options.segment_budget,
        );
        if let Some(segment) = segment.as_deref_mut().filter(|s| s.bins.is_empty()) {
            segment.bins = profile
                .columns
                .iter()
                .map(|c| vec![0; c.bins().len()])
                .collect();
        }
        for (&index, value) in columns {
            let (Some(column), Some(reference), Some(vocabulary)) = (
                profile.columns.get_mut(index),
                self.reference.columns().get(index),
                self.vocabularies.get(index),
            ) else {
                continue;
            };
            let cap = self.options.category_cap;
            let bin = record_value(column, reference.kind(), vocabulary, *value, cap);
            let count = segment
                .as_deref_mut()
                .zip(bin)
                .and_then(|(segment, bin)| segment.bins.get_mut(index)?.get_mut(bin));
            if let Some(count) = count {
                *count = count.saturating_add(1);
            }
        }
        profile.requests = profile.requests.saturating_add(1);
        profile.latency.record(request.latency);
        if !request.ok {
            profile.errors = profile.errors.saturating_add(1);
        }
        if let (Some(confidence), true) = (request.confidence, request.ok) {
            profile.confidence.record(confidence);
        }
        if let Some(segment) = segment {
            segment.requests = segment.requests.saturating_add(1);
            if !request.ok {
                segment.errors = segment.errors.saturating_add(1);
            } else if let Some(confidence) = request.confidence {
                segment.confidence.record(confidence);
            }
        }
        Ok(())
    }

    /// Records one ground-truth label: into the window's confusion matrix
    /// and, with a segment, into that segment's (the same segment budget as
    /// [`Recorder::record`]: a new segment over budget goes to
    /// `segment_overflow`). Class indices at or above
    /// [`ProfileOptions::max_classes`] are counted as "other".
    ///
    /// Labels arrive late and belong to the window in which they arrive, so
    /// feedback in a window without requests (or for a segment that has no
    /// requests in this window) is counted, not refused; a segment created
    /// by feedback alone keeps empty `bins`.
    ///
    /// # Errors
    /// None today: every label fits once capped. The `Result` keeps the
    /// signature of [`Recorder::record`] so that a future check (e.g. a
    /// class count declared by the model) is not a breaking change.
    pub fn feedback(&mut self, fb: &Feedback<'_>) -> Result<(), RecordError> {
        let cap = self.options.max_classes;
        let (predicted, actual) = (
            Confusion::cap(fb.predicted, cap),
            Confusion::cap(fb.actual, cap),
        );
        let correct = fb.predicted == fb.actual;
        let profile = &mut self.window.profile;
        profile.feedback.record(predicted, actual, correct);
        let segment = segment_of(
            &mut profile.segments,
            &mut profile.segment_overflow,
            fb.segment,
            self.options.segment_budget,
        );
        if let Some(segment) = segment {
            segment.feedback.record(predicted, actual, correct);
        }
        Ok(())
    }

    fn check(
        &self,
        role: &'static str,
        columns: &[usize],
        values: &[Value<'_>],
    ) -> Result<(), RecordError> {
        if columns.len() != values.len() {
            return Err(RecordError::ColumnCount {
                role,
                expected: columns.len(),
                found: values.len(),
            });
        }
        for (&index, value) in columns.iter().zip(values) {
            let column = &self.reference.columns()[index];
            if matches!(
                (column.kind(), value),
                (ReferenceKind::Numeric(_), Value::Category(_))
            ) {
                return Err(RecordError::KindMismatch {
                    column: column.name().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The window so far.
    pub fn window(&self) -> &WindowProfile {
        &self.window
    }

    /// Ends the window and hands it over for sending.
    pub fn finish(self) -> WindowProfile {
        self.window
    }
}

/// The segment counters a segment name goes to: its own while it exists or
/// the budget allows a new one, otherwise the overflow.
fn segment_of<'a>(
    segments: &'a mut BTreeMap<String, SegmentProfile>,
    overflow: &'a mut SegmentProfile,
    name: Option<&str>,
    budget: usize,
) -> Option<&'a mut SegmentProfile> {
    let name = name?;
    if segments.contains_key(name) {
        segments.get_mut(name)
    } else if segments.len() >= budget {
        Some(overflow)
    } else {
        Some(segments.entry(name.to_owned()).or_default())
    }
}

/// Records one value; returns the drift bin it landed in, if any (for segments).
fn record_value(
    column: &mut ColumnProfile,
    reference: &ReferenceKind,
    vocabulary: &HashMap<String, usize>,
    value: Value<'_>,
    cap: usize,
) -> Option<usize> {
    match (column, reference) {
        (ColumnProfile::Numeric(p), ReferenceKind::Numeric(r)) => {
            let number = match value {
                Value::Number(v) => Some(v),
                _ => None,
            };
            p.record(number, r.edges(), r.valid_range());
            number
                .filter(|v| v.is_finite())
                .map(|v| r.edges().locate(v))
        }
        (ColumnProfile::Categorical(p), ReferenceKind::Categorical(_)) => {
            let text;
            let category = match value {
                Value::Category(c) => Some(c),
                // A NaN category code has no text: it counts as missing.
                Value::Number(v) if v.is_nan() => None,
                Value::Number(v) => {
                    text = v.to_string();
                    Some(text.as_str())
                }
                Value::Missing => None,
            };
            p.record(category, vocabulary, cap);
            let other = p.vocabulary.len();
            category.map(|c| vocabulary.get(c).copied().unwrap_or(other))
        }
        _ => None,
    }
}
