//! `outpost tokens create|list|revoke`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Subcommand;
use outpost_fleet::auth::Role;
use outpost_fleet::server;
use serde_json::json;

use super::client::{cell, enc, table};
use super::{Conn, emit, invalid};

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Create a token; its secret is printed once. With --data-dir it works
    /// offline on a stopped server's store: that is how the first admin
    /// token is made (or `outpost serve --init-admin-token-file`).
    Create {
        /// viewer, operator, approver or admin.
        #[arg(long)]
        role: Role,
        /// Who acts with it (audit entries and approvals name them).
        #[arg(long)]
        name: String,
        /// Work on this data dir directly instead of through --server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List tokens (role admin).
    List,
    /// Revoke a token by id (role admin).
    Revoke { id: String },
}

pub(crate) fn run(cmd: TokensCommand, json_out: bool, conn: &Conn) -> Result<()> {
    match cmd {
        TokensCommand::Create {
            role,
            name,
            data_dir: Some(dir),
        } => {
            let store = server::open_store(&dir).map_err(invalid)?;
            let (token, rec) = server::create_token_offline(
                Arc::new(store),
                &name,
                role,
                "offline",
                outpost_fleet::clock::now_unix(),
            )
            .map_err(invalid)?;
            let v = json!({"token": token, "id": rec.id, "name": name, "role": role});
            emit(json_out, &v, || println!("{token}"))
        }
        TokensCommand::Create {
            role,
            name,
            data_dir: None,
        } => {
            let v = conn
                .client()
                .post("/v1/tokens", &json!({"name": name, "role": role}))?;
            emit(json_out, &v, || println!("{}", cell(&v["token"])))
        }
        TokensCommand::List => {
            let v = conn.client().get("/v1/tokens")?;
            emit(json_out, &v, || {
                let rows: Vec<Vec<String>> = v["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            cell(&t["id"]),
                            cell(&t["name"]),
                            cell(&t["role"]),
                            cell(&t["created_by"]),
                            if t["revoked_at"].is_null() {
                                "active"
                            } else {
                                "revoked"
                            }
                            .into(),
                        ]
                    })
                    .collect();
                table(&["id", "name", "role", "created by", "state"], &rows);
            })
        }
        TokensCommand::Revoke { id } => {
            let v = conn.client().delete(&format!("/v1/tokens/{}", enc(&id)))?;
            emit(json_out, &v, || println!("revoked {id}"))
        }
    }
}
