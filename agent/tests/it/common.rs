//! Test fixtures: a signed trust world with a real packaged model, a
//! private Mosquitto on a free port, an in-process agent, an MQTT observer.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outpost_agent::AgentState;
use outpost_agent::config::AgentConfig;
use outpost_protocol::bytes::Sha256;
use outpost_protocol::codec;
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::*;
use outpost_runtime::manifest::{ModelCard, ModelFormat, TargetConstraints as Tc};
use outpost_runtime::package::MODEL_ONNX;
use outpost_runtime::{LoadOptions, Manifest, Model, PackageBuilder, ValueRange};
use tempfile::TempDir;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn skip_or_fail(reason: &str) {
    if std::env::var("OUTPOST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("OUTPOST_REQUIRE_ALL=1 but a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

pub fn now() -> u64 {
    outpost_agent::unix_now()
}

/// Polls `f` until it returns `Some`, or panics at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Keys, a signed root, and a signed package of the digits MLP.
pub struct World {
    pub dir: TempDir,
    pub release_key: SigningKey,
    pub director_key: SigningKey,
    pub root_path: PathBuf,
    pub package_path: PathBuf,
    pub release_path: PathBuf,
    pub package: Vec<u8>,
}

pub fn target_profile() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "rpi5"
    } else {
        "x86_64-server"
    }
}

pub fn package_bytes(name: &str, version: &str) -> Vec<u8> {
    package_bytes_with(name, version, true)
}

/// The digits MLP as a package, with or without its reference profile
/// (without one, the agent serves it unprofiled).
pub fn package_bytes_with(name: &str, version: &str, with_reference: bool) -> Vec<u8> {
    package_bytes_ranged(name, version, with_reference, 1.0)
}

/// As [`package_bytes_with`], with the pixels' valid range `[0, max]`.
pub fn package_bytes_ranged(name: &str, version: &str, with_reference: bool, max: f64) -> Vec<u8> {
    let onnx = std::fs::read(repo().join("runtime/tests/fixtures/digits/mlp_fp32.onnx")).unwrap();
    package_of(onnx, name, version, with_reference, max)
}

/// A package of any model with the digits MLP's inputs and outputs
/// (64 pixels in, 10 scores out), its golden rows the first 4 digits.
pub fn package_of(
    onnx: Vec<u8>,
    name: &str,
    version: &str,
    with_reference: bool,
    max: f64,
) -> Vec<u8> {
    let model = Model::from_onnx_bytes(&onnx, name, None, &LoadOptions::default()).unwrap();
    let info = model.info();
    let mut inputs = info.inputs.clone();
    inputs[0].range = Some(ValueRange { min: 0.0, max });
    let mut outputs = info.outputs.clone();
    outputs[0].labels = (0..10).map(|d| format!("digit-{d}")).collect();
    let manifest = Manifest {
        format_version: 1,
        name: name.into(),
        version: version.into(),
        created_at: "2026-11-26T00:00:00Z".into(),
        format: ModelFormat::Onnx,
        inputs,
        outputs,
        target: Tc::default(),
        card: ModelCard {
            purpose: Some("agent tests".into()),
            ..ModelCard::default()
        },
        runtime: None,
        members: Default::default(),
    };
    let mut b = PackageBuilder::new(manifest);
    b.add(MODEL_ONNX, onnx).unwrap();
    if with_reference {
        b.add("reference.bin", reference_bytes(&model)).unwrap();
    }
    // Golden self-test rows (as `outpost model pack` writes them).
    let rows: Vec<f32> = digits(4).0.concat();
    let x = outpost_runtime::Tensor::from_shape(&[4, 64], &rows).unwrap();
    let y = model.run(vec![x.clone()]).unwrap();
    let out_name = model.info().outputs[0].name.clone();
    let npz = |named: Vec<(String, outpost_runtime::Tensor)>| {
        outpost_runtime::npy::npz_bytes(&named).unwrap()
    };
    b.add("golden/inputs.npz", npz(vec![("input".into(), x)]))
        .unwrap();
    b.add("golden/outputs.npz", npz(vec![(out_name, y[0].clone())]))
        .unwrap();
    b.to_bytes().unwrap()
}

/// The reference profile: the 64 pixels of the digits test split, and the
/// class the model predicts for each row.
fn reference_bytes(model: &Model) -> Vec<u8> {
    use outpost_telemetry::{ColumnData, ReferenceOptions, ReferenceProfile};
    let (rows, _) = digits(450);
    let pixels: Vec<f32> = rows.concat();
    let x = outpost_runtime::Tensor::from_shape(&[rows.len(), 64], &pixels).unwrap();
    let out = model.run(vec![x]).unwrap();
    let scores: Vec<f32> = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let classes: Vec<Option<f64>> = scores
        .chunks(10)
        .map(|r| {
            let best = (0..10).fold(0, |b, i| if r[i] > r[b] { i } else { b });
            Some(best as f64)
        })
        .collect();
    let mut columns: Vec<(String, ColumnData)> = (0..64)
        .map(|j| {
            let col = pixels
                .chunks(64)
                .map(|row| Some(f64::from(row[j])))
                .collect();
            (format!("px{j}"), ColumnData::Numeric(col))
        })
        .collect();
    columns.push(("class".into(), ColumnData::Numeric(classes)));
    let options = ReferenceOptions {
        outputs: vec!["class".into()],
        ..Default::default()
    };
    ReferenceProfile::from_columns(columns, &options)
        .unwrap()
        .to_bytes()
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let (root_key, release_key, director_key) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let one = |k: &SigningKey| RoleKeys {
            threshold: 1,
            keys: vec![k.key_id()],
        };
        let root = Root {
            version: 1,
            expires: now() + 365 * 86_400,
            keys: vec![
                root_key.public_key(),
                release_key.public_key(),
                director_key.public_key(),
            ],
            root: one(&root_key),
            release: one(&release_key),
            director: one(&director_key),
        };
        let root_path = dir.path().join("root.signed");
        let signed = keys::sign(&root, Role::Root, &[&root_key]).unwrap();
        std::fs::write(&root_path, codec::encode(&signed).unwrap()).unwrap();
        let package = package_bytes("digits", "1.0.0");
        let package_path = dir.path().join("digits-1.0.0.opk");
        std::fs::write(&package_path, &package).unwrap();
        let release_path = dir.path().join("digits-1.0.0.release");
        let w = World {
            dir,
            release_key,
            director_key,
            root_path,
            package_path,
            release_path,
            package,
        };
        w.write_release(
            &w.release_path,
            &[w.target("digits", "1.0.0", &w.package)],
            30,
        );
        w
    }

    pub fn target(&self, name: &str, version: &str, bytes: &[u8]) -> TargetMeta {
        TargetMeta {
            name: name.into(),
            version: version.into(),
            sha256: Sha256::of(bytes),
            length: bytes.len() as u64,
            constraints: TargetConstraints::default(),
        }
    }

    /// Writes release metadata valid for `days` (negative: expired).
    pub fn write_release(&self, path: &Path, targets: &[TargetMeta], days: i64) {
        let expires = (now() as i64 + days * 86_400) as u64;
        let meta = ReleaseMetadata {
            version: 1,
            expires,
            targets: targets.to_vec(),
        };
        let signed = keys::sign(&meta, Role::Release, &[&self.release_key]).unwrap();
        std::fs::write(path, codec::encode(&signed).unwrap()).unwrap();
    }

    /// agent.toml text for `device`, reporting to 127.0.0.1:`mqtt_port`.
    pub fn config_text(&self, device: &str, mqtt_port: u16, extra_model: &str) -> String {
        format!(
            r#"
device_id = "{device}"
target = "{targets}/{profile}.toml"
data_dir = "{data}"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
keep_alive_secs = 5
[trust]
root = "{root}"
[api]
bind = "127.0.0.1:0"
max_body_bytes = 65536
max_pending = 64
[telemetry]
window_secs = 1
[breaker]
failures = 3
open_secs = 30
retries = 1
[[models]]
package = "{package}"
release = "{release}"
{extra_model}
"#,
            targets = repo().join("targets").display(),
            profile = target_profile(),
            data = self.dir.path().join(format!("data-{device}")).display(),
            root = self.root_path.display(),
            package = self.package_path.display(),
            release = self.release_path.display(),
        )
    }

    pub fn config(&self, device: &str, mqtt_port: u16, extra_model: &str) -> AgentConfig {
        self.parse(&self.config_text(device, mqtt_port, extra_model))
    }

    /// Parses config text (relative paths resolve in the world's folder).
    pub fn parse(&self, text: &str) -> AgentConfig {
        AgentConfig::parse(text, Path::new("agent.toml"), self.dir.path()).unwrap()
    }

    /// [`World::config`] with one setting edited (`from` replaced by `to`).
    pub fn config_edited(&self, device: &str, mqtt_port: u16, from: &str, to: &str) -> AgentConfig {
        let text = self.config_text(device, mqtt_port, "");
        assert!(text.contains(from), "{from:?} is not in the test config");
        self.parse(&text.replace(from, to))
    }

    pub fn config_file(&self, device: &str, mqtt_port: u16) -> PathBuf {
        let path = self.dir.path().join(format!("{device}.toml"));
        std::fs::write(&path, self.config_text(device, mqtt_port, "")).unwrap();
        path
    }

    pub fn sign_command(&self, d: &Directive) -> Vec<u8> {
        let cmd = outpost_protocol::messages::Command {
            directive: keys::sign(d, Role::Director, &[&self.director_key]).unwrap(),
            release: None,
            artifact_url: None,
        };
        codec::encode(&cmd).unwrap()
    }
}

/// A signed command for `device` with `action`, sequence `seq`, release
/// metadata naming `targets` and the artifact at `url`, encoded as the
/// commands topic carries it.
pub fn signed_command(
    w: &World,
    device: &str,
    seq: u64,
    action: DirectiveAction,
    targets: &[TargetMeta],
    url: Option<String>,
) -> Vec<u8> {
    let directive = device_directive(device, seq, action);
    let release = ReleaseMetadata {
        version: 1,
        expires: now() + 86_400,
        targets: targets.to_vec(),
    };
    let cmd = outpost_protocol::messages::Command {
        directive: keys::sign(&directive, Role::Director, &[&w.director_key]).unwrap(),
        release: Some(keys::sign(&release, Role::Release, &[&w.release_key]).unwrap()),
        artifact_url: url,
    };
    codec::encode(&cmd).unwrap()
}

/// A port nothing listens on right now.
/// Reads an HTTP request's head from `reader` (up to the blank line) and
/// returns the start of its `Range: bytes=N-` header, or 0.
pub fn request_range_start(reader: &mut impl std::io::BufRead) -> usize {
    let mut start = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return start;
        }
        if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            start = r.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
}

/// A directive for `device`, valid for an hour, rolling back after ten
/// minutes offline.
pub fn device_directive(device: &str, sequence: u64, action: DirectiveAction) -> Directive {
    Directive {
        sequence,
        selector: Selector::Device(outpost_protocol::topic::DeviceId::new(device).unwrap()),
        action,
        rollout: None,
        issued_at: now(),
        expires: now() + 3600,
        offline_grace: OfflineGrace {
            max_offline_secs: 600,
            then: GraceAction::RollBack,
        },
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private Mosquitto on a free port, killed and reaped on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    bin: &'static str,
    conf: PathBuf,
    _dir: TempDir,
}

impl Mosquitto {
    pub fn start() -> Option<Mosquitto> {
        Self::start_with("allow_anonymous true\n")
    }

    /// A broker whose listener takes `extra` settings (TLS, ACLs).
    pub fn start_with(extra: &str) -> Option<Mosquitto> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            skip_or_fail("mosquitto is not installed (apt install mosquitto)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // The port is free when chosen; another process may take it before
        // Mosquitto binds, so retry a few ports.
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            // Persistence keeps the observer's session (and the QoS 1
            // messages queued for it) across a restart; saved on SIGTERM.
            std::fs::write(
                &conf,
                format!(
                    // `user root`: when the tests run as root, Mosquitto
                    // would otherwise switch to its own user, which cannot
                    // read the test's private temporary folder.
                    "user root\nper_listener_settings false\nlistener {port} 127.0.0.1\n{extra}persistence true\npersistence_location {}/\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let mut child = Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Mosquitto {
                        child,
                        port,
                        bin,
                        conf,
                        _dir: dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("mosquitto did not start");
    }
}

impl Mosquitto {
    /// Stops the broker cleanly (SIGTERM: it saves its sessions).
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same config.
    pub fn restart(&mut self) {
        self.child = Command::new(self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("mosquitto to listen again", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", self.port)).ok()
        });
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent running in-process on its own runtime; stopped on drop.
pub struct Running {
    pub state: Arc<AgentState>,
    pub addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    rt: Option<tokio::runtime::Runtime>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn start(config: AgentConfig) -> Running {
        let state = Arc::new(AgentState::start(config).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (btx, brx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let join = rt.spawn(async move {
            outpost_agent::run(st, rx, Some(btx)).await.unwrap();
        });
        let addr = rt.block_on(brx).unwrap();
        Running {
            state,
            addr,
            shutdown: tx,
            rt: Some(rt),
            join: Some(join),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let (Some(rt), Some(join)) = (self.rt.take(), self.join.take()) {
            let _ =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), join).await });
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// HTTP with non-2xx statuses as values, not errors.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, body as JSON or text).
pub fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let mut r = http()
        .post(url)
        .header("Content-Type", "application/json")
        .send(serde_json::to_vec(body).unwrap())
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

pub fn get(url: &str) -> (u16, String) {
    let mut r = http().get(url).call().unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap())
}

/// Every publish on `filter`, as (topic, payload), through a channel.
pub struct Observer {
    pub rx: mpsc::Receiver<(String, Vec<u8>)>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Observer {
    pub fn start(port: u16, filter: &str) -> (Observer, rumqttc::AsyncClient) {
        Self::start_tls(port, filter, None)
    }

    pub fn start_tls(
        port: u16,
        filter: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> (Observer, rumqttc::AsyncClient) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut opts =
            rumqttc::MqttOptions::new(format!("observer-{}", free_port()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        // A persistent session: messages published while the observer is
        // reconnecting (a broker restart) are queued for it.
        opts.set_clean_session(false);
        if let Some(tls) = tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, mut eventloop) = rt.block_on(async { rumqttc::AsyncClient::new(opts, 64) });
        let c = client.clone();
        let filter = filter.to_owned();
        rt.spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = c.subscribe(&filter, rumqttc::QoS::AtLeastOnce).await;
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("observer subscribed");
        (Observer { rx, rt: Some(rt) }, client)
    }

    /// The next publish matching `pred`, within `timeout`.
    pub fn next_where(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str, &[u8]) -> bool,
    ) -> (String, Vec<u8>) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, p)) if pred(&t, &p) => return (t, p),
                Ok(_) => {}
                Err(_) => panic!("no matching publish within {timeout:?}"),
            }
        }
    }

    pub fn publish(client: &rumqttc::AsyncClient, topic: &str, payload: Vec<u8>) {
        client
            .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .unwrap();
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// A child process killed and reaped on drop, so a failing test leaves
/// nothing behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first `n` digits test rows (64 pixels in [0, 1]) and their labels.
pub fn digits(n: usize) -> (Vec<Vec<f32>>, Vec<i64>) {
    let dir = repo().join("runtime/tests/fixtures/digits");
    let x = outpost_runtime::npy::read_npy(dir.join("digits_test_x.npy")).unwrap();
    let y = outpost_runtime::npy::read_npy(dir.join("digits_test_y.npy")).unwrap();
    let xs: Vec<f32> = x
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let ys: Vec<i64> = y
        .to_plain_array_view::<i64>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    (
        xs.chunks(64).take(n).map(<[f32]>::to_vec).collect(),
        ys.into_iter().take(n).collect(),
    )
}

/// An inference request body for `rows`.
pub fn request(rows: &[Vec<f32>]) -> serde_json::Value {
    serde_json::json!({"inputs": {"input": {"shape": [rows.len(), 64], "data": rows.concat()}}})
}
