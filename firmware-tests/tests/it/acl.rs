//! Scenario 5: the fleet on Mosquitto with TLS client certificates (the
//! certificate's CN is the device id) and an ACL under which a device
//! publishes only under its own topics. A device that publishes as another
//! device is refused by the broker; a window it re-sends on its own topic
//! naming another device is refused by the server as forged. Every window
//! the devices sealed is stored once, and nothing else.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use outpost_agent::config::TlsConfig;
use outpost_fleet::harness::{Mosquitto, Pki, SERVER_IDENTITY, device_id, metric_sum};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

use crate::rollouts::deployed;
use crate::support::*;

/// The broker's ACL: the sample the project ships (`agent/dist/mosquitto.acl`:
/// the server reads and writes everything of the protocol; a device writes
/// its own birth, death, telemetry, events and state, and reads its own
/// commands), and an observer (this test) that reads the devices' topics.
fn acl() -> String {
    let shipped = std::fs::read_to_string(repo("agent/dist/mosquitto.acl")).unwrap();
    assert!(shipped.contains(&format!("user {SERVER_IDENTITY}\n")));
    format!("{shipped}\nuser observer\ntopic read outpost/v1/devices/#\n")
}

/// An MQTT client over TLS holding `cert`'s identity; its messages arrive
/// on the returned channel as (topic, payload).
fn client(
    pki: &Pki,
    port: u16,
    client_id: &str,
    cert: &str,
) -> (Client, mpsc::Receiver<(String, Vec<u8>)>) {
    let (pem, key) = pki.client(cert).unwrap();
    let tls = outpost_agent::mqtt::tls_config(&TlsConfig {
        ca: pki.ca(),
        client: Some((pem, key)),
    })
    .unwrap();
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(4 << 20, 4 << 20);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::clone(&tls),
    )));
    let (client, mut conn) = Client::new(o, 64);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    (client, rx)
}

/// The next message on `rx` that `f` accepts, within `timeout`.
fn next_where(
    rx: &mpsc::Receiver<(String, Vec<u8>)>,
    timeout: Duration,
    mut f: impl FnMut(&str, &[u8]) -> bool,
) -> (String, Vec<u8>) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, p)) if f(&t, &p) => return (t, p),
            Ok(_) => {}
            Err(e) => panic!("no such message within {timeout:?}: {e}"),
        }
    }
}

fn forged(f: &TestFleet) -> u64 {
    metric_sum(
        &format!("{}/metrics", f.server),
        "outpost_mqtt_rejected_total",
        "reason=\"forged\"",
    )
    .unwrap()
}

#[test]
fn scenario_5_a_device_cannot_publish_as_another_and_forged_telemetry_is_ignored() {
    if Mosquitto::binary().is_none() {
        skip_or_fail("mosquitto is not installed (apt install mosquitto)");
        return;
    }
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = match Pki::new(pki_dir.path()) {
        Ok(p) => p,
        Err(e) => {
            skip_or_fail(&format!("openssl could not make the test PKI: {e:#}"));
            return;
        }
    };
    let n = fleet_size();
    let tls = pki.fleet((1..=n).map(device_id)).unwrap();
    let log = pki_dir.path().join("mosquitto.log");
    // Mosquitto logs each publish its ACL denies (at debug level).
    let conf = format!(
        "{}log_dest file {}\nlog_type all\n",
        pki.mosquitto_conf(&acl()).unwrap(),
        log.display()
    );
    let broker = Mosquitto::start(&conf).unwrap();
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let Some(f) = fleet_with(n, |o| {
        o.broker = Some(url);
        o.tls = Some(tls);
    }) else {
        return;
    };
    // Every device reaches the server through its own certificate.
    let (traffic, _) = deployed(&f);
    f.wait("a window from every device", || {
        Ok((stored(&f).len() == n).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));

    let (observer, seen) = client(&pki, broker.port, "observer", "observer");
    observer
        .subscribe("outpost/v1/devices/#", QoS::AtLeastOnce)
        .unwrap();
    let (_, window) = next_where(&seen, Duration::from_secs(60), |t, _| {
        t == "outpost/v1/devices/dev-002/telemetry"
    });

    // dev-001's certificate, under a client id of its own (its agent stays
    // connected), publishes as dev-002: a replay of dev-002's window, and
    // a birth with a session dev-002 never had.
    let birth =
        outpost_protocol::messages::DeviceMessage::Birth(outpost_protocol::messages::Birth {
            session: 4_242_424_242,
            at: 1,
            agent_version: "impostor".into(),
            target: "kiosk".into(),
            arch: std::env::consts::ARCH.into(),
            models: vec![],
            root_version: 1,
            last_directive: 0,
        })
        .encode(outpost_protocol::messages::Encoding::Postcard)
        .unwrap();
    let forged_before = forged(&f);
    let (rogue, _) = client(&pki, broker.port, "dev-001-impostor", "dev-001");
    let as_other = [
        ("outpost/v1/devices/dev-002/telemetry", window.clone()),
        ("outpost/v1/devices/dev-002/birth", birth.clone()),
    ];
    for (topic, payload) in &as_other {
        rogue
            .publish(*topic, QoS::AtLeastOnce, false, payload.clone())
            .unwrap();
    }
    // Then, on its own topic, dev-002's window: the broker lets it through,
    // the server must not count it. It comes after the two above on the
    // same connection, so when the observer has it, they would have come.
    rogue
        .publish(
            "outpost/v1/devices/dev-001/telemetry",
            QoS::AtLeastOnce,
            false,
            window.clone(),
        )
        .unwrap();
    let mut leaked = vec![];
    next_where(&seen, Duration::from_secs(60), |t, p| {
        // dev-002's own window went by before; its agent sends each once.
        if as_other.iter().any(|(topic, b)| t == *topic && p == b) {
            leaked.push(t.to_owned());
        }
        t == "outpost/v1/devices/dev-001/telemetry" && p == window
    });
    assert!(leaked.is_empty(), "the broker let through {leaked:?}");
    let denied = f
        .wait("the broker to log its denials", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains("Denied PUBLISH from dev-001-impostor"))
                .map(str::to_owned)
                .collect();
            Ok((lines.len() >= as_other.len()).then_some(lines))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    for (topic, _) in &as_other {
        assert!(
            denied.iter().any(|l| l.contains(&format!("'{topic}'"))),
            "no denial of {topic} in {denied:?}"
        );
    }
    let refused = f
        .wait("the server to refuse the forged window", || {
            let n = forged(&f);
            Ok((n > forged_before).then_some(n - forged_before))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    assert_eq!(refused, 1, "one forged window");
    // dev-002 kept its own session in the inventory.
    let dev2 = f
        .devices()
        .unwrap()
        .into_iter()
        .find(|d| d["id"] == "dev-002")
        .unwrap();
    assert_ne!(dev2["session"], 4_242_424_242u64, "{dev2}");

    // Stop the apps: every window each device sealed is stored once, and
    // neither dev-001 nor dev-002 has one more.
    let answered = traffic.answered();
    drop(traffic);
    let (sealed, at_server) = every_window_at_server(&f);
    drop(rogue);
    println!(
        "SUMMARY scenario 5: {n} devices on Mosquitto with TLS client certificates (CN = device id) and a per-device ACL; \
         dev-001's certificate publishing as dev-002 (telemetry replay, birth): {} publishes denied by the broker, 0 reached the server or an observer; \
         dev-002's window re-sent on dev-001's own topic: refused by the server as forged ({refused}), not stored; \
         {} windows sealed, {} stored (per device equal); {answered} requests answered",
        denied.len(),
        sealed.values().sum::<u64>(),
        at_server.values().sum::<u64>(),
    );
}
