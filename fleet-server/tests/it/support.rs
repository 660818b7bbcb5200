//! Fixtures for the server tests: a real `outpost serve` process on free
//! ports with a temporary data dir (killed and reaped on drop), the CLI
//! pointed at it, raw HTTP, packs of the digits MLP, a private Mosquitto.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const T: Duration = Duration::from_secs(60);

pub fn skip_or_fail(reason: &str) {
    if std::env::var("OUTPOST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("OUTPOST_REQUIRE_ALL=1 but a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Polls `f` until it returns `Some`, or panics at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/tests/fixtures/digits")
        .join(name)
}

pub fn outpost() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_outpost"));
    c.env_remove("OUTPOST_SERVER").env_remove("OUTPOST_TOKEN");
    c
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A running `outpost serve`.
pub struct Server {
    child: Option<Child>,
    pub http: String,
    pub mqtt: String,
    pub admin: String,
}

impl Server {
    /// Starts on free ports with an embedded broker; `extra` adds flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Self::try_start(dir, extra)
            .unwrap_or_else(|(code, err)| panic!("outpost serve exited with {code:?}: {err}"))
    }

    /// As [`Server::start`], returning the exit code and stderr of a
    /// server that did not start.
    pub fn try_start(dir: &Path, extra: &[&str]) -> Result<Server, (Option<i32>, String)> {
        let data = dir.join("data");
        let token_file = dir.join("admin.token");
        let stderr = dir.join(format!("serve-{}.log", std::process::id()));
        let mut args = vec![
            "serve",
            "--data-dir",
            s(&data),
            "--init-admin-token-file",
            s(&token_file),
        ];
        if !extra.contains(&"--http") {
            args.extend(["--http", "127.0.0.1:0"]);
        }
        if !extra.iter().any(|a| a.starts_with("--mqtt")) {
            args.extend(["--mqtt-port", "0"]);
        }
        args.extend_from_slice(extra);
        let mut child = outpost()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + T;
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(l) if l.starts_with("listening ") => break l,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    return Err((
                        status.code(),
                        std::fs::read_to_string(&stderr).unwrap_or_default(),
                    ));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err((
                    status.code(),
                    std::fs::read_to_string(&stderr).unwrap_or_default(),
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("outpost serve printed no `listening` line");
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_owned()
        };
        let server = Server {
            child: Some(child),
            http: format!("http://{}", field("http")),
            mqtt: field("mqtt"),
            admin: std::fs::read_to_string(&token_file)
                .map(|t| t.trim().to_owned())
                .unwrap_or_default(),
        };
        let agent = agent();
        wait_for("/readyz", T, || {
            agent
                .get(server.url("/readyz"))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
        });
        Ok(server)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    pub fn mqtt_port(&self) -> u16 {
        self.mqtt.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Runs the CLI against this server with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        outpost()
            .args(["--server", &self.http, "--token", token])
            .args(args)
            .output()
            .unwrap()
    }

    /// [`Server::cli`] with `--json`, asserting the exit code.
    pub fn json(&self, token: &str, args: &[&str], code: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(token, &all);
        assert_eq!(
            out.status.code(),
            Some(code),
            "outpost {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Creates a token with `role` named `name` (as admin); returns it.
    pub fn token(&self, name: &str, role: &str) -> String {
        let v = self.json(
            &self.admin,
            &["tokens", "create", "--role", role, "--name", name],
            0,
        );
        v["token"].as_str().unwrap().to_owned()
    }

    /// Kills it with SIGKILL (no flush, no goodbye) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM (it flushes its store) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + T;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the CLI with `--json` and no server, asserting the exit code.
pub fn local_json(args: &[&str], code: i32) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = outpost().args(&all).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "outpost {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The example card with `version` and `risk_class` replaced.
pub fn card(dir: &Path, version: &str, risk: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/card.toml"))
            .unwrap()
            .replace("version = \"1.0.0\"", &format!("version = \"{version}\""))
            .replace("risk_class = \"low\"", &format!("risk_class = \"{risk}\""));
    let path = dir.join(format!("card-{version}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The digits eval set: the test split and its labels.
pub fn eval_set(dir: &Path) -> PathBuf {
    let path = dir.join("eval.npz");
    if !path.exists() {
        let x = outpost_runtime::npy::read_npy(fixture("digits_test_x.npy")).unwrap();
        let y = outpost_runtime::npy::read_npy(fixture("digits_test_y.npy")).unwrap();
        outpost_runtime::npy::write_npz(&path, &[("input".into(), x), ("labels".into(), y)])
            .unwrap();
    }
    path
}

/// Packs `model` (a digits fixture) as `digits` `version` with an eval set.
pub fn pack(dir: &Path, model: &str, version: &str, risk: &str) -> PathBuf {
    let out = dir.join(format!("digits-{version}.opk"));
    let card = card(dir, version, risk);
    let eval = eval_set(dir);
    local_json(
        &[
            "model",
            "pack",
            "--model",
            s(&fixture(model)),
            "--card",
            s(&card),
            "--reference",
            s(&fixture("digits_test_x.npy")),
            "--eval",
            s(&eval),
            "--no-preoptimized",
            "--out",
            s(&out),
        ],
        0,
    );
    out
}

/// A free TCP port right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub use outpost_fleet::harness::Mosquitto;

/// A private Mosquitto whose listener takes `extra` settings (TLS, ACLs),
/// or None after skip_or_fail when it is not installed.
pub fn mosquitto(extra: &str) -> Option<Mosquitto> {
    if Mosquitto::binary().is_none() {
        skip_or_fail("mosquitto is not installed (apt install mosquitto)");
        return None;
    }
    Some(Mosquitto::start(extra).unwrap())
}

/// What a test-side MQTT client saw.
pub enum Seen {
    SubAck,
    Publish(String, Vec<u8>),
}

/// A test-side MQTT client: a device, or a watcher of a topic. Its
/// connection thread retries through a broker restart and stops when the
/// client is dropped.
pub struct Mqtt {
    client: rumqttc::Client,
    rx: mpsc::Receiver<Seen>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.client.disconnect();
    }
}

impl Mqtt {
    pub fn connect(port: u16, id: &str) -> Mqtt {
        use rumqttc::{Client, Event, MqttOptions, Packet};
        let mut o = MqttOptions::new(
            format!("test-{id}-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut conn) = Client::new(o, 64);
        let (tx, rx) = mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let seen = match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => Seen::SubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Seen::Publish(p.topic, p.payload.to_vec())
                    }
                    Ok(_) => continue,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        Mqtt { client, rx, stop }
    }

    /// Publishes raw bytes on `outpost/v1/devices/{id}/{kind}` (QoS 1).
    pub fn publish(&self, id: &str, kind: &str, payload: Vec<u8>) {
        self.client
            .publish(
                format!("outpost/v1/devices/{id}/{kind}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .unwrap();
    }

    /// Publishes a device message as `id` (postcard).
    pub fn send(&self, id: &str, msg: outpost_protocol::messages::DeviceMessage) {
        self.publish(
            id,
            msg.kind().as_str(),
            msg.encode(outpost_protocol::messages::Encoding::Postcard)
                .unwrap(),
        );
    }

    pub fn subscribe(&self, topic: &str) {
        self.client
            .subscribe(topic, rumqttc::QoS::AtLeastOnce)
            .unwrap();
        wait_for("suback", T, || {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Seen::SubAck) => Some(()),
                _ => None,
            }
        });
    }

    /// The next message on a subscribed topic: (topic, payload).
    pub fn next_publish(&self) -> (String, Vec<u8>) {
        wait_for("an MQTT publish", T, || {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Seen::Publish(t, p)) => Some((t, p)),
                _ => None,
            }
        })
    }

    /// The next JSON document on a subscribed topic.
    pub fn next_json(&self) -> Value {
        serde_json::from_slice(&self.next_publish().1).unwrap()
    }
}

/// The reference profile packed in `opk`.
pub fn reference_of(opk: &Path) -> std::sync::Arc<outpost_telemetry::ReferenceProfile> {
    let bytes = std::fs::read(opk).unwrap();
    let pkg = outpost_runtime::Package::from_bytes(
        &bytes,
        "package",
        &outpost_runtime::PackageLimits::default(),
    )
    .unwrap();
    std::sync::Arc::new(
        outpost_telemetry::ReferenceProfile::from_bytes(
            pkg.member(outpost_runtime::package::REFERENCE).unwrap(),
            outpost_telemetry::REFERENCE_DECODE_LIMIT,
        )
        .unwrap(),
    )
}

/// A window length, seconds.
pub const WINDOW: u64 = 300;

/// The digits test rows (64 pixels) and labels.
pub fn digits() -> (Vec<Vec<f64>>, Vec<i64>) {
    let x = outpost_runtime::npy::read_npy(fixture("digits_test_x.npy")).unwrap();
    let y = outpost_runtime::npy::read_npy(fixture("digits_test_y.npy")).unwrap();
    let xs: Vec<f64> = x
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let ys: Vec<i64> = y
        .to_plain_array_view::<i64>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    (xs.chunks(64).map(<[f64]>::to_vec).collect(), ys)
}

/// One window of every row, as device `device` would record it; the input
/// column `zeroed` (if any) reads 0 on this device.
pub fn window(
    reference: &std::sync::Arc<outpost_telemetry::ReferenceProfile>,
    device: &str,
    start: u64,
    zeroed: Option<usize>,
) -> Vec<u8> {
    let (rows, labels) = digits();
    let outputs = reference
        .columns()
        .iter()
        .filter(|c| c.role() == outpost_telemetry::Role::Output)
        .count();
    let key = outpost_telemetry::WindowKey {
        device: device.into(),
        model: "digits".into(),
        version: "1.0.0".into(),
        start,
        length: WINDOW as u32,
    };
    let options = outpost_telemetry::ProfileOptions {
        kll_k: Some(64),
        ..Default::default()
    };
    let mut rec = outpost_telemetry::Recorder::new(reference.clone(), key, options).unwrap();
    for (row, label) in rows.iter().zip(&labels) {
        let inputs: Vec<outpost_telemetry::Value<'_>> = row
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                outpost_telemetry::Value::Number(if Some(i) == zeroed { 0.0 } else { v })
            })
            .collect();
        // One output: the class; several: a one-hot row of probabilities.
        let outs: Vec<outpost_telemetry::Value<'_>> = if outputs == 1 {
            vec![outpost_telemetry::Value::Number(*label as f64)]
        } else {
            (0..outputs)
                .map(|k| {
                    outpost_telemetry::Value::Number(if k as i64 == *label { 1.0 } else { 0.0 })
                })
                .collect()
        };
        rec.record(&outpost_telemetry::Request {
            inputs: &inputs,
            outputs: &outs,
            latency: Duration::from_micros(300),
            ok: true,
            confidence: Some(0.9),
            segment: None,
        })
        .unwrap();
    }
    rec.finish().to_bytes()
}
