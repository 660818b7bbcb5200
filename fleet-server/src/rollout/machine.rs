//! The controller's inputs and transitions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use outpost_protocol::messages::{EventKind, ReportedState};
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::UnixSeconds;
use outpost_telemetry::{ReferenceProfile, WindowProfile};

use super::gates::{self, Evidence, GateVerdict};
use super::plan::StageMode;
use super::state::{
    Baseline, Completed, DirectiveKind, HaltReason, Halted, PauseReason, Paused, PlannedDirective,
    RolloutSpec, Running, Snapshot, StageRecord, State, Waiting,
};
use super::{
    Action, AlertKind, CohortData, DeviceView, GateReport, OperatorCommand, Rollout, RolloutConfig,
    RolloutError, RolloutStatus, StageData, WindowUse, assign,
};
use crate::rollout::state::DirectiveKey;

impl Rollout {
    /// Starts a rollout: computes the cohorts and, when the calendar allows
    /// at `now`, starts the first stage (a Persist, then a deploy directive
    /// per canary device); otherwise waits for the calendar (a Persist).
    ///
    /// `reference` is the candidate version's reference profile: canary
    /// windows are counted against it and the drift gate compares with it.
    ///
    /// # Errors
    /// [`RolloutError::Plan`] for an invalid plan, [`RolloutError::NoDevices`],
    /// [`RolloutError::CohortTooSmall`] when a stage's cohort cannot reach
    /// its `min_devices`.
    pub fn new(
        spec: RolloutSpec,
        config: RolloutConfig,
        reference: Arc<ReferenceProfile>,
        now: UnixSeconds,
    ) -> Result<Rollout, RolloutError> {
        spec.plan
            .validate()
            .map_err(|e| RolloutError::Plan(e.to_string()))?;
        if spec.devices.is_empty() {
            return Err(RolloutError::NoDevices {
                rollout: spec.id.clone(),
            });
        }
        let cohorts = assign(&spec.id, &spec.plan, &spec.devices);
        for (i, (stage, cohort)) in spec.plan.stages.iter().zip(&cohorts).enumerate() {
            if (cohort.canary.len() as u64) < u64::from(stage.min_devices) {
                return Err(RolloutError::CohortTooSmall {
                    stage: i,
                    needed: stage.min_devices,
                    available: cohort.canary.len(),
                });
            }
        }
        let snapshot = Snapshot {
            format: Snapshot::FORMAT,
            spec,
            created_at: now,
            state: State::Waiting(Waiting { since: now }),
            directives: Vec::new(),
            failures: Default::default(),
            baseline: None,
            reports: Vec::new(),
            history: Vec::new(),
        };
        let mut rollout = Rollout::build(config, reference, snapshot, cohorts, now);
        if rollout.config.calendar.allows(now) {
            rollout.start_stage(now, 0, None);
        } else {
            rollout.persist();
        }
        Ok(rollout)
    }

    /// Resumes from the last persisted snapshot after a restart. Queues a
    /// [`Action::SendDirective`] for every directive whose send was not
    /// reported (in log order; the shell's journal keeps a directive that
    /// did go out from going out again) and nothing else: no transition is
    /// re-run.
    ///
    /// Then the shell feeds again the windows that start at or after
    /// [`Rollout::window_floor`] and the devices' retained states, and
    /// calls [`Rollout::handle_timeout`] as usual.
    ///
    /// # Errors
    /// [`RolloutError::SnapshotFormat`] for another layout version.
    pub fn restore(
        snapshot: Snapshot,
        config: RolloutConfig,
        reference: Arc<ReferenceProfile>,
        now: UnixSeconds,
    ) -> Result<Rollout, RolloutError> {
        if snapshot.format != Snapshot::FORMAT {
            return Err(RolloutError::SnapshotFormat {
                found: snapshot.format,
                expected: Snapshot::FORMAT,
            });
        }
        let cohorts = assign(
            &snapshot.spec.id,
            &snapshot.spec.plan,
            &snapshot.spec.devices,
        );
        let mut rollout = Rollout::build(config, reference, snapshot, cohorts, now);
        let unsent: Vec<PlannedDirective> = rollout
            .snapshot
            .directives
            .iter()
            .filter(|d| d.sequence.is_none())
            .cloned()
            .collect();
        for d in unsent {
            rollout.push(Action::SendDirective(Box::new(d)));
        }
        Ok(rollout)
    }

    fn build(
        config: RolloutConfig,
        reference: Arc<ReferenceProfile>,
        snapshot: Snapshot,
        cohorts: Vec<super::StageCohorts>,
        now: UnixSeconds,
    ) -> Rollout {
        let next_evaluation = now.saturating_add(config.evaluate_every_secs);
        Rollout {
            config,
            reference,
            cohorts,
            snapshot,
            stage_data: StageData::default(),
            devices: Default::default(),
            next_evaluation,
            now,
            actions: Default::default(),
        }
    }

    /// The next action for the shell, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Rollout::handle_timeout`] is next due, if ever. Never earlier
    /// than the latest `now` the core was given, so a shell loop cannot spin.
    pub fn poll_timeout(&self) -> Option<UnixSeconds> {
        let calendar = || self.config.calendar.next_allowed(self.now);
        let t = match &self.snapshot.state {
            State::Waiting(_) => calendar(),
            State::Running(r) => {
                let due = self.next_evaluation;
                Some(if r.held_since.is_some() {
                    calendar().map_or(due, |c| c.min(due))
                } else {
                    due.min(r.deadline)
                })
            }
            _ => None,
        }?;
        Some(t.max(self.now))
    }

    /// The persisted part of the state, as the last Persist had it or newer.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn state(&self) -> &State {
        &self.snapshot.state
    }

    pub fn id(&self) -> &str {
        &self.snapshot.spec.id
    }

    /// Every stage's cohorts (deterministic from the rollout id and devices).
    pub fn cohorts(&self) -> &[super::StageCohorts] {
        &self.cohorts
    }

    /// Windows starting before this are not evidence for the current stage;
    /// after a restore, feed the stored ones from here on.
    pub fn window_floor(&self) -> Option<UnixSeconds> {
        match &self.snapshot.state {
            State::Running(r) => Some(r.started_at),
            State::Paused(p) => Some(p.started_at),
            _ => None,
        }
    }

    /// A new calendar or timing from a reloaded server config.
    pub fn set_config(&mut self, config: RolloutConfig) {
        self.config = config;
    }

    /// What a device last reported about this rollout's model.
    pub fn device(&self, id: &DeviceId) -> Option<&DeviceView> {
        self.devices.get(id)
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    fn persist(&mut self) {
        let snapshot = Box::new(self.snapshot.clone());
        self.push(Action::Persist(snapshot));
    }

    fn tick(&mut self, now: UnixSeconds) {
        self.now = self.now.max(now);
    }

    // ---- inputs ----------------------------------------------------------

    /// A telemetry window from a device (decoded and size-checked by the
    /// shell). Counted as canary evidence when the device is in the current
    /// stage's canary cohort and the window is of the candidate version,
    /// as control evidence when the device is in the control cohort and
    /// the window is of the current version; windows that started before
    /// the stage are not counted. Idempotent by window key.
    pub fn handle_window(&mut self, now: UnixSeconds, window: &WindowProfile) -> WindowUse {
        self.tick(now);
        let (stage, started_at) = match &self.snapshot.state {
            State::Running(r) => (r.stage, r.started_at),
            State::Paused(p) => (p.stage, p.started_at),
            _ => return WindowUse::Ignored("no stage running"),
        };
        let key = &window.key;
        let spec = &self.snapshot.spec;
        if key.model != spec.to.name {
            return WindowUse::Ignored("another model");
        }
        let Ok(device) = DeviceId::new(key.device.as_str()) else {
            return WindowUse::Ignored("invalid device id");
        };
        if key.start < started_at {
            return WindowUse::Ignored("started before the stage");
        }
        let Some(cohort) = self.cohorts.get(stage as usize) else {
            return WindowUse::Ignored("no such stage");
        };
        if cohort.canary.contains(&device) && key.version == spec.to.version {
            if window.profile.check_against(&self.reference).is_err() {
                return WindowUse::Ignored("not counted on the candidate's reference");
            }
            count(
                &mut self.stage_data.canary,
                device,
                window,
                WindowUse::Canary,
            )
        } else if cohort.control.contains(&device) && key.version == spec.from.version {
            count(
                &mut self.stage_data.control,
                device,
                window,
                WindowUse::Control,
            )
        } else {
            WindowUse::Ignored("not in the stage's cohorts at this version")
        }
    }

    /// Shadow comparisons of one canary device, cumulative since its
    /// probation started (the agent's `ShadowReport` event: `rows`
    /// compared, `agreed`): the latest report per device holds, so a
    /// redelivered or reordered report changes nothing (a report with fewer
    /// rows than the one held is older and ignored).
    pub fn handle_shadow(
        &mut self,
        now: UnixSeconds,
        device: &DeviceId,
        rows: u64,
        agreed: u64,
    ) -> WindowUse {
        self.tick(now);
        let stage = match &self.snapshot.state {
            State::Running(r) => r.stage,
            State::Paused(p) => p.stage,
            _ => return WindowUse::Ignored("no stage running"),
        };
        let in_canary = self
            .cohorts
            .get(stage as usize)
            .is_some_and(|c| c.canary.contains(device));
        if !in_canary {
            return WindowUse::Ignored("not in the stage's canary cohort");
        }
        let entry = self.stage_data.shadow.entry(device.clone()).or_default();
        if rows <= entry.0 && entry.0 > 0 {
            return WindowUse::Duplicate;
        }
        *entry = (rows, agreed.min(rows));
        self.stage_data.shadow_reports += 1;
        WindowUse::Canary
    }

    /// A device's retained state (for status, and to see which directive
    /// it last accepted).
    pub fn handle_device_state(
        &mut self,
        now: UnixSeconds,
        device: &DeviceId,
        state: &ReportedState,
    ) {
        self.tick(now);
        let name = &self.snapshot.spec.to.name;
        let model = state.models.iter().find(|m| &m.name == name);
        let view = DeviceView {
            active: model
                .and_then(|m| m.active.as_ref())
                .map(|m| m.version.clone()),
            candidate: model
                .and_then(|m| m.candidate.as_ref())
                .map(|m| m.version.clone()),
            last_directive: state.last_directive,
        };
        self.devices.insert(device.clone(), view);
    }

    /// A device event: a canary that rolled itself back (health check,
    /// self-test, grace) or refused one of this rollout's directives counts
    /// as a device failure ([`Rollout::handle_device_failure`]). Returns
    /// whether it counted.
    pub fn handle_device_event(
        &mut self,
        now: UnixSeconds,
        device: &DeviceId,
        event: &EventKind,
    ) -> bool {
        let to = &self.snapshot.spec.to;
        let reason = match event {
            EventKind::RolledBack { from, reason, .. }
                if from.name == to.name
                    && from.version == to.version
                    && !reason.starts_with("verdict")
                    && !reason.starts_with("superseded") =>
            {
                format!("rolled back: {reason}")
            }
            EventKind::VerificationFailed {
                directive: Some(sequence),
                check,
                ..
            } if self
                .snapshot
                .directives
                .iter()
                .any(|d| d.sequence == Some(*sequence) && &d.device == device) =>
            {
                format!("refused directive {sequence}: {check}")
            }
            _ => return false,
        };
        self.handle_device_failure(now, device, reason)
    }

    /// A canary device failed. Counted once per device; when the failures
    /// among the touched devices pass the stage's `max_failed_devices`, the
    /// rollout halts. Returns whether it counted.
    pub fn handle_device_failure(
        &mut self,
        now: UnixSeconds,
        device: &DeviceId,
        reason: String,
    ) -> bool {
        self.tick(now);
        let stage = match &self.snapshot.state {
            State::Running(r) => r.stage,
            State::Paused(p) => p.stage,
            _ => return false,
        };
        if !self.touched().contains(device) || self.snapshot.failures.contains_key(device) {
            return false;
        }
        let message = format!("device {} failed: {reason}", device.as_str());
        self.snapshot.failures.insert(device.clone(), reason);
        let allowed = self
            .snapshot
            .spec
            .plan
            .stages
            .get(stage as usize)
            .map_or(0, |s| s.max_failed_devices);
        if self.snapshot.failures.len() as u64 > u64::from(allowed) {
            let devices = self.snapshot.failures.keys().cloned().collect();
            let reports = self.snapshot.reports.clone();
            self.halt(now, HaltReason::DeviceFailures { devices }, reports);
        } else {
            self.persist();
            self.push(Action::Alert {
                kind: AlertKind::DeviceFailed,
                message,
            });
        }
        true
    }

    /// The shell signed and published directive `key` with `sequence`
    /// (see the module docs). A repeated report is a no-op.
    ///
    /// # Errors
    /// [`RolloutError::UnknownDirective`] for a key this rollout never issued.
    pub fn handle_directive_sent(
        &mut self,
        now: UnixSeconds,
        key: &DirectiveKey,
        sequence: u64,
    ) -> Result<(), RolloutError> {
        self.tick(now);
        let entry = (key.rollout == self.snapshot.spec.id)
            .then(|| self.snapshot.directives.get_mut(key.index as usize))
            .flatten()
            .filter(|d| d.key == *key)
            .ok_or_else(|| RolloutError::UnknownDirective(key.clone()))?;
        if entry.sequence.is_none() {
            entry.sequence = Some(sequence);
            self.persist();
        }
        Ok(())
    }

    /// Pause, resume or abort, by `actor` (recorded).
    ///
    /// # Errors
    /// [`RolloutError::NotNow`] when the command does not apply to the
    /// current state; nothing changed.
    pub fn handle_operator(
        &mut self,
        now: UnixSeconds,
        command: OperatorCommand,
        actor: &str,
    ) -> Result<(), RolloutError> {
        self.tick(now);
        let not_now = RolloutError::NotNow {
            command,
            state: self.snapshot.state.name(),
        };
        match (command, &self.snapshot.state) {
            (OperatorCommand::Pause, State::Running(_)) => {
                self.pause(
                    now,
                    PauseReason::Operator {
                        actor: actor.to_owned(),
                    },
                );
            }
            (OperatorCommand::Resume, State::Paused(p)) => {
                let (stage, started_at) = (p.stage, p.started_at);
                let max = self.max_duration(stage);
                self.snapshot.state = State::Running(Running {
                    stage,
                    started_at,
                    deadline: now.saturating_add(max),
                    held_since: None,
                });
                self.next_evaluation = now.saturating_add(self.config.evaluate_every_secs);
                self.persist();
                self.push(Action::Resumed {
                    actor: actor.to_owned(),
                });
            }
            (OperatorCommand::Abort, State::Waiting(_) | State::Running(_) | State::Paused(_)) => {
                let reports = self.snapshot.reports.clone();
                self.halt(
                    now,
                    HaltReason::Aborted {
                        actor: actor.to_owned(),
                    },
                    reports,
                );
            }
            _ => return Err(not_now),
        }
        Ok(())
    }

    /// Time has passed: start when the calendar allows, evaluate the gates
    /// when due, advance, pause at the deadline. Idempotent: calling it
    /// again at the same `now` changes nothing.
    pub fn handle_timeout(&mut self, now: UnixSeconds) {
        self.tick(now);
        match &self.snapshot.state {
            State::Waiting(_) if self.config.calendar.allows(now) => {
                self.start_stage(now, 0, None);
            }
            State::Running(r) => {
                let held_and_open = r.held_since.is_some() && self.config.calendar.allows(now);
                let past_deadline = r.held_since.is_none() && now >= r.deadline;
                if now >= self.next_evaluation || past_deadline || held_and_open {
                    self.decide(now);
                }
            }
            _ => {}
        }
    }

    // ---- transitions -----------------------------------------------------

    /// The gates of the current stage on the evidence so far.
    pub fn evaluate(&self) -> Vec<GateReport> {
        let Some(stage) = self.snapshot.state.stage() else {
            return Vec::new();
        };
        let Some(spec) = self.snapshot.spec.plan.stages.get(stage as usize) else {
            return Vec::new();
        };
        let no_control = self
            .cohorts
            .get(stage as usize)
            .is_none_or(|c| c.control.is_empty());
        let control = match (&self.stage_data.control.total, &self.snapshot.baseline) {
            (Some(p), _) => Some(p),
            (None, Some(b)) if no_control => Some(&b.profile),
            _ => None,
        };
        let shadow = self
            .stage_data
            .shadow
            .values()
            .fold((0u64, 0u64), |(c, a), (dc, da)| {
                (c.saturating_add(*dc), a.saturating_add(*da))
            });
        let evidence = Evidence {
            canary: self.stage_data.canary.total.as_ref(),
            control,
            reference: &self.reference,
            shadow,
        };
        spec.gates
            .iter()
            .map(|g| gates::evaluate(g, &evidence))
            .collect()
    }

    fn decide(&mut self, now: UnixSeconds) {
        let State::Running(r) = self.snapshot.state.clone() else {
            return;
        };
        self.next_evaluation = now.saturating_add(self.config.evaluate_every_secs);
        let reports = self.evaluate();
        let failed: Vec<_> = reports
            .iter()
            .filter(|g| g.verdict == GateVerdict::Fail)
            .map(|g| g.gate)
            .collect();
        if !failed.is_empty() {
            self.halt(now, HaltReason::GateFailed { gates: failed }, reports);
            return;
        }
        let Some(stage) = self.snapshot.spec.plan.stages.get(r.stage as usize) else {
            return;
        };
        // Evidence: canary windows, and shadow reports (a shadowing device
        // may send no window of the candidate).
        let data = &self.stage_data;
        let reporting = data
            .canary
            .devices
            .union(&data.shadow.keys().cloned().collect())
            .count();
        let windows = (data.canary.set.len() as u64).saturating_add(data.shadow_reports);
        let minimums = reporting as u64 >= u64::from(stage.min_devices)
            && windows >= u64::from(stage.min_windows)
            && now >= r.started_at.saturating_add(stage.min_duration);
        let holding: Vec<_> = reports
            .iter()
            .filter(|g| g.holds())
            .map(|g| g.gate)
            .collect();
        if minimums && holding.is_empty() {
            if self.config.calendar.allows(now) {
                self.advance(now, r, reports);
            } else if r.held_since.is_none() {
                let until = self.config.calendar.next_allowed(now);
                self.snapshot.reports = reports;
                self.snapshot.state = State::Running(Running {
                    held_since: Some(now),
                    ..r
                });
                self.persist();
                let until =
                    until.map_or_else(|| "further notice".to_owned(), crate::clock::rfc3339);
                self.push(Action::Alert {
                    kind: AlertKind::HeldByCalendar,
                    message: format!(
                        "rollout {}: stage {} passed; held by the change calendar until {until}",
                        self.snapshot.spec.id,
                        r.stage + 1
                    ),
                });
            } else {
                self.snapshot.reports = reports;
            }
        } else if now >= r.deadline && r.held_since.is_none() {
            self.snapshot.reports = reports;
            self.pause(now, PauseReason::Inconclusive { gates: holding });
        } else {
            self.snapshot.reports = reports;
        }
    }

    fn max_duration(&self, stage: u32) -> u64 {
        self.snapshot
            .spec
            .plan
            .stages
            .get(stage as usize)
            .map_or(0, |s| s.max_duration)
    }

    /// Devices sent a canary deploy by this rollout, in key order.
    fn touched(&self) -> BTreeSet<DeviceId> {
        self.snapshot
            .directives
            .iter()
            .filter(|d| matches!(d.kind, DirectiveKind::Canary | DirectiveKind::Shadow))
            .map(|d| d.device.clone())
            .collect()
    }

    /// Appends a directive to the log and returns it.
    fn plan_directive(
        &mut self,
        kind: DirectiveKind,
        device: DeviceId,
        stage: u32,
        now: UnixSeconds,
    ) -> PlannedDirective {
        let spec = &self.snapshot.spec;
        let expires = match kind {
            // The probation lasts as long as the remaining stages may.
            DirectiveKind::Canary | DirectiveKind::Shadow => {
                let remaining: u64 = spec
                    .plan
                    .stages
                    .iter()
                    .skip(stage as usize)
                    .map(|s| s.max_duration)
                    .fold(0u64, u64::saturating_add);
                now.saturating_add(remaining)
                    .saturating_add(self.config.probation_margin_secs)
            }
            DirectiveKind::Commit | DirectiveKind::Rollback => {
                now.saturating_add(self.config.directive_ttl_secs)
            }
        };
        let index = u32::try_from(self.snapshot.directives.len()).unwrap_or(u32::MAX);
        let planned = PlannedDirective {
            key: DirectiveKey {
                rollout: spec.id.clone(),
                index,
            },
            device,
            kind,
            action: PlannedDirective::action_for(kind, spec),
            stage,
            issued_at: now,
            expires,
            offline_grace: self.config.offline_grace,
            sequence: None,
        };
        self.snapshot.directives.push(planned.clone());
        planned
    }

    /// Enters `stage`: deploys to its canary devices not yet deployed.
    fn start_stage(
        &mut self,
        now: UnixSeconds,
        stage: u32,
        advanced: Option<(u32, Vec<GateReport>)>,
    ) {
        let (canary, control) = match self.cohorts.get(stage as usize) {
            Some(c) => (c.canary.clone(), c.control.len()),
            None => return,
        };
        let max = self.max_duration(stage);
        self.snapshot.state = State::Running(Running {
            stage,
            started_at: now,
            deadline: now.saturating_add(max),
            held_since: None,
        });
        self.snapshot.reports.clear();
        self.stage_data = StageData::default();
        self.next_evaluation = now.saturating_add(self.config.evaluate_every_secs);
        let want = match self.snapshot.spec.plan.stages.get(stage as usize) {
            Some(s) if s.mode == StageMode::Shadow => DirectiveKind::Shadow,
            _ => DirectiveKind::Canary,
        };
        // The latest deploy each device got: a device already canary is
        // never demoted; one shadowing is promoted by a canary stage.
        let latest: BTreeMap<&DeviceId, DirectiveKind> = self
            .snapshot
            .directives
            .iter()
            .filter(|d| matches!(d.kind, DirectiveKind::Canary | DirectiveKind::Shadow))
            .map(|d| (&d.device, d.kind))
            .collect();
        let failed = &self.snapshot.failures;
        let new: Vec<DeviceId> = canary
            .iter()
            .filter(|d| {
                let had = latest.get(d).copied();
                had != Some(DirectiveKind::Canary) && had != Some(want) && !failed.contains_key(*d)
            })
            .cloned()
            .collect();
        let planned: Vec<_> = new
            .into_iter()
            .map(|d| self.plan_directive(want, d, stage, now))
            .collect();
        self.persist();
        for p in planned {
            self.push(Action::SendDirective(Box::new(p)));
        }
        if let Some((from, reports)) = advanced {
            self.push(Action::StageAdvanced {
                from,
                to: stage,
                reports,
            });
        }
        self.push(Action::StageStarted {
            stage,
            canary: canary.len(),
            control,
        });
    }

    fn record_stage(&mut self, now: UnixSeconds, outcome: &str, reports: &[GateReport]) {
        let (stage, started_at) = match &self.snapshot.state {
            State::Running(r) => (r.stage, r.started_at),
            State::Paused(p) => (p.stage, p.started_at),
            _ => return,
        };
        self.snapshot.history.push(StageRecord {
            stage,
            started_at,
            ended_at: now,
            outcome: outcome.to_owned(),
            reports: reports.to_vec(),
        });
    }

    fn advance(&mut self, now: UnixSeconds, running: Running, reports: Vec<GateReport>) {
        self.record_stage(now, "passed", &reports);
        let had_control = self
            .cohorts
            .get(running.stage as usize)
            .is_some_and(|c| !c.control.is_empty());
        if let (true, Some(profile)) = (had_control, self.stage_data.control.total.take()) {
            self.snapshot.baseline = Some(Baseline {
                stage: running.stage,
                profile,
            });
        }
        let next = running.stage + 1;
        if (next as usize) < self.snapshot.spec.plan.stages.len() {
            self.start_stage(now, next, Some((running.stage, reports)));
            return;
        }
        self.snapshot.state = State::Completed(Completed {
            stage: running.stage,
            at: now,
        });
        self.snapshot.reports = reports;
        let failed = self.snapshot.failures.clone();
        let commits: Vec<_> = self
            .touched()
            .into_iter()
            .filter(|d| !failed.contains_key(d))
            .map(|d| self.plan_directive(DirectiveKind::Commit, d, running.stage, now))
            .collect();
        self.persist();
        for p in commits {
            self.push(Action::SendDirective(Box::new(p)));
        }
        self.push(Action::Completed);
    }

    fn pause(&mut self, now: UnixSeconds, reason: PauseReason) {
        let State::Running(r) = &self.snapshot.state else {
            return;
        };
        let (stage, started_at) = (r.stage, r.started_at);
        self.snapshot.state = State::Paused(Paused {
            stage,
            started_at,
            at: now,
            reason: reason.clone(),
        });
        self.persist();
        if let PauseReason::Inconclusive { gates } = &reason {
            let names: Vec<&str> = gates.iter().map(|g| g.as_str()).collect();
            let what = if names.is_empty() {
                "the stage's minimum devices or windows were not reached".to_owned()
            } else {
                format!("gates still inconclusive: {}", names.join(", "))
            };
            self.push(Action::Alert {
                kind: AlertKind::Inconclusive,
                message: format!(
                    "rollout {} paused at stage {} after its maximum duration: {what}",
                    self.snapshot.spec.id,
                    stage + 1
                ),
            });
        }
        self.push(Action::Paused { reason });
    }

    fn halt(&mut self, now: UnixSeconds, reason: HaltReason, reports: Vec<GateReport>) {
        let outcome = match &reason {
            HaltReason::GateFailed { .. } => "failed",
            HaltReason::DeviceFailures { .. } => "device_failures",
            HaltReason::Aborted { .. } => "aborted",
        };
        self.record_stage(now, outcome, &reports);
        let stage = self.snapshot.state.stage();
        self.snapshot.state = State::Halted(Halted {
            stage,
            at: now,
            reason: reason.clone(),
        });
        self.snapshot.reports = reports.clone();
        let rollbacks: Vec<_> = self
            .touched()
            .into_iter()
            .map(|d| self.plan_directive(DirectiveKind::Rollback, d, stage.unwrap_or(0), now))
            .collect();
        let touched = rollbacks.len();
        self.persist();
        for p in rollbacks {
            self.push(Action::SendDirective(Box::new(p)));
        }
        let why = match &reason {
            HaltReason::GateFailed { gates } => {
                let names: Vec<&str> = gates.iter().map(|g| g.as_str()).collect();
                format!("gate failed: {}", names.join(", "))
            }
            HaltReason::DeviceFailures { devices } => {
                format!("{} canary devices failed", devices.len())
            }
            HaltReason::Aborted { actor } => format!("aborted by {actor}"),
        };
        self.push(Action::Halted { reason, reports });
        self.push(Action::Alert {
            kind: AlertKind::Halted,
            message: format!(
                "rollout {} halted ({why}); rollback sent to {touched} devices",
                self.snapshot.spec.id
            ),
        });
    }

    /// The rollout as `outpost rollout status` shows it.
    pub fn status(&self) -> RolloutStatus {
        let s = &self.snapshot;
        let stage = s.state.stage();
        let cohort = stage.and_then(|i| self.cohorts.get(i as usize));
        let held_until = match &s.state {
            State::Running(r) if r.held_since.is_some() => {
                self.config.calendar.next_allowed(self.now)
            }
            State::Waiting(_) => self.config.calendar.next_allowed(self.now),
            _ => None,
        };
        let sent = s.directives.iter().filter(|d| d.sequence.is_some()).count();
        RolloutStatus {
            id: s.spec.id.clone(),
            model: s.spec.to.name.clone(),
            from: s.spec.from.version.clone(),
            to: s.spec.to.version.clone(),
            state: s.state.clone(),
            stages: s.spec.plan.stages.len(),
            stage_label: stage.and_then(|i| {
                s.spec
                    .plan
                    .stages
                    .get(i as usize)
                    .map(|st| st.label(i as usize))
            }),
            canary_devices: cohort.map_or(0, |c| c.canary.len()),
            control_devices: cohort.map_or(0, |c| c.control.len()),
            canary_reporting: self.stage_data.canary.devices.len(),
            canary_windows: self.stage_data.canary.set.len(),
            control_reporting: self.stage_data.control.devices.len(),
            control_windows: self.stage_data.control.set.len(),
            held_until,
            reports: s.reports.clone(),
            directives_sent: sent,
            directives_pending: s.directives.len() - sent,
            failures: s.failures.clone(),
            history: s.history.clone(),
        }
    }
}

/// Counts a window into a cohort once; a re-sent copy replaces the first
/// (the set keeps the fuller copy) and the total is summed again.
fn count(
    data: &mut CohortData,
    device: DeviceId,
    window: &WindowProfile,
    kind: WindowUse,
) -> WindowUse {
    let is_new = data.set.windows().all(|(k, _)| k != &window.key);
    if !is_new {
        data.set.insert(window.clone());
        if let Ok(total) = data.set.rollup() {
            data.total = total;
        }
        return WindowUse::Duplicate;
    }
    match &mut data.total {
        Some(total) => {
            if total.merge(&window.profile).is_err() {
                return WindowUse::Ignored("does not merge with the cohort's other windows");
            }
        }
        None => data.total = Some(window.profile.clone()),
    }
    data.set.insert(window.clone());
    data.devices.insert(device);
    kind
}
