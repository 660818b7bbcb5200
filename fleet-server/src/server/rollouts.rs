//! The rollout controller's shell (ARCHITECTURE §9): one task owns every
//! [`Rollout`] core, feeds it the device messages the MQTT side forwards,
//! operator commands from the API and the clock, and performs its actions:
//! persists snapshots, journals and signs directives with the director key,
//! publishes them, moves the registry's lifecycle, writes the audit log and
//! raises alerts.
//!
//! ```text
//!  MQTT (windows, events, states) ──┐
//!  API (start, pause, resume, abort)┼─▶ channel ─▶ task: cores ─▶ actions ─▶ store · director · MQTT · audit · alerts
//!  1 s tick ────────────────────────┘                                     └─▶ status view (read by the API)
//! ```
//!
//! Store layout (the generic state of [`crate::store::Store`]):
//! `rollouts/index` (JSON list of ids, in start order),
//! `rollouts/{id}/snapshot` (JSON [`Snapshot`]), `rollouts/{id}/journal/{index}`
//! (the fleet sequence a directive key went out with, 8 bytes big-endian),
//! `rollouts/{id}/timeline` (JSON, for people).
//!
//! Restart: every rollout is restored from its snapshot; the windows that
//! start at or after its [`Rollout::window_floor`] are fed again from the
//! store; the directives whose send was not reported are published again
//! with their journaled sequence when they have one (a device refuses the
//! copy as a replay), with a new one otherwise. Retained device states
//! arrive again with the MQTT subscription.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use outpost_protocol::bytes::Sha256;
use outpost_protocol::messages::{EventKind, ReportedState};
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::{
    DirectiveAction, Probation, ReleaseMetadata, Selector, Signed, TargetRef,
};
use outpost_telemetry::WindowProfile;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use super::App;
use super::evidence::{reference_of, window_profile};
use super::http::{ApiError, ApiResult, authorize};
use crate::alerts::Observation;
use crate::auth::Permission;
use crate::clock::now_unix;
use crate::director::Director;
use crate::registry::{self, Status, VersionRecord};
use crate::rollout::{
    Action, DeviceInfo, DirectiveKey, OperatorCommand, Plan, PlannedDirective, Rollout,
    RolloutConfig, RolloutError, RolloutSpec, RolloutStatus, Snapshot,
};
use crate::store::{Store, WindowQuery};

const INDEX_KEY: &str = "rollouts/index";
/// Actor of the controller's own moves in the audit log and the registry.
const CONTROLLER: &str = "rollout-controller";
/// Expiry of directives sent by `model deploy`.
const DEPLOY_TTL: u64 = 7 * crate::clock::DAY;

fn snapshot_key(id: &str) -> String {
    format!("rollouts/{id}/snapshot")
}
fn journal_key(key: &DirectiveKey) -> String {
    format!("rollouts/{}/journal/{}", key.rollout, key.index)
}
fn timeline_key(id: &str) -> String {
    format!("rollouts/{id}/timeline")
}

/// One line of a rollout's story, for `outpost rollout status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TimelineEntry {
    pub(crate) at: u64,
    pub(crate) what: String,
}

/// What the API shows of a rollout.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RolloutView {
    #[serde(flatten)]
    status: RolloutStatus,
    timeline: Vec<TimelineEntry>,
}

type Reply = oneshot::Sender<ApiResult<Value>>;

/// What the task is told.
#[derive(Debug)]
pub(crate) enum Input {
    Window(Box<WindowProfile>),
    Event(DeviceId, Box<EventKind>),
    State(DeviceId, Box<ReportedState>),
    Start(Box<StartReq>, String, Reply),
    Operator(String, OperatorCommand, String, Reply),
}

/// The handle the MQTT side and the API use.
#[derive(Debug, Clone)]
pub(crate) struct RolloutsHandle {
    tx: mpsc::UnboundedSender<Input>,
    view: Arc<Mutex<BTreeMap<String, RolloutView>>>,
}

impl RolloutsHandle {
    pub(crate) fn new() -> (RolloutsHandle, mpsc::UnboundedReceiver<Input>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            RolloutsHandle {
                tx,
                view: Arc::default(),
            },
            rx,
        )
    }

    /// Forwards a device message to the controller (never blocks).
    pub(crate) fn send(&self, input: Input) {
        // The receiver lives as long as the server; after shutdown the
        // message has nobody to go to.
        let _ = self.tx.send(input);
    }

    fn view(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RolloutView>> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The body of `POST /v1/rollouts`.
#[derive(Debug, Deserialize)]
pub(crate) struct StartReq {
    model: String,
    version: String,
    /// The plan, as TOML text.
    plan: String,
    /// Only devices in this inventory group.
    #[serde(default)]
    group: Option<String>,
    /// A chosen id (default `{model}-{version}-{n}`).
    #[serde(default)]
    id: Option<String>,
}

/// The controller task's state.
struct Controller {
    app: Arc<App>,
    config: RolloutConfig,
    rollouts: BTreeMap<String, Rollout>,
    timelines: BTreeMap<String, Vec<TimelineEntry>>,
    /// Ids in start order.
    order: Vec<String>,
    /// Release metadata and artifact URL per (model, version): read once,
    /// not per directive (both are fixed once a version is registered).
    artifacts: BTreeMap<(String, String), Artifact>,
}

type Artifact = (Option<Signed<ReleaseMetadata>>, Option<String>);

/// Runs the controller until `stop`; `restored` fires once every stored
/// rollout is restored (the server listens only then, so the API never
/// answers 404 for a rollout it has).
pub(crate) async fn run(
    app: Arc<App>,
    config: RolloutConfig,
    mut rx: mpsc::UnboundedReceiver<Input>,
    mut stop: watch::Receiver<bool>,
    restored: oneshot::Sender<()>,
) {
    let mut c = Controller {
        app,
        config,
        rollouts: BTreeMap::new(),
        timelines: BTreeMap::new(),
        order: Vec::new(),
        artifacts: BTreeMap::new(),
    };
    c.restore_all().await;
    let _ = restored.send(());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // All three cancellation-safe: a watch read, a channel receive
            // and an interval tick lose nothing when another branch wins.
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            input = rx.recv() => match input {
                Some(input) => c.handle(input).await,
                None => return,
            },
            _ = tick.tick() => c.tick().await,
        }
    }
}

impl Controller {
    fn store(&self) -> &dyn Store {
        self.app.store.as_ref()
    }

    async fn restore_all(&mut self) {
        let ids: Vec<String> = match self.store().get_state(INDEX_KEY) {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            Ok(None) => vec![],
            Err(e) => {
                tracing::error!(error = %e, "cannot read the rollout index; no rollout restored");
                return;
            }
        };
        let now = now_unix();
        for id in ids {
            let snapshot: Snapshot = match self.store().get_state(&snapshot_key(&id)) {
                Ok(Some(b)) => match serde_json::from_slice(&b) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(rollout = %id, error = %e, "snapshot does not decode; rollout not restored");
                        continue;
                    }
                },
                // Started but crashed before the first persist: nothing was sent.
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(rollout = %id, error = %e, "cannot read snapshot");
                    continue;
                }
            };
            let to = snapshot.spec.to.clone();
            let reference = match reference_of(self.store(), &to.name, &to.version) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(rollout = %id, error = %e, "rollout not restored");
                    continue;
                }
            };
            let mut rollout = match Rollout::restore(snapshot, self.config.clone(), reference, now)
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(rollout = %id, error = %e, "rollout not restored");
                    continue;
                }
            };
            if let Some(floor) = rollout.window_floor() {
                let query = WindowQuery {
                    model: to.name.clone(),
                    version: None,
                    device: None,
                    from: Some(floor),
                    to: None,
                };
                match self.store().windows(&query) {
                    Ok(records) => {
                        for w in records.iter().filter_map(window_profile) {
                            rollout.handle_window(now, &w);
                        }
                    }
                    Err(e) => tracing::error!(rollout = %id, error = %e, "windows not replayed"),
                }
            }
            let timeline = self
                .store()
                .get_state(&timeline_key(&id))
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            tracing::info!(rollout = %id, state = rollout.state().name(), "rollout restored");
            self.timelines.insert(id.clone(), timeline);
            self.rollouts.insert(id.clone(), rollout);
            self.order.push(id.clone());
            self.drive(&id).await;
        }
    }

    async fn handle(&mut self, input: Input) {
        let now = now_unix();
        match input {
            Input::Window(w) => {
                let ids = self.active_for(&w.key.model);
                for id in ids {
                    if let Some(r) = self.rollouts.get_mut(&id) {
                        r.handle_window(now, &w);
                    }
                    self.drive(&id).await;
                }
            }
            Input::Event(device, kind) => {
                let model = match kind.as_ref() {
                    EventKind::ShadowReport { candidate, .. } => Some(candidate.name.clone()),
                    EventKind::RolledBack { from, .. } => Some(from.name.clone()),
                    _ => None,
                };
                let ids = match &model {
                    Some(m) => self.active_for(m),
                    None => self.active_all(),
                };
                for id in ids {
                    if let Some(r) = self.rollouts.get_mut(&id) {
                        if let EventKind::ShadowReport {
                            candidate,
                            rows,
                            agreed,
                            ..
                        } = kind.as_ref()
                        {
                            if candidate.version == r.snapshot().spec.to.version {
                                r.handle_shadow(now, &device, *rows, *agreed);
                            }
                        } else {
                            r.handle_device_event(now, &device, &kind);
                        }
                    }
                    self.drive(&id).await;
                }
            }
            Input::State(device, state) => {
                for id in self.active_all() {
                    if let Some(r) = self.rollouts.get_mut(&id) {
                        r.handle_device_state(now, &device, &state);
                    }
                    self.publish_view(&id);
                }
            }
            Input::Start(req, actor, reply) => {
                let result = self.start(*req, &actor, now).await;
                let _ = reply.send(result);
            }
            Input::Operator(id, command, actor, reply) => {
                let result = match self.rollouts.get_mut(&id) {
                    None => Err(ApiError::not_found(format!("no rollout {id}"))),
                    Some(r) => match r.handle_operator(now, command, &actor) {
                        Ok(()) => Ok(()),
                        Err(e @ RolloutError::NotNow { .. }) => {
                            Err(ApiError::conflict(e.to_string()))
                        }
                        Err(e) => Err(ApiError::internal(e.to_string())),
                    },
                };
                let result = match result {
                    Ok(()) => {
                        let _ = self.app.audit.append(
                            now,
                            &actor,
                            "rollout.operator",
                            json!({"rollout": id, "command": command}),
                        );
                        self.drive(&id).await;
                        Ok(self.view_json(&id))
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
        }
    }

    async fn tick(&mut self) {
        let now = now_unix();
        for id in self.active_all() {
            if let Some(r) = self.rollouts.get_mut(&id) {
                r.handle_timeout(now);
            }
            self.drive(&id).await;
        }
    }

    /// Rollouts not yet final (plus final ones with directives to send).
    fn active_all(&self) -> Vec<String> {
        self.rollouts
            .iter()
            .filter(|(_, r)| !r.state().is_final())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn active_for(&self, model: &str) -> Vec<String> {
        self.rollouts
            .iter()
            .filter(|(_, r)| !r.state().is_final() && r.snapshot().spec.to.name == model)
            .map(|(id, _)| id.clone())
            .collect()
    }

    async fn start(&mut self, req: StartReq, actor: &str, now: u64) -> ApiResult<Value> {
        // Every directive of a rollout is signed by the director key.
        if self.app.director.is_none() {
            return Err(ApiError::conflict(
                "this server has no director key: start `outpost serve` with --director-key",
            ));
        }
        let plan = Plan::from_toml(&req.plan).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plan",
                e.to_string(),
            )
        })?;
        if let Some(busy) = self.active_for(&req.model).first() {
            return Err(ApiError::conflict(format!(
                "rollout {busy} of {} is still running: finish, abort or wait for it first",
                req.model
            )));
        }
        let store = self.app.store.clone();
        let to = load_version(store.as_ref(), &req.model, &req.version)?;
        if to.status != Status::Approved {
            return Err(ApiError::conflict(format!(
                "{} {} is {}: only an approved version can be rolled out",
                to.name, to.version, to.status
            )));
        }
        let from = store
            .list_versions()?
            .into_iter()
            .find(|v| v.name == req.model && v.status == Status::Deployed)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "no version of {} is deployed to compare with: deploy one first \
                     (`outpost model deploy {}@VERSION`)",
                    req.model, req.model
                ))
            })?;
        let devices: Vec<DeviceInfo> = store
            .list_devices()?
            .into_iter()
            .filter(|d| d.runs(&from.name, &from.version))
            .filter(|d| req.group.as_ref().is_none_or(|g| d.groups.contains(g)))
            .map(|d| DeviceInfo {
                target_class: if d.target.is_empty() {
                    "unknown".into()
                } else {
                    d.target.clone()
                },
                groups: d.groups.iter().cloned().collect(),
                id: d.id,
            })
            .collect();
        let id = match req.id {
            Some(id) => {
                if id.is_empty()
                    || id.len() > 64
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(ApiError::bad_request(
                        "a rollout id is 1-64 characters of A-Z a-z 0-9 - _ .",
                    ));
                }
                if self.rollouts.contains_key(&id) {
                    return Err(ApiError::conflict(format!("rollout {id} exists")));
                }
                id
            }
            None => {
                let base = format!("{}-{}", req.model, req.version);
                (1..)
                    .map(|n| format!("{base}-{n}"))
                    .find(|id| !self.rollouts.contains_key(id))
                    .unwrap_or(base)
            }
        };
        let reference = reference_of(store.as_ref(), &to.name, &to.version)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_reference", e))?;
        let spec = RolloutSpec {
            id: id.clone(),
            from: target_ref(&from)?,
            to: target_ref(&to)?,
            plan,
            devices,
        };
        let rollout =
            Rollout::new(spec, self.config.clone(), reference, now).map_err(|e| match e {
                RolloutError::NoDevices { .. } | RolloutError::CohortTooSmall { .. } => {
                    ApiError::conflict(format!(
                        "{e} (devices running {} {}{})",
                        from.name,
                        from.version,
                        req.group
                            .as_ref()
                            .map(|g| format!(" in group {g}"))
                            .unwrap_or_default()
                    ))
                }
                e => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_plan",
                    e.to_string(),
                ),
            })?;
        // Index first: a crash between here and the first snapshot leaves
        // an id without a snapshot, which restore skips (nothing was sent).
        self.order.push(id.clone());
        self.store().put_state(
            INDEX_KEY,
            &serde_json::to_vec(&self.order).unwrap_or_default(),
        )?;
        self.app.audit.append(
            now,
            actor,
            "rollout.start",
            json!({"rollout": id, "model": to.name, "from": from.version, "to": to.version,
                   "group": req.group, "devices": rollout.snapshot().spec.devices.len()}),
        )?;
        self.rollouts.insert(id.clone(), rollout);
        self.timelines.insert(
            id.clone(),
            vec![TimelineEntry {
                at: now,
                what: format!(
                    "started by {actor}: {} {} → {}",
                    to.name, from.version, to.version
                ),
            }],
        );
        self.drive(&id).await;
        Ok(self.view_json(&id))
    }

    /// Performs the core's actions until there are none.
    async fn drive(&mut self, id: &str) {
        while let Some(action) = self.rollouts.get_mut(id).and_then(Rollout::poll_action) {
            let now = now_unix();
            match action {
                Action::Persist(snapshot) => {
                    let bytes = match serde_json::to_vec(&snapshot) {
                        Ok(b) => b,
                        Err(e) => {
                            // Not acted on further, as when the store fails.
                            tracing::error!(rollout = id, error = %e, "snapshot does not encode; actions held");
                            return;
                        }
                    };
                    if let Err(e) = self
                        .store()
                        .put_state(&snapshot_key(id), &bytes)
                        .and_then(|()| self.store().flush())
                    {
                        // Not acted on further: what follows would run
                        // ahead of the durable state.
                        tracing::error!(rollout = id, error = %e, "snapshot not persisted; actions held");
                        return;
                    }
                }
                Action::SendDirective(planned) => {
                    if let Err(e) = self.send(&planned, now).await {
                        tracing::error!(rollout = id, key = %planned.key, error = %e, "directive not sent");
                        self.note(
                            id,
                            now,
                            format!(
                                "directive {} to {} not sent: {e}",
                                planned.key, planned.device
                            ),
                        );
                    }
                }
                Action::Alert { kind, message } => {
                    tracing::warn!(rollout = id, ?kind, "{message}");
                    self.note(id, now, format!("alert ({kind:?}): {message}"));
                }
                Action::StageStarted {
                    stage,
                    canary,
                    control,
                } => {
                    let label = self.stage_label(id, stage);
                    self.note(
                        id,
                        now,
                        format!("{label} started: {canary} canary, {control} control"),
                    );
                    if stage == 0 {
                        self.lifecycle(id, true, Status::Canary, now, "rollout started")
                            .await;
                    }
                }
                Action::StageAdvanced { from, to, reports } => {
                    let (a, b) = (self.stage_label(id, from), self.stage_label(id, to));
                    self.note(
                        id,
                        now,
                        format!("{a} passed ({}); {b} next", verdicts(&reports)),
                    );
                    let _ = self.app.audit.append(
                        now,
                        CONTROLLER,
                        "rollout.advance",
                        json!({"rollout": id, "from": from, "to": to, "reports": reports}),
                    );
                }
                Action::Paused { reason } => {
                    self.note(id, now, format!("paused: {reason:?}"));
                    self.app.alerting.observe(Observation::RolloutPaused {
                        rollout: id.to_owned(),
                        reason: format!("{reason:?}"),
                    });
                    let _ = self.app.audit.append(
                        now,
                        CONTROLLER,
                        "rollout.pause",
                        json!({"rollout": id, "reason": reason}),
                    );
                }
                Action::Resumed { actor } => {
                    self.note(id, now, format!("resumed by {actor}"));
                    self.app.alerting.observe(Observation::RolloutRunning {
                        rollout: id.to_owned(),
                    });
                }
                Action::Halted { reason, reports } => {
                    self.note(
                        id,
                        now,
                        format!(
                            "HALTED: {reason:?} ({}); rolling back every touched device",
                            verdicts(&reports)
                        ),
                    );
                    self.app.alerting.observe(Observation::RolloutHalted {
                        rollout: id.to_owned(),
                        reason: format!("{reason:?}"),
                    });
                    let _ = self.app.audit.append(
                        now,
                        CONTROLLER,
                        "rollout.halt",
                        json!({"rollout": id, "reason": reason, "reports": reports}),
                    );
                    self.lifecycle(id, true, Status::Approved, now, "rollout halted")
                        .await;
                }
                Action::Completed => {
                    self.note(
                        id,
                        now,
                        "completed: every stage passed; candidate committed".into(),
                    );
                    self.app.alerting.observe(Observation::RolloutRunning {
                        rollout: id.to_owned(),
                    });
                    let _ = self.app.audit.append(
                        now,
                        CONTROLLER,
                        "rollout.complete",
                        json!({"rollout": id}),
                    );
                    self.lifecycle(id, true, Status::Deployed, now, "rollout completed")
                        .await;
                    self.lifecycle(id, false, Status::Deprecated, now, "superseded by rollout")
                        .await;
                }
            }
        }
        self.publish_view(id);
    }

    /// Journals, signs and publishes one directive, then reports it sent.
    async fn send(&mut self, planned: &PlannedDirective, now: u64) -> Result<(), String> {
        let director = self
            .app
            .director
            .clone()
            .ok_or("no director key (start the server with --director-key)")?;
        let jkey = journal_key(&planned.key);
        let journaled = self
            .store()
            .get_state(&jkey)
            .map_err(|e| e.to_string())?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes);
        let sequence = match journaled {
            Some(s) => s,
            None => {
                let s = director.next_sequence().map_err(|e| e.to_string())?;
                self.store()
                    .put_state(&jkey, &s.to_be_bytes())
                    .and_then(|()| self.store().flush())
                    .map_err(|e| e.to_string())?;
                s
            }
        };
        let signed = director
            .sign(&planned.directive(sequence))
            .map_err(|e| e.to_string())?;
        let (release, url) = match planned.action.target() {
            Some(t) => self
                .artifacts
                .entry((t.name.clone(), t.version.clone()))
                .or_insert_with(|| artifact_of(&self.app, &t.name, &t.version))
                .clone(),
            None => (None, None),
        };
        let cmd = Director::command(signed, release, url);
        self.app.mqtt.publish_command(&planned.device, &cmd).await?;
        self.app.metrics.directives.inc();
        if let Some(r) = self.rollouts.get_mut(&planned.key.rollout) {
            r.handle_directive_sent(now, &planned.key, sequence)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Moves the rollout's candidate (`candidate`) or current version to
    /// `to` in the registry, when the lifecycle allows it.
    async fn lifecycle(&self, id: &str, candidate: bool, to: Status, now: u64, reason: &str) {
        let Some(r) = self.rollouts.get(id) else {
            return;
        };
        let spec = &r.snapshot().spec;
        let t = if candidate { &spec.to } else { &spec.from };
        let _guard = self.app.registry_lock.lock().await;
        let Ok(Some(mut v)) = self.store().get_version(&t.name, &t.version) else {
            return;
        };
        if v.status == to {
            return;
        }
        let from = v.status;
        match registry::transition(
            &mut v,
            to,
            CONTROLLER,
            now,
            Some(format!("{reason} ({id})")),
        ) {
            Ok(()) => {
                if let Err(e) = self.store().put_version(&v) {
                    tracing::error!(error = %e, "lifecycle not stored");
                    return;
                }
                let _ = self.app.audit.append(
                    now,
                    CONTROLLER,
                    "version.transition",
                    json!({"name": v.name, "version": v.version, "from": from, "to": to,
                           "reason": reason, "rollout": id}),
                );
            }
            Err(e) => tracing::warn!(rollout = id, error = %e, "lifecycle move skipped"),
        }
    }

    fn stage_label(&self, id: &str, stage: u32) -> String {
        self.rollouts
            .get(id)
            .and_then(|r| r.snapshot().spec.plan.stages.get(stage as usize))
            .map_or_else(
                || format!("stage {}", stage + 1),
                |s| s.label(stage as usize),
            )
    }

    fn note(&mut self, id: &str, at: u64, what: String) {
        tracing::info!(rollout = id, "{what}");
        let timeline = self.timelines.entry(id.to_owned()).or_default();
        timeline.push(TimelineEntry { at, what });
        if let Ok(bytes) = serde_json::to_vec(timeline)
            && let Err(e) = self.app.store.put_state(&timeline_key(id), &bytes)
        {
            tracing::warn!(rollout = id, error = %e, "timeline not stored");
        }
    }

    fn publish_view(&self, id: &str) {
        let Some(r) = self.rollouts.get(id) else {
            return;
        };
        let view = RolloutView {
            status: r.status(),
            timeline: self.timelines.get(id).cloned().unwrap_or_default(),
        };
        self.app.rollouts.view().insert(id.to_owned(), view);
    }

    fn view_json(&self, id: &str) -> Value {
        self.publish_view(id);
        self.app
            .rollouts
            .view()
            .get(id)
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(Value::Null)
    }
}

/// "latency pass, accuracy fail, …"
fn verdicts(reports: &[crate::rollout::GateReport]) -> String {
    if reports.is_empty() {
        return "no gates".into();
    }
    reports
        .iter()
        .map(|r| format!("{} {:?}", r.gate.as_str(), r.verdict).to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

fn load_version(store: &dyn Store, name: &str, version: &str) -> ApiResult<VersionRecord> {
    store
        .get_version(name, version)?
        .ok_or_else(|| ApiError::not_found(format!("{name} {version} is not registered")))
}

fn target_ref(v: &VersionRecord) -> ApiResult<TargetRef> {
    Ok(TargetRef {
        name: v.name.clone(),
        version: v.version.clone(),
        sha256: Sha256::from_hex(&v.sha256)
            .ok_or_else(|| ApiError::internal(format!("{} {}: bad digest", v.name, v.version)))?,
        length: v.length,
    })
}

/// The release metadata and artifact URL devices need to install `name`
/// `version` (none when the version was pushed without release metadata).
fn artifact_of(app: &App, name: &str, version: &str) -> Artifact {
    let Ok(Some(v)) = app.store.get_version(name, version) else {
        return (None, None);
    };
    let release = v
        .release_sha256
        .as_deref()
        .and_then(|s| app.store.get_blob(s).ok().flatten())
        .and_then(|b| {
            outpost_protocol::codec::decode::<Signed<ReleaseMetadata>>(
                &b,
                2 * outpost_protocol::trust::MAX_METADATA_BYTES,
            )
            .ok()
        });
    let url = format!("{}/v1/artifacts/{}", app.public_url, v.sha256);
    (release, Some(url))
}

// ---- HTTP handlers -------------------------------------------------------------

async fn ask(app: &App, make: impl FnOnce(Reply) -> Input) -> ApiResult<Value> {
    let (tx, rx) = oneshot::channel();
    app.rollouts.send(make(tx));
    rx.await
        .map_err(|_| ApiError::internal("the rollout controller stopped"))?
}

pub(crate) async fn start_rollout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<StartReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    if req.plan.len() > crate::rollout::MAX_PLAN_BYTES {
        return Err(ApiError::bad_request("the plan is larger than 64 KiB"));
    }
    let v = ask(&app, |tx| {
        Input::Start(Box::new(req), caller.name.clone(), tx)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

pub(crate) async fn list_rollouts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let view = app.rollouts.view();
    let list: Vec<Value> = view
        .values()
        .map(|v| {
            let s = &v.status;
            json!({"id": s.id, "model": s.model, "from": s.from, "to": s.to,
                   "state": s.state.name(), "stage": s.stage_label,
                   "stages": s.stages, "canary_devices": s.canary_devices,
                   "control_devices": s.control_devices})
        })
        .collect();
    Ok(Json(json!({ "rollouts": list })))
}

pub(crate) async fn show_rollout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let view = app.rollouts.view();
    let v = view
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))?;
    Ok(Json(
        serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}

pub(crate) async fn operate_rollout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((id, command)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    let command = match command.as_str() {
        "pause" => OperatorCommand::Pause,
        "resume" => OperatorCommand::Resume,
        "abort" => OperatorCommand::Abort,
        other => {
            return Err(ApiError::not_found(format!(
                "no rollout command {other:?} (pause, resume, abort)"
            )));
        }
    };
    ask(&app, |tx| {
        Input::Operator(id, command, caller.name.clone(), tx)
    })
    .await
    .map(Json)
}

/// The body of `POST /v1/models/{name}/{version}/deploy`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DeployReq {
    group: Option<String>,
    /// Deploy even though another version is deployed (skipping a rollout).
    force: bool,
}

/// Deploys a version to every device (of a group) at once, without
/// probation: the first install of a model on a fleet. Later versions go
/// out through rollouts.
pub(crate) async fn deploy(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Option<Json<DeployReq>>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let director = app.director.clone().ok_or_else(|| {
        ApiError::conflict(
            "this server has no director key: start `outpost serve` with --director-key",
        )
    })?;
    let now = now_unix();
    let _guard = app.registry_lock.lock().await;
    let mut v = load_version(app.store.as_ref(), &name, &version)?;
    if !matches!(v.status, Status::Approved | Status::Deployed) {
        return Err(ApiError::conflict(format!(
            "{name} {version} is {}: only an approved version can be deployed",
            v.status
        )));
    }
    if v.release_sha256.is_none() {
        return Err(ApiError::conflict(format!(
            "{name} {version} was pushed without release metadata: devices cannot verify it"
        )));
    }
    let others: Vec<String> = app
        .store
        .list_versions()?
        .into_iter()
        .filter(|o| o.name == name && o.version != version && o.status == Status::Deployed)
        .map(|o| o.version)
        .collect();
    if !others.is_empty() && !req.force {
        return Err(ApiError::conflict(format!(
            "{name} {} is deployed: roll {version} out with `outpost rollout start {name}@{version}` \
             (or deploy with --force to skip the canary)",
            others.join(", ")
        )));
    }
    let target = target_ref(&v)?;
    let devices: Vec<DeviceId> = app
        .store
        .list_devices()?
        .into_iter()
        .filter(|d| req.group.as_ref().is_none_or(|g| d.groups.contains(g)))
        .map(|d| d.id)
        .collect();
    let (release, url) = artifact_of(&app, &name, &version);
    let mut sent = vec![];
    let mut notes = vec![];
    for id in &devices {
        let signed = director
            .issue(
                Selector::Device(id.clone()),
                DirectiveAction::Deploy {
                    target: target.clone(),
                    probation: Probation::None,
                },
                None,
                now,
                DEPLOY_TTL,
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let sequence = signed.decode_unverified().map(|d| d.sequence).unwrap_or(0);
        let cmd = Director::command(signed, release.clone(), url.clone());
        match app.mqtt.publish_command(id, &cmd).await {
            Ok(()) => {
                app.metrics.directives.inc();
                sent.push(json!({"device": id, "sequence": sequence}));
            }
            Err(e) => notes.push(format!("{id}: directive {sequence} not published: {e}")),
        }
    }
    let from = v.status;
    if v.status == Status::Approved {
        for step in [Status::Canary, Status::Deployed] {
            registry::transition(&mut v, step, &caller.name, now, Some("deploy".into()))
                .map_err(|e| ApiError::conflict(e.to_string()))?;
        }
    }
    for other in &others {
        if let Ok(Some(mut o)) = app.store.get_version(&name, other)
            && registry::transition(
                &mut o,
                Status::Deprecated,
                &caller.name,
                now,
                Some(format!("superseded by {version} (deploy)")),
            )
            .is_ok()
        {
            app.store.put_version(&o)?;
        }
    }
    app.store.put_version(&v)?;
    app.audit.append(
        now,
        &caller.name,
        "version.deploy",
        json!({"name": name, "version": version, "from": from, "group": req.group,
               "directives": sent, "notes": notes, "superseded": others}),
    )?;
    Ok(Json(
        json!({"name": name, "version": version, "status": v.status,
                    "directives": sent, "notes": notes}),
    ))
}
