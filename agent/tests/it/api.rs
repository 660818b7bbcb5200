//! The local API against a real verified model.

use std::time::Duration;

use serde_json::{Value, json};

use outpost_agent::config::Fallback;

use crate::common::*;

fn agent(w: &World, device: &str, extra: &str) -> Running {
    // No broker on port 1: the MQTT side retries in the background; the
    // local API serves regardless.
    Running::start(w.config(device, 1, extra))
}

#[test]
fn json_inference_answers_with_outputs_labels_and_a_request_id() {
    let w = World::new();
    let a = agent(&w, "api-json", "");
    let (rows, labels) = digits(20);
    let (status, body) = post_json(&a.url("/v1/models/digits/infer"), &request(&rows));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "digits");
    assert_eq!(body["version"], "1.0.0");
    assert_eq!(body["answered_by"], "active");
    let out = &body["outputs"][0];
    assert_eq!(out["shape"], json!([20, 10]));
    let predicted: Vec<String> = serde_json::from_value(out["labels"].clone()).unwrap();
    let correct = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, y)| **p == format!("digit-{y}"))
        .count();
    // The MLP scores 97.8 % on the test split.
    assert!(correct >= 18, "{correct}/20 correct: {predicted:?}");
    assert!(body["request_id"].as_str().unwrap().starts_with("r-"));
    assert_eq!(get(&a.url("/readyz")).0, 200);
    assert_eq!(get(&a.url("/healthz")).0, 200);
}

#[test]
fn npy_bodies_are_accepted_for_large_inputs() {
    let w = World::new();
    let a = agent(&w, "api-npy", "");
    let npy =
        std::fs::read(repo().join("runtime/tests/fixtures/digits/digits_test_x.npy")).unwrap();
    let mut r = http()
        .post(&a.url("/v1/models/digits/infer"))
        .header("Content-Type", "application/x-npy")
        .send(&npy[..])
        .unwrap();
    // 450 rows × 64 f32 is ~115 kB: over the 64 kB limit of this config.
    assert_eq!(r.status().as_u16(), 413);
    let _ = r.body_mut().read_to_string();
    // A smaller array goes through.
    let (rows, _) = digits(100);
    let t = outpost_runtime::Tensor::from_shape(&[100, 64], &rows.concat()).unwrap();
    let path = w.dir.path().join("x.npy");
    outpost_runtime::npy::write_npy(&path, &t).unwrap();
    let mut r = http()
        .post(&a.url("/v1/models/digits/infer"))
        .header("Content-Type", "application/x-npy")
        .send(&std::fs::read(&path).unwrap()[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["outputs"][0]["shape"], json!([100, 10]));
}

#[test]
fn bad_requests_get_typed_4xx_answers() {
    let w = World::new();
    let a = agent(&w, "api-bad", "");
    let url = a.url("/v1/models/digits/infer");
    // Wrong shape.
    let (s, b) = post_json(
        &url,
        &json!({"inputs": {"input": {"shape": [1, 63], "data": vec![0.5; 63]}}}),
    );
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["kind"], "bad_input");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("shape"),
        "{b}"
    );
    // Shape and data disagree.
    let (s, b) = post_json(
        &url,
        &json!({"inputs": {"input": {"shape": [1, 64], "data": [0.5]}}}),
    );
    assert_eq!(s, 400, "{b}");
    // Not a number.
    let (s, _) = post_json(
        &url,
        &json!({"inputs": {"input": {"shape": [1, 1], "data": ["x"]}}}),
    );
    assert_eq!(s, 400);
    // Unknown input name.
    let (s, b) = post_json(
        &url,
        &json!({"inputs": {"pixels": {"shape": [1, 64], "data": vec![0.5; 64]}}}),
    );
    assert_eq!(s, 400, "{b}");
    // Garbage JSON.
    let mut r = http()
        .post(&url)
        .header("Content-Type", "application/json")
        .send(&b"{not json"[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let _ = r.body_mut().read_to_string();
    // Unsupported content type.
    let mut r = http()
        .post(&url)
        .header("Content-Type", "text/plain")
        .send(&b"1,2,3"[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let _ = r.body_mut().read_to_string();
    // Unknown model.
    let (s, b) = post_json(&a.url("/v1/models/nope/infer"), &request(&digits(1).0));
    assert_eq!(
        (s, b["error"]["kind"].as_str()),
        (404, Some("unknown_model"))
    );
    // The model still serves.
    assert_eq!(post_json(&url, &request(&digits(1).0)).0, 200);
    let (_, metrics) = get(&a.url("/metrics"));
    assert!(
        metrics.contains(
            r#"outpost_agent_inference_requests_total{model="digits",outcome="bad_input"}"#
        ),
        "{metrics}"
    );
}

#[test]
fn out_of_distribution_inputs_are_rejected_or_answered_by_the_fallback() {
    let w = World::new();
    let mut rows = digits(1).0;
    rows[0][0] = 7.0; // the manifest's range is [0, 1]
    let a = agent(&w, "api-ood", "");
    let (s, b) = post_json(&a.url("/v1/models/digits/infer"), &request(&rows));
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["kind"], "ood");
    drop(a);
    let default = vec![0.1f32; 10];
    let a = agent(
        &w,
        "api-ood-default",
        &format!("fallback = \"default\"\ndefault_output = {default:?}"),
    );
    let (s, b) = post_json(&a.url("/v1/models/digits/infer"), &request(&rows));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["answered_by"], "default");
    let data: Vec<f32> = serde_json::from_value(b["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(data, default);
}

#[test]
fn async_requests_are_queued_and_fetched_by_id() {
    let w = World::new();
    let a = agent(&w, "api-async", "");
    let (s, b) = post_json(
        &a.url("/v1/models/digits/infer?mode=async"),
        &request(&digits(3).0),
    );
    assert_eq!(s, 202, "{b}");
    let id = b["request_id"].as_str().unwrap().to_owned();
    let body = wait_for("the async result", Duration::from_secs(30), || {
        let (s, body) = get(&a.url(&format!("/v1/requests/{id}")));
        (s == 200).then_some(body)
    });
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outputs"][0]["shape"], json!([3, 10]));
    assert_eq!(get(&a.url("/v1/requests/r-999999")).0, 404);
    assert_eq!(get(&a.url("/v1/requests/garbage")).0, 404);
}

#[test]
fn feedback_labels_predictions_once() {
    let w = World::new();
    let a = agent(&w, "api-feedback", "");
    let (rows, labels) = digits(10);
    let (_, b) = post_json(&a.url("/v1/models/digits/infer"), &request(&rows));
    let id = b["request_id"].clone();
    // Label names and class indices both work.
    let mut given: Vec<Value> = labels.iter().map(|y| json!(y)).collect();
    given[0] = json!(format!("digit-{}", labels[0]));
    let (s, fb) = post_json(
        &a.url("/v1/feedback"),
        &json!({"request_id": id, "labels": given}),
    );
    assert_eq!(s, 200, "{fb}");
    assert_eq!(fb["total"], 10);
    assert!(fb["correct"].as_u64().unwrap() >= 9, "{fb}");
    let (s, _) = post_json(
        &a.url("/v1/feedback"),
        &json!({"request_id": id, "labels": given}),
    );
    assert_eq!(s, 409);
    let (s, _) = post_json(
        &a.url("/v1/feedback"),
        &json!({"request_id": "r-424242", "labels": [1]}),
    );
    assert_eq!(s, 404);
    let (_, metrics) = get(&a.url("/metrics"));
    assert!(
        metrics.contains(
            r#"outpost_agent_feedback_total{model="digits",version="1.0.0",correct="true"}"#
        ),
        "{metrics}"
    );
}

#[test]
fn the_previous_model_answers_what_the_active_one_finds_out_of_range() {
    use outpost_agent::serve::{LoadContext, LoadedModel};
    let w = World::new();
    let a = agent(&w, "api-previous", "");
    // Version 2 accepts pixels up to 0.5 only, and falls back to version 1.
    let v2 = package_bytes_ranged("digits", "2.0.0", true, 0.5);
    let (pkg, rel) = (
        w.dir.path().join("digits-2.opk"),
        w.dir.path().join("digits-2.release"),
    );
    std::fs::write(&pkg, &v2).unwrap();
    w.write_release(&rel, &[w.target("digits", "2.0.0", &v2)], 30);
    let trust = a.state.trust.read().unwrap().clone();
    let ctx = LoadContext {
        state: &trust,
        verifier: &a.state.verifier,
        target: &a.state.config.target,
        now_unix: now(),
        breaker: &a.state.config.breaker,
    };
    let loaded = LoadedModel::load_verified(&pkg, &rel, &ctx, Fallback::Previous).unwrap();
    a.state.host.activate(loaded);
    // Pixels halved: all within [0, 0.5] but the one set below.
    let mut rows: Vec<Vec<f32>> = digits(1)
        .0
        .into_iter()
        .map(|r| r.iter().map(|v| v * 0.5).collect())
        .collect();
    rows[0][10] = 0.75; // in range for 1.0.0, not for 2.0.0
    let (s, b) = post_json(&a.url("/v1/models/digits/infer"), &request(&rows));
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["answered_by"].as_str(), b["version"].as_str()),
        (Some("previous"), Some("1.0.0"))
    );
    // In range for both: the active model answers.
    rows[0][10] = 0.25;
    let (_, b) = post_json(&a.url("/v1/models/digits/infer"), &request(&rows));
    assert_eq!(
        (b["answered_by"].as_str(), b["version"].as_str()),
        (Some("active"), Some("2.0.0"))
    );
    // Out of range for both: 422.
    rows[0][10] = 3.0;
    assert_eq!(
        post_json(&a.url("/v1/models/digits/infer"), &request(&rows)).0,
        422
    );
}
