//! `outpost`: the fleet server and its command-line interface.
//!
//! This build has the model commands that need no server (`outpost model
//! inspect|run`); `serve`, the registry and rollouts come with the fleet issues.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Outpost: quantized models on edge devices, and the fleet that runs them"
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with model files (.onnx) and packages (.opk) locally.
    #[command(subcommand)]
    Model(cli::model::ModelCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(cmd) => cli::model::run(cmd, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
