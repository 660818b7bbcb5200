//! Rollouts through `outpost serve`: the API and CLI, signed directives on
//! the devices' command topics, operator commands, and a server killed
//! with SIGKILL that resumes its rollout without re-issuing a directive;
//! then `outpost demo`, which runs a real server and real agents.

use std::collections::BTreeMap;
use std::path::Path;

use outpost_protocol::bytes::Sha256;
use outpost_protocol::codec;
use outpost_protocol::messages::Command;
use outpost_protocol::trust::{Directive, DirectiveAction, Probation};
use serde_json::Value;

use crate::inventory::{Device, birth, state};
use crate::support::*;

const PLAN: &str = r#"
name = "hold"
[[stage]]
name = "canary"
percent = 50
min_devices = 2
# Never reached: the rollout stays in its first stage until told.
min_windows = 100000
max_duration = "1h"
[[stage.gate]]
kind = "error_rate"
"#;

fn sign(d: &Path, opk: &Path) {
    let keys = d.join("keys");
    local_json(
        &[
            "model",
            "sign",
            s(opk),
            "--key",
            s(&keys.join("release-1.pk8")),
            "--root",
            s(&keys.join("root.signed")),
        ],
        0,
    );
}

/// Commands seen on `…/devices/+/commands`, as (device, directive).
fn commands(dev: &Device, n: usize) -> Vec<(String, Directive, Command)> {
    (0..n)
        .map(|_| {
            let (topic, payload) = dev.next_publish();
            let device = topic.split('/').nth(3).unwrap().to_owned();
            let cmd: Command = codec::decode(&payload, 1 << 20).unwrap();
            let directive = cmd.directive.decode_unverified().unwrap();
            (device, directive, cmd)
        })
        .collect()
}

fn status(server: &Server, token: &str, id: &str) -> Value {
    server.json(token, &["rollout", "status", id], 0)
}

fn state_name(v: &Value) -> String {
    v["state"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone()
}

#[test]
fn rollout_api_directives_operator_commands_and_a_sigkill_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("keys");
    local_json(&["keys", "init", "--dir", s(&keys)], 0);
    let (director, root) = (keys.join("director.pk8"), keys.join("root.signed"));
    let flags = [
        "--director-key",
        s(&director),
        "--root",
        s(&root),
        "--rollout-evaluate-every",
        "1",
    ];
    let mut server = Server::start(d, &flags);
    let op = server.token("otto", "operator");
    let viewer = server.token("vera", "viewer");
    let (ann, bob) = (
        server.token("ann", "approver"),
        server.token("bob", "approver"),
    );
    let v1 = pack(d, "mlp_qdq_pt.onnx", "1.0.0", "low");
    let v2 = pack(d, "mlp_qdq_pc.onnx", "1.1.0", "low");
    for (opk, version) in [(&v1, "1.0.0"), (&v2, "1.1.0")] {
        sign(d, opk);
        server.json(&op, &["model", "push", s(opk)], 0);
        for a in [&ann, &bob] {
            server.json(a, &["model", "approve", "digits", version], 0);
        }
    }
    let sha1 = Sha256::of(&std::fs::read(&v1).unwrap());

    // Nothing deployed yet: a rollout has nothing to compare with.
    let plan = d.join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let v = server.json(
        &op,
        &["rollout", "start", "digits@1.1.0", "--plan", s(&plan)],
        5,
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no version of digits is deployed"),
        "{v}"
    );

    // The first install: no device yet, so no directive; 1.0.0 is deployed.
    let v = server.json(&op, &["model", "deploy", "digits", "1.0.0"], 0);
    assert_eq!(v["status"], "deployed", "{v}");
    assert_eq!(v["directives"].as_array().unwrap().len(), 0, "{v}");
    // Deploying 1.1.0 over it is refused: that is what rollouts are for.
    let v = server.json(&op, &["model", "deploy", "digits", "1.1.0"], 5);
    assert!(
        v["error"].as_str().unwrap().contains("rollout start"),
        "{v}"
    );

    // Four devices run 1.0.0.
    let fleet = Device::connect(server.mqtt_port(), "fleet");
    fleet.subscribe("outpost/v1/devices/+/commands");
    let ids = ["dev-1", "dev-2", "dev-3", "dev-4"];
    for id in ids {
        fleet.send(id, birth(1, sha1));
        fleet.send(id, state(1, sha1));
    }
    wait_for("four devices online", T, || {
        let v = server.json(&viewer, &["devices", "list"], 0);
        (v["devices"].as_array().unwrap().len() == 4).then_some(())
    });

    // Bad plans and bad targets are refused with the reason.
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "[[stage]]\npercent = 150\nmax_duration = \"1h\"\n").unwrap();
    let v = server.json(
        &op,
        &["rollout", "start", "digits@1.1.0", "--plan", s(&bad)],
        2,
    );
    assert!(v["error"].as_str().unwrap().contains("stage[0]"), "{v}");
    server.json(
        &op,
        &["rollout", "start", "digits1.1.0", "--plan", s(&plan)],
        2,
    );
    server.json(
        &op,
        &["rollout", "start", "digits@9.9.9", "--plan", s(&plan)],
        4,
    );
    server.json(
        &viewer,
        &["rollout", "start", "digits@1.1.0", "--plan", s(&plan)],
        3,
    );

    // Start: half the fleet gets a signed canary deploy, with the release
    // metadata and the artifact URL.
    let v = server.json(
        &op,
        &["rollout", "start", "digits@1.1.0", "--plan", s(&plan)],
        0,
    );
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(id, "digits-1.1.0-1");
    assert_eq!(state_name(&v), "running", "{v}");
    assert_eq!(v["canary_devices"], 2, "{v}");
    assert_eq!(v["control_devices"], 2, "{v}");
    let sent = commands(&fleet, 2);
    let mut canary: BTreeMap<String, u64> = BTreeMap::new();
    for (device, directive, cmd) in &sent {
        match &directive.action {
            DirectiveAction::Deploy { target, probation } => {
                assert_eq!(target.version, "1.1.0");
                assert_eq!(*probation, Probation::Canary);
            }
            other => panic!("expected a canary deploy, got {other:?}"),
        }
        assert_eq!(directive.rollout.as_ref().unwrap().rollout, id);
        assert!(
            cmd.release.is_some(),
            "the release metadata travels with it"
        );
        assert!(
            cmd.artifact_url
                .as_deref()
                .unwrap()
                .contains("/v1/artifacts/"),
            "{:?}",
            cmd.artifact_url
        );
        canary.insert(device.clone(), directive.sequence);
    }
    assert_eq!(canary.len(), 2, "two distinct canary devices: {canary:?}");
    let v = server.json(&viewer, &["rollout", "list"], 0);
    assert_eq!(v["rollouts"][0]["state"], "running", "{v}");
    assert_eq!(
        server.json(&viewer, &["model", "show", "digits", "1.1.0"], 0)["status"],
        "canary"
    );
    // One rollout of a model at a time.
    server.json(
        &op,
        &["rollout", "start", "digits@1.1.0", "--plan", s(&plan)],
        5,
    );

    // Pause and resume; resuming twice is a conflict.
    let v = server.json(&op, &["rollout", "pause", &id], 0);
    assert_eq!(state_name(&v), "paused", "{v}");
    server.json(&op, &["rollout", "resume", &id], 0);
    server.json(&op, &["rollout", "resume", &id], 5);
    server.json(&op, &["rollout", "pause", "no-such-rollout"], 4);

    // SIGKILL: the restarted server resumes the rollout where it was; the
    // directives already sent are not sent again (none is pending).
    // It comes back inside a change freeze (server config): the running
    // rollout is held, but halts and rollbacks never are.
    server.kill();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let calendar = d.join("calendar.toml");
    std::fs::write(
        &calendar,
        format!(
            "[[freezes]]\nstart = {}\nend = {}\nreason = \"year-end freeze\"\n",
            now - 60,
            now + 86_400
        ),
    )
    .unwrap();
    let mut frozen = flags.to_vec();
    frozen.extend(["--calendar", s(&calendar)]);
    let mut server = Server::start(d, &frozen);
    let v = status(&server, &viewer, &id);
    assert_eq!(state_name(&v), "running", "{v}");
    assert_eq!(v["directives_sent"], 2, "{v}");
    assert_eq!(v["directives_pending"], 0, "{v}");
    assert!(
        v["timeline"].as_array().unwrap().len() >= 3,
        "the timeline survives: {v}"
    );

    // Abort: rollback directives to exactly the two canary devices, with
    // fresh, higher sequences.
    let fleet = Device::connect(server.mqtt_port(), "fleet2");
    fleet.subscribe("outpost/v1/devices/+/commands");
    let v = server.json(&op, &["rollout", "abort", &id], 0);
    assert_eq!(state_name(&v), "halted", "{v}");
    let back = commands(&fleet, 2);
    let max_before = canary.values().max().copied().unwrap();
    for (device, directive, _) in &back {
        assert!(canary.contains_key(device), "{device} was not a canary");
        assert!(
            directive.sequence > max_before,
            "{} ≤ {max_before}",
            directive.sequence
        );
        match &directive.action {
            DirectiveAction::Rollback { target } => assert_eq!(target.version, "1.0.0"),
            other => panic!("expected a rollback, got {other:?}"),
        }
    }
    assert_ne!(back[0].0, back[1].0);
    assert_eq!(
        server.json(&viewer, &["model", "show", "digits", "1.1.0"], 0)["status"],
        "approved",
        "a halted canary goes back to approved"
    );
    let audit = server.json(&viewer, &["audit", "list"], 0);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "version.deploy",
        "rollout.start",
        "rollout.operator",
        "rollout.halt",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    server.json(&viewer, &["audit", "verify"], 0);

    // A rollout started inside the freeze waits: no stage, no directive.
    let v = server.json(
        &op,
        &["rollout", "start", "digits@1.1.0", "--plan", s(&plan)],
        0,
    );
    assert_eq!(v["id"], "digits-1.1.0-2");
    assert_eq!(state_name(&v), "waiting", "{v}");
    assert_eq!(v["directives_sent"], 0, "{v}");
    assert_eq!(
        v["held_until"],
        now + 86_400,
        "held until the freeze ends: {v}"
    );
    let v = server.json(&op, &["rollout", "abort", "digits-1.1.0-2"], 0);
    assert_eq!(state_name(&v), "halted", "{v}");
    server.stop();
}

/// `outpost demo` with real agent processes: 1.1.0 is promoted, 1.2.0 is
/// halted by the accuracy gate and rolled back.
#[test]
fn demo_promotes_a_good_version_and_halts_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = outpost()
        .args([
            "demo",
            "--devices",
            "4",
            "--exit-after",
            "0",
            "--dir",
            s(dir.path()),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logs = || outpost_fleet::harness::log_tails(dir.path(), |_| true, 20);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    for needle in [
        "[4/4]",
        "digits 1.1.0 is promoted",
        "completed: every stage passed",
        "HALTED",
        "accuracy fail",
        "every device serves 1.1.0 again",
        "outpost rollout status digits-1.2.0-1",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
}
