//! `outpost drift MODEL@VERSION`: the fleet drift report of one version.

use anyhow::{Context, Result};
use outpost_fleet::drift::{DriftReport, render_table};

use super::client::{cell, enc};
use super::{Conn, emit};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Compares the version's stored telemetry windows with the reference profile \
    packed with it: PSI (exact, on the reference's bins) and KS (from the sketches, sketch \
    error in the bound) per feature and output, completeness beside them, and one row per \
    device class (target) saying what the figures point to: data pipeline, input drift, \
    model decay. Exit code 4 for an unknown version, 2 when the version has no reference \
    profile or its windows do not merge."
)]
pub(crate) struct DriftArgs {
    /// MODEL@VERSION, e.g. digits@1.0.0.
    target: String,
    /// Only devices in this inventory group.
    #[arg(long)]
    group: Option<String>,
    /// Only windows starting at or after this: Unix seconds, or a duration
    /// ago (30m, 1h, 2d).
    #[arg(long)]
    since: Option<String>,
    /// Only windows starting before this: Unix seconds, or a duration ago.
    #[arg(long)]
    until: Option<String>,
}

pub(crate) fn run(args: DriftArgs, json_out: bool, conn: &Conn) -> Result<()> {
    let (model, version) = super::rollout::split_target(&args.target)?;
    let mut q = vec![];
    for (key, value) in [
        ("group", &args.group),
        ("since", &args.since),
        ("until", &args.until),
    ] {
        if let Some(v) = value {
            q.push(format!("{key}={}", enc(v)));
        }
    }
    let mut path = format!("/v1/drift/{}/{}", enc(&model), enc(&version));
    if !q.is_empty() {
        path = format!("{path}?{}", q.join("&"));
    }
    let v = conn.client().get(&path)?;
    let report: DriftReport =
        serde_json::from_value(v.clone()).context("the server's drift report does not decode")?;
    emit(json_out, &v, || {
        let mut scope = format!("{model} {version}");
        if let Some(g) = &args.group {
            scope += &format!(", group {g}");
        }
        if let (Some(from), Some(until)) = (report.since, report.until) {
            scope += &format!(
                ", windows {} to {}",
                outpost_fleet::clock::rfc3339(from),
                outpost_fleet::clock::rfc3339(until)
            );
        }
        if v["undecodable"].as_u64().is_some_and(|n| n > 0) {
            scope += &format!(", {} undecodable windows ignored", cell(&v["undecodable"]));
        }
        println!("{scope}");
        print!("{}", render_table(&report));
    })
}
