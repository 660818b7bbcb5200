//! `outpost-agent`: the device daemon.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad config or refused start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use outpost_agent::AgentState;
use outpost_agent::config::AgentConfig;

#[derive(Debug, Parser)]
#[command(name = "outpost-agent", version, about = "Outpost device agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify the configured models, serve them and report to the fleet.
    /// Prints `listening api=HOST:PORT` on stdout once the local API
    /// listens (port 0 in the config picks a free one).
    Run {
        #[arg(long, default_value = "/etc/outpost/agent.toml")]
        config: PathBuf,
        /// Also stop when standard input closes (a supervising parent such
        /// as a test harness went away, even by SIGKILL).
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
    /// Check the config (and the trust root and model files it names).
    CheckConfig {
        #[arg(long, default_value = "/etc/outpost/agent.toml")]
        config: PathBuf,
    },
    /// Ask the running agent for its status (over its local API).
    Status {
        #[arg(long, default_value = "/etc/outpost/agent.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::CheckConfig { config } => match AgentConfig::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (device {}, target {}, broker {}:{}{}, {} model(s))",
                    config.display(),
                    c.device_id,
                    c.target.name,
                    c.mqtt.host,
                    c.mqtt.port,
                    if c.mqtt.tls.is_some() {
                        " over TLS"
                    } else {
                        ""
                    },
                    c.models.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status { config } => match AgentConfig::load(&config) {
            Ok(c) => status(&c),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            exit_on_stdin_eof,
        } => {
            let config = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let state = match AgentState::start(config) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(outpost_agent::run_until_stopped(state, exit_on_stdin_eof)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// `GET /v1/status` on the configured API address, with a plain HTTP/1.1
/// request (the agent's API is local; no client library needed for this).
fn status(c: &AgentConfig) -> ExitCode {
    use std::io::{Read, Write};
    let addr = c.api.bind;
    let mut stream =
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: no agent answers on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let req = format!("GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut resp = String::new();
    if let Err(e) = stream
        .write_all(req.as_bytes())
        .and_then(|_| stream.read_to_string(&mut resp))
    {
        eprintln!("error: reading the agent's status from {addr}: {e}");
        return ExitCode::FAILURE;
    }
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("error: unexpected answer from {addr}: {resp}");
            ExitCode::FAILURE
        }
    }
}
