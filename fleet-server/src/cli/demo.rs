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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use outpost_fleet::harness::{
    AgentExe, DIGITS_X, Fleet, FleetOptions, Traffic, is_final, state_name,
};
use serde_json::{Value, json};

use super::rollout::render_gates;

/// The bundled models and data.
const MODEL_V1: &[u8] = include_bytes!("../../../runtime/tests/fixtures/digits/mlp_qdq_pt.onnx");
const MODEL_V2: &[u8] = include_bytes!("../../../runtime/tests/fixtures/digits/mlp_qdq_pc.onnx");
/// `scripts/make_demo_models.py`: 1.1.0's network with its class order
/// rotated by one.
const MODEL_BAD: &[u8] = include_bytes!("../../demo/digits_rotated.onnx");

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

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Seconds since `started`, as the transcript's left column.
fn since(started: Instant) -> String {
    format!("{:>5.1}s", started.elapsed().as_secs_f64())
}

struct Demo {
    fleet: Fleet,
    started: Instant,
}

impl Demo {
    fn elapsed(&self) -> String {
        since(self.started)
    }

    /// Pushes and approves; returns the registry's measured accuracy, its
    /// McNemar comparison and whether it flagged the card's claim.
    fn register(&self, pkg: &Path, version: &str) -> Result<String> {
        let pushed = self.fleet.register(pkg, version)?;
        let eval = &pushed["version"]["eval"];
        let acc = eval["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["metric"] == "accuracy")
            .and_then(|m| m["measured"].as_f64())
            .map_or_else(|| "?".into(), |a| format!("{a:.4}"));
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
        Ok(if eval["mismatch"] == json!(true) {
            format!("{acc} — the registry flags it: the card claims 0.97")
        } else {
            acc
        })
    }

    /// Starts a rollout and follows it to its end, printing its timeline
    /// and gate verdicts; returns the final status.
    fn rollout(&mut self, version: &str, plan: &Path) -> Result<Value> {
        say(&format!(
            "        $ outpost rollout start digits@{version} --plan {}",
            plan.display()
        ));
        let started = self.fleet.start_rollout(version, plan)?;
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
        let started_at = self.started;
        let elapsed = move || since(started_at);
        self.fleet.follow(&id, |v| {
            let timeline = v["timeline"].as_array().cloned().unwrap_or_default();
            for t in timeline.iter().skip(shown) {
                let what = t["what"].as_str().unwrap_or("");
                say(&format!("{}  {what}", elapsed()));
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
            if has_data && !is_final(v) && last_table.elapsed() > Duration::from_secs(5) {
                say(&format!(
                    "{}  gates of {} so far ({} canary / {} control windows):\n{}",
                    elapsed(),
                    v["stage_label"].as_str().unwrap_or("-"),
                    v["canary_windows"],
                    v["control_windows"],
                    render_gates(&v["reports"]).trim_end()
                ));
                last_table = Instant::now();
            }
        })
    }
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
    let result = walk(&args, &exe, &dir);
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

fn walk(args: &DemoArgs, exe: &Path, dir: &Path) -> Result<()> {
    let started = Instant::now();
    say("outpost demo: a signed canary rollout, end to end, on this machine");
    say(&format!("  files: {}", dir.display()));
    let fleet = Fleet::start(FleetOptions {
        dir: dir.to_owned(),
        outpost: exe.to_owned(),
        agent: AgentExe::Outpost(exe.to_owned()),
        devices: args.devices,
        classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
        window_secs: 2,
        evaluate_every: 2,
        step_timeout: Duration::from_secs(args.step_timeout.max(10)),
        broker: None,
        data_dirs: vec![],
        tls: None,
    })?;
    let keys = &fleet.keys;
    say(&format!(
        "{}  [1/4] keys, server and agents:\n        \
         $ outpost keys init --dir {}   (root, release and director keys; root metadata v1)\n        \
         $ outpost serve --director-key keys/director.pk8 --root keys/root.signed   \
         (http={} mqtt={}: embedded broker, sled store in {})\n        \
         tokens for olivia (operator), ada and grace (approvers); {} agents online ({}), \
         each with its own store, pinned root and local API",
        since(started),
        keys.display(),
        fleet.server.trim_start_matches("http://"),
        fleet.mqtt,
        dir.join("server").display(),
        fleet.ids.len(),
        CLASSES
            .iter()
            .enumerate()
            .map(|(i, c)| format!(
                "{} {c}",
                fleet.ids.len() / CLASSES.len() + usize::from(i < fleet.ids.len() % CLASSES.len())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut demo = Demo { fleet, started };

    // Packages.
    let work = dir.join("packages");
    std::fs::create_dir_all(&work)?;
    let reference = work.join("digits_test_x.npy");
    std::fs::write(&reference, DIGITS_X)?;
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
        packages.push(demo.fleet.package(&model, version, &reference)?);
    }
    say(&format!(
        "{}  [2/4] packages, each with its card, reference profile and eval set, signed with the release key:",
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

    // The first version.
    let acc = demo.register(&packages[0], "1.0.0")?;
    let deployed = demo.fleet.cli(
        Some(&demo.fleet.operator),
        &["model", "deploy", "digits", "1.0.0"],
    )?;
    let sent = deployed["directives"].as_array().map_or(0, Vec::len);
    let ids = demo.fleet.ids.clone();
    demo.fleet.wait_serving(&ids, "1.0.0")?;
    say(&format!(
        "{}  [3/4] digits 1.0.0: pushed (eval re-run by the registry: accuracy {acc}), approved by ada and grace, \
         deployed with {sent} signed directives; every device verified and serves it\n        \
         $ outpost model push {}\n        $ outpost model approve digits 1.0.0\n        $ outpost model deploy digits 1.0.0",
        demo.elapsed(),
        packages[0].display()
    ));
    let traffic = Traffic::start(&demo.fleet.apis, args.rate)?;
    say(&format!(
        "        traffic: {} requests/s to each device from the digits test split; the true label goes back as feedback",
        args.rate
    ));
    let plan = dir.join("plan.toml");
    std::fs::write(&plan, PLAN)?;

    // A good version.
    let acc = demo.register(&packages[1], "1.1.0")?;
    say(&format!(
        "{}  [4/4] digits 1.1.0: pushed (measured accuracy {acc}) and approved; canary rollout with the plan in {}",
        demo.elapsed(),
        plan.display()
    ));
    let good = demo.rollout("1.1.0", &plan)?;
    if state_name(&good) != "completed" {
        bail!(
            "the rollout of 1.1.0 ended {}: expected completed",
            state_name(&good)
        );
    }
    demo.fleet.wait_serving(&ids, "1.1.0")?;
    say(&format!(
        "{}  digits 1.1.0 is promoted: deployed on all {} devices; 1.0.0 is deprecated",
        demo.elapsed(),
        ids.len()
    ));

    // A bad version.
    let acc = demo.register(&packages[2], "1.2.0")?;
    say(&format!(
        "{}  digits 1.2.0: pushed (measured accuracy {acc}); approved anyway, to show the canary catching it",
        demo.elapsed()
    ));
    let bad = demo.rollout("1.2.0", &plan)?;
    if state_name(&bad) != "halted" {
        bail!(
            "the rollout of 1.2.0 ended {}: expected halted",
            state_name(&bad)
        );
    }
    demo.fleet.wait_gone(&ids, "1.2.0")?;
    demo.fleet.wait_serving(&ids, "1.1.0")?;
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
        traffic.answered(),
        demo.fleet.server,
        demo.fleet.admin,
        demo.fleet.logs.display()
    ));
    match args.exit_after {
        Some(secs) => {
            if secs > 0 {
                say(&format!(
                    "The fleet keeps running for {secs} s (--exit-after), then stops."
                ));
            }
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until {
                if let Some(dead) = demo.fleet.procs.exited() {
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
    drop(traffic);
    Ok(())
}
