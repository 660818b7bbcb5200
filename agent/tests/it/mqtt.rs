//! The MQTT contract against a real Mosquitto: birth, retained state,
//! death as the last will with the birth's session, signed commands.

use std::process::{Command, Stdio};
use std::time::Duration;

use outpost_protocol::codec;
use outpost_protocol::messages::{Birth, Death, Event, EventKind, ReportedState, Slot};
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::{Directive, DirectiveAction, GraceAction, OfflineGrace, Selector};

use crate::common::*;

const T: Duration = Duration::from_secs(30);

/// A private broker, an observer of `device`'s topics, a trust world;
/// `None` (skipped) without Mosquitto.
fn setup(device: &str) -> Option<(Mosquitto, Observer, rumqttc::AsyncClient, World)> {
    let broker = Mosquitto::start()?;
    let (obs, client) = Observer::start(broker.port, &format!("outpost/v1/devices/{device}/#"));
    Some((broker, obs, client, World::new()))
}

/// Whether an event payload is an `engine_selected` report (sent at each
/// session start, around the events a test waits for).
fn engine_event(p: &[u8]) -> bool {
    codec::decode::<Event>(p, 1 << 16).is_ok_and(|e| matches!(e.kind, EventKind::EngineSelected(_)))
}

fn rebirth(device: &str, sequence: u64) -> Directive {
    Directive {
        sequence,
        selector: Selector::Device(DeviceId::new(device).unwrap()),
        action: DirectiveAction::Rebirth,
        rollout: None,
        issued_at: now(),
        expires: now() + 600,
        offline_grace: OfflineGrace {
            max_offline_secs: 60,
            then: GraceAction::KeepCandidate,
        },
    }
}

#[test]
fn birth_and_retained_state_then_signed_commands_are_verified() {
    let device = "mqtt-birth";
    let prefix = format!("outpost/v1/devices/{device}");
    let Some((broker, obs, client, w)) = setup(device) else {
        return;
    };
    let a = Running::start(w.config(device, broker.port, ""));
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/birth"));
    let birth: Birth = codec::decode(&p, 1 << 16).unwrap();
    assert_eq!(birth.session, a.state.session());
    assert_eq!(birth.target, target_profile());
    assert_eq!(birth.models.len(), 1);
    assert_eq!(birth.models[0].slot, Slot::Active);
    assert_eq!(birth.models[0].model.version, "1.0.0");
    assert_eq!(birth.root_version, 1);
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/state"));
    let state: ReportedState = codec::decode(&p, 1 << 16).unwrap();
    assert_eq!(state.models[0].active.as_ref().unwrap().name, "digits");

    // A signed rebirth: a new birth, same session; the sequence is kept.
    Observer::publish(
        &client,
        &format!("{prefix}/commands"),
        w.sign_command(&rebirth(device, 5)),
    );
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/birth"));
    let again: Birth = codec::decode(&p, 1 << 16).unwrap();
    assert_eq!(again.session, birth.session);
    assert_eq!(again.last_directive, 5);

    // The same command again is a replay: refused, reported as an event.
    Observer::publish(
        &client,
        &format!("{prefix}/commands"),
        w.sign_command(&rebirth(device, 5)),
    );
    let (_, p) = obs.next_where(T, |t, p| t.ends_with("/events") && !engine_event(p));
    let ev: Event = codec::decode(&p, 1 << 16).unwrap();
    match ev.kind {
        EventKind::VerificationFailed {
            directive, check, ..
        } => {
            assert_eq!((directive, check.as_str()), (Some(5), "replay"));
        }
        other => panic!("{other:?}"),
    }
    // Garbage on the commands topic: a decode failure event, agent alive.
    Observer::publish(
        &client,
        &format!("{prefix}/commands"),
        b"\x01garbage".to_vec(),
    );
    let (_, p) = obs.next_where(T, |t, p| t.ends_with("/events") && !engine_event(p));
    let ev: Event = codec::decode(&p, 1 << 16).unwrap();
    assert!(
        matches!(ev.kind, EventKind::VerificationFailed { ref check, .. } if check == "decode")
    );
    // A directive for another device is refused by name.
    Observer::publish(
        &client,
        &format!("{prefix}/commands"),
        w.sign_command(&rebirth("someone-else", 9)),
    );
    let (_, p) = obs.next_where(T, |t, p| t.ends_with("/events") && !engine_event(p));
    let ev: Event = codec::decode(&p, 1 << 16).unwrap();
    assert!(
        matches!(ev.kind, EventKind::VerificationFailed { ref check, .. } if check == "wrong_device")
    );
    assert_eq!(get(&a.url("/readyz")).0, 200);
    // A clean stop publishes death with the session.
    let session = a.state.session();
    drop(a);
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/death"));
    let death: Death = codec::decode(&p, 1 << 10).unwrap();
    assert_eq!(death.session, session);
}

#[test]
fn a_killed_agent_dies_by_its_last_will_with_the_birth_session() {
    let device = "mqtt-kill";
    let Some((broker, obs, _client, w)) = setup(device) else {
        return;
    };
    let config = w.config_file(device, broker.port);
    let spawn = || {
        ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
                .args(["run", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut child = spawn();
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/birth"));
    let birth: Birth = codec::decode(&p, 1 << 16).unwrap();
    child.0.kill().unwrap(); // SIGKILL: no goodbye, the broker must speak
    child.0.wait().unwrap();
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/death"));
    let death: Death = codec::decode(&p, 1 << 10).unwrap();
    assert_eq!(death.session, birth.session);

    // Restarted, it is a new session.
    let _child = spawn();
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/birth"));
    let reborn: Birth = codec::decode(&p, 1 << 16).unwrap();
    assert!(reborn.session > birth.session);
}

/// Collects telemetry windows until their requests, each window counted
/// once by its key as the server merges them (QoS 1 is at least once: a
/// redelivery after a broker restart is legal), add up to `rows`.
type Window = (
    outpost_protocol::messages::TelemetryWindow,
    outpost_telemetry::WindowProfile,
);

fn windows_until(obs: &Observer, rows: u64, earlier: &[Window]) -> Vec<Window> {
    use outpost_protocol::messages::TelemetryWindow;
    use outpost_telemetry::{WINDOW_DECODE_LIMIT, WindowProfile};
    let mut got: Vec<(TelemetryWindow, WindowProfile)> = Vec::new();
    let mut total = 0;
    while total < rows {
        let (_, p) = obs.next_where(T, |t, _| t.ends_with("/telemetry"));
        let w: TelemetryWindow = codec::decode(&p, 1 << 20).unwrap();
        let profile = WindowProfile::from_bytes(&w.profile, WINDOW_DECODE_LIMIT).unwrap();
        match got
            .iter()
            .chain(earlier)
            .find(|(_, p)| p.key == profile.key)
        {
            // A redelivered window must be the same window.
            Some((_, seen)) => assert_eq!(seen.profile.requests, profile.profile.requests),
            None => {
                total += profile.profile.requests;
                got.push((w, profile));
            }
        }
    }
    assert_eq!(total, rows, "more requests profiled than sent");
    got
}

fn infer_rows(a: &Running, rows: usize) {
    let (s, b) = post_json(&a.url("/v1/models/digits/infer"), &request(&digits(rows).0));
    assert_eq!(s, 200, "{b}");
}

#[test]
fn every_inference_is_profiled_into_windows_published_with_qos1() {
    let device = "mqtt-telemetry";
    let Some((broker, obs, _client, w)) = setup(device) else {
        return;
    };
    let a = Running::start(w.config(device, broker.port, ""));
    obs.next_where(T, |t, _| t.ends_with("/birth"));
    for _ in 0..3 {
        infer_rows(&a, 7);
    }
    let windows = windows_until(&obs, 21, &[]);
    for (msg, profile) in &windows {
        assert_eq!(msg.model.name, "digits");
        assert!(
            profile.profile.columns[0].kll().is_some(),
            "sketches on by default"
        );
        assert_eq!(msg.window_secs, 1);
        assert_eq!(profile.key.device, device);
        assert_eq!(profile.key.start, msg.window_start);
        // 64 pixel columns and the predicted class.
        assert_eq!(profile.profile.columns.len(), 65);
        assert_eq!(profile.profile.errors, 0);
    }
    // Acknowledged windows leave the outbox.
    wait_for("an empty outbox", T, || {
        a.state.telemetry.outbox().is_empty().then_some(())
    });
    let (_, metrics) = get(&a.url("/metrics"));
    assert!(
        metrics.contains("outpost_agent_telemetry_windows_published_total"),
        "{metrics}"
    );
}

#[test]
fn a_broker_restart_loses_no_window_and_duplicates_none() {
    let device = "mqtt-restart";
    let Some((mut broker, obs, _client, w)) = setup(device) else {
        return;
    };
    let a = Running::start(w.config(device, broker.port, ""));
    obs.next_where(T, |t, _| t.ends_with("/birth"));
    infer_rows(&a, 5);
    let before = windows_until(&obs, 5, &[]);
    broker.stop();
    wait_for("the agent to see the broker gone", T, || {
        (!a.state
            .mqtt_connected
            .load(std::sync::atomic::Ordering::SeqCst))
        .then_some(())
    });
    // Windows sealed while the broker is down wait in the outbox.
    infer_rows(&a, 3);
    wait_for("a window in the outbox", T, || {
        (!a.state.telemetry.outbox().is_empty()).then_some(())
    });
    // The next requests fall in a later one-second window.
    let s0 = now();
    wait_for("the next second", T, || (now() > s0).then_some(()));
    infer_rows(&a, 4);
    wait_for("two windows in the outbox", T, || {
        (a.state.telemetry.outbox().len() >= 2).then_some(())
    });
    broker.restart();
    // Windows from before the restart may be redelivered (QoS 1); they are
    // recognised by key and never counted again.
    let after = windows_until(&obs, 7, &before);
    assert!(
        after
            .iter()
            .all(|(_, a)| before.iter().all(|(_, b)| a.key != b.key))
    );
    wait_for("an empty outbox", T, || {
        a.state.telemetry.outbox().is_empty().then_some(())
    });
}

#[test]
fn windows_over_the_outbox_budget_are_dropped_counted_and_reported() {
    let device = "mqtt-drops";
    let Some((broker, obs, _client, w)) = setup(device) else {
        return;
    };
    // 1 KB: smaller than any window of 65 columns.
    let config = w.config_edited(
        device,
        broker.port,
        "window_secs = 1",
        "window_secs = 1\noutbox_budget_mb = 0.001",
    );
    let a = Running::start(config);
    obs.next_where(T, |t, _| t.ends_with("/birth"));
    infer_rows(&a, 3);
    // Other events come first (the engine of each loaded model).
    let (_, p) = obs.next_where(T, |t, p| {
        t.ends_with("/events")
            && codec::decode::<Event>(p, 1 << 16)
                .is_ok_and(|e| matches!(e.kind, EventKind::TelemetryDropped { .. }))
    });
    let ev: Event = codec::decode(&p, 1 << 16).unwrap();
    match ev.kind {
        EventKind::TelemetryDropped { windows, bytes } => {
            assert!(windows >= 1);
            assert!(
                bytes > 1024,
                "a dropped window is over the 1 KB budget: {bytes}"
            );
        }
        other => panic!("{other:?}"),
    }
    let (_, metrics) = get(&a.url("/metrics"));
    assert!(
        metrics.lines().any(
            |l| l.starts_with("outpost_agent_telemetry_windows_dropped_total ")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(a.state.telemetry.outbox().is_empty());
}

#[test]
fn a_clean_stop_keeps_the_open_window_for_the_next_run() {
    let device = "mqtt-stop";
    let Some((broker, obs, _client, w)) = setup(device) else {
        return;
    };
    // A window far longer than the test: only the stop can seal it.
    let config = w.config_edited(device, broker.port, "window_secs = 1", "window_secs = 3600");
    let a = Running::start(config.clone());
    obs.next_where(T, |t, _| t.ends_with("/birth"));
    infer_rows(&a, 4);
    drop(a);
    obs.next_where(T, |t, _| t.ends_with("/death"));
    // The next run publishes it from the persisted outbox.
    let _a = Running::start(config);
    let got = windows_until(&obs, 4, &[]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.key.length, 3600);
}

#[test]
fn feedback_reaches_the_window_as_accuracy_per_segment() {
    let device = "mqtt-feedback";
    let Some((broker, obs, _client, w)) = setup(device) else {
        return;
    };
    let config = w.config_edited(device, broker.port, "window_secs = 1", "window_secs = 3600");
    let a = Running::start(config);
    obs.next_where(T, |t, _| t.ends_with("/birth"));
    let (rows, labels) = digits(10);
    let mut body = request(&rows);
    body["segment"] = serde_json::json!("line-a");
    let (s, b) = post_json(&a.url("/v1/models/digits/infer"), &body);
    assert_eq!(s, 200, "{b}");
    let given: Vec<serde_json::Value> = labels.iter().map(|y| serde_json::json!(y)).collect();
    let (s, fb) = post_json(
        &a.url("/v1/feedback"),
        &serde_json::json!({"request_id": b["request_id"], "labels": given}),
    );
    assert_eq!(s, 200, "{fb}");
    let correct = fb["correct"].as_u64().unwrap();
    drop(a); // seals the open window
    let a = Running::start(w.config(device, broker.port, ""));
    let got = windows_until(&obs, 10, &[]);
    let profile = &got[0].1.profile;
    assert_eq!(profile.feedback.total(), 10);
    assert_eq!(profile.feedback.correct(), correct);
    let seg = &profile.segments["line-a"];
    assert_eq!((seg.requests, seg.feedback.total()), (10, 10));
    drop(a);
}

#[test]
fn bins_only_profiles_carry_no_sketches() {
    let device = "mqtt-bins-only";
    let Some((broker, obs, _client, w)) = setup(device) else {
        return;
    };
    let config = w.config_edited(
        device,
        broker.port,
        "window_secs = 1",
        "window_secs = 1\nkll_k = 0",
    );
    let a = Running::start(config);
    obs.next_where(T, |t, _| t.ends_with("/birth"));
    infer_rows(&a, 6);
    for (_, p) in windows_until(&obs, 6, &[]) {
        assert!(p.profile.columns.iter().all(|c| c.kll().is_none()));
    }
}
