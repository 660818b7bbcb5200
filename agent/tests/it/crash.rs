//! The real agent killed with SIGKILL at randomized points while it
//! installs, probations, commits and rolls back signed models it receives
//! over MQTT and downloads over a slow HTTP link. After every restart:
//! a verified model serves, every installed package file is whole (its
//! digest is its name), what serves is what the pointer file (or the
//! running canary) names, and the trust state never goes backwards.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outpost_protocol::codec;
use outpost_protocol::messages::Command;
use outpost_protocol::trust::keys;
use outpost_protocol::trust::*;

use crate::common::*;

const T: Duration = Duration::from_secs(30);

/// Crash points in one run (the issue asks for at least 100 in CI);
/// `OUTPOST_CRASH_POINTS` sets more for longer runs.
fn points() -> usize {
    std::env::var("OUTPOST_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// A raw HTTP server that honours `Range` and sends the body slowly (4 KiB
/// every 3 ms), so kills land in the middle of downloads too.
fn slow_server(packages: BTreeMap<String, Vec<u8>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let packages = packages.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut path, mut start) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(rest) = line.strip_prefix("GET ") {
                        path = rest.split(' ').next().unwrap_or("").to_owned();
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = r.trim().trim_end_matches('-').parse().unwrap_or(0);
                    }
                }
                let Some(data) = packages.get(path.trim_start_matches('/')) else {
                    let _ =
                        stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                    return;
                };
                let start = start.min(data.len());
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{}\r\nconnection: close\r\n\r\n",
                        data.len() - start,
                        data.len().saturating_sub(1),
                        data.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        data.len()
                    )
                };
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for chunk in data[start..].chunks(4096) {
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
            });
        }
    });
    format!("http://{addr}")
}

/// The agent process, its API address read from its log.
struct Agent {
    child: ChildGuard,
    api: String,
}

fn start_agent(config: &Path) -> Agent {
    let mut child = ChildGuard(
        Process::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    // Both streams are drained until the process ends (a full pipe would
    // block the agent).
    for stream in [
        child
            .0
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .0
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                // Kept in the test's output for a failure's diagnosis.
                if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("agent: {line}");
                }
                if line.contains("local API listening")
                    && let Some(addr) = line.split("local=").nth(1)
                {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
    }
    let api = rx
        .recv_timeout(T)
        .expect("the agent did not log its API address");
    Agent {
        child,
        api: format!("http://{api}"),
    }
}

/// The persisted step's name in `record.json` (what the crash cut).
fn persisted_step(data: &Path) -> String {
    let Ok(bytes) = std::fs::read(data.join("update/record.json")) else {
        return "no record".into();
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("record.json is whole");
    match &v["state"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
        other => format!("{other}"),
    }
}

fn record_sequence(data: &Path) -> u64 {
    std::fs::read(data.join("update/record.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["trust"]["last_sequence"].as_u64())
        .unwrap_or(0)
}

/// Every installed package's digest is its file name: no partial file is
/// ever where the agent loads from.
fn packages_are_whole(data: &Path) -> usize {
    let dir = data.join("update/packages");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert_eq!(
            outpost_protocol::bytes::Sha256::of(&bytes).to_hex(),
            stem,
            "{} is not whole",
            path.display()
        );
        n += 1;
    }
    n
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn sigkill_at_random_points_during_updates_always_restarts_to_a_verified_model() {
    let device = "crash-dev";
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let w = World::new();
    let versions = ["1.0.0", "2.0.0", "3.0.0"];
    let packages: Vec<Vec<u8>> = versions
        .iter()
        .map(|v| {
            if *v == "1.0.0" {
                w.package.clone()
            } else {
                package_bytes("digits", v)
            }
        })
        .collect();
    let targets: Vec<TargetMeta> = versions
        .iter()
        .zip(&packages)
        .map(|(v, p)| w.target("digits", v, p))
        .collect();
    let base = slow_server(
        versions
            .iter()
            .zip(&packages)
            .map(|(v, p)| (v.to_string(), p.clone()))
            .collect(),
    );
    let release = keys::sign(
        &ReleaseMetadata {
            version: 1,
            expires: now() + 86_400,
            targets: targets.clone(),
        },
        Role::Release,
        &[&w.release_key],
    )
    .unwrap();
    let config = w.config_file(device, broker.port);
    let data = w.dir.path().join(format!("data-{device}"));
    let (_obs, client) = Observer::start(broker.port, "outpost/v1/devices/+/state");
    let command_topic = format!("outpost/v1/devices/{device}/commands");

    // A fixed seed: the same run every time, printed for reproduction.
    let seed = 0x5eed_0fc4_a5a5_u64;
    let mut rng = Rng(seed);
    let mut sequence = 0u64;
    let mut last_sequence = 0u64;
    let mut steps: BTreeMap<String, usize> = BTreeMap::new();
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let http = http();
    let (rows, _) = digits(1);
    let started = Instant::now();
    let n = points();
    for i in 0..=n {
        let agent = start_agent(&config);
        // After every restart: a verified model answers.
        wait_for("readyz", T, || {
            http.get(format!("{}/readyz", agent.api))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
        });
        let (status, body) = post_json(
            &format!("{}/v1/models/digits/infer", agent.api),
            &request(&rows),
        );
        assert_eq!(status, 200, "point {i}: {body}");
        let version = body["version"].as_str().unwrap().to_owned();
        assert!(versions.contains(&version.as_str()), "{version}");
        // What serves is the committed pointer's model, or a canary the
        // record has on probation. The restored update's first drive runs
        // beside this check (a commit redone, a probation restarted): the
        // pointer and the step are read before and after the request, and
        // the answer must match one side (a pointer is written before the
        // model it names serves).
        let pointer_version = || -> String {
            let p: serde_json::Value = serde_json::from_slice(
                &std::fs::read(data.join("update/slots/digits.json")).unwrap(),
            )
            .unwrap();
            p["active"]["version"].as_str().unwrap().to_owned()
        };
        let (pointer_before, step_before) = (pointer_version(), persisted_step(&data));
        let (status, body) = post_json(
            &format!("{}/v1/models/digits/infer", agent.api),
            &request(&rows),
        );
        assert_eq!(status, 200, "point {i}: {body}");
        let version = body["version"].as_str().unwrap().to_owned();
        let (pointer_after, step_after) = (pointer_version(), persisted_step(&data));
        *served.entry(version.clone()).or_default() += 1;
        assert!(
            version == pointer_before
                || version == pointer_after
                || step_before == "probation"
                || step_after == "probation",
            "point {i}: serving {version} ({body}), pointer {pointer_before} → {pointer_after}, \
             step {step_before} → {step_after}"
        );
        assert!(packages_are_whole(&data) >= 1);
        // The trust state never goes backwards.
        let seq = record_sequence(&data);
        assert!(
            seq >= last_sequence,
            "point {i}: sequence {seq} < {last_sequence}"
        );
        last_sequence = seq;
        if i == n {
            break;
        }
        // Connected (subscribed) before the command goes out.
        wait_for("mqtt connected", T, || {
            let (_, s) = get(&format!("{}/v1/status", agent.api));
            serde_json::from_str::<serde_json::Value>(&s)
                .ok()
                .filter(|v| v["mqtt_connected"] == true)
        });
        sequence = sequence.max(seq) + 1;
        let pick = rng.below(10);
        let target = &targets[rng.below(3) as usize];
        let action = match pick {
            0..=4 => DirectiveAction::Deploy {
                target: target.reference(),
                probation: Probation::None,
            },
            5..=7 => DirectiveAction::Deploy {
                target: target.reference(),
                probation: Probation::Canary,
            },
            _ => DirectiveAction::Rollback {
                target: target.reference(),
            },
        };
        let directive = device_directive(device, sequence, action);
        let cmd = Command {
            directive: keys::sign(&directive, Role::Director, &[&w.director_key]).unwrap(),
            release: Some(release.clone()),
            artifact_url: Some(format!("{base}/{}", target.version)),
        };
        Observer::publish(&client, &command_topic, codec::encode(&cmd).unwrap());
        // The crash point: somewhere in the next 250 ms.
        std::thread::sleep(Duration::from_millis(rng.below(250)));
        let mut agent = agent;
        agent.child.0.kill().unwrap();
        agent.child.0.wait().unwrap();
        *steps.entry(persisted_step(&data)).or_default() += 1;
    }
    eprintln!(
        "crash points: {n} (seed {seed:#x}) in {:.1} s; persisted step at each kill: {steps:?}; \
         served after restart: {served:?}; last directive sequence {last_sequence}",
        started.elapsed().as_secs_f64()
    );
    assert!(last_sequence > 0, "no directive was ever accepted");
    assert!(
        steps.len() >= 3,
        "kills should land in several steps: {steps:?}"
    );
}
