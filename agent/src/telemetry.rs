//! Profiling every inference into time windows (outpost-telemetry) and
//! sealing them into the outbox, from which the MQTT side publishes them.
//!
//! Columns: the reference's input columns are the features of the model's
//! inputs, row by row (each input's trailing dimensions flattened, inputs in
//! order); its output columns are the first output's row, or, for a single
//! output column, the row's arg-max class. A model whose package has no
//! `reference.bin`, or whose reference does not fit its tensors, is served
//! unprofiled and counted in `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use outpost_protocol::messages::{DeviceMessage, Encoding, ModelRef, Slot, TelemetryWindow};
use outpost_runtime::Tensor;
use outpost_telemetry::{
    Feedback, ProfileOptions, Recorder, ReferenceProfile, Request, Value, WindowKey,
};

use crate::serve::LoadedModel;
use crate::serve::tensor::argmax;
use crate::store::{Dropped, Outbox};

/// Per-(model, version) recorders of the current window.
#[derive(Debug)]
pub struct Telemetry {
    device: String,
    window_secs: u32,
    budget: u64,
    encoding: Encoding,
    outbox: Outbox,
    options: ProfileOptions,
    open: Mutex<HashMap<(String, String), Open>>,
    /// Wakes the MQTT side when a window is sealed.
    pub sealed: tokio::sync::Notify,
    sealed_total: prometheus_client::metrics::counter::Counter,
}

#[derive(Debug)]
struct Open {
    recorder: Recorder,
    model: ModelRef,
    slot: Slot,
}

/// What one request looked like, for the profile.
#[derive(Debug)]
pub struct Observation<'a> {
    pub inputs: &'a [Tensor],
    /// `None` when the request failed.
    pub outputs: Option<&'a [Tensor]>,
    pub latency: Duration,
    pub segment: Option<&'a str>,
    /// Which slot answered: `Candidate` for a canary or a shadow run (its
    /// windows are tagged so the fleet compares them with the active's).
    pub slot: Slot,
}

impl Telemetry {
    pub fn new(
        device: String,
        window_secs: u32,
        budget: u64,
        encoding: Encoding,
        outbox: Outbox,
        sealed_total: prometheus_client::metrics::counter::Counter,
        kll_k: Option<u16>,
    ) -> Self {
        Telemetry {
            options: ProfileOptions {
                kll_k,
                ..ProfileOptions::default()
            },
            sealed_total,
            device,
            window_secs: window_secs.max(1),
            budget,
            encoding,
            outbox,
            open: Mutex::new(HashMap::new()),
            sealed: tokio::sync::Notify::new(),
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn window_start(&self, now: u64) -> u64 {
        now - now % u64::from(self.window_secs)
    }

    /// Records one request into `model`'s current window (sealing the
    /// previous window first if `now` is past it). Returns what the outbox
    /// dropped to make room, and whether the request could be profiled.
    pub fn record(&self, now: u64, model: &LoadedModel, obs: &Observation<'_>) -> (Dropped, bool) {
        self.with_recorder(now, model, obs.slot, |recorder, reference| {
            profile_rows(recorder, reference, obs)
        })
    }

    /// Counts ground-truth labels (one `(predicted, actual)` per row) into
    /// `model`'s current window: labels belong to the window in which they
    /// arrive (outpost-telemetry's convention for late labels).
    pub fn feedback(
        &self,
        now: u64,
        model: &LoadedModel,
        slot: Slot,
        pairs: &[(usize, usize)],
        segment: Option<&str>,
    ) -> (Dropped, bool) {
        self.with_recorder(now, model, slot, |recorder, _| {
            pairs.iter().all(|&(predicted, actual)| {
                recorder
                    .feedback(&Feedback {
                        predicted,
                        actual,
                        segment,
                    })
                    .is_ok()
            })
        })
    }

    /// Runs `f` on `model`'s recorder for the window of `now`, opening it
    /// (and sealing the previous one) as needed.
    fn with_recorder(
        &self,
        now: u64,
        model: &LoadedModel,
        slot: Slot,
        f: impl FnOnce(&mut Recorder, &ReferenceProfile) -> bool,
    ) -> (Dropped, bool) {
        let Some(reference) = model.reference.clone() else {
            return (Dropped::default(), false);
        };
        let mut dropped = Dropped::default();
        let start = self.window_start(now);
        let Ok(mut open) = self.open.lock() else {
            return (dropped, false);
        };
        let id = (model.name.clone(), model.version.clone());
        if open
            .get(&id)
            .is_some_and(|o| o.recorder.window().key.start != start)
            && let Some(old) = open.remove(&id)
        {
            dropped = self.seal(old);
        }
        if !open.contains_key(&id) {
            let key = WindowKey {
                device: self.device.clone(),
                model: model.name.clone(),
                version: model.version.clone(),
                start,
                length: self.window_secs,
            };
            let Ok(recorder) = Recorder::new(reference.clone(), key, self.options.clone()) else {
                return (dropped, false);
            };
            open.insert(
                id.clone(),
                Open {
                    recorder,
                    model: ModelRef {
                        name: model.name.clone(),
                        version: model.version.clone(),
                        sha256: model.sha256,
                    },
                    slot,
                },
            );
        }
        let Some(o) = open.get_mut(&id) else {
            return (dropped, false);
        };
        let ok = f(&mut o.recorder, &reference);
        (dropped, ok)
    }

    /// Deletes `model`'s open windows and its stored, unsent ones (the
    /// model was retired); returns how many stored windows went.
    pub fn forget_model(&self, model: &str) -> usize {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|(name, _), _| name != model);
        }
        self.outbox.remove_model(model)
    }

    /// Seals every window that ended at or before `now`.
    pub fn seal_due(&self, now: u64) -> Dropped {
        let mut total = Dropped::default();
        let Ok(mut open) = self.open.lock() else {
            return total;
        };
        let due: Vec<_> = open
            .iter()
            .filter(|(_, o)| {
                let k = &o.recorder.window().key;
                k.start + u64::from(k.length) <= now
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(o) = open.remove(&id) {
                let d = self.seal(o);
                total.windows += d.windows;
                total.bytes += d.bytes;
            }
        }
        total
    }

    fn seal(&self, o: Open) -> Dropped {
        let window = o.recorder.finish();
        let key = Outbox::key(window.key.start, &window.key.model, &window.key.version);
        let msg = DeviceMessage::Telemetry(TelemetryWindow {
            model: o.model,
            slot: o.slot,
            window_start: window.key.start,
            window_secs: window.key.length,
            profile: window.to_bytes(),
        });
        let Ok(payload) = msg.encode(self.encoding) else {
            return Dropped::default();
        };
        let dropped = match self.outbox.push(&key, &payload, self.budget) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot store a telemetry window");
                Dropped {
                    windows: 1,
                    bytes: payload.len() as u64,
                }
            }
        };
        self.sealed_total.inc();
        self.sealed.notify_one();
        dropped
    }
}

/// Flattens each input to rows of f64 features.
fn rows_of(inputs: &[Tensor]) -> Option<(usize, Vec<Vec<f64>>)> {
    let mut rows: Option<usize> = None;
    let mut per_input = Vec::with_capacity(inputs.len());
    for t in inputs {
        let n = *t.shape().first()?;
        if rows.is_some_and(|r| r != n) {
            return None;
        }
        rows = Some(n);
        let f = t.cast_to::<f64>().ok()?;
        let v: Vec<f64> = f
            .to_plain_array_view::<f64>()
            .ok()?
            .iter()
            .copied()
            .collect();
        per_input.push(v);
    }
    let n = rows?;
    Some((n, per_input))
}

fn profile_rows(
    recorder: &mut Recorder,
    reference: &ReferenceProfile,
    obs: &Observation<'_>,
) -> bool {
    use outpost_telemetry::Role;
    let n_in = reference
        .columns()
        .iter()
        .filter(|c| c.role() == Role::Input)
        .count();
    let n_out = reference.columns().len() - n_in;
    let Some((rows, inputs)) = rows_of(obs.inputs) else {
        return false;
    };
    if rows == 0 {
        return true;
    }
    let widths: Vec<usize> = inputs.iter().map(|v| v.len() / rows).collect();
    if widths.iter().sum::<usize>() != n_in {
        return false;
    }
    let out_rows = obs.outputs.and_then(|o| rows_of(&o[..o.len().min(1)]));
    let per_request = obs.latency / u32::try_from(rows).unwrap_or(u32::MAX);
    let mut values: Vec<Value<'_>> = Vec::with_capacity(n_in);
    let mut outs: Vec<Value<'_>> = Vec::with_capacity(n_out);
    for r in 0..rows {
        values.clear();
        for (v, w) in inputs.iter().zip(&widths) {
            values.extend(v[r * w..(r + 1) * w].iter().map(|&x| Value::Number(x)));
        }
        outs.clear();
        let mut confidence = None;
        if let Some((_, o)) = &out_rows
            && let Some(first) = o.first()
        {
            let w = first.len() / rows;
            let row = &first[r * w..(r + 1) * w];
            confidence = row_confidence(row);
            if w == n_out {
                outs.extend(row.iter().map(|&x| Value::Number(x)));
            } else if n_out == 1 {
                outs.push(Value::Number(argmax(row) as f64));
            } else {
                return false;
            }
        }
        let ok = obs.outputs.is_some();
        let req = Request {
            inputs: &values,
            outputs: if ok { &outs } else { &[] },
            latency: per_request,
            ok,
            confidence,
            segment: obs.segment,
        };
        if recorder.record(&req).is_err() {
            return false;
        }
    }
    true
}

/// The top class probability: the row's max if it already is a
/// probability vector, else the max of its softmax.
fn row_confidence(row: &[f64]) -> Option<f64> {
    if row.is_empty() || row.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let sum: f64 = row.iter().sum();
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if row.iter().all(|v| (0.0..=1.0).contains(v)) && (sum - 1.0).abs() < 1e-3 {
        return Some(max);
    }
    let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
    Some(1.0 / z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_is_the_top_probability() {
        assert_eq!(row_confidence(&[0.2, 0.7, 0.1]), Some(0.7));
        // Logits: softmax max.
        let c = row_confidence(&[0.0, 0.0]).unwrap_or_default();
        assert!((c - 0.5).abs() < 1e-12);
        assert_eq!(row_confidence(&[f64::NAN]), None);
        assert_eq!(argmax(&[0.1, 0.9, 0.3]), 1);
    }
}
