//! Commands that arrive while the update thread is in a slow download: they
//! are handled at once (the download stops between reads and the core
//! pauses it), in order, and none is lost. A newer deploy supersedes the
//! download without installing it; anything else lets it resume where it
//! stopped.

use std::io::{BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_protocol::codec;
use outpost_protocol::messages::{Birth, Event, EventKind, InstallStep};
use outpost_protocol::trust::{DirectiveAction, Probation, TargetMeta};

use crate::common::*;
use crate::download::serve;

const T: Duration = Duration::from_secs(30);

/// A raw HTTP server that trickles `data` (honouring `Range`) so that a
/// download takes about six seconds, and records each request's range
/// start. Its threads end with the connections; the listener's with the
/// test process.
fn trickle_server(data: Vec<u8>) -> (String, Arc<Mutex<Vec<usize>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let starts = Arc::new(Mutex::new(vec![]));
    let seen = starts.clone();
    let chunk = (data.len() / 600).max(64);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (data, seen) = (data.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let start = request_range_start(&mut reader);
                let start = start.min(data.len());
                seen.lock().unwrap().push(start);
                let status = if start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{}\r\nconnection: close\r\n\r\n",
                    data.len() - start,
                    data.len() - 1,
                    data.len()
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for c in data[start..].chunks(chunk) {
                    if stream.write_all(c).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
    });
    (format!("http://{addr}"), starts)
}

struct Setup {
    obs: Observer,
    client: rumqttc::AsyncClient,
    w: World,
    a: Running,
    _broker: Mosquitto,
    device: &'static str,
}

impl Setup {
    fn new(device: &'static str) -> Option<Setup> {
        let broker = Mosquitto::start()?;
        let w = World::new();
        let (obs, client) = Observer::start(broker.port, &format!("outpost/v1/devices/{device}/#"));
        let a = Running::start(w.config(device, broker.port, ""));
        obs.next_where(T, |t, _| t.ends_with("/birth"));
        Some(Setup {
            obs,
            client,
            w,
            a,
            _broker: broker,
            device,
        })
    }

    fn send(&self, seq: u64, action: DirectiveAction, targets: &[TargetMeta], url: Option<String>) {
        Observer::publish(
            &self.client,
            &format!("outpost/v1/devices/{}/commands", self.device),
            signed_command(&self.w, self.device, seq, action, targets, url),
        );
    }

    /// Bytes of `t` downloaded so far (its `.part` file).
    fn part_len(&self, t: &TargetMeta) -> u64 {
        let part = self.w.dir.path().join(format!(
            "data-{}/update/downloads/{}.part",
            self.device,
            t.sha256.to_hex()
        ));
        std::fs::metadata(part).map(|m| m.len()).unwrap_or(0)
    }

    /// Starts a deploy of `t` from the trickling server and waits until
    /// its download is under way.
    fn slow_deploy(&self, seq: u64, t: &TargetMeta, base: &str) {
        let deploy = DirectiveAction::Deploy {
            target: t.reference(),
            probation: Probation::None,
        };
        self.send(
            seq,
            deploy,
            std::slice::from_ref(t),
            Some(format!("{base}/x")),
        );
        wait_for("the download under way", T, || {
            (self.part_len(t) > 0).then_some(())
        });
    }

    fn serving(&self) -> (String, Option<String>) {
        let (a, p) = self.a.state.host.slots_of("digits").unwrap();
        (a.version.clone(), p.map(|p| p.version.clone()))
    }
}

/// The next event on `obs`, or a birth (as `None`).
fn next_event_or_birth(obs: &Observer) -> Option<Event> {
    let (t, p) = obs.next_where(T, |t, _| t.ends_with("/events") || t.ends_with("/birth"));
    if t.ends_with("/birth") {
        let _: Birth = codec::decode(&p, 1 << 16).unwrap();
        return None;
    }
    Some(codec::decode(&p, 1 << 16).unwrap())
}

fn is_step(ev: &Event, version: &str, want: fn(&InstallStep) -> bool) -> bool {
    matches!(&ev.kind, EventKind::Install { model, step, .. } if model.version == version && want(step))
}

#[test]
fn a_newer_deploy_during_a_slow_download_supersedes_it_without_installing_it() {
    let Some(s) = Setup::new("wait-supersede") else {
        return;
    };
    let v2 = package_bytes("digits", "2.0.0");
    let t2 = s.w.target("digits", "2.0.0", &v2);
    let (slow, _) = trickle_server(v2);
    let v3 = package_bytes("digits", "3.0.0");
    let t3 = s.w.target("digits", "3.0.0", &v3);
    let fast = serve(v3);

    s.slow_deploy(1, &t2, &slow);
    s.send(
        2,
        DirectiveAction::Deploy {
            target: t3.reference(),
            probation: Probation::None,
        },
        std::slice::from_ref(&t3),
        Some(format!("{}/ok", fast.base)),
    );
    // Until 3.0.0 is committed: 2.0.0 is given up as superseded and never
    // gets past its download.
    let mut superseded = false;
    loop {
        let Some(ev) = next_event_or_birth(&s.obs) else {
            continue;
        };
        assert!(
            !is_step(&ev, "2.0.0", |st| matches!(
                st,
                InstallStep::Verified | InstallStep::Staged | InstallStep::Committed
            )),
            "the superseded download went on to be installed: {ev:?}"
        );
        if let EventKind::RolledBack { from, reason, .. } = &ev.kind {
            assert_eq!(from.version, "2.0.0");
            assert!(reason.starts_with("superseded"), "{reason}");
            superseded = true;
        }
        if is_step(&ev, "3.0.0", |st| matches!(st, InstallStep::Committed)) {
            break;
        }
    }
    assert!(superseded, "no RolledBack event for the superseded job");
    // 2.0.0 never served: the previous model is still 1.0.0.
    wait_for("3.0.0 serving", T, || {
        (s.serving().0 == "3.0.0").then_some(())
    });
    assert_eq!(s.serving(), ("3.0.0".into(), Some("1.0.0".into())));
    assert_eq!(
        s.part_len(&t2),
        0,
        "the superseded download's file is deleted"
    );
}

#[test]
fn a_command_during_a_slow_download_is_handled_at_once_and_the_download_resumes() {
    let Some(s) = Setup::new("wait-resume") else {
        return;
    };
    let v2 = package_bytes("digits", "2.0.0");
    let t2 = s.w.target("digits", "2.0.0", &v2);
    let (slow, starts) = trickle_server(v2);

    s.slow_deploy(1, &t2, &slow);
    // A rebirth while it downloads: answered before the download ends.
    s.send(2, DirectiveAction::Rebirth, &[], None);
    let mut reborn = false;
    loop {
        let Some(ev) = next_event_or_birth(&s.obs) else {
            reborn = true;
            continue;
        };
        if is_step(&ev, "2.0.0", |st| matches!(st, InstallStep::Verified)) {
            assert!(reborn, "the rebirth waited for the download's end");
        }
        if is_step(&ev, "2.0.0", |st| matches!(st, InstallStep::Committed)) {
            break;
        }
    }
    assert!(reborn);
    wait_for("2.0.0 serving", T, || {
        (s.serving().0 == "2.0.0").then_some(())
    });
    assert_eq!(s.serving(), ("2.0.0".into(), Some("1.0.0".into())));
    // Stopped and resumed from the bytes it had, not started over.
    let starts = starts.lock().unwrap().clone();
    assert!(
        starts.len() >= 2 && starts[0] == 0 && starts[1..].iter().all(|s| *s > 0),
        "range starts {starts:?}"
    );
}

#[test]
fn a_retire_during_a_slow_download_discards_it_and_retires_the_model() {
    let Some(s) = Setup::new("wait-retire") else {
        return;
    };
    let v2 = package_bytes("digits", "2.0.0");
    let t2 = s.w.target("digits", "2.0.0", &v2);
    let (slow, _) = trickle_server(v2);

    s.slow_deploy(1, &t2, &slow);
    s.send(
        2,
        DirectiveAction::Retire {
            model: "digits".into(),
        },
        &[],
        None,
    );
    let mut superseded = false;
    loop {
        let Some(ev) = next_event_or_birth(&s.obs) else {
            continue;
        };
        assert!(
            !is_step(&ev, "2.0.0", |st| matches!(
                st,
                InstallStep::Verified | InstallStep::Committed
            )),
            "the download went on to be installed: {ev:?}"
        );
        match &ev.kind {
            EventKind::RolledBack { from, reason, .. } if from.version == "2.0.0" => {
                assert!(reason.starts_with("superseded"), "{reason}");
                superseded = true;
            }
            EventKind::RolledBack {
                from, to, reason, ..
            } if from.version == "1.0.0" => {
                assert!(to.is_none() && reason.starts_with("retired"), "{reason}");
                break;
            }
            _ => {}
        }
    }
    assert!(superseded, "no RolledBack event for the discarded download");
    wait_for("digits unloaded", T, || {
        s.a.state.host.slots_of("digits").is_none().then_some(())
    });
    assert_eq!(s.part_len(&t2), 0);
}
