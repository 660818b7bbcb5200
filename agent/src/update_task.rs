//! The running agent's update task: one thread owns the [`Updater`] core —
//! and with it the trust state — feeds it the commands the MQTT side
//! receives, drives its actions ([`update_shell::drive`]) and hands what
//! is meant for the fleet back to the MQTT side.
//!
//! Design: a plain thread, not a tokio task, because every action is
//! blocking (downloads, fsyncs, model loads, self-tests) and an update may
//! take minutes; commands that arrive meanwhile wait in the channel, in
//! order, one drive each. A download does not make them wait for its end:
//! between reads it looks at the channel, and when a command (or the
//! shutdown) is waiting it stops with its bytes fsynced; the core pauses
//! the job ([`Updater::handle_download_paused`]) and the command is handled
//! first. A newer deploy, a rollback or a retire then supersedes or
//! discards the job without installing it; anything else (a refused or
//! unrelated command) lets the download resume where it stopped. A stop
//! of the agent interrupts a download the same way.
//!
//! Besides commands it runs the core's timers and the device's own health
//! checks while a candidate is on probation:
//! - error rate: the candidate's engine failures over its requests, once
//!   it has seen [`UpdateTaskConfig::min_requests`];
//! - crash loop: each start that finds a probation in the record counts a
//!   restart (`update/probation-restarts.json`); past
//!   [`UpdateTaskConfig::max_restarts`] the candidate is discarded.
//!
//! A shadow candidate's agreement and score deltas are reported every
//! telemetry window as a `ShadowReport` event.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use outpost_protocol::messages::{Command, EventKind, ModelRef};
use serde::{Deserialize, Serialize};

use crate::AgentState;
use crate::serve::LoadContext;
use crate::update::{HealthFailure, ProbationMode, State, Updater};
use crate::update_fs::UpdateFiles;
use crate::update_shell::{Interrupt, Published, Shell, drive};

/// Inputs of the update task.
#[derive(Debug)]
pub enum Input {
    /// A command from the server (decoded, not verified: the core verifies).
    Command(Box<Command>),
    /// Connected to the broker: a probation's offline grace starts over.
    Contact,
}

/// Health-check limits.
#[derive(Debug, Clone)]
pub struct UpdateTaskConfig {
    /// Candidate requests before its error rate is judged.
    pub min_requests: u64,
    /// Error rate (per mille) above which the candidate is discarded.
    pub max_error_per_mille: u32,
    /// Restarts during one probation before the candidate is discarded.
    pub max_restarts: u32,
    /// How often a shadow candidate's counters are reported.
    pub report_every: Duration,
}

impl Default for UpdateTaskConfig {
    fn default() -> Self {
        UpdateTaskConfig {
            min_requests: 20,
            max_error_per_mille: 100,
            max_restarts: 3,
            report_every: Duration::from_secs(60),
        }
    }
}

/// Restarts seen during the probation of one candidate.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Restarts {
    candidate: Option<ModelRef>,
    restarts: u32,
}

/// The sending side, kept by the MQTT task.
#[derive(Debug, Clone)]
pub struct Updates {
    tx: Sender<Input>,
}

impl Updates {
    /// Queues an input; `false` when the task has stopped.
    pub fn send(&self, input: Input) -> bool {
        self.tx.send(input).is_ok()
    }
}

/// Starts the task with the core built at start-up. Its first drive
/// performs what the restored record left to do. What it publishes goes
/// to `out`; it stops when every [`Updates`] is dropped.
pub fn spawn(
    state: Arc<AgentState>,
    core: Updater,
    config: UpdateTaskConfig,
    out: tokio::sync::mpsc::UnboundedSender<Published>,
) -> std::io::Result<(Updates, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("outpost-update".into())
        .spawn(move || Task::new(state, config, out, rx).run(core))?;
    Ok((Updates { tx }, handle))
}

struct Task {
    state: Arc<AgentState>,
    config: UpdateTaskConfig,
    out: tokio::sync::mpsc::UnboundedSender<Published>,
    files: Option<UpdateFiles>,
    http: ureq::Agent,
    restarts_path: PathBuf,
    next_report: Instant,
    rx: Receiver<Input>,
    /// Inputs taken from the channel during a download, handled next.
    pending: RefCell<VecDeque<Input>>,
}

impl Task {
    fn new(
        state: Arc<AgentState>,
        config: UpdateTaskConfig,
        out: tokio::sync::mpsc::UnboundedSender<Published>,
        rx: Receiver<Input>,
    ) -> Task {
        let files = UpdateFiles::open(&state.config.data_dir)
            .map_err(|e| tracing::error!(error = %e, "update files unavailable; updates are off"))
            .ok();
        let http = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_body(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        let restarts_path = state
            .config
            .data_dir
            .join("update")
            .join("probation-restarts.json");
        Task {
            next_report: Instant::now() + config.report_every,
            state,
            config,
            out,
            files,
            http,
            restarts_path,
            rx,
            pending: RefCell::new(VecDeque::new()),
        }
    }

    /// The next input: one taken during a download first, in order.
    fn next_input(&self, timeout: Duration) -> Result<Input, RecvTimeoutError> {
        if let Some(input) = self.pending.borrow_mut().pop_front() {
            return Ok(input);
        }
        self.rx.recv_timeout(timeout)
    }

    /// Whether a download should stop now: a command is waiting, or the
    /// agent is stopping (every sender dropped). Inputs seen are kept, in
    /// order, for [`Task::next_input`].
    fn must_interrupt(&self) -> bool {
        let mut pending = self.pending.borrow_mut();
        loop {
            match self.rx.try_recv() {
                Ok(input) => pending.push_back(input),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        pending.iter().any(|i| matches!(i, Input::Command(_)))
    }

    fn run(mut self, mut core: Updater) {
        // The first drive resumes a crashed update; a probation it starts
        // again is a restart during that probation.
        let first = self.drive(&mut core);
        self.count_restart(&mut core, first.as_ref());
        loop {
            let now = Instant::now();
            let wake = core
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(1))
                .min(now + Duration::from_secs(1));
            match self.next_input(wake.saturating_duration_since(now)) {
                Ok(Input::Command(cmd)) => {
                    let now = Instant::now();
                    core.handle_server_contact(now);
                    if let Err(e) = core.handle_command(now, &cmd) {
                        tracing::warn!(error = %e, "command not acted on");
                    }
                    // What the command did is published before a paused
                    // download resumes and holds the thread again.
                    self.drive_running(&mut core);
                }
                Ok(Input::Contact) => core.handle_server_contact(Instant::now()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            self.health_check(&mut core, now);
            self.drive_running(&mut core);
        }
    }

    /// [`Task::drive`] after the start: a probation it starts gets a fresh
    /// restart count.
    fn drive_running(&self, core: &mut Updater) {
        let published = self.drive(core);
        if let Some(p) = &published
            && !p.probations.is_empty()
        {
            self.write_restarts(&Restarts {
                candidate: p.probations.last().cloned(),
                restarts: 0,
            });
        }
    }

    /// Drives the core until it has nothing left to do and publishes the
    /// result. On a record that cannot be written the core is rebuilt from
    /// the last record on disk (no later action may run on an unrecorded
    /// step).
    fn drive(&self, core: &mut Updater) -> Option<Published> {
        let files = self.files.as_ref()?;
        let trust = core.trust().clone();
        let config = &self.state.config;
        let interrupt = || self.must_interrupt();
        let shell = Shell {
            files,
            host: &self.state.host,
            http: &self.http,
            load: LoadContext {
                state: &trust,
                verifier: &self.state.verifier,
                target: &config.target,
                now_unix: crate::unix_now(),
                breaker: &config.breaker,
            },
            fallback: self.fallback_of(core),
            shadow_budget_percent: config.shadow_cpu_budget_percent,
            interrupt: Some(Interrupt(&interrupt)),
        };
        match drive(core, &shell) {
            Ok(p) => {
                self.after_drive(core, &p);
                let _ = self.out.send(p.clone());
                Some(p)
            }
            Err(e) => {
                tracing::error!(error = %e, "update record not written; resuming from disk");
                self.state.metrics.update_persist_failures.inc();
                if let Some(restored) = self.restore_from_disk(core) {
                    *core = restored;
                }
                None
            }
        }
    }

    /// Mirrors the core's trust state (status, `/metrics`, the next
    /// start's first-boot checks) and its slot phases (`…/state`).
    fn after_drive(&self, core: &Updater, p: &Published) {
        let trust = core.trust();
        let changed = self
            .state
            .trust
            .read()
            .map(|t| *t != *trust)
            .unwrap_or(true);
        if changed {
            if let Err(e) = crate::store::save_trust(&self.state.config.data_dir, trust) {
                tracing::warn!(error = %e, "trust state mirror not written (the update record holds it)");
            }
            if let Ok(mut t) = self.state.trust.write() {
                *t = trust.clone();
            }
        }
        if let Ok(mut view) = self.state.update_view.lock() {
            for s in &p.states {
                view.insert(s.name.clone(), s.clone());
            }
            for name in &p.retired {
                view.remove(name);
            }
        }
        for name in &p.retired {
            let removed = self.state.telemetry.forget_model(name);
            tracing::info!(model = %name, windows = removed, "retired: local telemetry deleted");
        }
    }

    fn restore_from_disk(&self, core: &Updater) -> Option<Updater> {
        let files = self.files.as_ref()?;
        let record = files.read_record().ok().flatten()?;
        let slots = files.read_slots().ok()?;
        Updater::restore(
            self.state.verifier.clone(),
            crate::update::UpdateConfig::default(),
            record,
            slots,
            Instant::now(),
            crate::unix_now().max(core.trust().last_seen),
        )
        .ok()
    }

    /// The configured fallback of the model the job installs.
    fn fallback_of(&self, core: &Updater) -> crate::config::Fallback {
        let name = core.state().job().map(|j| j.target.name.clone());
        self.state
            .host
            .slots_of(name.as_deref().unwrap_or(""))
            .map(|(a, _)| a.fallback.clone())
            .unwrap_or(crate::config::Fallback::Reject)
    }

    /// Counts a restart when the first drive started a probation again;
    /// too many discard the candidate.
    fn count_restart(&self, core: &mut Updater, first: Option<&Published>) {
        let Some(candidate) = first.and_then(|p| p.probations.last()) else {
            return;
        };
        let mut r: Restarts = std::fs::read(&self.restarts_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if r.candidate.as_ref() != Some(candidate) {
            r = Restarts {
                candidate: Some(candidate.clone()),
                restarts: 0,
            };
        }
        r.restarts += 1;
        self.write_restarts(&r);
        if r.restarts > self.config.max_restarts {
            tracing::error!(
                restarts = r.restarts,
                "crash loop during probation: discarding the candidate"
            );
            let _ = core.handle_health_failure(
                Instant::now(),
                HealthFailure::CrashLoop {
                    restarts: r.restarts,
                },
            );
            self.drive(core);
        }
    }

    fn write_restarts(&self, r: &Restarts) {
        if let Ok(bytes) = serde_json::to_vec(r)
            && let Err(e) = crate::store::write_atomic(&self.restarts_path, &bytes)
        {
            tracing::warn!(error = %e, "probation restart count not written");
        }
    }

    /// The candidate's error rate, and the shadow report when due.
    fn health_check(&mut self, core: &mut Updater, now: Instant) {
        let State::Probation(p) = core.state() else {
            return;
        };
        let name = p.job.target.name.clone();
        let Some(c) = self.state.host.candidate_of(&name) else {
            return;
        };
        let s = c.stats.snapshot();
        if s.requests >= self.config.min_requests {
            let per_mille = u32::try_from(s.errors.saturating_mul(1000) / s.requests.max(1))
                .unwrap_or(u32::MAX);
            if per_mille > self.config.max_error_per_mille {
                tracing::error!(per_mille, "candidate error rate over the limit");
                let _ = core.handle_health_failure(now, HealthFailure::ErrorRate { per_mille });
                return;
            }
        }
        if c.mode == ProbationMode::Shadow && now >= self.next_report {
            self.next_report = now + self.config.report_every;
            let active = self.state.host.slots_of(&name).map(|(a, _)| ModelRef {
                name: a.name.clone(),
                version: a.version.clone(),
                sha256: a.sha256,
            });
            if let Some(active) = active {
                let _ = self.out.send(Published {
                    events: vec![shadow_report(&c, active)],
                    ..Published::default()
                });
            }
        }
    }
}

/// The `ShadowReport` event of a shadow candidate.
pub fn shadow_report(c: &crate::serve::probation::Candidate, active: ModelRef) -> EventKind {
    let s = c.stats.snapshot();
    EventKind::ShadowReport {
        candidate: ModelRef {
            name: c.model.name.clone(),
            version: c.model.version.clone(),
            sha256: c.model.sha256,
        },
        active,
        requests: s.requests,
        errors: s.errors,
        skipped_over_budget: s.shadow_skipped,
        rows: s.rows,
        agreed: s.agreed,
        delta_mean_micros: s.delta_sum_micros.checked_div(s.rows).unwrap_or(0),
        delta_max_micros: s.delta_max_micros,
    }
}
