//! `outpost rollout start|status|pause|resume|abort|list`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, cell, enc, table};
use super::{Conn, emit, invalid};
use outpost_fleet::harness::{is_final, state_name};

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Start a canary rollout of an approved version against the deployed
    /// one (role operator).
    Start {
        /// MODEL@VERSION
        target: String,
        /// The plan (TOML): stages with cohort size, minimums, durations
        /// and gates.
        #[arg(long)]
        plan: PathBuf,
        /// Only devices in this inventory group.
        #[arg(long)]
        group: Option<String>,
        /// The rollout's id [default: MODEL-VERSION-N].
        #[arg(long)]
        id: Option<String>,
    },
    /// A rollout's state, cohorts, gate verdicts (statistic, error bound,
    /// interval) and timeline.
    Status {
        id: String,
        /// Print again on every change until the rollout ends.
        #[arg(long)]
        watch: bool,
        /// With --watch: seconds between looks.
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
    /// Hold the current stage (no advance, no new directives).
    Pause { id: String },
    /// Continue a paused rollout.
    Resume { id: String },
    /// Stop for good: rollback directives go to every touched device.
    Abort { id: String },
    /// Every rollout, newest last.
    List,
}

/// Splits `MODEL@VERSION`.
pub(crate) fn split_target(s: &str) -> Result<(String, String)> {
    match s.split_once('@') {
        Some((m, v)) if !m.is_empty() && !v.is_empty() => Ok((m.to_owned(), v.to_owned())),
        _ => Err(invalid(anyhow::anyhow!(
            "{s:?}: expected MODEL@VERSION (e.g. digits@1.1.0)"
        ))),
    }
}

pub(crate) fn run(cmd: RolloutCommand, json_out: bool, conn: &Conn) -> Result<()> {
    let client = conn.client();
    match cmd {
        RolloutCommand::Start {
            target,
            plan,
            group,
            id,
        } => {
            let (model, version) = split_target(&target)?;
            let text = std::fs::read_to_string(&plan)
                .with_context(|| format!("reading {}", plan.display()))
                .map_err(invalid)?;
            let v = client.post(
                "/v1/rollouts",
                &json!({"model": model, "version": version, "plan": text, "group": group, "id": id}),
            )?;
            emit(json_out, &v, || {
                println!("rollout {} started", cell(&v["id"]));
                print!("{}", render_status(&v));
                println!(
                    "follow it with: outpost rollout status {} --watch",
                    cell(&v["id"])
                );
            })
        }
        RolloutCommand::Status {
            id,
            watch,
            interval,
        } => {
            let path = format!("/v1/rollouts/{}", enc(&id));
            if !watch {
                let v = client.get(&path)?;
                return emit(json_out, &v, || print!("{}", render_status(&v)));
            }
            let mut last = String::new();
            loop {
                let v = client.get(&path)?;
                let text = if json_out {
                    serde_json::to_string(&v)?
                } else {
                    render_status(&v)
                };
                if text != last {
                    println!("{text}");
                    last = text;
                }
                if is_final(&v) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(interval.max(1)));
            }
        }
        RolloutCommand::Pause { id } => operate(&client, &id, "pause", json_out),
        RolloutCommand::Resume { id } => operate(&client, &id, "resume", json_out),
        RolloutCommand::Abort { id } => operate(&client, &id, "abort", json_out),
        RolloutCommand::List => {
            let v = client.get("/v1/rollouts")?;
            emit(json_out, &v, || {
                let rows: Vec<Vec<String>> = v["rollouts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            cell(&r["id"]),
                            cell(&r["model"]),
                            format!("{} → {}", cell(&r["from"]), cell(&r["to"])),
                            cell(&r["state"]),
                            cell(&r["stage"]),
                            format!(
                                "{}/{}",
                                cell(&r["canary_devices"]),
                                cell(&r["control_devices"])
                            ),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "MODEL",
                        "VERSIONS",
                        "STATE",
                        "STAGE",
                        "CANARY/CONTROL",
                    ],
                    &rows,
                );
            })
        }
    }
}

fn operate(client: &Client, id: &str, command: &str, json_out: bool) -> Result<()> {
    let v = client.post(&format!("/v1/rollouts/{}/{command}", enc(id)), &json!({}))?;
    emit(json_out, &v, || {
        println!("rollout {id}: {command} → {}", state_name(&v));
    })
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// One line per gate: verdict, statistic ± error bound, interval, tolerance.
pub(crate) fn render_gates(reports: &Value) -> String {
    let mut out = String::new();
    for r in reports.as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "    {:<17} {:<12} stat {:>8} ±{:<7} [{}, {}] tol {:<6} n {}/{}  {}",
            cell(&r["gate"]),
            format!(
                "{}{}",
                cell(&r["verdict"]).to_uppercase(),
                if r["optional"] == json!(true) {
                    "*"
                } else {
                    ""
                }
            ),
            num(&r["statistic"], 4),
            num(&r["error_bound"], 4),
            num(&r["lower"], 4),
            num(&r["upper"], 4),
            num(&r["tolerance"], 3),
            cell(&r["n_canary"]),
            cell(&r["n_control"]),
            cell(&r["detail"]),
        );
    }
    out
}

/// `outpost rollout status` as text.
pub(crate) fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {}: {} {} → {}  [{}] {}",
        cell(&v["id"]),
        cell(&v["model"]),
        cell(&v["from"]),
        cell(&v["to"]),
        state_name(v),
        v["stage_label"]
            .as_str()
            .map(|s| format!("at {s} of {}", cell(&v["stages"])))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  canary {} devices ({} reporting, {} windows) · control {} ({} reporting, {} windows) · directives sent {}, pending {}",
        cell(&v["canary_devices"]),
        cell(&v["canary_reporting"]),
        cell(&v["canary_windows"]),
        cell(&v["control_devices"]),
        cell(&v["control_reporting"]),
        cell(&v["control_windows"]),
        cell(&v["directives_sent"]),
        cell(&v["directives_pending"]),
    );
    if v["reports"].as_array().is_some_and(|a| !a.is_empty()) {
        let _ = writeln!(out, "  gates (* optional):");
        out.push_str(&render_gates(&v["reports"]));
    }
    if let Some(f) = v["failures"].as_object().filter(|f| !f.is_empty()) {
        for (d, why) in f {
            let _ = writeln!(out, "  failed device {d}: {}", cell(why));
        }
    }
    for t in v["timeline"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {}  {}",
            t["at"]
                .as_u64()
                .map(outpost_fleet::clock::rfc3339)
                .unwrap_or_default(),
            cell(&t["what"])
        );
    }
    out
}
