//! `outpost agent run --config FILE` (hidden): the device agent of
//! `outpost-agent`, from this binary, so that `outpost demo` can start real
//! agent processes from one executable. Devices run `outpost-agent`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Subcommand;
use outpost_agent::AgentState;
use outpost_agent::config::AgentConfig;

use super::invalid;

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Run the agent; prints `listening api=HOST:PORT` once its local API
    /// listens.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Stop when standard input closes.
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
}

pub(crate) fn run(cmd: AgentCommand) -> Result<()> {
    let AgentCommand::Run {
        config,
        exit_on_stdin_eof,
    } = cmd;
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let config = AgentConfig::load(&config).map_err(invalid)?;
    let state = Arc::new(AgentState::start(config).map_err(invalid)?);
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(outpost_agent::run_until_stopped(state, exit_on_stdin_eof))
        .map_err(anyhow::Error::new)
}
