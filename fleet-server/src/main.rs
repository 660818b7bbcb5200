//! `outpost`: the fleet server and its command-line interface.
//!
//! This build has the commands that need no server: `outpost model
//! inspect|run|pack|sign` and `outpost keys init|generate|show|rotate`;
//! `serve`, the registry and rollouts come with the fleet issues.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Outpost: quantized models on edge devices, and the fleet that runs them",
    after_help = "Exit codes: 0 success; 1 failure (an operation failed, or a trust check \
                  refused the result); 2 usage or validation error (bad arguments or input \
                  files to fix). With --json, errors are printed to stdout as \
                  {\"ok\": false, \"exit_code\", \"error\", \"check\"?}."
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
    /// Root, release and director keys; root rotation (files on this machine).
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(cmd) => cli::model::run(cmd, cli.json),
        Command::Keys(cmd) => cli::keys::run(cmd, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                println!("{}", cli::error_json(&e));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
