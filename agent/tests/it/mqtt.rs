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
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let device = "mqtt-birth";
    let prefix = format!("outpost/v1/devices/{device}");
    let (obs, client) = Observer::start(broker.port, &format!("{prefix}/#"));
    let w = World::new();
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
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/events"));
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
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/events"));
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
    let (_, p) = obs.next_where(T, |t, _| t.ends_with("/events"));
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
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let device = "mqtt-kill";
    let (obs, _client) = Observer::start(broker.port, &format!("outpost/v1/devices/{device}/#"));
    let w = World::new();
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
