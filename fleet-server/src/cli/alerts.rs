//! `outpost alerts list|ack`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{cell, table};
use super::{Conn, emit};

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// Alerts firing now (acknowledged or not), with the rules in force.
    List,
    /// Acknowledge a firing alert: its escalation stops (role operator).
    /// Exit code 4 when no such alert fires.
    Ack {
        /// The rule's name.
        rule: String,
        /// What the alert is about: `fleet`, `MODEL/FEATURE`, a rollout id
        /// (the SUBJECT column of `outpost alerts list`).
        subject: String,
    },
}

fn state(a: &Value) -> String {
    let acked = a["acknowledged"]
        .as_array()
        .filter(|x| x.len() == 2)
        .map(|x| format!("acknowledged by {}", cell(&x[1])));
    match (acked, a["escalated"] == json!(true)) {
        (Some(s), true) => format!("escalated, {s}"),
        (Some(s), false) => s,
        (None, true) => "escalated".into(),
        (None, false) => "firing".into(),
    }
}

pub(crate) fn run(cmd: AlertsCommand, json_out: bool, conn: &Conn) -> Result<()> {
    let client = conn.client();
    match cmd {
        AlertsCommand::List => {
            let v = client.get("/v1/alerts")?;
            emit(json_out, &v, || {
                let alerts = v["alerts"].as_array().cloned().unwrap_or_default();
                let rules = v["rules"].as_array().map_or(0, Vec::len);
                if alerts.is_empty() {
                    println!("no alerts firing ({rules} rules)");
                    return;
                }
                let rows: Vec<Vec<String>> = alerts
                    .iter()
                    .map(|a| {
                        vec![
                            cell(&a["id"]["rule"]),
                            cell(&a["id"]["subject"]),
                            a["since"]
                                .as_u64()
                                .map(outpost_fleet::clock::rfc3339)
                                .unwrap_or_default(),
                            state(a),
                            cell(&a["message"]),
                        ]
                    })
                    .collect();
                table(&["rule", "subject", "since", "state", "message"], &rows);
            })
        }
        AlertsCommand::Ack { rule, subject } => {
            let v = client.post("/v1/alerts/ack", &json!({"rule": rule, "subject": subject}))?;
            emit(json_out, &v, || {
                println!("{rule}/{subject}: {}", state(&v["alert"]));
            })
        }
    }
}
