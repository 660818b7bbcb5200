//! The inventory from real MQTT traffic: birth, state, telemetry, death
//! published with rumqttc to the embedded broker and to a private
//! Mosquitto; garbage counted, never fatal; retirement sends signed
//! retire directives to the devices that run the version.

use outpost_protocol::bytes::Sha256;
use outpost_protocol::codec;
use outpost_protocol::messages::{
    Birth, Command, Death, DeviceMessage, Health, HealthStatus, InstalledModel, ModelRef,
    ModelState, Phase, ReportedState, Slot, TelemetryWindow,
};
use outpost_protocol::trust::DirectiveAction;
use serde_json::Value;

use crate::support::*;

/// A device-side MQTT client.
pub type Device = Mqtt;

pub fn model_ref(version: &str, sha: Sha256) -> ModelRef {
    ModelRef {
        name: "digits".into(),
        version: version.into(),
        sha256: sha,
    }
}

pub fn birth(session: u64, sha: Sha256) -> DeviceMessage {
    DeviceMessage::Birth(Birth {
        session,
        at: 1,
        agent_version: "0.1.0".into(),
        target: "rpi5".into(),
        arch: "aarch64".into(),
        models: vec![InstalledModel {
            model: model_ref("1.0.0", sha),
            slot: Slot::Active,
        }],
        root_version: 1,
        last_directive: 0,
    })
}

pub fn state(session: u64, sha: Sha256) -> DeviceMessage {
    DeviceMessage::State(ReportedState {
        session,
        at: 2,
        models: vec![ModelState {
            name: "digits".into(),
            active: Some(model_ref("1.0.0", sha)),
            candidate: None,
            previous: None,
            phase: Phase::Serving,
        }],
        health: Health {
            status: HealthStatus::Healthy,
            detail: None,
        },
        root_version: 1,
        last_directive: 0,
    })
}

fn device(server: &Server, token: &str, id: &str) -> Option<Value> {
    let out = server.cli(token, &["--json", "devices", "show", id]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn metric(server: &Server, needle: &str) -> Option<f64> {
    let text = agent()
        .get(server.url("/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn inventory_telemetry_labels_and_retire_directives_over_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("keys");
    local_json(&["keys", "init", "--dir", s(&keys)], 0);
    let server = Server::start(
        d,
        &[
            "--director-key",
            s(&keys.join("director.pk8")),
            "--root",
            s(&keys.join("root.signed")),
        ],
    );
    let viewer = server.token("vera", "viewer");
    let op = server.token("otto", "operator");
    let (ann, bob) = (
        server.token("ann", "approver"),
        server.token("bob", "approver"),
    );
    let opk = pack(d, "mlp_fp32.onnx", "1.0.0", "low");
    let sha = Sha256::of(&std::fs::read(&opk).unwrap());

    let dev = Device::connect(server.mqtt_port(), "pump-1");
    dev.send("pump-1", birth(1, sha));
    dev.send("pump-1", state(1, sha));
    let d1 = wait_for("pump-1 in the inventory", T, || {
        device(&server, &viewer, "pump-1").filter(|d| d["health"] == "healthy")
    });
    assert_eq!(d1["online"], true);
    assert_eq!(d1["target"], "rpi5");
    assert_eq!(d1["installed"][0]["slot"], "active");
    assert_eq!(d1["installed"][0]["version"], "1.0.0");

    // A telemetry window delivered twice is stored once.
    let reference = reference_of(&opk);
    let start = 1_800_000_000;
    let telemetry = |profile: Vec<u8>| {
        DeviceMessage::Telemetry(TelemetryWindow {
            model: model_ref("1.0.0", sha),
            slot: Slot::Active,
            window_start: start,
            window_secs: WINDOW as u32,
            profile,
        })
    };
    let good = telemetry(window(&reference, "pump-1", start, None));
    dev.send("pump-1", good.clone());
    dev.send("pump-1", good);
    // Forged: pump-2's statistics sent on pump-1's topic; and a profile
    // that does not decode. Neither is stored.
    dev.send(
        "pump-1",
        telemetry(window(&reference, "pump-2", start + 60, None)),
    );
    dev.send("pump-1", telemetry(vec![1, 2, 3]));
    wait_for("the forged windows refused", T, || {
        let forged = metric(
            &server,
            "outpost_mqtt_rejected_total{kind=\"telemetry\",reason=\"forged\"}",
        )?;
        let profile = metric(
            &server,
            "outpost_mqtt_rejected_total{kind=\"telemetry\",reason=\"profile\"}",
        )?;
        (forged >= 1.0 && profile >= 1.0).then_some(())
    });
    wait_for("the duplicate window", T, || {
        metric(
            &server,
            "outpost_telemetry_windows_total{status=\"duplicate\"}",
        )
    });
    let v = agent()
        .get(server.url("/v1/telemetry/windows?model=digits&version=1.0.0"))
        .header("Authorization", &format!("Bearer {viewer}"))
        .call()
        .unwrap()
        .into_body()
        .read_json::<Value>()
        .unwrap();
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["windows"][0]["device"], "pump-1");

    // Garbage is counted and dropped; the server keeps serving.
    dev.publish("pump-1", "birth", b"\x01garbage".to_vec());
    dev.publish("pump-1", "telemetry", b"{not json".to_vec());
    dev.publish("bad!id", "state", b"x".to_vec());
    wait_for("garbage counted", T, || {
        let birth = metric(
            &server,
            "outpost_mqtt_rejected_total{kind=\"birth\",reason=\"decode\"}",
        )?;
        let tel = metric(
            &server,
            "outpost_mqtt_rejected_total{kind=\"telemetry\",reason=\"decode\"}",
        )?;
        (birth >= 1.0 && tel >= 1.0).then_some(())
    });
    server.json(&viewer, &["devices", "list"], 0);

    // Labels and groups, audited.
    let v = server.json(
        &op,
        &[
            "devices",
            "label",
            "pump-1",
            "site=north",
            "--group",
            "canary",
        ],
        0,
    );
    assert_eq!(v["labels"]["site"], "north");
    assert_eq!(v["groups"][0], "canary");
    let listed = server.json(&viewer, &["devices", "list", "--group", "canary"], 0);
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
    let log = server.json(&viewer, &["audit", "list", "--action", "device."], 0);
    assert_eq!(log["entries"][0]["actor"], "otto");

    // The registry knows where each version runs; retiring it sends a
    // signed retire directive to that device.
    server.json(&op, &["model", "push", s(&opk)], 0);
    server.json(&ann, &["model", "approve", "digits", "1.0.0"], 0);
    server.json(&bob, &["model", "approve", "digits", "1.0.0"], 0);
    for to in ["canary", "deployed", "deprecated"] {
        server.json(&op, &["model", "promote", "digits", "1.0.0", "--to", to], 0);
    }
    let list = server.json(&viewer, &["model", "list"], 0);
    assert_eq!(list["versions"][0]["devices"][0], "pump-1", "{list}");
    dev.subscribe("outpost/v1/devices/pump-1/commands");
    let v = server.json(
        &op,
        &[
            "model",
            "retire",
            "digits",
            "1.0.0",
            "--reason",
            "superseded",
        ],
        0,
    );
    assert_eq!(v["directives"][0]["device"], "pump-1", "{v}");
    let (topic, payload) = dev.next_publish();
    assert_eq!(topic, "outpost/v1/devices/pump-1/commands");
    let cmd: Command = codec::decode(&payload, 1 << 20).unwrap();
    let directive = cmd.directive.decode_unverified().unwrap();
    assert_eq!(
        directive.action,
        DirectiveAction::Retire {
            model: "digits".into()
        }
    );
    assert_eq!(
        directive.sequence,
        v["directives"][0]["sequence"].as_u64().unwrap()
    );
    let director = outpost_protocol::trust::keys::fingerprint(&keys.join("director.pk8")).unwrap();
    assert_eq!(cmd.directive.signatures[0].key_id, director);

    // The trust metadata devices need is published; the death ends the session.
    let r = agent().get(server.url("/v1/trust/root")).call().unwrap();
    assert_eq!(
        r.into_body().read_to_vec().unwrap(),
        std::fs::read(keys.join("root.signed")).unwrap()
    );
    dev.send("pump-1", DeviceMessage::Death(Death { session: 1 }));
    wait_for("pump-1 offline", T, || {
        device(&server, &viewer, "pump-1").filter(|d| d["online"] == false)
    });
}

#[test]
fn inventory_through_an_external_mosquitto() {
    let Some(broker) = mosquitto("allow_anonymous true\n") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let server = Server::start(dir.path(), &["--mqtt-url", &url]);
    assert_eq!(server.mqtt, format!("127.0.0.1:{}", broker.port));
    let viewer = server.token("vera", "viewer");
    let dev = Device::connect(broker.port, "gate-7");
    dev.publish("gate-7", "state", b"\x07nonsense".to_vec());
    dev.send("gate-7", birth(3, Sha256::of(b"pkg")));
    let d = wait_for("gate-7 in the inventory", T, || {
        device(&server, &viewer, "gate-7")
    });
    assert_eq!(d["session"], 3);
    assert_eq!(d["online"], true);
    wait_for("garbage counted", T, || {
        metric(
            &server,
            "outpost_mqtt_rejected_total{kind=\"state\",reason=\"decode\"}",
        )
    });
}

#[test]
fn inventory_through_mosquitto_over_tls() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    if let Err(e) = outpost_fleet::harness::Pki::new(p) {
        skip_or_fail(&format!("openssl could not make the test PKI: {e:#}"));
        return;
    }
    // Two listeners: TLS for the server, plain for the test's device.
    let plain = free_port();
    let extra = format!(
        "allow_anonymous true\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         listener {plain} 127.0.0.1\nallow_anonymous true\n",
        d = p.display()
    );
    let Some(broker) = mosquitto(&extra) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    // Without the CA the server refuses to start and says why.
    let Err((code, err)) = Server::try_start(dir.path(), &["--mqtt-url", &url]) else {
        panic!("started without --mqtt-ca");
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--mqtt-ca"), "{err}");
    let server = Server::start(
        dir.path(),
        &["--mqtt-url", &url, "--mqtt-ca", s(&p.join("ca.pem"))],
    );
    let viewer = server.token("vera", "viewer");
    let dev = Device::connect(plain, "valve-2");
    dev.send("valve-2", birth(5, Sha256::of(b"pkg")));
    let d = wait_for("valve-2 in the inventory", T, || {
        device(&server, &viewer, "valve-2")
    });
    assert_eq!(d["session"], 5);
}
