//! `outpost model push|list|show|approve|reject|promote|deprecate|retire|attach|retirement`:
//! the registry, through the server's HTTP API.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use super::client::{ApiFailure, Client, cell, enc, table};
use super::{emit, invalid};

/// Bytes per upload request.
const CHUNK: usize = 1 << 20;

#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The package (.opk).
    package: PathBuf,
    /// Release metadata to publish beside it (default: PACKAGE.release when
    /// it exists).
    #[arg(long)]
    release: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VersionArgs {
    pub(crate) name: String,
    pub(crate) version: String,
}

fn vpath(v: &VersionArgs) -> String {
    format!("/v1/models/{}/{}", enc(&v.name), enc(&v.version))
}

pub(crate) fn push(client: &Client, args: PushArgs, json_out: bool) -> Result<()> {
    let bytes = std::fs::read(&args.package)
        .with_context(|| format!("reading {}", args.package.display()))
        .map_err(invalid)?;
    let release_path = args
        .release
        .clone()
        .unwrap_or_else(|| outpost_fleet::trust::release_path_for(&args.package));
    let release = if release_path.exists() {
        Some(
            std::fs::read(&release_path)
                .with_context(|| format!("reading {}", release_path.display()))
                .map_err(invalid)?,
        )
    } else if args.release.is_some() {
        return Err(invalid(anyhow::anyhow!(
            "{} does not exist",
            release_path.display()
        )));
    } else {
        None
    };
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    let len = bytes.len() as u64;
    let started = client.post("/v1/uploads", &json!({"sha256": sha, "length": len}))?;
    let mut offset = started["offset"].as_u64().unwrap_or(0).min(len);
    let resumed_at = offset;
    let bar = ProgressBar::new(len);
    if json_out {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "pushing {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(
        args.package
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    bar.set_position(offset);
    while offset < len {
        let end = (offset as usize + CHUNK).min(bytes.len());
        let path = format!("/v1/uploads/{sha}?offset={offset}");
        match client.send_bytes("PATCH", &path, &bytes[offset as usize..end]) {
            Ok(v) => offset = v["offset"].as_u64().unwrap_or(end as u64),
            // Another attempt moved the upload on: continue from there.
            Err(e) => match e.downcast_ref::<ApiFailure>() {
                Some(f) if f.status == Some(409) && f.details["offset"].is_u64() => {
                    offset = f.details["offset"].as_u64().unwrap_or(0);
                }
                _ => {
                    bar.abandon();
                    return Err(e.context(format!(
                        "push of {} stopped at byte {offset} of {len}; run the same command again to resume",
                        args.package.display()
                    )));
                }
            },
        }
        bar.set_position(offset);
    }
    bar.finish_and_clear();
    let body = match &release {
        Some(r) => json!({"release": base64::engine::general_purpose::STANDARD.encode(r)}),
        None => json!({}),
    };
    let done = client.post(&format!("/v1/uploads/{sha}/finish"), &body)?;
    let mut value = done.clone();
    value["resumed_at"] = json!(resumed_at);
    emit(json_out, &value, || {
        let v = &done["version"];
        let what = format!("{} {}", cell(&v["name"]), cell(&v["version"]));
        if done["created"] == json!(true) {
            println!(
                "pushed {what}: sha256 {}, {} bytes{}; status {}",
                cell(&v["sha256"]),
                cell(&v["length"]),
                if resumed_at > 0 {
                    format!(" (resumed at byte {resumed_at})")
                } else {
                    String::new()
                },
                cell(&v["status"])
            );
        } else {
            println!(
                "{what} is already registered with these bytes (sha256 {}); status {}",
                cell(&v["sha256"]),
                cell(&v["status"])
            );
        }
        print_eval(&v["eval"]);
    })
}

fn print_eval(eval: &Value) {
    if eval.is_null() {
        println!("eval: the package has no eval set");
        return;
    }
    println!(
        "eval: {} rows, tolerance {}",
        cell(&eval["rows"]),
        cell(&eval["tolerance"])
    );
    for m in eval["metrics"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} claimed {:<8} measured {:<8}{}",
            cell(&m["metric"]),
            fmt_num(&m["claimed"]),
            fmt_num(&m["measured"]),
            if m["mismatch"] == json!(true) {
                "  MISMATCH"
            } else {
                ""
            }
        );
    }
    let c = &eval["comparison"];
    if !c.is_null() {
        println!(
            "  vs deployed {}: accuracy {} vs {}, McNemar p = {} ({} / {} discordant rows)",
            cell(&c["baseline_version"]),
            fmt_num(&c["new_accuracy"]),
            fmt_num(&c["baseline_accuracy"]),
            fmt_num(&c["p_value"]),
            cell(&c["new_only_correct"]),
            cell(&c["baseline_only_correct"])
        );
    }
    for n in eval["notes"].as_array().into_iter().flatten() {
        println!("  note: {}", cell(n));
    }
}

fn fmt_num(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn list(
    client: &Client,
    name: Option<String>,
    status: Option<String>,
    json_out: bool,
) -> Result<()> {
    let mut q = vec![];
    if let Some(n) = &name {
        q.push(format!("name={}", enc(n)));
    }
    if let Some(s) = &status {
        q.push(format!("status={}", enc(s)));
    }
    let path = if q.is_empty() {
        "/v1/models".to_owned()
    } else {
        format!("/v1/models?{}", q.join("&"))
    };
    let v = client.get(&path)?;
    emit(json_out, &v, || {
        let rows: Vec<Vec<String>> = v["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                vec![
                    cell(&x["name"]),
                    cell(&x["version"]),
                    cell(&x["status"]),
                    cell(&x["risk_class"]),
                    cell(&x["submitted_by"]),
                    cell(&x["approvers"]),
                    fmt_num(&x["measured_accuracy"]),
                    x["devices"]
                        .as_array()
                        .map(|a| a.len())
                        .unwrap_or(0)
                        .to_string(),
                ]
            })
            .collect();
        table(
            &[
                "name",
                "version",
                "status",
                "risk",
                "submitted by",
                "approved by",
                "accuracy",
                "devices",
            ],
            &rows,
        );
    })
}

pub(crate) fn show(client: &Client, v: &VersionArgs, json_out: bool) -> Result<()> {
    let x = client.get(&vpath(v))?;
    emit(json_out, &x, || {
        println!(
            "{} {}  [{}]",
            cell(&x["name"]),
            cell(&x["version"]),
            cell(&x["status"])
        );
        println!(
            "sha256       {} ({} bytes)",
            cell(&x["sha256"]),
            cell(&x["length"])
        );
        println!("risk class   {}", cell(&x["risk_class"]));
        println!(
            "submitted    by {} at {}",
            cell(&x["submitted_by"]),
            x["submitted_at"]
                .as_u64()
                .map(outpost_fleet::clock::rfc3339)
                .unwrap_or_default()
        );
        println!("purpose      {}", cell(&x["card"]["purpose"]));
        println!("owner        {}", cell(&x["card"]["owner"]));
        for a in x["approvals"].as_array().into_iter().flatten() {
            println!(
                "approval     {} ({}) at {}",
                cell(&a["actor"]),
                cell(&a["kind"]),
                a["at"]
                    .as_u64()
                    .map(outpost_fleet::clock::rfc3339)
                    .unwrap_or_default()
            );
        }
        for m in x["missing_approvals"].as_array().into_iter().flatten() {
            println!("needs        {}", cell(m));
        }
        if !x["impact_assessment"].is_null() {
            println!("impact       {}", cell(&x["impact_assessment"]["source"]));
        }
        if !x["retirement"].is_null() {
            println!("retirement   marked: {}", cell(&x["retirement"]["reason"]));
        }
        println!("next         {}", cell(&x["allowed_transitions"]));
        println!("devices      {}", cell(&x["devices"]));
        println!("artifact     {}", cell(&x["artifact_url"]));
        print_eval(&x["eval"]);
    })
}

pub(crate) fn approve(
    client: &Client,
    v: &VersionArgs,
    kind: &str,
    comment: Option<String>,
    json_out: bool,
) -> Result<()> {
    let x = client.post(
        &format!("{}/approve", vpath(v)),
        &json!({"kind": kind, "comment": comment}),
    )?;
    emit(json_out, &x, || {
        println!(
            "{} {}: {} approval recorded; status {}",
            v.name,
            v.version,
            kind,
            cell(&x["status"])
        );
        for m in x["missing"].as_array().into_iter().flatten() {
            println!("  still needs {}", cell(m));
        }
    })
}

pub(crate) fn reject(
    client: &Client,
    v: &VersionArgs,
    reason: Option<String>,
    json_out: bool,
) -> Result<()> {
    let x = client.post(&format!("{}/reject", vpath(v)), &json!({"reason": reason}))?;
    emit(json_out, &x, || {
        println!("{} {}: rejected", v.name, v.version)
    })
}

pub(crate) fn deploy(
    client: &Client,
    v: &VersionArgs,
    group: Option<String>,
    force: bool,
    json_out: bool,
) -> Result<()> {
    let x = client.post(
        &format!("{}/deploy", vpath(v)),
        &json!({"group": group, "force": force}),
    )?;
    emit(json_out, &x, || {
        let sent = x["directives"].as_array().map_or(0, Vec::len);
        println!(
            "{} {}: {}; deploy directives sent to {sent} device(s)",
            v.name,
            v.version,
            cell(&x["status"])
        );
        for n in x["notes"].as_array().into_iter().flatten() {
            println!("  note: {}", cell(n));
        }
    })
}

pub(crate) fn transition(
    client: &Client,
    v: &VersionArgs,
    to: &str,
    reason: Option<String>,
    json_out: bool,
) -> Result<()> {
    let x = client.post(
        &format!("{}/transition", vpath(v)),
        &json!({"to": to, "reason": reason}),
    )?;
    emit(json_out, &x, || {
        println!(
            "{} {}: {} → {}",
            v.name,
            v.version,
            cell(&x["from"]),
            cell(&x["status"])
        );
        for d in x["directives"].as_array().into_iter().flatten() {
            println!(
                "  retire directive {} sent to {}",
                cell(&d["sequence"]),
                cell(&d["device"])
            );
        }
        for n in x["notes"].as_array().into_iter().flatten() {
            println!("  note: {}", cell(n));
        }
    })
}

pub(crate) fn attach(
    client: &Client,
    v: &VersionArgs,
    file: &PathBuf,
    json_out: bool,
) -> Result<()> {
    let mut bytes = vec![];
    std::fs::File::open(file)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", file.display()))
        .map_err(invalid)?;
    let name = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let x = client.send_bytes(
        "POST",
        &format!("{}/impact-assessment?filename={}", vpath(v), enc(&name)),
        &bytes,
    )?;
    emit(json_out, &x, || {
        println!(
            "{} {}: impact assessment {name} attached; status {}",
            v.name,
            v.version,
            cell(&x["status"])
        );
        for m in x["missing"].as_array().into_iter().flatten() {
            println!("  still needs {}", cell(m));
        }
    })
}

pub(crate) fn retirement(client: &Client, mark: bool, json_out: bool) -> Result<()> {
    if mark {
        let x = client.post("/v1/retirement/mark", &json!({}))?;
        return emit(json_out, &x, || {
            let rows: Vec<Vec<String>> = x["marked"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| vec![cell(&m["name"]), cell(&m["version"]), cell(&m["reason"])])
                .collect();
            table(&["name", "version", "marked for retirement because"], &rows);
        });
    }
    let x = client.get("/v1/retirement/candidates")?;
    emit(json_out, &x, || {
        let rows: Vec<Vec<String>> = x["candidates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                vec![
                    cell(&m["name"]),
                    cell(&m["version"]),
                    cell(&m["status"]),
                    cell(&m["reason"]),
                ]
            })
            .collect();
        table(&["name", "version", "status", "reason"], &rows);
    })
}
