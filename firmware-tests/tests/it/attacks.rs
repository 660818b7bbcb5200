//! Scenario 4: the trust attacks of the protocol, end to end through the
//! broker and the download path, against a running agent: an attacker on
//! the broker replays, forges and alters directives; a compromised mirror
//! serves altered artifacts. Every one is refused, counted by check in the
//! agent's `/metrics` and reported as a `verification_failed` event on the
//! device's events topic; the verified model keeps serving.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use outpost_fleet::harness::DIGITS_X;
use outpost_protocol::bytes::Sha256;
use outpost_protocol::codec;
use outpost_protocol::messages::{Command, DeviceMessage, EventKind};
use outpost_protocol::topic::{DeviceId, TopicKind};
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::{
    Directive, DirectiveAction, GraceAction, OfflineGrace, Probation, ReleaseMetadata, Role,
    Selector, Signed, TargetRef,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::rollouts::refused;
use crate::support::*;

/// A mirror serving altered copies of a package: `/tampered` (one byte
/// flipped), `/endless` (more bytes than signed).
fn evil_mirror(original: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // The rest of the request head.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let mut body = original.clone();
            if line.contains("/tampered") {
                let mid = body.len() / 2;
                body[mid] ^= 0x55;
            } else if line.contains("/endless") {
                body.extend(std::iter::repeat_n(0u8, 64 * 1024));
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

/// The attacker's view of the broker: every command and every event.
pub struct Spy {
    client: Client,
    rx: std::sync::mpsc::Receiver<(String, Vec<u8>)>,
}

impl Spy {
    pub fn connect(mqtt: &str) -> Spy {
        let (host, port) = mqtt.rsplit_once(':').unwrap();
        let mut o = MqttOptions::new("spy", host, port.parse().unwrap());
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut conn) = Client::new(o, 64);
        let (tx, rx) = std::sync::mpsc::channel();
        let (acked_tx, acked) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = acked_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic, p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        for t in [
            "outpost/v1/devices/+/commands",
            "outpost/v1/devices/+/events",
        ] {
            client.subscribe(t, QoS::AtLeastOnce).unwrap();
            acked.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        Spy { client, rx }
    }

    /// The next message on a topic ending in `suffix`, within 60 s.
    fn next(&self, suffix: &str) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((t, p)) = self.rx.recv_timeout(Duration::from_millis(100))
                && t.ends_with(suffix)
            {
                return p;
            }
        }
        panic!("nothing on …{suffix} within 60 s");
    }

    /// Waits (60 s at most) for an event of `device` that `wanted` accepts.
    pub fn event(&self, device: &str, wanted: impl Fn(&EventKind) -> bool) -> EventKind {
        let deadline = Instant::now() + Duration::from_secs(60);
        let topic = format!("{device}/events");
        while Instant::now() < deadline {
            let Ok((t, p)) = self.rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if !t.ends_with(&topic) {
                continue;
            }
            if let Ok(DeviceMessage::Event(e)) = DeviceMessage::decode(TopicKind::Events, &p)
                && wanted(&e.kind)
            {
                return e.kind;
            }
        }
        panic!("{device} reported no such event within 60 s");
    }

    /// Waits for `device`'s `verification_failed` event naming `check`;
    /// returns its detail.
    fn refusal(&self, device: &str, check: &str) -> String {
        let kind = self.event(
            device,
            |k| matches!(k, EventKind::VerificationFailed { check: seen, .. } if seen == check),
        );
        match kind {
            EventKind::VerificationFailed { detail, .. } => detail,
            _ => String::new(),
        }
    }

    fn publish(&self, device: &str, cmd: &Command) {
        self.client
            .publish(
                format!("outpost/v1/devices/{device}/commands"),
                QoS::AtLeastOnce,
                false,
                codec::encode(cmd).unwrap(),
            )
            .unwrap();
    }
}

fn now() -> u64 {
    outpost_fleet::clock::now_unix()
}

fn target(pkg: &Path, version: &str) -> TargetRef {
    let bytes = std::fs::read(pkg).unwrap();
    TargetRef {
        name: "digits".into(),
        version: version.into(),
        sha256: Sha256::of(&bytes),
        length: bytes.len() as u64,
    }
}

fn directive(sequence: u64, device: &str, action: DirectiveAction, expires: u64) -> Directive {
    Directive {
        sequence,
        selector: Selector::Device(DeviceId::new(device).unwrap()),
        action,
        rollout: None,
        issued_at: now(),
        expires,
        offline_grace: OfflineGrace {
            max_offline_secs: 3_600,
            then: GraceAction::RollBack,
        },
    }
}

fn release(pkg: &Path) -> Signed<ReleaseMetadata> {
    let bytes = std::fs::read(pkg.with_extension("release")).unwrap();
    codec::decode(&bytes, 1 << 20).unwrap()
}

#[test]
fn scenario_4_trust_attacks_end_to_end_are_refused_and_reported() {
    let Some(f) = fleet(3) else {
        return;
    };
    let spy = Spy::connect(&f.mqtt);
    let reference = f.opts.dir.join("digits_test_x.npy");
    std::fs::write(&reference, DIGITS_X).unwrap();
    let v1 = f
        .package(&digits("mlp_qdq_pc.onnx"), "1.0.0", &reference)
        .unwrap();
    let v2 = f
        .package(&digits("mlp_qdq_pt.onnx"), "1.1.0", &reference)
        .unwrap();
    f.register(&v1, "1.0.0").unwrap();
    f.cli(Some(&f.operator), &["model", "deploy", "digits", "1.0.0"])
        .unwrap();
    // The eavesdropped deploy of dev-001.
    let captured: Command = loop {
        let p = spy.next("/commands");
        let cmd: Command = codec::decode(&p, 1 << 20).unwrap();
        let d = cmd.directive.decode_unverified().unwrap();
        if d.selector == Selector::Device(DeviceId::new("dev-001").unwrap()) {
            break cmd;
        }
    };
    f.wait_serving(&f.ids, "1.0.0")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    let last = captured.directive.decode_unverified().unwrap().sequence;

    let director = SigningKey::read(&f.keys.join("director.pk8")).unwrap();
    let rogue = SigningKey::generate().unwrap();
    let sign = |d: &Directive, k: &SigningKey| keys::sign(d, Role::Director, &[k]).unwrap();
    let deploy = |t: TargetRef| DirectiveAction::Deploy {
        target: t,
        probation: Probation::None,
    };
    let t2 = target(&v2, "1.1.0");
    let mirror = evil_mirror(std::fs::read(&v2).unwrap());
    let later = now() + 3_600;
    let cmd = |directive, release, url: Option<String>| Command {
        directive,
        release,
        artifact_url: url,
    };
    let mut seq = last + 1_000;
    let mut next = || {
        seq += 1;
        seq
    };

    // Each attack, the check it must fail, and the command.
    let mut attacks: Vec<(&str, &str, Command)> = vec![];
    attacks.push((
        "replay of the eavesdropped deploy",
        "replay",
        captured.clone(),
    ));
    let mut altered = captured.clone();
    let mut d = altered.directive.decode_unverified().unwrap();
    d.sequence = next();
    altered.directive = Signed::from_parts(
        Signed::<Directive>::payload_of(&d).unwrap(),
        altered.directive.signatures.clone(),
    );
    attacks.push(("the deploy altered in flight", "bad_signature", altered));
    attacks.push((
        "a directive signed by a key the root does not know",
        "unknown_key",
        cmd(
            sign(
                &directive(next(), "dev-001", deploy(t2.clone()), later),
                &rogue,
            ),
            Some(release(&v2)),
            Some(format!("{}/v1/artifacts/{}", f.server, t2.sha256.to_hex())),
        ),
    ));
    attacks.push((
        "an expired directive (freeze)",
        "expired",
        cmd(
            sign(
                &directive(next(), "dev-001", deploy(t2.clone()), now() - 60),
                &director,
            ),
            Some(release(&v2)),
            None,
        ),
    ));
    attacks.push((
        "a directive for another device",
        "wrong_device",
        cmd(
            sign(
                &directive(next(), "dev-002", deploy(t2.clone()), later),
                &director,
            ),
            Some(release(&v2)),
            None,
        ),
    ));
    attacks.push((
        "a deploy without release metadata",
        "release_missing",
        cmd(
            sign(
                &directive(next(), "dev-001", deploy(t2.clone()), later),
                &director,
            ),
            None,
            None,
        ),
    ));
    attacks.push((
        "1.1.0's directive carrying 1.0.0's release metadata",
        "not_in_release",
        cmd(
            sign(
                &directive(next(), "dev-001", deploy(t2.clone()), later),
                &director,
            ),
            Some(release(&v1)),
            None,
        ),
    ));
    let mut forged = t2.clone();
    forged.length += 1;
    attacks.push((
        "a directive whose length differs from the release's",
        "mix_and_match",
        cmd(
            sign(
                &directive(next(), "dev-001", deploy(forged), later),
                &director,
            ),
            Some(release(&v2)),
            None,
        ),
    ));
    attacks.push((
        "a tampered artifact from the mirror",
        "hash_mismatch",
        cmd(
            sign(
                &directive(next(), "dev-001", deploy(t2.clone()), later),
                &director,
            ),
            Some(release(&v2)),
            Some(format!("{mirror}/tampered")),
        ),
    ));
    attacks.push((
        "endless data from the mirror",
        "endless_data",
        cmd(
            sign(
                &directive(next(), "dev-001", deploy(t2.clone()), later),
                &director,
            ),
            Some(release(&v2)),
            Some(format!("{mirror}/endless")),
        ),
    ));

    let started = Instant::now();
    let mut refused_checks = vec![];
    for (what, check, command) in &attacks {
        spy.publish("dev-001", command);
        let detail = spy.refusal("dev-001", check);
        refused_checks.push(format!("{check} ({what}: {detail})"));
    }
    // Counted by check in the agent's metrics.
    let api = &f.apis[0];
    for (_, check, _) in &attacks {
        assert!(
            refused(api, &format!("check=\"{check}\"")) >= 1,
            "{check} not counted"
        );
    }
    // Nothing was installed: 1.0.0 serves, no candidate, on every device.
    f.wait_gone(&f.ids, "1.1.0").unwrap();
    f.wait_serving(&f.ids, "1.0.0").unwrap();
    println!(
        "SUMMARY scenario 4: {} attacks through the broker and a mirror, all refused in {:.1} s and reported as events and metrics: {}; 1.0.0 still serves on every device",
        attacks.len(),
        started.elapsed().as_secs_f64(),
        refused_checks
            .iter()
            .map(|c| c.split(" (").next().unwrap_or(c))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for c in &refused_checks {
        println!("  refused: {c}");
    }
}
