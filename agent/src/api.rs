//! The local API (ARCHITECTURE §6), on 127.0.0.1 by default.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AgentState;
use crate::requests::{self, Record, Status};
use crate::serve::tensor::{self, JsonTensor};
use crate::serve::{AnsweredBy, InferError, InferOutcome};
use outpost_protocol::messages::Slot;

pub fn router(state: Arc<AgentState>) -> Router {
    let limit = state.config.api.max_body_bytes;
    Router::new()
        .route("/v1/models/{name}/infer", post(infer))
        .route("/v1/requests/{id}", get(request_status))
        .route("/v1/feedback", post(feedback))
        .route("/v1/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `{"error": {"kind": …, "message": …}}` with a status.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": {"kind": kind, "message": message.into()}})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    inputs: BTreeMap<String, JsonTensor>,
    #[serde(default)]
    segment: Option<String>,
}

#[derive(Deserialize)]
struct InferQuery {
    #[serde(default)]
    mode: Option<String>,
    /// Segment for binary bodies (JSON bodies carry it inside).
    #[serde(default)]
    segment: Option<String>,
}

type Inputs = Vec<(Option<String>, outpost_runtime::Tensor)>;

fn parse_inputs(
    state: &AgentState,
    model: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Inputs, Option<String>), Box<Response>> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let bad = |m: String| Box::new(error(StatusCode::BAD_REQUEST, "bad_input", m));
    if ctype.starts_with("application/json") {
        let req: JsonRequest = serde_json::from_slice(body)
            .map_err(|e| bad(format!("body is not an inference request: {e}")))?;
        let specs = state
            .host
            .slots_of(model)
            .map(|(m, _)| m.model.inputs().to_vec())
            .unwrap_or_default();
        let mut inputs = Vec::with_capacity(req.inputs.len());
        for (name, t) in &req.inputs {
            let spec = specs.iter().find(|s| &s.name == name);
            inputs.push((
                Some(name.clone()),
                tensor::from_json(name, t, spec).map_err(bad)?,
            ));
        }
        Ok((inputs, req.segment))
    } else if ctype.starts_with("application/x-npy")
        || ctype.starts_with("application/zip")
        || ctype.starts_with("application/octet-stream")
    {
        Ok((tensor::from_numpy(body).map_err(bad)?, None))
    } else {
        Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_input",
            format!(
                "content type {ctype} is not application/json, application/x-npy or application/zip"
            ),
        )))
    }
}

async fn infer(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
    Query(q): Query<InferQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if state.host.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no verified model is loaded yet",
        );
    }
    let (inputs, segment) = match parse_inputs(&state, &name, &headers, &body) {
        Ok(x) => x,
        Err(resp) => {
            state.metrics.request(&name, "bad_input");
            return *resp;
        }
    };
    let segment = segment.or(q.segment);
    let segment_for_profile = segment.clone();
    let record = Record {
        status: Status::Pending,
        model: name.clone(),
        version: String::new(),
        predictions: None,
        labels: vec![],
        segment,
        feedback: false,
    };
    let Some(id) = state
        .requests
        .lock()
        .ok()
        .and_then(|mut r| r.insert(record))
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many requests pending",
        );
    };
    // Kept for the profile (the engine consumes its inputs).
    let tensors: Vec<outpost_runtime::Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    let run = {
        let state = state.clone();
        async move {
            let st = state.clone();
            let name2 = name.clone();
            let started = std::time::Instant::now();
            let mut result = tokio::task::spawn_blocking(move || st.host.infer(&name2, inputs))
                .await
                .unwrap_or_else(|e| Err(InferError::Engine(format!("inference task: {e}"))));
            let shadow_job = result.as_mut().ok().and_then(|o| o.shadow.take());
            profile(
                &state,
                &name,
                &tensors,
                &result,
                started.elapsed(),
                segment_for_profile.clone(),
            );
            // The shadow run starts once the caller's answer is decided and
            // never delays it; it takes the request's tensors (profiled above).
            if let Some(job) = shadow_job {
                let st = state.clone();
                tokio::task::spawn_blocking(move || {
                    shadow(&st, job, &tensors, segment_for_profile)
                });
            }
            finish(&state, id, &name, result)
        }
    };
    if q.mode.as_deref() == Some("async") {
        tokio::spawn(run);
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({"request_id": requests::format_id(id)})),
        )
            .into_response();
    }
    let (status, body) = run.await;
    (status, axum::Json(body)).into_response()
}

/// Runs the candidate in shadow and profiles it into its own window
/// (candidate slot).
fn shadow(
    state: &AgentState,
    job: crate::serve::probation::ShadowJob,
    inputs: &[outpost_runtime::Tensor],
    segment: Option<String>,
) {
    let out = job.run();
    state.metrics.shadow_runs.inc();
    let obs = crate::telemetry::Observation {
        inputs,
        outputs: out.outputs.as_deref(),
        latency: out.latency,
        segment: segment.as_deref(),
        slot: Slot::Candidate,
    };
    let (dropped, _) = state
        .telemetry
        .record(crate::unix_now(), &out.candidate, &obs);
    state.note_dropped(dropped);
}

/// Profiles the request into its model's current window. Bad input and
/// unknown models are not profiled (their tensors may not fit the model).
fn profile(
    state: &AgentState,
    name: &str,
    inputs: &[outpost_runtime::Tensor],
    result: &Result<InferOutcome, InferError>,
    elapsed: std::time::Duration,
    segment: Option<String>,
) {
    let (model, outputs, latency, slot) = match result {
        Ok(out) => {
            let outs: Vec<_> = out.outputs.iter().map(|(_, t)| t.clone()).collect();
            let slot = if out.answered_by == AnsweredBy::Candidate {
                Slot::Candidate
            } else {
                Slot::Active
            };
            (out.model.clone(), Some(outs), out.latency, slot)
        }
        Err(
            InferError::OutOfDistribution(_)
            | InferError::Engine(_)
            | InferError::Unavailable { .. },
        ) => match state.host.candidate_of(name) {
            // The canary was the one asked.
            Some(c) if c.mode == crate::update::ProbationMode::Canary => {
                (c.model, None, elapsed, Slot::Candidate)
            }
            _ => match state.host.slots_of(name) {
                Some((m, _)) => (m, None, elapsed, Slot::Active),
                None => return,
            },
        },
        Err(_) => return,
    };
    let obs = crate::telemetry::Observation {
        inputs,
        outputs: outputs.as_deref(),
        latency,
        segment: segment.as_deref(),
        slot,
    };
    let (dropped, profiled) = state.telemetry.record(crate::unix_now(), &model, &obs);
    state.note_dropped(dropped);
    if !profiled {
        state
            .metrics
            .unprofiled
            .get_or_create(&crate::metrics::ModelLabels {
                model: name.to_owned(),
            })
            .inc();
    }
}

/// Records the outcome (metrics, request store) and builds the answer.
fn finish(
    state: &AgentState,
    id: u64,
    name: &str,
    result: Result<InferOutcome, InferError>,
) -> (StatusCode, Value) {
    let (status, body, outcome, predictions, version, labels) = match result {
        Ok(out) => {
            let outcome = match out.answered_by {
                AnsweredBy::Active => "ok",
                AnsweredBy::Previous => "fallback_previous",
                AnsweredBy::Default => "fallback_default",
                AnsweredBy::Candidate => "ok_canary",
            };
            state
                .metrics
                .latency
                .get_or_create(&crate::metrics::ModelLabels {
                    model: name.to_owned(),
                })
                .observe(out.latency.as_secs_f64());
            let specs = &out.model.model.info().outputs;
            let outputs: Vec<_> = out
                .outputs
                .iter()
                .map(|(n, t)| tensor::to_json(n, t, specs.iter().find(|s| &s.name == n)))
                .collect();
            let predictions = out
                .outputs
                .first()
                .and_then(|(_, t)| tensor::argmax_rows(t));
            let labels = specs.first().map(|s| s.labels.clone()).unwrap_or_default();
            let body = json!({
                "request_id": requests::format_id(id),
                "model": out.model.name,
                "version": out.model.version,
                "answered_by": out.answered_by,
                "latency_ms": out.latency.as_secs_f64() * 1e3,
                "outputs": outputs,
            });
            (
                StatusCode::OK,
                body,
                outcome,
                predictions,
                out.model.version.clone(),
                labels,
            )
        }
        Err(e) => {
            let (status, kind) = match &e {
                InferError::UnknownModel(_) => (StatusCode::NOT_FOUND, "unknown_model"),
                InferError::BadInput(_) => (StatusCode::BAD_REQUEST, "bad_input"),
                InferError::OutOfDistribution(_) => (StatusCode::UNPROCESSABLE_ENTITY, "ood"),
                InferError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                InferError::Engine(_) => (StatusCode::INTERNAL_SERVER_ERROR, "engine_error"),
            };
            let body = json!({"request_id": requests::format_id(id), "error": {"kind": kind, "message": e.to_string()}});
            (status, body, kind, None, String::new(), vec![])
        }
    };
    state.metrics.request(name, outcome);
    // Only this model's breaker can have moved.
    if let Some((m, _)) = state.host.slots_of(name) {
        state
            .metrics
            .breaker_open
            .get_or_create(&crate::metrics::ModelLabels {
                model: m.name.clone(),
            })
            .set(i64::from(m.breaker_open()));
    }
    if let Ok(mut reqs) = state.requests.lock()
        && let Some(r) = reqs.get_mut(id)
    {
        r.status = if status.is_success() {
            Status::Done(body.clone())
        } else {
            Status::Failed {
                status: status.as_u16(),
                body: body.clone(),
            }
        };
        r.predictions = predictions;
        r.version = version;
        r.labels = labels;
    }
    (status, body)
}

async fn request_status(State(state): State<Arc<AgentState>>, Path(id): Path<String>) -> Response {
    let found = requests::parse_id(&id)
        .and_then(|n| state.requests.lock().ok()?.get(n).map(|r| r.status.clone()));
    match found {
        None => error(
            StatusCode::NOT_FOUND,
            "unknown_request",
            format!("no request {id:?} (unknown, or evicted from the recent requests)"),
        ),
        Some(Status::Pending) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"request_id": id, "status": "pending"})),
        )
            .into_response(),
        Some(Status::Done(body)) => (StatusCode::OK, axum::Json(body)).into_response(),
        Some(Status::Failed { status, body }) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(body),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    request_id: String,
    /// One label per row of the request: class indices or label names.
    labels: Vec<Value>,
    #[serde(default)]
    segment: Option<String>,
}

async fn feedback(State(state): State<Arc<AgentState>>, body: Bytes) -> Response {
    let fb: Feedback = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_input",
                format!("body is not feedback: {e}"),
            );
        }
    };
    let Some(id) = requests::parse_id(&fb.request_id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_input",
            format!("{:?} is not a request id", fb.request_id),
        );
    };
    let mut reqs = match state.requests.lock() {
        Ok(r) => r,
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "lock poisoned",
            );
        }
    };
    let Some(rec) = reqs.get_mut(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_request",
            format!("no request {:?} (unknown, or evicted)", fb.request_id),
        );
    };
    if rec.feedback {
        return error(
            StatusCode::CONFLICT,
            "duplicate_feedback",
            format!("request {:?} already has feedback", fb.request_id),
        );
    }
    let Some(pred) = rec.predictions.clone() else {
        return error(
            StatusCode::CONFLICT,
            "no_prediction",
            format!(
                "request {:?} has no class prediction to label",
                fb.request_id
            ),
        );
    };
    if pred.len() != fb.labels.len() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_input",
            format!(
                "{} label(s) for {} prediction(s)",
                fb.labels.len(),
                pred.len()
            ),
        );
    }
    let mut correct = 0usize;
    let mut pairs = Vec::with_capacity(pred.len());
    for (i, (p, l)) in pred.iter().zip(&fb.labels).enumerate() {
        let truth = match l {
            Value::Number(n) => n.as_u64().map(|v| v as usize),
            Value::String(s) => rec.labels.iter().position(|x| x == s),
            _ => None,
        };
        let Some(truth) = truth else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_input",
                format!("labels[{i}] = {l} is not a class index or a known label"),
            );
        };
        correct += usize::from(truth == *p);
        pairs.push((*p, truth));
    }
    rec.feedback = true;
    if fb.segment.is_some() {
        rec.segment = fb.segment;
    }
    let (model, version, segment) = (rec.model.clone(), rec.version.clone(), rec.segment.clone());
    drop(reqs);
    // Into the model's current window (accuracy and confusion per segment),
    // if that version still serves.
    let candidate = state
        .host
        .candidate_of(&model)
        .map(|c| (c.model, Slot::Candidate));
    let loaded = state
        .host
        .slots_of(&model)
        .into_iter()
        .flat_map(|(a, p)| std::iter::once(a).chain(p))
        .map(|m| (m, Slot::Active))
        .chain(candidate)
        .find(|(m, _)| m.version == version);
    if let Some((m, slot)) = loaded {
        let (dropped, _) =
            state
                .telemetry
                .feedback(crate::unix_now(), &m, slot, &pairs, segment.as_deref());
        state.note_dropped(dropped);
    }
    for (flag, n) in [("true", correct), ("false", pred.len() - correct)] {
        state
            .metrics
            .feedback
            .get_or_create(&crate::metrics::FeedbackLabels {
                model: model.clone(),
                version: version.clone(),
                correct: flag.into(),
            })
            .inc_by(n as u64);
    }
    axum::Json(json!({"request_id": fb.request_id, "correct": correct, "total": pred.len()}))
        .into_response()
}

async fn readyz(State(state): State<Arc<AgentState>>) -> Response {
    if state.host.is_empty() {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no verified model is loaded",
        )
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(state): State<Arc<AgentState>>) -> Response {
    state.metrics.set_engines(&state.host.engines());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn status(State(state): State<Arc<AgentState>>) -> Response {
    axum::Json(state.status_json()).into_response()
}
