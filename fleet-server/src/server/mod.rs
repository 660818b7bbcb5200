//! `outpost serve` (ARCHITECTURE §9): the HTTP API, the MQTT side and the
//! embedded broker, around one [`Store`].
//!
//! ```text
//!  HTTP (axum) ──▶ handlers ──▶ registry rules / audit / store
//!  MQTT client ──▶ inventory fold, telemetry windows ──▶ store
//!  (embedded rumqttd, or an external broker by URL)
//! ```

mod alerting;
mod api;
mod broker;
mod drift_api;
mod evidence;
mod http;
mod metrics;
mod models;
pub mod mqtt;
mod openapi;
mod rollouts;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;
use crate::auth::{self, Role};
use crate::director::Director;
use crate::registry::{ApprovalPolicy, RetirementPolicy};
use crate::store::{SledStore, Store, StoreError};

pub use openapi::openapi;

/// Where the server's MQTT client connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum MqttMode {
    /// Start rumqttd in-process on `bind` (port 0: any free port).
    Embedded { bind: SocketAddr },
    /// An external broker: `mqtt://host:port` or `mqtts://host:port`.
    External {
        url: String,
        /// CA (PEM) to trust for `mqtts://`.
        ca: Option<PathBuf>,
        /// Client certificate and key (PEM) for mutual TLS.
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
    },
}

/// Everything `outpost serve` is told.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub mqtt: MqttMode,
    /// MQTT topic prefix (ARCHITECTURE §7).
    pub topic_prefix: String,
    /// `director.pk8`: signs directives. Without it, retirements are
    /// recorded but no directive is sent.
    pub director_key: Option<PathBuf>,
    /// `root.signed`, published at `/v1/trust/root` for provisioning.
    pub root: Option<PathBuf>,
    /// Base URL devices use for artifacts (default: `http://` + the HTTP
    /// address).
    pub public_url: Option<String>,
    pub approvals: ApprovalPolicy,
    pub retirement: RetirementPolicy,
    /// Largest |claimed − measured| tolerated for an eval metric.
    pub eval_tolerance: f64,
    /// The rollout controller's settings: change calendar (windows and
    /// freezes), evaluation cadence, directive expiry.
    pub rollout: crate::rollout::RolloutConfig,
    /// With an external broker, consume through `$share/outpost-fleet/…`
    /// so several server instances split the devices' messages. Off by
    /// default: Mosquitto 2.0.11 does not restore a shared subscription of
    /// an offline persistent session when the broker restarts (measured),
    /// so messages published between a broker restart and the servers'
    /// reconnection would be lost; a plain subscription of the server's
    /// persistent session is restored and its messages queued.
    pub mqtt_shared: bool,
    /// On first start (no tokens yet): create an admin token and write it
    /// here (mode 0600).
    pub init_admin_token_file: Option<PathBuf>,
    /// The alert rules and sinks (TOML, see the `alerting` module docs);
    /// without it the engine runs with no rules.
    pub alerts: Option<PathBuf>,
    /// Seconds between the alert observations of the fleet (devices
    /// offline, drift and completeness of live versions).
    pub alerts_every_secs: u64,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A port is in use by another process.
    #[error("{what} port {port} is taken{why}: {hint}")]
    PortTaken {
        what: &'static str,
        port: u16,
        why: &'static str,
        hint: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file the configuration names is missing or unreadable.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// Bad configuration (URL, TLS files).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where the server listens, once it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub http: SocketAddr,
    /// `host:port` of the broker the server uses.
    pub mqtt: String,
    /// An admin token created at first start, if one was.
    pub admin_token_file: Option<PathBuf>,
}

/// Shared state of every handler.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) audit: AuditLog,
    /// Serializes read-modify-write of versions and devices.
    pub(crate) registry_lock: tokio::sync::Mutex<()>,
    pub(crate) devices_lock: std::sync::Mutex<()>,
    pub(crate) director: Option<Director>,
    pub(crate) rollouts: rollouts::RolloutsHandle,
    pub(crate) root: Option<Vec<u8>>,
    pub(crate) config: ServeConfig,
    pub(crate) public_url: String,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) mqtt: mqtt::MqttHandle,
    pub(crate) uploads: PathBuf,
    /// Alert observations and acknowledgements go to the alerting task.
    pub(crate) alerting: alerting::AlertingHandle,
}

/// Opens the store in `data_dir` (`store/` inside it).
pub fn open_store(data_dir: &std::path::Path) -> Result<SledStore, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
        path: data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    SledStore::open(&data_dir.join("store"))
}

/// Creates a token offline (the store must not be open elsewhere) and
/// audits it; returns the token string.
pub fn create_token_offline(
    store: Arc<dyn Store>,
    name: &str,
    role: Role,
    actor: &str,
    now: u64,
) -> Result<(String, auth::TokenRecord), ServeError> {
    let (token, record) =
        auth::new_token(name, role, actor, now).map_err(|e| ServeError::Config(e.to_string()))?;
    store.put_token(&record)?;
    AuditLog::new(store.clone()).append(
        now,
        actor,
        "token.create",
        serde_json::json!({"id": record.id, "name": name, "role": role}),
    )?;
    store.flush()?;
    Ok((token, record))
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Runs the server until `shutdown` resolves. `on_listening` is called
/// once both listeners are bound.
pub async fn run(
    config: ServeConfig,
    on_listening: impl FnOnce(&Listening),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // The alert rules first: a bad file is reported before anything opens.
    let alerts_config = match &config.alerts {
        Some(path) => alerting::AlertsConfig::load(path)?,
        None => alerting::AlertsConfig::default(),
    };
    let store: Arc<dyn Store> = Arc::new(open_store(&config.data_dir)?);
    let now = crate::clock::now_unix();
    let mut admin_token_file = None;
    if let Some(path) = &config.init_admin_token_file
        && store.list_tokens()?.is_empty()
    {
        let (token, _) =
            create_token_offline(store.clone(), "admin", Role::Admin, "bootstrap", now)?;
        write_private(path, &format!("{token}\n")).map_err(|e| ServeError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        admin_token_file = Some(path.clone());
    }
    let director = match &config.director_key {
        Some(p) => Some(
            Director::load(p, store.clone()).map_err(|e| ServeError::File {
                path: p.clone(),
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    let root = match &config.root {
        Some(p) => Some(std::fs::read(p).map_err(|e| ServeError::File {
            path: p.clone(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let uploads = config.data_dir.join("uploads");
    std::fs::create_dir_all(&uploads)?;

    // Broker first: a taken MQTT port is reported before anything listens.
    let broker_addr = match &config.mqtt {
        MqttMode::Embedded { bind } => Some(broker::start_embedded(*bind).await?),
        MqttMode::External { .. } => None,
    };
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => ServeError::PortTaken {
                what: "HTTP",
                port: config.http.port(),
                why: "",
                hint: format!(
                    "choose another with --http {}:PORT (port 0 picks a free one)",
                    config.http.ip()
                ),
            },
            _ => ServeError::Io(e),
        })?;
    let http_addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"))
        .trim_end_matches('/')
        .to_owned();
    let (mqtt_opts, mqtt_shown) = mqtt::options(
        &config.mqtt,
        broker_addr,
        &mqtt::session_id(&config.data_dir),
    )?;
    let shared = config.mqtt_shared && matches!(config.mqtt, MqttMode::External { .. });
    let (handle, eventloop) = mqtt::connect(mqtt_opts, &config.topic_prefix, shared);
    let (alerting_handle, alerting_inbox) = alerting::AlertingHandle::new(&alerts_config);
    let (rollouts_handle, rollouts_rx) = rollouts::RolloutsHandle::new();
    let app = Arc::new(App {
        rollouts: rollouts_handle,
        audit: AuditLog::new(store.clone()),
        store,
        registry_lock: tokio::sync::Mutex::new(()),
        devices_lock: std::sync::Mutex::new(()),
        director,
        root,
        public_url,
        metrics: metrics::Metrics::new(),
        mqtt: handle,
        uploads,
        config,
        alerting: alerting_handle,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let alerting_task = tokio::spawn(alerting::run(
        app.clone(),
        alerts_config,
        alerting_inbox,
        std::time::Duration::from_secs(app.config.alerts_every_secs.max(1)),
        stop_rx.clone(),
    ));
    let mqtt_task = tokio::spawn(mqtt::drive(app.clone(), eventloop, stop_rx.clone()));
    let (restored_tx, restored_rx) = tokio::sync::oneshot::channel();
    let rollout_task = tokio::spawn(rollouts::run(
        app.clone(),
        app.config.rollout.clone(),
        rollouts_rx,
        stop_rx.clone(),
        restored_tx,
    ));
    // The stored rollouts are restored before the API answers; a task that
    // died while restoring was logged, and the server serves without it.
    let _ = restored_rx.await;
    on_listening(&Listening {
        http: http_addr,
        mqtt: mqtt_shown,
        admin_token_file,
    });
    let router = http::router(app.clone());
    let mut stop_http = stop_rx.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop_http.wait_for(|s| *s).await;
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = server.await;
    let _ = mqtt_task.await;
    let _ = alerting_task.await;
    let _ = rollout_task.await;
    app.store.flush()?;
    result.map_err(ServeError::Io)
}
