//! `outpost`: the fleet server and its command-line interface.
//!
//! Local commands need no server (`outpost model inspect|run|pack|sign`,
//! `outpost keys …`); `outpost serve` runs the server, and the registry,
//! inventory, token and audit commands talk to it over HTTP.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cli;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Outpost: quantized models on edge devices, and the fleet that runs them",
    after_help = "Exit codes: 0 success; 1 failure (an operation failed, or a trust or audit \
                  check refused the result); 2 usage or validation error (bad arguments or \
                  input files to fix, a card the registry refuses, a port that is taken); \
                  3 the server refused the token (401) or its role (403); 4 not found; \
                  5 conflict with the current state (a lifecycle move not allowed, other bytes \
                  under the same version); 6 the server cannot be reached. With --json, \
                  errors are printed to stdout as {\"ok\": false, \"exit_code\", \"error\", \
                  \"check\"?, \"status\"?, \"code\"?, \"details\"?}."
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Server URL for client commands [env: OUTPOST_SERVER; default:
    /// http://127.0.0.1:8080].
    #[arg(long, global = true)]
    server: Option<String>,
    /// API token for client commands [env: OUTPOST_TOKEN].
    #[arg(long, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the fleet server: HTTP API, MQTT (embedded broker or external),
    /// registry, inventory, audit.
    Serve(Box<cli::serve::ServeArgs>),
    /// Model files and packages locally; the registry on a server.
    #[command(subcommand)]
    Model(cli::model::ModelCommand),
    /// Root, release and director keys; root rotation (files on this machine).
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
    /// API tokens and their roles (viewer, operator, approver, admin).
    #[command(subcommand)]
    Tokens(cli::tokens::TokensCommand),
    /// The device inventory.
    #[command(subcommand)]
    Devices(cli::devices::DevicesCommand),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// Fleet drift of one version: its devices' telemetry against the
    /// reference profile, per feature, output and device class.
    Drift(cli::drift::DriftArgs),
    /// Alerts firing on the server; acknowledge one to stop its escalation.
    #[command(subcommand)]
    Alerts(cli::alerts::AlertsCommand),
    /// Canary rollouts: start, watch, pause, resume, abort.
    #[command(subcommand)]
    Rollout(cli::rollout::RolloutCommand),
    /// Walk a signed canary rollout end to end on this machine: a server
    /// with an embedded broker, a handful of agents serving the bundled
    /// int8 digits model, a good version promoted and a bad one halted and
    /// rolled back.
    Demo(cli::demo::DemoArgs),
    /// The device agent (as `outpost-agent run`), for `outpost demo`.
    #[command(subcommand, hide = true)]
    Agent(cli::agent::AgentCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// `outpost devices list | head` closes the pipe early: Rust ignores
/// SIGPIPE, so `println!` panics on the broken pipe. Exit as a shell tool
/// does (128 + SIGPIPE), quietly. Design: a panic hook rather than
/// restoring SIGPIPE, which needs `unsafe` (forbidden in the workspace).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let conn = cli::Conn {
        server: cli.server.clone(),
        token: cli.token.clone(),
    };
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Model(cmd) => cli::model::run(cmd, cli.json, &conn),
        Command::Keys(cmd) => cli::keys::run(cmd, cli.json),
        Command::Tokens(cmd) => cli::tokens::run(cmd, cli.json, &conn),
        Command::Devices(cmd) => cli::devices::run(cmd, cli.json, &conn),
        Command::Audit(cmd) => cli::audit::run(cmd, cli.json, &conn),
        Command::Drift(args) => cli::drift::run(args, cli.json, &conn),
        Command::Alerts(cmd) => cli::alerts::run(cmd, cli.json, &conn),
        Command::Rollout(cmd) => cli::rollout::run(cmd, cli.json, &conn),
        Command::Demo(args) => cli::demo::run(args),
        Command::Agent(cmd) => cli::agent::run(cmd),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "outpost",
                &mut std::io::stdout(),
            );
            Ok(())
        }
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
