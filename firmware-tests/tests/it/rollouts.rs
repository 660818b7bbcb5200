//! Scenarios 1, 2 and 7: a good canary promoted stage by stage; a bad one
//! halted at the first stage and rolled back, once for each cause
//! (latency, accuracy, drift); the fleet server SIGKILLed mid-rollout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use outpost_fleet::harness::{DIGITS_X, Traffic, state_name};
use serde_json::Value;

use crate::support::*;

/// Requests per second per device.
const RATE: u32 = 10;

/// Three stages, 10 % → 50 % → 100 %.
const STAGED: &str = r#"name = "staged"
[[stage]]
name = "10%"
percent = 10
min_devices = 2
min_windows = 4
min_duration = "4s"
max_duration = "4m"
[[stage.gate]]
kind = "error_rate"
[[stage.gate]]
kind = "accuracy"
optional = false
min_count = 200
[[stage.gate]]
kind = "latency"
tolerance = 0.5
min_count = 300
[[stage.gate]]
kind = "drift"
min_count = 300

[[stage]]
name = "50%"
percent = 50
min_devices = 2
min_windows = 4
min_duration = "4s"
max_duration = "4m"
[[stage.gate]]
kind = "error_rate"
[[stage.gate]]
kind = "accuracy"
min_count = 200

[[stage]]
name = "100%"
percent = 100
min_devices = 2
min_windows = 4
min_duration = "2s"
max_duration = "4m"
[[stage.gate]]
kind = "error_rate"
"#;

/// One canary stage with every gate, then the fleet.
const JUDGED: &str = r#"name = "judged"
[[stage]]
name = "canary"
percent = 10
min_devices = 2
min_windows = 4
min_duration = "4s"
max_duration = "4m"
[[stage.gate]]
kind = "error_rate"
[[stage.gate]]
kind = "accuracy"
optional = false
min_count = 200
[[stage.gate]]
kind = "latency"
tolerance = 0.25
min_count = 300
[[stage.gate]]
kind = "drift"
min_count = 300

[[stage]]
name = "fleet"
percent = 100
min_devices = 2
min_windows = 4
max_duration = "4m"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Deploys 1.0.0 (`mlp_qdq_pc`) to the fleet and starts the apps' traffic.
pub fn deployed(f: &TestFleet) -> (Traffic, PathBuf) {
    let reference = f.opts.dir.join("digits_test_x.npy");
    std::fs::write(&reference, DIGITS_X).unwrap();
    let v1 = f
        .package(&digits("mlp_qdq_pc.onnx"), "1.0.0", &reference)
        .unwrap();
    f.register(&v1, "1.0.0").unwrap();
    f.cli(Some(&f.operator), &["model", "deploy", "digits", "1.0.0"])
        .unwrap();
    f.wait_serving(&f.ids, "1.0.0")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    (Traffic::start(&f.apis, RATE).unwrap(), reference)
}

/// Follows a rollout to its end; panics with the logs on a timeout.
fn follow(f: &mut TestFleet, id: &str) -> Value {
    let dir = f.opts.dir.clone();
    f.follow(id, |_| {})
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&dir)))
}

fn timeline(v: &Value) -> Vec<String> {
    v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["what"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn scenario_1_a_good_canary_is_promoted_stage_by_stage() {
    let Some(mut f) = fleet(fleet_size()) else {
        return;
    };
    let (traffic, reference) = deployed(&f);
    // The same network re-released: nothing to tell it from 1.0.0 but its version.
    let v2 = f
        .package(&digits("mlp_qdq_pc.onnx"), "1.1.0", &reference)
        .unwrap();
    f.register(&v2, "1.1.0").unwrap();
    let plan = write(&f.opts.dir, "staged.toml", STAGED);
    let started = Instant::now();
    let id = f.start_rollout("1.1.0", &plan).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let end = follow(&mut f, &id);
    assert_eq!(state_name(&end), "completed", "{end}");
    let history = end["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{end}");
    assert!(history.iter().all(|h| h["outcome"] == "passed"), "{end}");
    let lines = timeline(&end);
    for stage in ["10%", "50%", "100%"] {
        let starts = lines
            .iter()
            .filter(|l| l.starts_with(&format!("{stage} started")))
            .count();
        assert_eq!(starts, 1, "{stage} started {starts} times: {lines:#?}");
    }
    let ids = f.ids.clone();
    f.wait_serving(&ids, "1.1.0").unwrap();
    let v = f
        .cli(Some(&f.admin), &["model", "show", "digits", "1.0.0"])
        .unwrap();
    assert_eq!(v["status"], "deprecated", "{v}");
    // The hash chain holds every rollout action, gate statistics included.
    let audit = f.cli(Some(&f.admin), &["audit", "verify"]).unwrap();
    assert_eq!(audit["ok"], true, "{audit}");
    // Every device reported the engine of 1.1.0 and why (the test device
    // classes prefer the CPU).
    let engines = f
        .wait("every device's engine for 1.1.0", || {
            let devices = f.devices()?;
            let engines: Vec<Value> = devices
                .iter()
                .filter_map(|d| d["engines"]["digits@1.1.0"].as_object().cloned())
                .map(Value::Object)
                .collect();
            Ok((engines.len() == ids.len()).then_some(engines))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    assert!(
        engines
            .iter()
            .all(|e| e["engine"] == "cpu" && !e["reason"].as_str().unwrap().is_empty()),
        "{engines:?}"
    );
    println!(
        "SUMMARY scenario 1: {} devices, stages 10% → 50% → 100% passed, 1.1.0 serving everywhere in {:.0} s, {} directives, {} requests answered; every device reported its engine for 1.1.0 (cpu: {})",
        ids.len(),
        started.elapsed().as_secs_f64(),
        end["directives_sent"],
        traffic.answered(),
        engines[0]["reason"].as_str().unwrap_or_default()
    );
}

/// Rolls out a bad 1.1.0 and checks it is halted at the first stage on
/// `gate`, and that no device runs it any more.
fn bad_canary(cause: &str, gate: &str, model: PathBuf, shifted_reference: bool) {
    let Some(mut f) = fleet(fleet_size()) else {
        return;
    };
    let (traffic, reference) = deployed(&f);
    let reference = if shifted_reference {
        // The version was profiled on other data than the field sends:
        // pixels at half their scale.
        let (x, _) = outpost_fleet::harness::digits_tensors().unwrap();
        let half: Vec<f32> = x
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .map(|v| v * 0.5)
            .collect();
        let t = outpost_runtime::Tensor::from_shape(x.shape(), &half).unwrap();
        let p = f.opts.dir.join("half_scale.npy");
        outpost_runtime::npy::write_npy(&p, &t).unwrap();
        p
    } else {
        reference
    };
    let v2 = f.package(&model, "1.1.0", &reference).unwrap();
    f.register(&v2, "1.1.0").unwrap();
    let plan = write(&f.opts.dir, "judged.toml", JUDGED);
    let started = Instant::now();
    let id = f.start_rollout("1.1.0", &plan).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let end = follow(&mut f, &id);
    assert_eq!(state_name(&end), "halted", "{end}");
    let halted = &end["state"]["halted"];
    assert_eq!(halted["stage"], 0, "halted at the first stage: {end}");
    let gates = &halted["reason"]["gate_failed"]["gates"];
    assert!(
        gates.as_array().unwrap().iter().any(|g| g == gate),
        "halted on {gates}, expected {gate}: {end}"
    );
    let report = end["history"][0]["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["gate"] == gate)
        .unwrap()
        .clone();
    assert_eq!(report["verdict"], "fail", "{report}");
    let ids = f.ids.clone();
    f.wait_gone(&ids, "1.1.0")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    f.wait_serving(&ids, "1.0.0").unwrap();
    let v = f
        .cli(Some(&f.admin), &["model", "show", "digits", "1.1.0"])
        .unwrap();
    assert_eq!(v["status"], "approved", "a halted canary goes back: {v}");
    println!(
        "SUMMARY scenario 2 ({cause}): {} devices, halted at the first stage on {gate} (statistic {} vs tolerance {}, n {}/{}) after {:.0} s; {} canary devices rolled back, 1.0.0 serving everywhere; {} requests answered",
        ids.len(),
        report["statistic"],
        report["tolerance"],
        report["n_canary"],
        report["n_control"],
        started.elapsed().as_secs_f64(),
        end["canary_devices"],
        traffic.answered()
    );
}

#[test]
fn scenario_2a_a_slower_canary_is_halted_on_latency() {
    bad_canary(
        "slower model",
        "latency",
        repo("fleet-server/demo/digits_slow.onnx"),
        false,
    );
}

#[test]
fn scenario_2b_a_less_accurate_canary_is_halted_on_feedback() {
    bad_canary(
        "lower accuracy",
        "accuracy",
        repo("fleet-server/demo/digits_rotated.onnx"),
        false,
    );
}

#[test]
fn scenario_2c_a_canary_on_shifted_inputs_is_halted_on_drift() {
    bad_canary(
        "shifted input distribution",
        "drift",
        digits("mlp_qdq_pc.onnx"),
        true,
    );
}

#[test]
fn scenario_7_a_server_killed_mid_rollout_resumes_without_resending() {
    let Some(mut f) = fleet(fleet_size()) else {
        return;
    };
    let (traffic, reference) = deployed(&f);
    let v2 = f
        .package(&digits("mlp_qdq_pc.onnx"), "1.1.0", &reference)
        .unwrap();
    f.register(&v2, "1.1.0").unwrap();
    let plan = write(&f.opts.dir, "staged.toml", STAGED);
    let id = f.start_rollout("1.1.0", &plan).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Wait until the first stage has evidence, then SIGKILL the server.
    let before = f
        .wait("canary windows in the first stage", || {
            let v = f.get(&format!("/v1/rollouts/{id}"))?;
            Ok((v["canary_windows"].as_u64().unwrap_or(0) >= 2).then_some(v))
        })
        .unwrap();
    assert_eq!(before["stage_label"], "10%", "{before}");
    let sent_before = before["directives_sent"].as_u64().unwrap();
    assert!(f.kill_server());
    f.start_server()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    let after = f.get(&format!("/v1/rollouts/{id}")).unwrap();
    assert_eq!(
        after["stage_label"], "10%",
        "resumed at the same stage: {after}"
    );
    assert_eq!(
        after["directives_sent"].as_u64().unwrap(),
        sent_before,
        "no directive re-issued: {after}"
    );
    assert_eq!(after["directives_pending"], 0, "{after}");
    let end = follow(&mut f, &id);
    assert_eq!(state_name(&end), "completed", "{end}");
    let lines = timeline(&end);
    for stage in ["10%", "50%", "100%"] {
        let starts = lines
            .iter()
            .filter(|l| l.starts_with(&format!("{stage} started")))
            .count();
        assert_eq!(starts, 1, "{stage} started {starts} times: {lines:#?}");
    }
    let ids = f.ids.clone();
    f.wait_serving(&ids, "1.1.0").unwrap();
    // Every device refused no directive as a replay: none was sent twice.
    let replays: u64 = f.apis.iter().map(|api| refused(api, "replay")).sum();
    assert_eq!(replays, 0, "devices saw directives again");
    println!(
        "SUMMARY scenario 7: server SIGKILLed in stage 10% after {sent_before} directives; restarted at the same stage with 0 pending, completed with {} directives in all, each stage started once, 0 replays refused by {} devices; {} requests answered",
        end["directives_sent"],
        ids.len(),
        traffic.answered()
    );
}

/// An agent's `outpost_agent_commands_refused_total` for checks whose
/// label contains `check`.
pub fn refused(api: &str, check: &str) -> u64 {
    outpost_fleet::harness::metric_sum(
        &format!("http://{api}/metrics"),
        "outpost_agent_commands_refused_total",
        check,
    )
    .unwrap()
}
