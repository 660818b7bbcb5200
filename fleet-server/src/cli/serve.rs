//! `outpost serve`: flags, an optional TOML file, and the runtime.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use outpost_fleet::registry::{ApprovalPolicy, RetirementPolicy};
use outpost_fleet::server::{self, MqttMode, ServeConfig, ServeError};
use serde::Deserialize;

use super::invalid;
use outpost_fleet::rollout::{Calendar, RolloutConfig};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "First admin token: start with --init-admin-token-file PATH (written, \
    mode 0600, only while the store has no token), or, with the server stopped, run \
    `outpost tokens create --role admin --name NAME --data-dir DIR`.\n\n\
    On start it prints one line on stdout: `listening http=HOST:PORT mqtt=HOST:PORT`.\n\n\
    A taken port is reported with its number and how to choose another (the embedded \
    broker's default 1883 is Mosquitto's too: use --mqtt-port, or --mqtt-url to use that \
    Mosquitto)."
)]
pub(crate) struct ServeArgs {
    /// A TOML file with any of the settings below (snake_case keys);
    /// flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the store and uploads live [default: outpost-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP address [default: 127.0.0.1:8080]; port 0 picks a free one.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Embedded broker's port [default: 1883]; 0 picks a free one.
    #[arg(long)]
    mqtt_port: Option<u16>,
    /// Embedded broker's address [default: 127.0.0.1].
    #[arg(long)]
    mqtt_host: Option<IpAddr>,
    /// Use an external broker instead: mqtt://HOST:PORT or mqtts://HOST:PORT.
    #[arg(long)]
    mqtt_url: Option<String>,
    /// CA (PEM) of an mqtts:// broker.
    #[arg(long)]
    mqtt_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with the broker.
    #[arg(long)]
    mqtt_client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with the broker.
    #[arg(long)]
    mqtt_client_key: Option<PathBuf>,
    /// MQTT topic prefix [default: outpost/v1].
    #[arg(long)]
    topic_prefix: Option<String>,
    /// The director key (director.pk8 from `outpost keys init`): signs
    /// retire (and rollout) directives. The server never holds root or
    /// release keys.
    #[arg(long)]
    director_key: Option<PathBuf>,
    /// root.signed, published at /v1/trust/root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Base URL devices reach this server at, for artifact URLs.
    #[arg(long)]
    public_url: Option<String>,
    /// Distinct approvers a version needs [default: 2].
    #[arg(long)]
    required_approvals: Option<u32>,
    /// Largest |claimed − measured| accepted for an eval metric [default: 0.02].
    #[arg(long)]
    eval_tolerance: Option<f64>,
    /// Retirement policy: versions deployed longer than this many days.
    #[arg(long)]
    retire_after_days: Option<u64>,
    /// Retirement policy: measured metric below its claim by more than this.
    #[arg(long)]
    retire_on_decay: Option<f64>,
    /// Create the first admin token (if the store has none) and write it here.
    #[arg(long)]
    init_admin_token_file: Option<PathBuf>,
    /// Alert rules and sinks (TOML: `[[sink]] name kind=webhook|mqtt|log
    /// url|topic`, `[[rule]] name sink condition={kind=…} escalate={after,
    /// sink}`); see `GET /v1/alerts` and `outpost alerts`.
    #[arg(long)]
    alerts: Option<PathBuf>,
    /// Seconds between the alert observations of the fleet (devices
    /// offline; drift and completeness of live versions) [default: 30].
    #[arg(long)]
    alerts_every: Option<u64>,
    /// How often a running rollout's gates are evaluated, in seconds
    /// [default: 300]. Each look spends some of a fixed-sample gate's α.
    #[arg(long)]
    rollout_evaluate_every: Option<u64>,
    /// Change windows and freezes (TOML: `[[change_windows]] days = ["mon",
    /// …] start_secs = … end_secs = …` in UTC seconds of the day, `[[freezes]]
    /// start = UNIX end = UNIX reason = "…"`): no rollout stage starts or
    /// advances outside a window or inside a freeze.
    #[arg(long)]
    calendar: Option<PathBuf>,
    /// With --mqtt-url: consume through the shared subscription
    /// `$share/outpost-fleet/…`, so several server instances split the
    /// devices' messages. Mosquitto 2.0.11 forgets a shared subscription of
    /// a disconnected server across a broker restart, and what devices
    /// publish before the servers reconnect is then lost: without this flag
    /// the server's persistent session holds a plain subscription the
    /// broker restores and queues for.
    #[arg(long)]
    mqtt_shared: bool,
    /// Stop when standard input closes (a parent such as `outpost demo`
    /// went away, even by SIGKILL).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    mqtt_port: Option<u16>,
    mqtt_host: Option<IpAddr>,
    mqtt_url: Option<String>,
    mqtt_ca: Option<PathBuf>,
    mqtt_client_cert: Option<PathBuf>,
    mqtt_client_key: Option<PathBuf>,
    topic_prefix: Option<String>,
    director_key: Option<PathBuf>,
    root: Option<PathBuf>,
    public_url: Option<String>,
    required_approvals: Option<u32>,
    eval_tolerance: Option<f64>,
    retire_after_days: Option<u64>,
    retire_on_decay: Option<f64>,
    init_admin_token_file: Option<PathBuf>,
    alerts: Option<PathBuf>,
    alerts_every: Option<u64>,
    rollout_evaluate_every: Option<u64>,
    /// Inline in the file: `[calendar]` with `change_windows` and `freezes`.
    calendar: Option<Calendar>,
}

/// Paths in the file are relative to the file's folder.
fn rel(base: &Path, p: Option<PathBuf>) -> Option<PathBuf> {
    p.map(|p| if p.is_absolute() { p } else { base.join(p) })
}

fn config(a: ServeArgs) -> Result<ServeConfig> {
    let file = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))
                .map_err(invalid)?;
            let base = path.parent().unwrap_or(Path::new("."));
            let f: ConfigFile = toml::from_str(&text)
                .with_context(|| format!("{}", path.display()))
                .map_err(invalid)?;
            ConfigFile {
                data_dir: rel(base, f.data_dir),
                mqtt_ca: rel(base, f.mqtt_ca),
                mqtt_client_cert: rel(base, f.mqtt_client_cert),
                mqtt_client_key: rel(base, f.mqtt_client_key),
                director_key: rel(base, f.director_key),
                root: rel(base, f.root),
                init_admin_token_file: rel(base, f.init_admin_token_file),
                alerts: rel(base, f.alerts),
                ..f
            }
        }
        None => ConfigFile::default(),
    };
    let mqtt_url = a.mqtt_url.or(file.mqtt_url);
    let mqtt = match mqtt_url {
        Some(url) => {
            server::mqtt::parse_url(&url).map_err(|e| invalid(anyhow::anyhow!(e)))?;
            MqttMode::External {
                url,
                ca: a.mqtt_ca.or(file.mqtt_ca),
                client_cert: a.mqtt_client_cert.or(file.mqtt_client_cert),
                client_key: a.mqtt_client_key.or(file.mqtt_client_key),
            }
        }
        None => MqttMode::Embedded {
            bind: SocketAddr::new(
                a.mqtt_host
                    .or(file.mqtt_host)
                    .unwrap_or(IpAddr::from([127, 0, 0, 1])),
                a.mqtt_port.or(file.mqtt_port).unwrap_or(1883),
            ),
        },
    };
    let tolerance = a.eval_tolerance.or(file.eval_tolerance).unwrap_or(0.02);
    if !(tolerance.is_finite() && tolerance >= 0.0) {
        return Err(invalid(anyhow::anyhow!(
            "--eval-tolerance {tolerance} must be a number ≥ 0"
        )));
    }
    let calendar = match &a.calendar {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))
                .map_err(invalid)?;
            toml::from_str::<Calendar>(&text)
                .with_context(|| format!("{}", path.display()))
                .map_err(invalid)?
        }
        None => file.calendar.clone().unwrap_or_default(),
    };
    let evaluate_every = a
        .rollout_evaluate_every
        .or(file.rollout_evaluate_every)
        .unwrap_or(RolloutConfig::default().evaluate_every_secs);
    if evaluate_every == 0 {
        return Err(invalid(anyhow::anyhow!(
            "--rollout-evaluate-every must be at least 1 second"
        )));
    }
    let rollout = RolloutConfig {
        calendar,
        evaluate_every_secs: evaluate_every,
        ..RolloutConfig::default()
    };
    let alerts_every_secs = a.alerts_every.or(file.alerts_every).unwrap_or(30);
    if alerts_every_secs == 0 {
        return Err(invalid(anyhow::anyhow!(
            "--alerts-every must be at least 1 second"
        )));
    }
    Ok(ServeConfig {
        rollout,
        mqtt_shared: false,
        data_dir: a
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("outpost-data")),
        http: a
            .http
            .or(file.http)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        mqtt,
        topic_prefix: a
            .topic_prefix
            .or(file.topic_prefix)
            .unwrap_or_else(|| outpost_protocol::topic::DEFAULT_PREFIX.into()),
        director_key: a.director_key.or(file.director_key),
        root: a.root.or(file.root),
        public_url: a.public_url.or(file.public_url),
        approvals: ApprovalPolicy {
            required_approvals: a
                .required_approvals
                .or(file.required_approvals)
                .unwrap_or(ApprovalPolicy::default().required_approvals)
                .max(1),
        },
        retirement: RetirementPolicy {
            max_age_days: a.retire_after_days.or(file.retire_after_days),
            max_decay: a.retire_on_decay.or(file.retire_on_decay),
        },
        eval_tolerance: tolerance,
        init_admin_token_file: a.init_admin_token_file.or(file.init_admin_token_file),
        alerts: a.alerts.or(file.alerts),
        alerts_every_secs,
    })
}

/// SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    outpost_agent::stop_signal().await;
}

pub(crate) fn run(args: ServeArgs) -> Result<()> {
    let stdin_eof = args.exit_on_stdin_eof;
    let mqtt_shared = args.mqtt_shared;
    let config = ServeConfig {
        mqtt_shared,
        ..config(args)?
    };
    // rumqttd logs every aborted connection (port probes, health checks)
    // as an error: quiet by default, RUST_LOG=rumqttd=warn to see it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off,sled=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(server::run(
        config,
        |l| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening http={} mqtt={}", l.http, l.mqtt);
            let _ = out.flush();
            if let Some(p) = &l.admin_token_file {
                eprintln!("first admin token written to {}", p.display());
            }
        },
        async move {
            if stdin_eof {
                tokio::select! {
                    _ = shutdown_signal() => {}
                    _ = super::stdin_closed() => {}
                }
            } else {
                shutdown_signal().await;
            }
        },
    ))
    .map_err(|e| match e {
        ServeError::PortTaken { .. } | ServeError::Config(_) | ServeError::File { .. } => {
            invalid(e)
        }
        other => anyhow::Error::new(other),
    })
}
