//! `outpost audit list|verify`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use super::client::{cell, enc, table};
use super::{CheckFailed, Conn, emit};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Audit entries, oldest first.
    List {
        /// Only entries after this sequence number.
        #[arg(long)]
        since: Option<u64>,
        /// Only actions starting with this (e.g. `version.`, `token.`).
        #[arg(long)]
        action: Option<String>,
    },
    /// Verify the hash chain: exits 1 naming the first edited, reordered or
    /// removed entry.
    Verify,
}

pub(crate) fn run(cmd: AuditCommand, json_out: bool, conn: &Conn) -> Result<()> {
    let client = conn.client();
    match cmd {
        AuditCommand::List { since, action } => {
            let mut q = vec![];
            if let Some(s) = since {
                q.push(format!("since={s}"));
            }
            if let Some(a) = action {
                q.push(format!("action={}", enc(&a)));
            }
            let path = if q.is_empty() {
                "/v1/audit".to_owned()
            } else {
                format!("/v1/audit?{}", q.join("&"))
            };
            let v = client.get(&path)?;
            emit(json_out, &v, || {
                let rows: Vec<Vec<String>> = v["entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        vec![
                            cell(&e["seq"]),
                            e["at"]
                                .as_u64()
                                .map(outpost_fleet::clock::rfc3339)
                                .unwrap_or_default(),
                            cell(&e["actor"]),
                            cell(&e["action"]),
                            e["details"].to_string(),
                        ]
                    })
                    .collect();
                table(&["seq", "at", "actor", "action", "details"], &rows);
            })
        }
        AuditCommand::Verify => {
            let v = client.get("/v1/audit/verify")?;
            if v["ok"] != Value::Bool(true) {
                return Err(anyhow::Error::new(CheckFailed {
                    check: "audit_chain",
                    message: format!("audit log verification failed: {}", cell(&v["error"])),
                    details: v,
                }));
            }
            emit(json_out, &v, || {
                println!(
                    "audit log intact: {} entries, head {}",
                    cell(&v["entries"]),
                    cell(&v["head"])
                );
            })
        }
    }
}
