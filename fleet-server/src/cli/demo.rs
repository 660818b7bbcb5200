//! `outpost demo`: a signed canary rollout end to end on this machine.
//!
//! Everything is real and runs as separate processes of this executable:
//! `outpost serve` (embedded broker on a free port, sled store in a
//! temporary folder, director key), N device agents (`outpost agent run`,
//! each with its own store, trust root and local API), and the CLI commands
//! an operator would type, whose lines are printed. The demo itself plays
//! the apps on the devices: it sends inference requests from the digits
//! test split to every agent and reports the true label back as feedback,
//! so the accuracy gate has labels.
//!
//! The story: digits 1.0.0 (int8, per-tensor quantized) is pushed,
//! approved by two people and deployed; 1.1.0 (int8, per-channel) is rolled
//! out through a canary stage and promoted; 1.2.0, whose class order was
//! rotated by a packaging mistake, is halted at the canary stage by the
//! accuracy gate and rolled back. The demo exits 1 if the story does not
//! happen (so it doubles as a whole-system check).
//!
//! Children are killed when the demo ends, and stop by themselves when it
//! is killed: each watches its standard input, whose write end only the
//! demo holds.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use super::client::Client;
use super::rollout::{is_final, render_gates, state_name};

/// The bundled models and data.
const MODEL_V1: &[u8] = include_bytes!("../../../runtime/tests/fixtures/digits/mlp_qdq_pt.onnx");
const MODEL_V2: &[u8] = include_bytes!("../../../runtime/tests/fixtures/digits/mlp_qdq_pc.onnx");
/// `scripts/make_demo_models.py`: 1.1.0's network with its class order
/// rotated by one.
const MODEL_BAD: &[u8] = include_bytes!("../../demo/digits_rotated.onnx");
const TEST_X: &[u8] = include_bytes!("../../../runtime/tests/fixtures/digits/digits_test_x.npy");
const TEST_Y: &[u8] = include_bytes!("../../../runtime/tests/fixtures/digits/digits_test_y.npy");
const CARD: &str = include_str!("../../examples/card.toml");

/// Device classes the agents are spread over (cohorts are stratified by them).
const CLASSES: [&str; 2] = ["kiosk", "gateway"];

/// The demo's rollout plan. Loose latency tolerance: every agent, the
/// server and the traffic share this machine's cores.
const PLAN: &str = r#"name = "demo: canary then fleet"

[[stage]]
name = "canary"
percent = 34
min_devices = 2
min_windows = 4
min_duration = "6s"
max_duration = "4m"
max_failed_devices = 0
[[stage.gate]]
kind = "error_rate"
[[stage.gate]]
kind = "accuracy"
optional = false
tolerance = 0.05
min_count = 200
[[stage.gate]]
kind = "confidence"
[[stage.gate]]
kind = "latency"
tolerance = 0.5
min_count = 300
[[stage.gate]]
kind = "drift"
min_count = 300

[[stage]]
name = "fleet"
percent = 100
min_devices = 1
min_windows = 4
min_duration = "4s"
max_duration = "4m"
[[stage.gate]]
kind = "error_rate"
[[stage.gate]]
kind = "accuracy"
tolerance = 0.05
min_count = 200
"#;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Device agents to start (at least 3: a canary and a control cohort).
    #[arg(long, default_value_t = 6)]
    devices: usize,
    /// After the walkthrough, keep the server and agents running this many
    /// seconds, then stop [default: until Ctrl-C].
    #[arg(long)]
    exit_after: Option<u64>,
    /// Keep the demo's files (keys, packages, stores, logs) in this folder
    /// instead of a temporary one removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Inference requests per second sent to each device.
    #[arg(long, default_value_t = 25)]
    rate: u32,
    /// Longest wait for any one step, in seconds.
    #[arg(long, default_value_t = 300)]
    step_timeout: u64,
}

/// The demo's child processes; killed and reaped on drop.
#[derive(Default)]
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
        }
        for (_, c) in &mut self.0 {
            let _ = c.wait();
        }
    }
}

impl Children {
    /// Starts `exe args`, stderr to `log`, and returns the first stdout
    /// line that starts with `prefix` (the process's "listening …" line).
    fn spawn(
        &mut self,
        name: &str,
        exe: &Path,
        args: &[String],
        log: &Path,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String> {
        let err =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .env_remove("OUTPOST_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
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
        rx.recv_timeout(timeout).map_err(|_| {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            anyhow!(
                "{name} did not start within {}s; the end of {}:\n{}",
                timeout.as_secs(),
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    }

    /// A child that exited: its name and status.
    fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|(n, c)| {
            c.try_wait()
                .ok()
                .flatten()
                .map(|s| format!("{n} exited ({s})"))
        })
    }
}

struct Demo {
    exe: PathBuf,
    dir: PathBuf,
    server: String,
    admin: String,
    operator: String,
    approvers: [String; 2],
    timeout: Duration,
    started: Instant,
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

impl Demo {
    /// Runs `outpost --json ARGS` (as `token`'s holder) and returns its JSON.
    fn cli(&self, token: Option<&str>, args: &[&str]) -> Result<Value> {
        let mut c = Command::new(&self.exe);
        c.arg("--json").args(args).env_remove("OUTPOST_TOKEN");
        if !self.server.is_empty() {
            c.env("OUTPOST_SERVER", &self.server);
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

    fn client(&self) -> Client {
        Client::new(Some(self.server.as_str()), Some(self.admin.as_str()))
    }

    fn elapsed(&self) -> String {
        format!("{:>5.1}s", self.started.elapsed().as_secs_f64())
    }

    /// Waits until `f` returns Some, polling every 500 ms, for the step timeout.
    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(v) = f()? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {}s waiting for {what}",
                    self.timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until every device in `ids` serves `version` of digits from
    /// its active slot, as the inventory reports.
    fn wait_serving(&self, ids: &[String], version: &str) -> Result<()> {
        self.wait(
            &format!("{} device(s) to serve digits {version}", ids.len()),
            || {
                let v = self.client().get("/v1/devices")?;
                let serving = v["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|d| ids.iter().any(|i| d["id"] == json!(i)))
                    .filter(|d| {
                        d["installed"].as_array().into_iter().flatten().any(|i| {
                            i["slot"] == "active"
                                && i["name"] == "digits"
                                && i["version"] == version
                        })
                    })
                    .count();
                Ok((serving == ids.len()).then_some(()))
            },
        )
    }

    /// Waits until no device in `ids` serves or runs as a candidate
    /// `version` of digits (a canary rolled back).
    fn wait_gone(&self, ids: &[String], version: &str) -> Result<()> {
        self.wait(&format!("digits {version} to leave every device"), || {
            let v = self.client().get("/v1/devices")?;
            let holding = v["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| ids.iter().any(|i| d["id"] == json!(i)))
                .filter(|d| {
                    d["installed"].as_array().into_iter().flatten().any(|i| {
                        i["name"] == "digits" && i["version"] == version && i["slot"] != "previous"
                    })
                })
                .count();
            Ok((holding == 0).then_some(()))
        })
    }

    /// Pushes, then approves by both approvers; returns the measured accuracy.
    fn register(&self, pkg: &Path, version: &str) -> Result<String> {
        let pushed = self.cli(Some(&self.operator), &["model", "push", &s(pkg)])?;
        let eval = &pushed["version"]["eval"];
        let acc = eval["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["metric"] == "accuracy")
            .and_then(|m| m["measured"].as_f64())
            .map_or_else(|| "?".into(), |a| format!("{a:.4}"));
        let mismatch = eval["mismatch"] == json!(true);
        let acc = match eval["comparison"].as_object() {
            Some(c) => format!(
                "{acc}; McNemar against {}: p = {:.3}",
                c.get("baseline_version")
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
                c.get("p_value").and_then(Value::as_f64).unwrap_or(f64::NAN)
            ),
            None => acc,
        };
        for a in &self.approvers {
            self.cli(Some(a), &["model", "approve", "digits", version])?;
        }
        Ok(if mismatch {
            format!("{acc} — the registry flags it: the card claims 0.97")
        } else {
            acc
        })
    }

    /// Starts a rollout and follows it to its end, printing its timeline
    /// and gate verdicts; returns the final status.
    fn rollout(&self, version: &str, plan: &Path, children: &mut Children) -> Result<Value> {
        let target = format!("digits@{version}");
        say(&format!(
            "        $ outpost rollout start {target} --plan {}",
            plan.display()
        ));
        let started = self.cli(
            Some(&self.operator),
            &["rollout", "start", &target, "--plan", &s(plan)],
        )?;
        let id = started["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no rollout id in {started}"))?
            .to_owned();
        say(&format!(
            "        rollout {id}: canary and control cohorts drawn from the rollout id, stratified by device class"
        ));
        let mut shown = 0usize;
        let mut ended = 0usize;
        let mut last_table = Instant::now();
        let status = self.wait(&format!("rollout {id} to end"), || {
            if let Some(dead) = children.exited() {
                bail!(
                    "{dead}; see the logs in {}",
                    self.dir.join("logs").display()
                );
            }
            let v = self.client().get(&format!("/v1/rollouts/{id}"))?;
            let timeline = v["timeline"].as_array().cloned().unwrap_or_default();
            for t in timeline.iter().skip(shown) {
                let what = t["what"].as_str().unwrap_or("");
                say(&format!("{}  {what}", self.elapsed()));
                // A stage ended: its gates as they decided.
                if what.contains(" passed (")
                    || what.starts_with("HALTED")
                    || what.starts_with("completed")
                {
                    if let Some(record) = v["history"].get(ended) {
                        say(render_gates(&record["reports"]).trim_end());
                    }
                    ended += 1;
                    last_table = Instant::now();
                }
            }
            shown = timeline.len();
            // While a stage runs: its gates so far, every few seconds.
            let has_data = v["reports"]
                .as_array()
                .is_some_and(|r| r.iter().any(|g| g["n_canary"].as_u64().unwrap_or(0) > 0));
            if has_data && !is_final(&v) && last_table.elapsed() > Duration::from_secs(5) {
                say(&format!(
                    "{}  gates of {} so far ({} canary / {} control windows):\n{}",
                    self.elapsed(),
                    v["stage_label"].as_str().unwrap_or("-"),
                    v["canary_windows"],
                    v["control_windows"],
                    render_gates(&v["reports"]).trim_end()
                ));
                last_table = Instant::now();
            }
            Ok(is_final(&v).then_some(v))
        })?;
        Ok(status)
    }
}

/// Writes `--devices` agent configs; returns (device ids, config paths).
fn agent_configs(dir: &Path, n: usize, mqtt: &str, root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let agents = dir.join("agents");
    let targets = agents.join("targets");
    std::fs::create_dir_all(&targets)?;
    for class in CLASSES {
        std::fs::write(
            targets.join(format!("{class}.toml")),
            format!(
                "name = \"{class}\"\ndescription = \"outpost demo device class\"\narch = \"{arch}\"\n\
                 triple = \"{arch}-unknown-linux-gnu\"\ncores = 2\nmemory_mb = 1024\n\
                 accelerators = []\npreferred_engine = \"cpu\"\nthreads = 1\n",
                arch = std::env::consts::ARCH
            ),
        )?;
    }
    (1..=n)
        .map(|i| {
            let id = format!("demo-{i:02}");
            let path = agents.join(format!("{id}.toml"));
            std::fs::write(
                &path,
                format!(
                    "device_id = \"{id}\"\ntarget = \"{class}\"\ndata_dir = \"{id}\"\n\n\
                     [mqtt]\nurl = \"mqtt://{mqtt}\"\nkeep_alive_secs = 5\n\n\
                     [trust]\nroot = \"{root}\"\n\n[api]\nbind = \"127.0.0.1:0\"\n\n\
                     [telemetry]\nwindow_secs = 2\n",
                    class = CLASSES[(i - 1) % CLASSES.len()],
                    root = root.display()
                ),
            )?;
            Ok((id, path))
        })
        .collect()
}

/// The bundled digits test split: rows and labels.
fn bundled_split() -> Result<(outpost_runtime::Tensor, outpost_runtime::Tensor)> {
    let x = outpost_runtime::npy::npy_from_bytes(TEST_X)
        .map_err(|e| anyhow!("bundled test split: {e}"))?;
    let y =
        outpost_runtime::npy::npy_from_bytes(TEST_Y).map_err(|e| anyhow!("bundled labels: {e}"))?;
    Ok((x, y))
}

/// The apps on the devices: `rate` requests per second to each agent, rows
/// of the digits test split, with the true label sent back as feedback.
fn traffic(
    apis: Vec<String>,
    rate: u32,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let (x, y) = bundled_split()?;
    let rows: Vec<f32> = x
        .to_plain_array_view::<f32>()
        .map_err(|e| anyhow!("test split: {e}"))?
        .iter()
        .copied()
        .collect();
    let labels: Vec<i64> = match y.to_plain_array_view::<i64>() {
        Ok(l) => l.iter().copied().collect(),
        Err(_) => y
            .to_plain_array_view::<i32>()
            .map_err(|e| anyhow!("labels: {e}"))?
            .iter()
            .map(|&v| i64::from(v))
            .collect(),
    };
    let rows = Arc::new(rows);
    let labels = Arc::new(labels);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    Ok(apis
        .into_iter()
        .enumerate()
        .map(|(d, api)| {
            let (rows, labels, stop, sent) =
                (rows.clone(), labels.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(5)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let n = labels.len();
                let mut i = d * 97;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 37) % n;
                    let row = &rows[i * 64..(i + 1) * 64];
                    let body = json!({"inputs": {"input": {"shape": [1, 64], "data": row}}});
                    let answer: Option<Value> = agent
                        .post(&format!("http://{api}/v1/models/digits/infer"))
                        .send_json(&body)
                        .ok()
                        .and_then(|mut r| r.body_mut().read_json().ok());
                    if let Some(id) = answer.as_ref().and_then(|a| a["request_id"].as_str()) {
                        let _ = agent
                            .post(&format!("http://{api}/v1/feedback"))
                            .send_json(json!({"request_id": id, "labels": [labels[i]]}));
                        sent.fetch_add(1, Ordering::Relaxed);
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
        .collect())
}

pub(crate) fn run(args: DemoArgs) -> Result<()> {
    if args.devices < 3 {
        return Err(super::invalid(anyhow!(
            "--devices {} is too few: the canary and the control cohort need at least 3",
            args.devices
        )));
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.canonicalize()?
        }
        None => {
            temp = tempfile::Builder::new().prefix("outpost-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let exe = std::env::current_exe().context("locating this executable")?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut children = Children::default();
    let stop = Arc::new(AtomicBool::new(false));
    let result = walk(&args, &exe, &dir, &logs, &mut children, &stop);
    stop.store(true, Ordering::Relaxed);
    drop(children);
    if let Err(e) = &result {
        say(&format!(
            "\nthe demo stopped: {e:#}\nlogs: {}{}",
            logs.display(),
            if args.dir.is_none() {
                " (removed with the temporary folder; keep them with --dir)"
            } else {
                ""
            }
        ));
    }
    result
}

fn walk(
    args: &DemoArgs,
    exe: &Path,
    dir: &Path,
    logs: &Path,
    children: &mut Children,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    let mut demo = Demo {
        exe: exe.to_owned(),
        dir: dir.to_owned(),
        server: String::new(),
        admin: String::new(),
        operator: String::new(),
        approvers: [String::new(), String::new()],
        timeout: Duration::from_secs(args.step_timeout.max(10)),
        started: Instant::now(),
    };
    say("outpost demo: a signed canary rollout, end to end, on this machine");
    say(&format!("  files: {}", dir.display()));

    // 1. Keys.
    let keys = dir.join("keys");
    demo.cli(None, &["keys", "init", "--dir", &s(&keys)])?;
    say(&format!(
        "{}  [1/7] keys: root, release and director keys, root metadata v1\n        $ outpost keys init --dir {}",
        demo.elapsed(),
        keys.display()
    ));

    // 2. Packages.
    let work = dir.join("packages");
    std::fs::create_dir_all(&work)?;
    let reference = work.join("digits_test_x.npy");
    std::fs::write(&reference, TEST_X)?;
    let eval = work.join("eval.npz");
    let (x, y) = bundled_split()?;
    outpost_runtime::npy::write_npz(&eval, &[("input".into(), x), ("labels".into(), y)])?;
    let versions = [
        ("1.0.0", MODEL_V1, "int8 MLP, per-tensor quantized"),
        ("1.1.0", MODEL_V2, "int8 MLP, per-channel quantized"),
        (
            "1.2.0",
            MODEL_BAD,
            "1.1.0 with its class order rotated: a packaging mistake",
        ),
    ];
    let mut packages = vec![];
    for (version, bytes, _) in &versions {
        let model = work.join(format!("digits-{version}.onnx"));
        std::fs::write(&model, bytes)?;
        let card = work.join(format!("card-{version}.toml"));
        std::fs::write(
            &card,
            CARD.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
        )?;
        let pkg = work.join(format!("digits-{version}.opk"));
        demo.cli(
            None,
            &[
                "model",
                "pack",
                "--model",
                &s(&model),
                "--card",
                &s(&card),
                "--reference",
                &s(&reference),
                "--eval",
                &s(&eval),
                "--out",
                &s(&pkg),
            ],
        )?;
        demo.cli(
            None,
            &[
                "model",
                "sign",
                &s(&pkg),
                "--key",
                &s(&keys.join("release-1.pk8")),
                "--root",
                &s(&keys.join("root.signed")),
            ],
        )?;
        packages.push(pkg);
    }
    say(&format!(
        "{}  [2/7] packages, each with its card, reference profile and eval set, signed with the release key:",
        demo.elapsed()
    ));
    for (version, _, what) in &versions {
        say(&format!("        digits {version}: {what}"));
    }
    say(&format!(
        "        $ outpost model pack --model digits-1.1.0.onnx --card card-1.1.0.toml --reference digits_test_x.npy --eval eval.npz --out {}",
        packages[1].display()
    ));
    say(&format!(
        "        $ outpost model sign {} --key keys/release-1.pk8 --root keys/root.signed",
        packages[1].display()
    ));

    // 3. Server.
    let token_file = dir.join("admin.token");
    let line = children.spawn(
        "outpost serve",
        exe,
        &[
            "serve".into(),
            "--data-dir".into(),
            s(&dir.join("server")),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--mqtt-port".into(),
            "0".into(),
            "--director-key".into(),
            s(&keys.join("director.pk8")),
            "--root".into(),
            s(&keys.join("root.signed")),
            "--init-admin-token-file".into(),
            s(&token_file),
            "--rollout-evaluate-every".into(),
            "2".into(),
            "--exit-on-stdin-eof".into(),
        ],
        &logs.join("server.log"),
        "listening ",
        Duration::from_secs(60),
    )?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no {k} in {line:?}"))
    };
    let (http, mqtt) = (field("http=")?, field("mqtt=")?);
    demo.server = format!("http://{http}");
    demo.admin = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let token = |name: &str, role: &str| -> Result<String> {
        let v = demo.cli(
            Some(&demo.admin),
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
    demo.operator = operator;
    demo.approvers = [ada, grace];
    say(&format!(
        "{}  [3/7] server: http={http} mqtt={mqtt} (embedded broker; sled store in {}); tokens for olivia (operator), ada and grace (approvers)",
        demo.elapsed(),
        dir.join("server").display()
    ));

    // 4. Agents.
    let configs = agent_configs(dir, args.devices, &mqtt, &keys.join("root.signed"))?;
    let mut apis = vec![];
    for (id, config) in &configs {
        let line = children.spawn(
            id,
            exe,
            &[
                "agent".into(),
                "run".into(),
                "--config".into(),
                s(config),
                "--exit-on-stdin-eof".into(),
            ],
            &logs.join(format!("{id}.log")),
            "listening ",
            Duration::from_secs(60),
        )?;
        apis.push(
            line.strip_prefix("listening api=")
                .ok_or_else(|| anyhow!("{id}: unexpected {line:?}"))?
                .to_owned(),
        );
    }
    let ids: Vec<String> = configs.iter().map(|(id, _)| id.clone()).collect();
    demo.wait(&format!("{} devices to come online", ids.len()), || {
        let v = demo.client().get("/v1/devices")?;
        let online = v["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["online"] == json!(true))
            .count();
        Ok((online >= ids.len()).then_some(()))
    })?;
    say(&format!(
        "{}  [4/7] agents: {} devices online ({}), each with its own store, pinned root and local API",
        demo.elapsed(),
        ids.len(),
        CLASSES
            .iter()
            .map(|c| format!(
                "{} {c}",
                ids.len() / 2 + usize::from(*c == CLASSES[0] && ids.len() % 2 == 1)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // 5. The first version.
    let acc = demo.register(&packages[0], "1.0.0")?;
    let deployed = demo.cli(
        Some(&demo.operator),
        &["model", "deploy", "digits", "1.0.0"],
    )?;
    let sent = deployed["directives"].as_array().map_or(0, Vec::len);
    demo.wait_serving(&ids, "1.0.0")?;
    say(&format!(
        "{}  [5/7] digits 1.0.0: pushed (eval re-run by the registry: accuracy {acc}), approved by ada and grace, \
         deployed with {sent} signed directives; every device verified and serves it\n        \
         $ outpost model push {}\n        $ outpost model approve digits 1.0.0\n        $ outpost model deploy digits 1.0.0",
        demo.elapsed(),
        packages[0].display()
    ));
    let requests = Arc::new(AtomicU64::new(0));
    let threads = traffic(apis, args.rate, stop.clone(), requests.clone())?;
    say(&format!(
        "        traffic: {} requests/s to each device from the digits test split; the true label goes back as feedback",
        args.rate
    ));
    let plan = dir.join("plan.toml");
    std::fs::write(&plan, PLAN)?;

    // 6. A good version.
    let acc = demo.register(&packages[1], "1.1.0")?;
    say(&format!(
        "{}  [6/7] digits 1.1.0: pushed (measured accuracy {acc}) and approved; canary rollout with the plan in {}",
        demo.elapsed(),
        plan.display()
    ));
    let good = demo.rollout("1.1.0", &plan, children)?;
    if state_name(&good) != "completed" {
        bail!(
            "the rollout of 1.1.0 ended {}: expected completed",
            state_name(&good)
        );
    }
    demo.wait_serving(&ids, "1.1.0")?;
    say(&format!(
        "{}  digits 1.1.0 is promoted: deployed on all {} devices; 1.0.0 is deprecated",
        demo.elapsed(),
        ids.len()
    ));

    // 7. A bad version.
    let acc = demo.register(&packages[2], "1.2.0")?;
    say(&format!(
        "{}  [7/7] digits 1.2.0: pushed (measured accuracy {acc}); approved anyway, to show the canary catching it",
        demo.elapsed()
    ));
    let bad = demo.rollout("1.2.0", &plan, children)?;
    if state_name(&bad) != "halted" {
        bail!(
            "the rollout of 1.2.0 ended {}: expected halted",
            state_name(&bad)
        );
    }
    demo.wait_gone(&ids, "1.2.0")?;
    demo.wait_serving(&ids, "1.1.0")?;
    say(&format!(
        "{}  digits 1.2.0 is halted at its first stage; the canaries rolled back and every device serves 1.1.0 again",
        demo.elapsed()
    ));
    let rollout_id = bad["id"].as_str().unwrap_or("digits-1.2.0-1");
    say(&format!(
        "\nDone in {:.0}s: {} inference requests answered and labelled.\nWhere to look next:\n  \
         export OUTPOST_SERVER={} OUTPOST_TOKEN={}\n  \
         outpost rollout list\n  outpost rollout status {rollout_id}\n  outpost devices list\n  \
         outpost model list\n  outpost audit verify\n  curl -s $OUTPOST_SERVER/metrics\n  logs: {}",
        demo.started.elapsed().as_secs_f64(),
        requests.load(Ordering::Relaxed),
        demo.server,
        demo.admin,
        logs.display()
    ));
    match args.exit_after {
        Some(secs) => {
            say(&format!(
                "The fleet keeps running for {secs}s (--exit-after)."
            ));
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until {
                if let Some(dead) = children.exited() {
                    bail!("{dead}");
                }
                std::thread::sleep(Duration::from_millis(200).min(until - Instant::now()));
            }
        }
        None => {
            say("The fleet keeps running; Ctrl-C stops it.");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(super::serve::shutdown_signal());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
