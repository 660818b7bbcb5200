//! Scenario 9: garbage on every topic the server and the agents subscribe
//! to — random bytes, oversized payloads, unknown wire versions, valid
//! messages of the wrong kind — crashes nothing and is counted in
//! `/metrics`; the devices keep serving.

use std::time::{Duration, Instant};

use outpost_protocol::messages::{DeviceMessage, Encoding};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::rollouts::refused;
use crate::support::*;

/// Deterministic pseudo-random bytes (xorshift), so a failure replays.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn server_rejected(f: &TestFleet) -> u64 {
    outpost_fleet::harness::metric_sum(
        &format!("{}/metrics", f.server),
        "outpost_mqtt_rejected_total",
        "",
    )
    .unwrap()
}

#[test]
fn scenario_9_garbage_on_every_topic_is_counted_and_crashes_nothing() {
    let Some(mut f) = fleet(4) else {
        return;
    };
    let (host, port) = f.mqtt.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new("garbage-test", host, port.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut conn) = Client::new(o, 256);
    let pump = std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(Event::Incoming(Packet::Disconnect)) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
                _ => {}
            }
        }
    });
    // A valid birth, wrong kind for a command topic and for a state topic.
    let birth = DeviceMessage::Birth(outpost_protocol::messages::Birth {
        session: 1,
        at: 1,
        agent_version: "0".into(),
        target: "kiosk".into(),
        arch: "x86_64".into(),
        models: vec![],
        root_version: 1,
        last_directive: 0,
    })
    .encode(Encoding::Postcard)
    .unwrap();
    let mut payloads: Vec<Vec<u8>> = (0..8)
        .map(|i| noise(i + 1, 1 + (i as usize) * 97))
        .collect();
    payloads.push(vec![]);
    payloads.push(vec![0x7f, 1, 2, 3]); // unknown wire version
    payloads.push(b"{\"not\": \"a message\"}".to_vec());
    payloads.push(birth.clone());
    // Past every per-topic limit, within the broker's packet limit.
    payloads.push(noise(99, (1 << 20) + 4096));
    let kinds = ["birth", "death", "telemetry", "events", "state", "commands"];
    let mut sent = 0u64;
    for id in &f.ids {
        for kind in kinds {
            for p in &payloads {
                // A well-formed birth on the birth topic is no garbage.
                if kind == "birth" && *p == birth {
                    continue;
                }
                client
                    .publish(
                        format!("outpost/v1/devices/{id}/{kind}"),
                        QoS::AtLeastOnce,
                        false,
                        p.clone(),
                    )
                    .unwrap();
                sent += 1;
            }
        }
    }
    let agent_kinds = payloads.len() as u64 * f.ids.len() as u64;
    let server_kinds = sent - agent_kinds;
    // The server counts what it refused; each agent reports every refused
    // command (as a metric and as an event).
    let started = Instant::now();
    let counted = f
        .wait("the garbage to be counted", || {
            let server = server_rejected(&f);
            let agents: u64 = f.apis.iter().map(|a| refused(a, "")).sum();
            Ok((server >= server_kinds / 2 && agents >= agent_kinds).then_some((server, agents)))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    let _ = client.disconnect();
    let _ = pump.join();
    // Nothing died, and every device still answers.
    if let Some(dead) = f.fleet.procs.exited() {
        panic!("{dead}\n{}", logs(&f.opts.dir));
    }
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let health = f
        .apis
        .iter()
        .filter(|api| {
            http.get(format!("http://{api}/healthz"))
                .call()
                .is_ok_and(|r| r.status() == 200)
        })
        .count();
    assert_eq!(health, f.apis.len());
    let v = f.get("/readyz");
    assert!(v.is_ok(), "the server still answers: {v:?}");
    println!(
        "SUMMARY scenario 9: {sent} garbage messages on {} topic kinds of {} devices; server rejected {} (counted in outpost_mqtt_rejected_total), agents refused {} commands (outpost_agent_commands_refused_total) within {:.1} s; every process alive, {health}/{} devices healthy",
        kinds.len(),
        f.ids.len(),
        counted.0,
        counted.1,
        started.elapsed().as_secs_f64(),
        f.apis.len()
    );
}
