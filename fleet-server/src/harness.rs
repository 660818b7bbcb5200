//! A whole fleet on this machine, from real processes: `outpost serve`
//! (embedded broker on a free port, sled store), N device agents, and the
//! operator's CLI; plus the apps' traffic. `outpost demo` tells a story
//! with it; the whole-system tests (`firmware-tests/`) inject faults into
//! it. Nothing here is simulated: every step is the binary a user runs.
//!
//! Children are killed and reaped when the [`Fleet`] (or [`Procs`]) is
//! dropped, and stop by themselves when the owner dies: each watches its
//! standard input, whose write end only the owner holds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// The digits test split bundled with the runtime's fixtures.
pub const DIGITS_X: &[u8] = include_bytes!("../../runtime/tests/fixtures/digits/digits_test_x.npy");
pub const DIGITS_Y: &[u8] = include_bytes!("../../runtime/tests/fixtures/digits/digits_test_y.npy");
/// The example card (`version = "1.0.0"`, digits).
pub const CARD: &str = include_str!("../examples/card.toml");

/// Child processes, by name; killed and reaped on drop.
#[derive(Debug, Default)]
pub struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
        }
        for (_, c) in &mut self.0 {
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// Starts `exe args` with stderr to `log` and a piped stdin (the child
    /// is told to stop when it closes), and returns the first stdout line
    /// that starts with `prefix` (its "listening …" line).
    pub fn spawn(
        &mut self,
        name: &str,
        exe: &Path,
        args: &[String],
        log: &Path,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String> {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .env_remove("OUTPOST_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", exe.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout"))?;
        self.0.push((name.to_owned(), child));
        let (tx, rx) = std::sync::mpsc::channel();
        let prefix = prefix.to_owned();
        std::thread::spawn(move || {
            // Reads every line so the child never blocks on a full pipe.
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.starts_with(&prefix) {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        rx.recv_timeout(timeout).map_err(|e| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let why = match e {
                std::sync::mpsc::RecvTimeoutError::Timeout => {
                    format!("did not listen within {}s", timeout.as_secs())
                }
                std::sync::mpsc::RecvTimeoutError::Disconnected => {
                    "exited before it listened".to_owned()
                }
            };
            anyhow!(
                "{name} {why}; the end of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    }

    /// A child that exited on its own: its name and status.
    pub fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|(n, c)| {
            c.try_wait()
                .ok()
                .flatten()
                .map(|s| format!("{n} exited ({s})"))
        })
    }

    /// SIGKILLs `name` and reaps it; false when there is no such child.
    pub fn kill(&mut self, name: &str) -> bool {
        let Some(i) = self.0.iter().position(|(n, _)| n == name) else {
            return false;
        };
        let (_, mut c) = self.0.remove(i);
        let _ = c.kill();
        let _ = c.wait();
        true
    }
}

/// Which executable runs the device agents.
#[derive(Debug, Clone)]
pub enum AgentExe {
    /// `outpost agent run` (the demo: one executable).
    Outpost(PathBuf),
    /// `outpost-agent run` (the device daemon itself).
    Agent(PathBuf),
}

/// How to build a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Keys, packages, stores and logs go here.
    pub dir: PathBuf,
    /// The `outpost` executable.
    pub outpost: PathBuf,
    pub agent: AgentExe,
    pub devices: usize,
    /// Device classes the agents are spread over, round robin.
    pub classes: Vec<String>,
    /// Agents' telemetry window.
    pub window_secs: u32,
    /// The server's `--rollout-evaluate-every`.
    pub evaluate_every: u64,
    /// Longest wait of any one step.
    pub step_timeout: Duration,
    /// An external broker (`mqtt://host:port`) instead of the server's
    /// embedded one.
    pub broker: Option<String>,
    /// Devices whose data directory is elsewhere (a small file system, for
    /// a full disk): device id → absolute path.
    pub data_dirs: Vec<(String, PathBuf)>,
    /// Mutual TLS to the external broker (`broker` is then
    /// `mqtts://host:port`).
    pub tls: Option<BrokerTls>,
}

/// Client certificates for a TLS broker: the CA that signed the broker's
/// certificate, and a folder with `NAME.pem` and `NAME.key` for the server
/// ([`SERVER_IDENTITY`]) and for every device id (see [`Pki`]).
#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub ca: PathBuf,
    pub certs: PathBuf,
}

/// The certificate CN of the fleet server's MQTT client.
pub const SERVER_IDENTITY: &str = "outpost-fleet";

/// Device `i`'s id (1-based): `dev-001`, `dev-002`, …
pub fn device_id(i: usize) -> String {
    format!("dev-{i:03}")
}

/// A running fleet: server, agents, and the tokens of an operator and two
/// approvers.
#[derive(Debug)]
pub struct Fleet {
    pub opts: FleetOptions,
    pub procs: Procs,
    pub keys: PathBuf,
    pub logs: PathBuf,
    /// `http://host:port` of the server.
    pub server: String,
    /// `host:port` of its broker.
    pub mqtt: String,
    pub admin: String,
    pub operator: String,
    pub approvers: [String; 2],
    /// Device ids, and their local API addresses.
    pub ids: Vec<String>,
    pub apis: Vec<String>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `outpost --json ARGS` against `server` as `token`'s holder and
/// returns its JSON.
pub fn outpost_json(
    exe: &Path,
    server: Option<&str>,
    token: Option<&str>,
    args: &[&str],
) -> Result<Value> {
    let mut c = Command::new(exe);
    c.arg("--json").args(args).env_remove("OUTPOST_TOKEN");
    if let Some(server) = server {
        c.env("OUTPOST_SERVER", server);
    }
    if let Some(t) = token {
        c.env("OUTPOST_TOKEN", t);
    }
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running outpost {}", args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`outpost {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_str(&stdout)
        .with_context(|| format!("`outpost {}` printed no JSON: {stdout}", args.join(" ")))
}

/// Polls `f` every 200 ms until it returns Some, for at most `timeout`.
pub fn wait<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes a device class's target profile (this machine's arch).
fn write_target(dir: &Path, class: &str) -> Result<()> {
    std::fs::write(
        dir.join(format!("{class}.toml")),
        format!(
            "name = \"{class}\"\ndescription = \"outpost test device class\"\narch = \"{arch}\"\n\
             triple = \"{arch}-unknown-linux-gnu\"\ncores = 2\nmemory_mb = 1024\n\
             accelerators = []\npreferred_engine = \"cpu\"\nthreads = 1\n",
            arch = std::env::consts::ARCH
        ),
    )?;
    Ok(())
}

impl Fleet {
    /// Generates keys, starts the server and the agents, creates the
    /// tokens and waits until every device is online.
    pub fn start(opts: FleetOptions) -> Result<Fleet> {
        let logs = opts.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let keys = opts.dir.join("keys");
        outpost_json(
            &opts.outpost,
            None,
            None,
            &["keys", "init", "--dir", &s(&keys)],
        )?;
        let mut fleet = Fleet {
            procs: Procs::default(),
            keys,
            logs,
            server: String::new(),
            mqtt: String::new(),
            admin: String::new(),
            operator: String::new(),
            approvers: [String::new(), String::new()],
            ids: vec![],
            apis: vec![],
            opts,
        };
        fleet.start_server()?;
        let token = |name: &str, role: &str| -> Result<String> {
            let v = fleet.cli(
                Some(&fleet.admin),
                &["tokens", "create", "--role", role, "--name", name],
            )?;
            v["token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no token in {v}"))
        };
        let (operator, ada, grace) = (
            token("olivia", "operator")?,
            token("ada", "approver")?,
            token("grace", "approver")?,
        );
        fleet.operator = operator;
        fleet.approvers = [ada, grace];
        fleet.start_agents()?;
        let n = fleet.ids.len();
        fleet.wait(&format!("{n} devices to come online"), || {
            let online = fleet
                .devices()?
                .iter()
                .filter(|d| d["online"] == json!(true))
                .count();
            Ok((online >= n).then_some(()))
        })?;
        Ok(fleet)
    }

    /// Starts `outpost serve` on free ports over `dir/server` (again after
    /// [`Fleet::kill_server`]: the same store, new ports).
    pub fn start_server(&mut self) -> Result<()> {
        let token_file = self.opts.dir.join("admin.token");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            s(&self.opts.dir.join("server")),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--mqtt-port".into(),
            self.mqtt
                .rsplit(':')
                .next()
                .filter(|p| !p.is_empty())
                .unwrap_or("0")
                .to_owned(),
            "--director-key".into(),
            s(&self.keys.join("director.pk8")),
            "--root".into(),
            s(&self.keys.join("root.signed")),
            "--init-admin-token-file".into(),
            s(&token_file),
            "--rollout-evaluate-every".into(),
            self.opts.evaluate_every.to_string(),
            "--exit-on-stdin-eof".into(),
        ];
        if let Some(url) = &self.opts.broker {
            // In place of the embedded broker's port.
            if let Some(i) = args.iter().position(|a| a == "--mqtt-port") {
                args.drain(i..i + 2);
            }
            args.extend(["--mqtt-url".into(), url.clone()]);
            if let Some(tls) = &self.opts.tls {
                let cert = |ext: &str| s(&tls.certs.join(format!("{SERVER_IDENTITY}.{ext}")));
                args.extend([
                    "--mqtt-ca".into(),
                    s(&tls.ca),
                    "--mqtt-client-cert".into(),
                    cert("pem"),
                    "--mqtt-client-key".into(),
                    cert("key"),
                ]);
            }
        }
        let line = self.procs.spawn(
            "server",
            &self.opts.outpost,
            &args,
            &self.logs.join("server.log"),
            "listening ",
            Duration::from_secs(60),
        )?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no {k} in {line:?}"))
        };
        self.server = format!("http://{}", field("http=")?);
        self.mqtt = field("mqtt=")?;
        self.admin = std::fs::read_to_string(&token_file)?.trim().to_owned();
        Ok(())
    }

    /// SIGKILLs the server.
    pub fn kill_server(&mut self) -> bool {
        self.procs.kill("server")
    }

    fn start_agents(&mut self) -> Result<()> {
        let agents = self.opts.dir.join("agents");
        let targets = agents.join("targets");
        std::fs::create_dir_all(&targets)?;
        for class in &self.opts.classes {
            write_target(&targets, class)?;
        }
        let root = self.keys.join("root.signed");
        for i in 1..=self.opts.devices {
            let id = device_id(i);
            let class = self
                .opts
                .classes
                .get((i - 1) % self.opts.classes.len().max(1))
                .cloned()
                .unwrap_or_else(|| "edge".into());
            if self.opts.classes.is_empty() {
                write_target(&targets, &class)?;
            }
            let config = agents.join(format!("{id}.toml"));
            let data_dir = self
                .opts
                .data_dirs
                .iter()
                .find(|(d, _)| *d == id)
                .map_or_else(|| PathBuf::from(&id), |(_, p)| p.clone());
            // Over TLS the device's certificate (CN = its id) is its
            // identity at the broker.
            let tls = self.opts.tls.as_ref().map_or_else(String::new, |t| {
                format!(
                    "ca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
                    t.ca.display(),
                    t.certs.join(format!("{id}.pem")).display(),
                    t.certs.join(format!("{id}.key")).display()
                )
            });
            std::fs::write(
                &config,
                format!(
                    "device_id = \"{id}\"\ntarget = \"{class}\"\ndata_dir = \"{data}\"\n\n\
                     [mqtt]\nurl = \"{scheme}://{mqtt}\"\nkeep_alive_secs = 5\n{tls}\n\
                     [trust]\nroot = \"{root}\"\n\n[api]\nbind = \"127.0.0.1:0\"\n\n\
                     [telemetry]\nwindow_secs = {window}\n",
                    scheme = if self.opts.tls.is_some() {
                        "mqtts"
                    } else {
                        "mqtt"
                    },
                    mqtt = self.mqtt,
                    data = data_dir.display(),
                    root = root.display(),
                    window = self.opts.window_secs
                ),
            )?;
            let api = self.spawn_agent(&id)?;
            self.ids.push(id);
            self.apis.push(api);
        }
        Ok(())
    }

    /// Starts device `id`'s agent on its config; returns its API address.
    fn spawn_agent(&mut self, id: &str) -> Result<String> {
        let config = self.opts.dir.join("agents").join(format!("{id}.toml"));
        let (exe, mut args) = match &self.opts.agent {
            AgentExe::Outpost(p) => (p.clone(), vec!["agent".to_owned(), "run".into()]),
            AgentExe::Agent(p) => (p.clone(), vec!["run".to_owned()]),
        };
        args.extend(["--config".into(), s(&config), "--exit-on-stdin-eof".into()]);
        let line = self.procs.spawn(
            id,
            &exe,
            &args,
            &self.logs.join(format!("{id}.log")),
            "listening ",
            Duration::from_secs(60),
        )?;
        Ok(line
            .strip_prefix("listening api=")
            .ok_or_else(|| anyhow!("{id}: unexpected {line:?}"))?
            .to_owned())
    }

    /// SIGKILLs device `i`'s agent (no flush, no goodbye).
    pub fn kill_agent(&mut self, i: usize) -> bool {
        match self.ids.get(i).cloned() {
            Some(id) => self.procs.kill(&id),
            None => false,
        }
    }

    /// Starts device `i`'s agent again (same config and store; a new API
    /// port, in `apis[i]`).
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        let id = self
            .ids
            .get(i)
            .cloned()
            .ok_or_else(|| anyhow!("no device {i}"))?;
        let api = self.spawn_agent(&id)?;
        self.apis[i] = api;
        Ok(())
    }

    /// `outpost --json ARGS` against this server as `token`'s holder.
    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Result<Value> {
        outpost_json(&self.opts.outpost, Some(&self.server), token, args)
    }

    /// `GET path` as admin.
    pub fn get(&self, path: &str) -> Result<Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(format!("{}{path}", self.server))
            .header("Authorization", format!("Bearer {}", self.admin))
            .call()
            .with_context(|| format!("GET {path}"))?;
        let status = r.status().as_u16();
        let v: Value = r
            .body_mut()
            .read_json()
            .with_context(|| format!("GET {path}"))?;
        if status != 200 {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// The inventory.
    pub fn devices(&self) -> Result<Vec<Value>> {
        Ok(self.get("/v1/devices")?["devices"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// [`wait`] with the fleet's step timeout; fails early when a child died.
    pub fn wait<T>(&self, what: &str, f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        wait(what, self.opts.step_timeout, f)
    }

    /// Packs `model` as digits `version` (card, `reference` rows, the
    /// digits eval set) and signs it with the release key.
    pub fn package(&self, model: &Path, version: &str, reference: &Path) -> Result<PathBuf> {
        let work = self.opts.dir.join("packages");
        std::fs::create_dir_all(&work)?;
        let eval = work.join("eval.npz");
        if !eval.exists() {
            let (x, y) = digits_tensors()?;
            outpost_runtime::npy::write_npz(&eval, &[("input".into(), x), ("labels".into(), y)])?;
        }
        let card = work.join(format!("card-{version}.toml"));
        std::fs::write(
            &card,
            CARD.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
        )?;
        let pkg = work.join(format!("digits-{version}.opk"));
        let ex = &self.opts.outpost;
        outpost_json(
            ex,
            None,
            None,
            &[
                "model",
                "pack",
                "--model",
                &s(model),
                "--card",
                &s(&card),
                "--reference",
                &s(reference),
                "--eval",
                &s(&eval),
                "--out",
                &s(&pkg),
            ],
        )?;
        outpost_json(
            ex,
            None,
            None,
            &[
                "model",
                "sign",
                &s(&pkg),
                "--key",
                &s(&self.keys.join("release-1.pk8")),
                "--root",
                &s(&self.keys.join("root.signed")),
            ],
        )?;
        Ok(pkg)
    }

    /// Pushes `pkg` as the operator and has both approvers approve it;
    /// returns the push's JSON (with the registry's eval).
    pub fn register(&self, pkg: &Path, version: &str) -> Result<Value> {
        let pushed = self.cli(Some(&self.operator), &["model", "push", &s(pkg)])?;
        for a in &self.approvers {
            self.cli(Some(a), &["model", "approve", "digits", version])?;
        }
        Ok(pushed)
    }

    /// Devices of `ids` whose digits in a slot other than `previous` is
    /// `version`, and those that serve it from the active slot.
    fn holding(&self, ids: &[String], version: &str) -> Result<(usize, usize)> {
        let mut holding = 0;
        let mut serving = 0;
        for d in self.devices()? {
            if !ids.iter().any(|i| d["id"] == json!(i)) {
                continue;
            }
            let slots: Vec<&Value> = d["installed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["name"] == "digits" && i["version"] == version)
                .map(|i| &i["slot"])
                .collect();
            holding += usize::from(slots.iter().any(|s| *s != "previous"));
            serving += usize::from(slots.iter().any(|s| *s == "active"));
        }
        Ok((holding, serving))
    }

    /// Waits until every device in `ids` serves digits `version` from its
    /// active slot, as the inventory reports.
    pub fn wait_serving(&self, ids: &[String], version: &str) -> Result<()> {
        self.wait(
            &format!("{} device(s) to serve digits {version}", ids.len()),
            || Ok((self.holding(ids, version)?.1 == ids.len()).then_some(())),
        )
    }

    /// Waits until no device in `ids` serves digits `version` or runs it
    /// as a candidate (a canary rolled back).
    pub fn wait_gone(&self, ids: &[String], version: &str) -> Result<()> {
        self.wait(&format!("digits {version} to leave every device"), || {
            Ok((self.holding(ids, version)?.0 == 0).then_some(()))
        })
    }

    /// Starts a rollout of digits `version` with `plan`; returns its status.
    pub fn start_rollout(&self, version: &str, plan: &Path) -> Result<Value> {
        self.cli(
            Some(&self.operator),
            &[
                "rollout",
                "start",
                &format!("digits@{version}"),
                "--plan",
                &s(plan),
            ],
        )
    }

    /// Polls rollout `id` until it ends, calling `each` with every status
    /// seen; fails when a child exits or the step timeout passes.
    pub fn follow(&mut self, id: &str, mut each: impl FnMut(&Value)) -> Result<Value> {
        let deadline = Instant::now() + self.opts.step_timeout;
        loop {
            if let Some(dead) = self.procs.exited() {
                bail!("{dead}; see the logs in {}", self.logs.display());
            }
            let v = self.get(&format!("/v1/rollouts/{id}"))?;
            each(&v);
            if is_final(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "rollout {id} did not end within {}s: {}",
                    self.opts.step_timeout.as_secs(),
                    state_name(&v)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The last `lines` lines of each log in `dir/logs` whose file name
/// `keep` accepts, for a failure message.
pub fn log_tails(dir: &Path, keep: impl Fn(&str) -> bool, lines: usize) -> String {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    entries.sort();
    entries
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            format!(
                "== {}\n{}",
                p.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sum of the samples of `metric` at `url` (`…/metrics`) whose line
/// contains `labels` (`""`: every sample, labelled or not).
pub fn metric_sum(url: &str, metric: &str, labels: &str) -> Result<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let text = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .body_mut()
        .read_to_string()
        .with_context(|| format!("GET {url}"))?;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

/// A rollout status's state name (`State` serializes as `{"running": {…}}`).
pub fn state_name(v: &Value) -> String {
    match &v["state"] {
        Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// Whether the rollout ended (halted or completed).
pub fn is_final(v: &Value) -> bool {
    matches!(state_name(v).as_str(), "halted" | "completed")
}

/// The bundled digits test split as tensors (rows, labels).
pub fn digits_tensors() -> Result<(outpost_runtime::Tensor, outpost_runtime::Tensor)> {
    let x = outpost_runtime::npy::npy_from_bytes(DIGITS_X)
        .map_err(|e| anyhow!("bundled test split: {e}"))?;
    let y = outpost_runtime::npy::npy_from_bytes(DIGITS_Y)
        .map_err(|e| anyhow!("bundled labels: {e}"))?;
    Ok((x, y))
}

/// The bundled digits test split as rows (64 values each) and labels.
pub fn digits_rows() -> Result<(Vec<f32>, Vec<i64>)> {
    let (x, y) = digits_tensors()?;
    let rows = x
        .to_plain_array_view::<f32>()
        .map_err(|e| anyhow!("test split: {e}"))?
        .iter()
        .copied()
        .collect();
    let labels = match y.to_plain_array_view::<i64>() {
        Ok(l) => l.iter().copied().collect(),
        Err(_) => y
            .to_plain_array_view::<i32>()
            .map_err(|e| anyhow!("labels: {e}"))?
            .iter()
            .map(|&v| i64::from(v))
            .collect(),
    };
    Ok((rows, labels))
}

/// The apps on the devices: `rate` requests per second to each agent, rows
/// of the digits test split, each answer followed by the true label as
/// feedback. Stops (and joins its threads) on drop.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(apis: &[String], rate: u32) -> Result<Traffic> {
        let (rows, labels) = digits_rows()?;
        let (rows, labels) = (Arc::new(rows), Arc::new(labels));
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let threads = apis
            .iter()
            .enumerate()
            .map(|(d, api)| {
                let (rows, labels, stop, answered) =
                    (rows.clone(), labels.clone(), stop.clone(), answered.clone());
                let api = api.clone();
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .timeout_global(Some(Duration::from_secs(5)))
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let n = labels.len().max(1);
                    let mut i = d * 97;
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        i = (i + 37) % n;
                        let Some(row) = rows.get(i * 64..(i + 1) * 64) else {
                            return;
                        };
                        let body = json!({"inputs": {"input": {"shape": [1, 64], "data": row}}});
                        let answer: Option<Value> = agent
                            .post(format!("http://{api}/v1/models/digits/infer"))
                            .send_json(&body)
                            .ok()
                            .and_then(|mut r| r.body_mut().read_json().ok());
                        if let Some(id) = answer.as_ref().and_then(|a| a["request_id"].as_str()) {
                            let _ = agent
                                .post(format!("http://{api}/v1/feedback"))
                                .send_json(json!({"request_id": id, "labels": [labels[i]]}));
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        next += period;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Ok(Traffic {
            stop,
            answered,
            threads,
        })
    }

    /// Requests answered (and labelled) so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A private Mosquitto on a free port of 127.0.0.1, for tests that need a
/// real external broker: its listener takes `extra` settings (anonymous
/// access, TLS, ACLs); persistence is on, in its own temporary folder, so a
/// stopped and restarted broker keeps its persistent sessions and their
/// queued messages. Killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    bin: &'static str,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// The installed broker, if any.
    pub fn binary() -> Option<&'static str> {
        ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
    }

    /// Starts one (see [`Mosquitto::binary`]; errors when it is missing).
    pub fn start(extra: &str) -> Result<Mosquitto> {
        let bin = Mosquitto::binary().ok_or_else(|| anyhow!("mosquitto is not installed"))?;
        let dir = tempfile::tempdir()?;
        // A port free now may be taken before Mosquitto binds: retry.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    // `user root`: run as root, Mosquitto would switch to its
                    // own user, who cannot read this private folder.
                    "user root\nper_listener_settings false\nlistener {port} 127.0.0.1\n{extra}\
                     max_queued_messages 100000\npersistence true\npersistence_location {}/\n",
                    dir.path().display()
                ),
            )?;
            if let Some(child) = listen(bin, &conf, port) {
                return Ok(Mosquitto {
                    child: Some(child),
                    port,
                    bin,
                    conf,
                    _dir: dir,
                });
            }
        }
        bail!("mosquitto did not start on any of 5 free ports")
    }

    /// Starts it again on the same port and files; false if it did not
    /// listen within 10 s.
    pub fn restart(&mut self) -> bool {
        self.child = listen(self.bin, &self.conf, self.port);
        self.child.is_some()
    }

    /// SIGTERM (it saves its persistence file) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
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

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// A test PKI made with `openssl`: a CA, the broker's certificate for
/// 127.0.0.1, and client certificates whose CN is the client's identity
/// (Mosquitto's `use_identity_as_username`).
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Makes the CA and the broker's certificate in `dir`.
    pub fn new(dir: &Path) -> Result<Pki> {
        let pki = Pki {
            dir: dir.to_owned(),
        };
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        pki.key("ca")?;
        pki.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=outpost-test-ca",
        ])?;
        pki.signed("server", "127.0.0.1", "server.ext")?;
        Ok(pki)
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn key(&self, name: &str) -> Result<()> {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ])
    }

    /// `name.key`, and `name.pem` for `cn` signed by the CA.
    fn signed(&self, name: &str, cn: &str, ext: &str) -> Result<(PathBuf, PathBuf)> {
        self.key(name)?;
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ])?;
        Ok((self.dir.join(pem), self.dir.join(key)))
    }

    /// `(NAME.pem, NAME.key)`: a client certificate whose CN is `name`.
    pub fn client(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        self.signed(name, name, "client.ext")
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Mosquitto settings for a TLS listener that requires a client
    /// certificate of this CA, takes its CN as the user name, and applies
    /// `acl` (the text of an `acl_file`).
    pub fn mosquitto_conf(&self, acl: &str) -> Result<String> {
        let file = self.dir.join("acl");
        std::fs::write(&file, acl)?;
        Ok(format!(
            "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\nacl_file {acl}\n",
            d = self.dir.display(),
            acl = file.display()
        ))
    }

    /// Client certificates for the fleet server and devices `ids`, as
    /// [`FleetOptions::tls`] wants them.
    pub fn fleet(&self, ids: impl IntoIterator<Item = String>) -> Result<BrokerTls> {
        self.client(SERVER_IDENTITY)?;
        for id in ids {
            self.client(&id)?;
        }
        Ok(BrokerTls {
            ca: self.ca(),
            certs: self.dir.clone(),
        })
    }
}

/// Starts `bin -c conf` and waits (10 s at most) until it listens on `port`.
fn listen(bin: &str, conf: &Path, port: u16) -> Option<Child> {
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
