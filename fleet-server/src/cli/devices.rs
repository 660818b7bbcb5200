//! `outpost devices list|show|label`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{cell, enc, table};
use super::{Conn, emit, invalid};

#[derive(Debug, Subcommand)]
pub(crate) enum DevicesCommand {
    /// The inventory: target, groups, installed versions, last seen, health.
    List {
        /// Only devices running this model.
        #[arg(long)]
        model: Option<String>,
        /// With --model: only this version.
        #[arg(long)]
        version: Option<String>,
        /// Only devices online (true) or offline (false).
        #[arg(long)]
        online: Option<bool>,
        /// Only devices in this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// One device.
    Show { id: String },
    /// Set or remove labels and groups (role operator).
    Label {
        id: String,
        /// KEY=VALUE labels to set.
        labels: Vec<String>,
        /// Label keys to remove.
        #[arg(long)]
        remove: Vec<String>,
        /// Groups to add.
        #[arg(long)]
        group: Vec<String>,
        /// Groups to leave.
        #[arg(long)]
        remove_group: Vec<String>,
    },
}

fn installed(d: &Value) -> String {
    let list: Vec<String> = d["installed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "{}:{}@{}",
                cell(&i["slot"]),
                cell(&i["name"]),
                cell(&i["version"])
            )
        })
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(" ")
    }
}

pub(crate) fn run(cmd: DevicesCommand, json_out: bool, conn: &Conn) -> Result<()> {
    let client = conn.client();
    match cmd {
        DevicesCommand::List {
            model,
            version,
            online,
            group,
        } => {
            let mut q = vec![];
            if let Some(m) = model {
                q.push(format!("model={}", enc(&m)));
            }
            if let Some(v) = version {
                q.push(format!("version={}", enc(&v)));
            }
            if let Some(o) = online {
                q.push(format!("online={o}"));
            }
            if let Some(g) = group {
                q.push(format!("group={}", enc(&g)));
            }
            let path = if q.is_empty() {
                "/v1/devices".to_owned()
            } else {
                format!("/v1/devices?{}", q.join("&"))
            };
            let v = client.get(&path)?;
            emit(json_out, &v, || {
                let rows: Vec<Vec<String>> = v["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        vec![
                            cell(&d["id"]),
                            cell(&d["target"]),
                            if d["online"] == json!(true) {
                                "online"
                            } else {
                                "offline"
                            }
                            .into(),
                            cell(&d["health"]),
                            installed(d),
                            cell(&d["groups"]),
                            d["last_seen"]
                                .as_u64()
                                .map(outpost_fleet::clock::rfc3339)
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "device",
                        "target",
                        "state",
                        "health",
                        "installed",
                        "groups",
                        "last seen",
                    ],
                    &rows,
                );
            })
        }
        DevicesCommand::Show { id } => {
            let d = client.get(&format!("/v1/devices/{}", enc(&id)))?;
            emit(json_out, &d, || {
                println!("device       {}", cell(&d["id"]));
                println!("target       {} ({})", cell(&d["target"]), cell(&d["arch"]));
                println!("agent        {}", cell(&d["agent_version"]));
                println!(
                    "state        {}",
                    if d["online"] == json!(true) {
                        "online"
                    } else {
                        "offline"
                    }
                );
                println!(
                    "health       {} {}",
                    cell(&d["health"]),
                    cell(&d["health_detail"])
                );
                println!("installed    {}", installed(&d));
                if let Some(engines) = d["engines"].as_object() {
                    for (model, e) in engines {
                        println!(
                            "engine       {model}: {} ({})",
                            cell(&e["engine"]),
                            cell(&e["reason"])
                        );
                    }
                }
                println!("groups       {}", cell(&d["groups"]));
                println!("labels       {}", d["labels"]);
                println!(
                    "last seen    {}",
                    d["last_seen"]
                        .as_u64()
                        .map(outpost_fleet::clock::rfc3339)
                        .unwrap_or_default()
                );
                println!(
                    "trust        root v{}, last directive {}",
                    cell(&d["root_version"]),
                    cell(&d["last_directive"])
                );
            })
        }
        DevicesCommand::Label {
            id,
            labels,
            remove,
            group,
            remove_group,
        } => {
            let mut set = serde_json::Map::new();
            for l in &labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| invalid(anyhow::anyhow!("label {l:?}: write KEY=VALUE")))?;
                set.insert(k.to_owned(), json!(v));
            }
            let d = client.post(
                &format!("/v1/devices/{}/labels", enc(&id)),
                &json!({"set": set, "remove": remove, "add_groups": group, "remove_groups": remove_group}),
            )?;
            emit(json_out, &d, || {
                println!(
                    "{id}: labels {}, groups {}",
                    d["labels"],
                    cell(&d["groups"])
                );
            })
        }
    }
}
