//! The Outpost device agent (ARCHITECTURE §6): serves verified models to
//! local apps over HTTP, reports to the fleet over MQTT, and installs
//! signed models.
//!
//! - Serving: config, first-boot verification of the configured packages
//!   against the pinned trust root, the local API with circuit breaker and
//!   out-of-distribution fallback, Prometheus metrics, telemetry windows.
//! - Fleet: MQTT birth / death / state / events / telemetry; commands go to
//!   the update task ([`update_task`]), whose core ([`update`]) verifies
//!   them, owns the trust state, and installs, probations, commits, rolls
//!   back and retires models crash-safely.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod download;
pub mod metrics;
pub mod mqtt;
pub mod requests;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod update;
pub mod update_fs;
pub mod update_shell;
pub mod update_task;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use std::collections::BTreeMap;

use outpost_protocol::messages::{ModelState, Slot};
use outpost_protocol::trust::{DeviceIdentity, TrustState, Verifier};
use serde_json::json;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::serve::{LoadContext, LoadedModel, ModelHost};
use crate::store::{Opened, Store};

/// Everything the API and the MQTT side share.
#[derive(Debug)]
pub struct AgentState {
    pub config: AgentConfig,
    pub host: ModelHost,
    pub requests: Mutex<requests::Requests>,
    pub metrics: metrics::Metrics,
    pub verifier: Verifier,
    /// A mirror of the update core's trust state (the core owns it).
    pub trust: RwLock<TrustState>,
    /// The update core's latest per-model slots and phase, for `…/state`.
    pub update_view: Mutex<BTreeMap<String, ModelState>>,
    /// The update core, until [`run`] hands it to the update task.
    updater: Mutex<Option<update::Updater>>,
    pub store: Store,
    pub telemetry: telemetry::Telemetry,
    /// Windows dropped and not yet reported in an event.
    pub unreported_drops: Mutex<store::Dropped>,
    pub mqtt_connected: AtomicBool,
    session: AtomicU64,
    /// Event numbers when the store cannot give one (it never goes back:
    /// the store's counter is tried first).
    fallback_event_seq: AtomicU64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn jitter_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Why the agent would not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Trust(#[from] store::TrustStoreError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Model(#[from] Box<serve::LoadError>),
    #[error("local API: cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttSetupError),
    /// The update folder (installed packages, pointer files) is unreadable.
    #[error("update files: {0}")]
    Files(std::io::Error),
    /// The update record cannot be resumed.
    #[error("update record: {0}")]
    Update(#[from] update::UpdateError),
}

/// The model name in a package's manifest (before it is verified: only
/// to find its pointer file). `None` when unreadable: the first-boot
/// verification then says why.
fn package_name(path: &std::path::Path) -> Option<String> {
    outpost_runtime::Package::open(path, &outpost_runtime::PackageLimits::default())
        .ok()
        .map(|p| p.manifest().name.clone())
}

/// Serves an installed model from its pointer: the active package, or, when
/// it no longer loads (a rotted file), the previous verified one rather
/// than nothing (the fleet sees the version in birth and state and can
/// redeploy). Errs when neither loads.
fn load_pointer(
    files: &update_fs::UpdateFiles,
    pointer: &update::SlotPointer,
    ctx: &LoadContext<'_>,
    fallback: crate::config::Fallback,
    host: &ModelHost,
) -> Result<(), serve::LoadError> {
    let load = |r: &outpost_protocol::messages::ModelRef| {
        update_shell::load_installed(files, r, ctx, fallback.clone())
    };
    let previous = || {
        pointer.previous.as_ref().and_then(|p| {
            load(p)
                .map_err(|e| tracing::warn!(error = %e, "previous model does not load"))
                .ok()
        })
    };
    match load(&pointer.active) {
        Ok(active) => {
            tracing::info!(model = %active.name, version = %active.version, "installed model loaded");
            host.set(Arc::new(active), previous().map(Arc::new));
            Ok(())
        }
        Err(e) => match previous() {
            Some(p) => {
                tracing::error!(error = %e, version = %p.version, "installed model does not load; serving the previous one");
                host.set(Arc::new(p), None);
                Ok(())
            }
            None => Err(e),
        },
    }
}

/// First boot: the verified package is copied into the update folder and
/// its pointer written, so later updates and restarts work from there.
fn install_first_boot(
    files: &update_fs::UpdateFiles,
    package: &std::path::Path,
    loaded: &LoadedModel,
) -> std::io::Result<()> {
    let dest = files.package_path(&loaded.sha256);
    if !dest.exists() {
        store::write_atomic(&dest, &std::fs::read(package)?)?;
    }
    let pointer = update::SlotPointer {
        active: outpost_protocol::messages::ModelRef {
            name: loaded.name.clone(),
            version: loaded.version.clone(),
            sha256: loaded.sha256,
        },
        previous: None,
    };
    files.write_pointer(&loaded.name, &pointer)
}

impl AgentState {
    /// Opens the store and the trust state, and verifies and loads every
    /// configured model. Any failure stops the start: no half-start.
    pub fn start(config: AgentConfig) -> Result<AgentState, StartError> {
        let trust = store::load_trust(&config.data_dir, &config.trust_root)?;
        let (store, opened) = Store::open(&config.data_dir)?;
        let metrics = metrics::Metrics::default();
        if let Opened::Recreated { moved_to, reason } = &opened {
            tracing::error!(moved_to = %moved_to.display(), %reason, "store did not open; recreated");
            metrics.store_recreated.inc();
        }
        let verifier = Verifier::new(DeviceIdentity {
            id: config.device_id.clone(),
            arch: config.target.arch.clone(),
            memory_mb: config.target.memory_mb,
            engines: std::iter::once("cpu".to_owned())
                .chain((!config.target.accelerators.is_empty()).then(|| "gpu".to_owned()))
                .collect(),
            cohorts: vec![],
        });
        let host = ModelHost::default();
        let ctx = LoadContext {
            state: &trust,
            verifier: &verifier,
            target: &config.target,
            now_unix: unix_now(),
            breaker: &config.breaker,
        };
        let files = update_fs::UpdateFiles::open(&config.data_dir).map_err(StartError::Files)?;
        let slots = files.read_slots().map_err(StartError::Files)?;
        // Each configured package's model name, read once.
        let configured: Vec<Option<String>> = config
            .models
            .iter()
            .map(|m| package_name(&m.package))
            .collect();
        // Models installed over the air (not in the config) have their
        // pointers too, and serve again after a restart like the others.
        // Found by the whole-system crash scenario: a device provisioned
        // without models and deployed by a directive came back from a
        // SIGKILL serving nothing.
        for (name, pointer) in &slots {
            if configured.iter().flatten().any(|n| n == name) {
                continue;
            }
            // Nothing verified to serve for this model: the others still
            // serve and the fleet can redeploy.
            if let Err(e) = load_pointer(
                &files,
                pointer,
                &ctx,
                crate::config::Fallback::Reject,
                &host,
            ) {
                tracing::error!(error = %e, model = %name, "installed model does not load");
            }
        }
        for (m, name) in config.models.iter().zip(&configured) {
            // Design: once a model is installed (its pointer file exists),
            // the pointer is the truth — the update machine may have moved
            // on from the first-boot package, whose release metadata may
            // since have expired. Only a first boot needs the configured
            // package to verify.
            if let Some(pointer) = name.as_ref().and_then(|n| slots.get(n)) {
                load_pointer(&files, pointer, &ctx, m.fallback.clone(), &host)
                    .map_err(|e| StartError::Model(Box::new(e)))?;
                continue;
            }
            let loaded =
                LoadedModel::load_verified(&m.package, &m.release, &ctx, m.fallback.clone())
                    .map_err(Box::new)?;
            install_first_boot(&files, &m.package, &loaded).map_err(StartError::Files)?;
            tracing::info!(model = %loaded.name, version = %loaded.version, "verified, installed and loaded");
            host.activate(loaded);
        }
        // The update core: resumed from its record, or new. Pointers are
        // read again (a first boot has just written some).
        let slots = files.read_slots().map_err(StartError::Files)?;
        let (now, unix) = (std::time::Instant::now(), unix_now());
        let updater = match files.read_record().map_err(StartError::Files)? {
            Some(mut record) => {
                // Whichever trust state has seen more wins: the record's
                // normally (the core persists it with every step).
                if (trust.root.version, trust.last_sequence)
                    > (record.trust.root.version, record.trust.last_sequence)
                {
                    record.trust = trust.clone();
                }
                update::Updater::restore(
                    verifier.clone(),
                    update::UpdateConfig::default(),
                    record,
                    slots.clone(),
                    now,
                    unix,
                )?
            }
            None => update::Updater::new(
                verifier.clone(),
                update::UpdateConfig::default(),
                trust.clone(),
                slots.clone(),
                now,
                unix,
            ),
        };
        // A crash between a pointer write and the deletes after it leaves
        // unreferenced packages behind.
        let keep: Vec<_> = updater
            .state()
            .job()
            .map(|j| j.target.sha256)
            .into_iter()
            .collect();
        match files.cleanup(&slots, &keep) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(files = removed.len(), "unreferenced update files removed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "update files cleanup failed"),
        }
        let trust = updater.trust().clone();
        let telemetry = telemetry::Telemetry::new(
            config.device_id.to_string(),
            config.telemetry.window_secs,
            config.telemetry.outbox_budget_bytes,
            if config.mqtt.json {
                outpost_protocol::messages::Encoding::Json
            } else {
                outpost_protocol::messages::Encoding::Postcard
            },
            store.outbox()?,
            metrics.windows_sealed.clone(),
            config.telemetry.kll_k,
        );
        Ok(AgentState {
            requests: Mutex::new(requests::Requests::new(config.api.max_pending)),
            telemetry,
            unreported_drops: Mutex::new(store::Dropped::default()),
            config,
            host,
            metrics,
            verifier,
            trust: RwLock::new(trust),
            update_view: Mutex::new(BTreeMap::new()),
            updater: Mutex::new(Some(updater)),
            store,
            mqtt_connected: AtomicBool::new(false),
            session: AtomicU64::new(0),
            fallback_event_seq: AtomicU64::new(0),
        })
    }

    /// A new session number (persisted before use).
    pub fn new_session(&self) -> u64 {
        let n = self
            .store
            .next_session()
            .unwrap_or_else(|_| self.session.load(Ordering::SeqCst) + 1);
        self.session.store(n, Ordering::SeqCst);
        n
    }

    pub fn session(&self) -> u64 {
        self.session.load(Ordering::SeqCst)
    }

    pub(crate) fn next_event_seq(&self) -> u64 {
        match self.store.next_event_seq() {
            Ok(n) => n,
            Err(_) => self.fallback_event_seq.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    /// `(root version, last directive sequence)`.
    pub fn trust_summary(&self) -> (u64, u64) {
        self.trust
            .read()
            .map(|t| (t.root.version, t.last_sequence))
            .unwrap_or((0, 0))
    }

    /// Counts windows the outbox dropped, for `/metrics` and the next event.
    pub fn note_dropped(&self, d: store::Dropped) {
        if d.windows == 0 {
            return;
        }
        self.metrics.windows_dropped.inc_by(d.windows);
        tracing::warn!(
            windows = d.windows,
            bytes = d.bytes,
            "telemetry outbox full: oldest windows dropped"
        );
        if let Ok(mut u) = self.unreported_drops.lock() {
            u.windows += d.windows;
            u.bytes += d.bytes;
        }
    }

    /// Seals the windows that have ended (called every second by the shell).
    pub fn seal_due(&self) {
        let d = self.telemetry.seal_due(unix_now());
        self.note_dropped(d);
    }

    /// Seals every open window, ended or not (on shutdown).
    pub fn seal_all(&self) {
        let d = self.telemetry.seal_due(u64::MAX);
        self.note_dropped(d);
    }

    /// What `GET /v1/status` and `outpost-agent status` show.
    pub fn status_json(&self) -> serde_json::Value {
        let (root_version, last_directive) = self.trust_summary();
        let models: Vec<_> = self
            .host
            .list()
            .into_iter()
            .map(|(a, p)| {
                let engine = |m: &LoadedModel, slot| {
                    let r = m.engine_report(slot);
                    json!({
                        "engine": r.engine,
                        "reason": r.reason,
                        "cpu_us": r.cpu_us,
                        "gpu_us": r.gpu_us,
                        "adapter": r.adapter,
                    })
                };
                let candidate = self.host.candidate_of(&a.name).map(|c| {
                    json!({
                        "version": c.model.version,
                        "mode": format!("{:?}", c.mode).to_lowercase(),
                        "engine": engine(&c.model, Slot::Candidate),
                    })
                });
                json!({
                    "name": a.name,
                    "version": a.version,
                    "sha256": a.sha256.to_hex(),
                    "breaker_open": a.breaker_open(),
                    "fallback": format!("{:?}", a.fallback),
                    "previous": p.map(|p| p.version.clone()),
                    "engine": engine(&a, Slot::Active),
                    "candidate": candidate,
                })
            })
            .collect();
        json!({
            "device_id": self.config.device_id.as_str(),
            "target": self.config.target.name,
            "session": self.session(),
            "mqtt_connected": self.mqtt_connected.load(Ordering::SeqCst),
            "trust": {"root_version": root_version, "last_directive": last_directive},
            "outbox": {"windows": self.telemetry.outbox().len(), "bytes": self.telemetry.outbox().bytes()},
            "models": models,
        })
    }
}

/// Runs the agent until `shutdown` turns true: the local API and the MQTT
/// side. Returns the bound API address through `bound` as soon as it
/// listens (tests bind port 0).
pub async fn run(
    state: Arc<AgentState>,
    shutdown: watch::Receiver<bool>,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), StartError> {
    let addr = state.config.api.bind;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let local = listener.local_addr().map_err(|e| StartError::Bind {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    tracing::info!(%local, "local API listening");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    let mut api_shutdown = shutdown.clone();
    let api =
        axum::serve(listener, api::router(state.clone())).with_graceful_shutdown(async move {
            let _ = api_shutdown.wait_for(|s| *s).await;
        });
    // The update task owns the core from here on; it stops when the MQTT
    // side drops its sender.
    let (published_tx, published_rx) = tokio::sync::mpsc::unbounded_channel();
    let (updates, update_thread) = match state.updater.lock().ok().and_then(|mut u| u.take()) {
        Some(core) => {
            let config = update_task::UpdateTaskConfig {
                report_every: std::time::Duration::from_secs(u64::from(
                    state.config.telemetry.window_secs.max(1),
                )),
                ..update_task::UpdateTaskConfig::default()
            };
            match update_task::spawn(state.clone(), core, config, published_tx) {
                Ok((u, thread)) => (Some(u), Some(thread)),
                Err(e) => {
                    tracing::error!(error = %e, "update task did not start; updates are off");
                    (None, None)
                }
            }
        }
        None => (None, None),
    };
    let mqtt = mqtt::run(state, shutdown, updates, published_rx);
    let (api_result, mqtt_result) = tokio::join!(api, mqtt);
    // The MQTT side has dropped its sender: the update task ends after the
    // step in hand. Waited for, so the state (the store above all) is
    // released when `run` returns and a restart in the same process can
    // open it again.
    if let Some(thread) = update_thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    if let Err(e) = api_result {
        tracing::error!(error = %e, "local API stopped");
    }
    mqtt_result?;
    Ok(())
}

/// Runs the agent ([`run`]) until SIGTERM or Ctrl-C, or, with
/// `exit_on_stdin_eof`, until standard input closes (a supervising parent
/// went away, even by SIGKILL); prints `listening api=HOST:PORT` on stdout
/// once the local API listens. What `outpost-agent run` does.
pub async fn run_until_stopped(
    state: Arc<AgentState>,
    exit_on_stdin_eof: bool,
) -> Result<(), StartError> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if exit_on_stdin_eof {
            tokio::select! {
                _ = stop_signal() => {}
                _ = stdin_closed() => {}
            }
        } else {
            stop_signal().await;
        }
        let _ = tx.send(true);
    });
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(addr) = bound_rx.await {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening api={addr}");
            let _ = out.flush();
        }
    });
    run(state, rx, Some(bound_tx)).await
}

/// Resolves when standard input reaches its end.
pub async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
