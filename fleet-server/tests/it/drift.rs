//! Fleet drift through a real server: telemetry windows recorded with the
//! telemetry `Recorder` against the pushed version's own reference profile
//! and published over MQTT; `outpost drift` by group and time range; a
//! feature shifted on one device class drifts, the others do not; a drift
//! rule fires for it once the version is live.

use std::collections::BTreeSet;

use outpost_protocol::bytes::Sha256;
use outpost_protocol::messages::{DeviceMessage, ModelRef, Slot, TelemetryWindow};
use outpost_telemetry::Role;
use serde_json::Value as Json;

use crate::alerts::birth;
use crate::support::*;

fn report(server: &Server, token: &str, args: &[&str]) -> Json {
    let mut all = vec!["drift", "digits@1.0.0"];
    all.extend_from_slice(args);
    server.json(token, &all, 0)
}

fn column<'a>(report: &'a Json, name: &str) -> &'a Json {
    report["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no input {name} in {report}"))
}

fn drifting(report: &Json) -> Vec<String> {
    report["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["drift"] == true)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn fleet_drift_by_group_and_time_and_a_drift_alert_on_the_shifted_feature() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("alerts.toml");
    std::fs::write(
        &file,
        "[[sink]]\nname = \"console\"\nkind = \"log\"\n\
         [[rule]]\nname = \"digits-drift\"\nsink = \"console\"\n\
         condition = { kind = \"drift\", model = \"digits\", psi = 0.1 }\n",
    )
    .unwrap();
    let server = Server::start(d, &["--alerts", s(&file), "--alerts-every", "1"]);
    let viewer = server.token("vera", "viewer");
    let op = server.token("otto", "operator");
    let (ann, bob) = (
        server.token("ann", "approver"),
        server.token("bob", "approver"),
    );
    let opk = pack(d, "mlp_fp32.onnx", "1.0.0", "low");
    server.json(&op, &["model", "push", s(&opk)], 0);
    let bytes = std::fs::read(&opk).unwrap();
    let reference = reference_of(&opk);
    let inputs: Vec<String> = reference
        .columns()
        .iter()
        .filter(|c| c.role() == Role::Input)
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(inputs.len(), 64);
    // The pixel that varies most in the data: zeroing it moves it most.
    let (rows, _) = digits();
    let var = |i: usize| {
        let mean = rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64;
        rows.iter().map(|r| (r[i] - mean).powi(2)).sum::<f64>()
    };
    let shifted = (0..64).max_by(|&a, &b| var(a).total_cmp(&var(b))).unwrap();
    let feature = inputs[shifted].clone();

    // Nothing yet: an empty report; unknown versions and bad input refused.
    let v = report(&server, &viewer, &[]);
    assert_eq!(
        (v["windows"].as_u64(), v["requests"].as_u64()),
        (Some(0), Some(0))
    );
    server.json(&viewer, &["drift", "digits@9.9.9"], 4);
    server.json(&viewer, &["drift", "digits"], 2);
    let v = server.json(
        &viewer,
        &["drift", "digits@1.0.0", "--since", "yesterday"],
        2,
    );
    assert!(v["error"].as_str().unwrap().contains("duration"), "{v}");

    // cam-1 (rpi5, group calm) sees the training distribution; cam-2
    // (jetson, group odd) reads 0 on one pixel.
    let sha = Sha256::of(&bytes);
    let mqtt = Mqtt::connect(server.mqtt_port(), "cams");
    let now = outpost_fleet::clock::now_unix();
    let starts = [now - 2 * WINDOW, now - WINDOW];
    for (id, target, group, zeroed) in [
        ("cam-1", "rpi5", "calm", None),
        ("cam-2", "jetson", "odd", Some(shifted)),
    ] {
        mqtt.send(id, birth(1, target));
        for start in starts {
            mqtt.send(
                id,
                DeviceMessage::Telemetry(TelemetryWindow {
                    model: ModelRef {
                        name: "digits".into(),
                        version: "1.0.0".into(),
                        sha256: sha,
                    },
                    slot: Slot::Active,
                    window_start: start,
                    window_secs: WINDOW as u32,
                    profile: window(&reference, id, start, zeroed),
                }),
            );
        }
        wait_for(&format!("{id} in the inventory"), T, || {
            let out = server.cli(&viewer, &["devices", "show", id]);
            out.status.success().then_some(())
        });
        server.json(&op, &["devices", "label", id, "--group", group], 0);
    }
    let all = wait_for("four windows", T, || {
        let v = report(&server, &viewer, &[]);
        (v["windows"] == 4).then_some(v)
    });
    let requests = rows.len() as u64;
    assert_eq!(all["devices"], 2);
    assert_eq!(all["requests"].as_u64(), Some(4 * requests));
    assert_eq!(all["inputs"].as_array().unwrap().len(), 64);
    let classes: BTreeSet<&str> = all["by_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert_eq!(classes, BTreeSet::from(["jetson", "rpi5"]));

    // The calm group: every feature as in training.
    let calm = report(&server, &viewer, &["--group", "calm"]);
    assert_eq!(
        (calm["windows"].as_u64(), calm["devices"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        column(&calm, &feature)["completeness"]["count"].as_u64(),
        Some(2 * requests)
    );
    assert!(drifting(&calm).is_empty(), "{:?}", drifting(&calm));

    // The odd group: the zeroed pixel, and only it, drifts.
    let odd = report(&server, &viewer, &["--group", "odd"]);
    assert_eq!(drifting(&odd), std::slice::from_ref(&feature));
    let psi = column(&odd, &feature)["psi"]["value"].as_f64().unwrap();
    assert!(psi > 0.1, "PSI {psi}");
    assert_eq!(odd["by_class"][0]["class"], "jetson");
    assert_eq!(odd["by_class"][0]["suspect"], "input_drift");

    // Time ranges: `1h` ago holds them all; the later window alone; none
    // before the first.
    assert_eq!(report(&server, &viewer, &["--since", "1h"])["windows"], 4);
    let later = starts[1].to_string();
    assert_eq!(report(&server, &viewer, &["--since", &later])["windows"], 2);
    let first = starts[0].to_string();
    assert_eq!(report(&server, &viewer, &["--until", &first])["windows"], 0);

    // The table names the drifting feature.
    let out = server.cli(&viewer, &["drift", "digits@1.0.0", "--group", "odd"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{feature} ")))
        .unwrap_or_else(|| panic!("no row for {feature} in\n{text}"));
    assert!(line.trim_end().ends_with("yes"), "{line}");
    assert!(text.contains("input drift"), "{text}");

    // Once the version is live, the drift rule fires for that feature only.
    let v = server.json(&viewer, &["alerts", "list"], 0);
    assert_eq!(
        v["alerts"],
        serde_json::json!([]),
        "a draft is not watched: {v}"
    );
    server.json(&ann, &["model", "approve", "digits", "1.0.0"], 0);
    server.json(&bob, &["model", "approve", "digits", "1.0.0"], 0);
    server.json(
        &op,
        &["model", "promote", "digits", "1.0.0", "--to", "canary"],
        0,
    );
    let firing = wait_for("a drift alert", T, || {
        let v = server.json(&viewer, &["alerts", "list"], 0);
        let subjects: Vec<String> = v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"]["subject"].as_str().unwrap().to_owned())
            .collect();
        (!subjects.is_empty()).then_some(subjects)
    });
    assert_eq!(firing, [format!("digits/{feature}")]);
}

/// Metric rules on a model's traffic: the stored windows (450 requests
/// each, 300 µs, no errors, no labels) fire `digits/requests` and
/// `digits/latency_p99_ms`; `digits/error_rate` stays quiet and
/// `digits/accuracy` has no data, so neither fires.
#[test]
fn model_metric_rules_fire_on_the_stored_windows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("alerts.toml");
    let rule = |name: &str, kind: &str, metric: &str, threshold: f64| {
        format!(
            "[[rule]]\nname = \"{name}\"\nsink = \"console\"\n\
             condition = {{ kind = \"{kind}\", metric = \"{metric}\", threshold = {threshold:?} }}\n"
        )
    };
    let text = format!(
        "[[sink]]\nname = \"console\"\nkind = \"log\"\n{}{}{}{}",
        rule("busy", "metric_above", "digits/requests", 100.0),
        rule("slow", "metric_above", "digits/latency_p99_ms", 0.2),
        rule("failing", "metric_above", "digits/error_rate", 0.5),
        rule("wrong", "metric_below", "digits/accuracy", 0.5),
    );
    std::fs::write(&file, text).unwrap();
    let server = Server::start(d, &["--alerts", s(&file), "--alerts-every", "1"]);
    let viewer = server.token("vera", "viewer");
    let op = server.token("otto", "operator");
    let opk = pack(d, "mlp_fp32.onnx", "1.0.0", "low");
    server.json(&op, &["model", "push", s(&opk)], 0);
    let bytes = std::fs::read(&opk).unwrap();
    let reference = reference_of(&opk);
    let mqtt = Mqtt::connect(server.mqtt_port(), "cam");
    let now = outpost_fleet::clock::now_unix();
    mqtt.send("cam-1", birth(1, "rpi5"));
    mqtt.send(
        "cam-1",
        DeviceMessage::Telemetry(TelemetryWindow {
            model: ModelRef {
                name: "digits".into(),
                version: "1.0.0".into(),
                sha256: Sha256::of(&bytes),
            },
            slot: Slot::Active,
            window_start: now - WINDOW,
            window_secs: WINDOW as u32,
            profile: window(&reference, "cam-1", now - WINDOW, None),
        }),
    );
    let firing = wait_for("the metric alerts", T, || {
        let v = server.json(&viewer, &["alerts", "list"], 0);
        let subjects: BTreeSet<String> = v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"]["subject"].as_str().unwrap().to_owned())
            .collect();
        (subjects.len() >= 2).then_some(subjects)
    });
    assert_eq!(
        firing,
        BTreeSet::from([
            "digits/latency_p99_ms".to_owned(),
            "digits/requests".to_owned()
        ])
    );
}
