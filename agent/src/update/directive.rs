//! Accepting a signed directive and deciding what it means here, given the
//! slots and the step in flight (the verdict table is in the module docs).

use std::time::Instant;

use outpost_protocol::messages::{Command, EventKind, InstallStep};
use outpost_protocol::trust::{
    Decision, Directive, DirectiveAction, Probation, TargetMeta, UnixSeconds,
};

use super::action::{AbandonReason, Action, ProbationMode, SlotPointer};
use super::state::{Committing, Downloading, Job, OnProbation, Retiring, RollingBack, State};
use super::{UpdateError, Updater};

/// What an accepted directive does, decided before it is accepted (so a
/// directive that cannot be acted on does not use up its sequence).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, one at a time
enum Intent {
    /// Download and install a target (discarding the job in flight).
    Install(Job),
    /// The same target as the job in flight: a new probation plan.
    Amend {
        mode: Option<ProbationMode>,
    },
    /// Verdict: commit the candidate on probation.
    Commit,
    /// Verdict: back to the active model; discard the job in flight.
    Abandon,
    /// Restore the previous model of `name` without a download.
    RestorePrevious {
        name: String,
    },
    Retire {
        name: String,
    },
    Rebirth,
    /// Already so: only the sequence advances.
    Nothing,
}

fn same(a: &TargetMeta, b: &TargetMeta) -> bool {
    a.name == b.name && a.version == b.version && a.sha256 == b.sha256
}

impl Updater {
    /// A command from the server. It is verified here (signatures,
    /// expiry, sequence above the last accepted, device, release and
    /// target); a refused one changes nothing and is reported. Duplicates,
    /// replays and out-of-order directives are refused by the sequence
    /// check, expired ones by the expiry check.
    pub fn handle_command(&mut self, now: Instant, cmd: &Command) -> Result<(), UpdateError> {
        if self.state.writing_slots() {
            // Design: held, not verified yet: verification must see the
            // trust state the pointer write ends with.
            if self.deferred.len() >= self.config.max_deferred {
                return Err(UpdateError::Busy);
            }
            self.deferred.push_back(cmd.clone());
            return Ok(());
        }
        let unix = self.clock.unix(now);
        let decision =
            match self
                .verifier
                .decide(&self.trust, &cmd.directive, cmd.release.as_ref(), unix)
            {
                Ok(d) => d,
                Err(e) => {
                    let sequence = cmd.directive.decode_unverified().ok().map(|d| d.sequence);
                    self.refused(sequence, e.check(), e.to_string());
                    return Err(e.into());
                }
            };
        let Decision {
            directive,
            target,
            state: trust,
        } = decision;
        let intent = match self.intent(&directive, target, cmd.artifact_url.as_deref()) {
            Ok(i) => i,
            Err(e) => {
                self.refused(
                    Some(directive.sequence),
                    "artifact_url_missing",
                    e.to_string(),
                );
                return Err(e);
            }
        };
        // Accepted: the new trust state goes out with the next Persist,
        // which every intent below queues before any other action.
        self.trust = trust;
        self.apply(unix, &directive, intent);
        Ok(())
    }

    /// Commands held during a pointer write, now that it is done.
    pub(super) fn drain_deferred(&mut self, now: Instant) {
        while !self.state.writing_slots() {
            let Some(cmd) = self.deferred.pop_front() else {
                break;
            };
            // A refusal was reported as an event; nothing else to do here.
            let _ = self.handle_command(now, &cmd);
        }
    }

    fn refused(&mut self, directive: Option<u64>, check: &str, detail: String) {
        self.report(EventKind::VerificationFailed {
            directive,
            check: check.to_owned(),
            detail,
        });
    }

    fn intent(
        &self,
        d: &Directive,
        target: Option<TargetMeta>,
        url: Option<&str>,
    ) -> Result<Intent, UpdateError> {
        let job = self.state.job();
        let (mode, restores) = match &d.action {
            DirectiveAction::Deploy { probation, .. } => match probation {
                Probation::None => (None, true),
                Probation::Canary => (Some(ProbationMode::Canary), false),
            },
            DirectiveAction::Shadow { .. } => (Some(ProbationMode::Shadow), false),
            DirectiveAction::Rollback { .. } => (None, true),
            DirectiveAction::Retire { model } => {
                let known =
                    self.slots.contains_key(model) || job.is_some_and(|j| j.target.name == *model);
                return Ok(if known {
                    Intent::Retire {
                        name: model.clone(),
                    }
                } else {
                    Intent::Nothing
                });
            }
            DirectiveAction::Rebirth => return Ok(Intent::Rebirth),
        };
        // The verifier returns the release-signed target for every action
        // that names one.
        let Some(t) = target else {
            return Ok(Intent::Nothing);
        };
        let pointer = self.slots.get(&t.name);
        let is_active = pointer.is_some_and(|p| p.active.sha256 == t.sha256);
        let is_previous = pointer
            .and_then(|p| p.previous.as_ref())
            .is_some_and(|p| p.sha256 == t.sha256);
        let rollback = matches!(d.action, DirectiveAction::Rollback { .. });
        if job.is_some_and(|j| same(&j.target, &t)) {
            if rollback {
                // "Roll back to the candidate" is not a thing: keep going.
                return Ok(Intent::Nothing);
            }
            return Ok(match (&self.state, mode) {
                (State::Probation(_), None) => Intent::Commit,
                _ => Intent::Amend { mode },
            });
        }
        if is_active {
            let same_model = job.is_some_and(|j| j.target.name == t.name);
            return Ok(if same_model {
                Intent::Abandon
            } else {
                Intent::Nothing
            });
        }
        if is_previous && restores {
            return Ok(Intent::RestorePrevious { name: t.name });
        }
        let Some(url) = url else {
            return Err(UpdateError::NoArtifactUrl {
                sequence: d.sequence,
                name: t.name,
                version: t.version,
            });
        };
        Ok(Intent::Install(Job {
            id: d.sequence,
            rollout: d.rollout.clone(),
            target: t,
            url: url.to_owned(),
            probation: mode,
            grace: d.offline_grace,
            until: d.expires,
        }))
    }

    fn apply(&mut self, unix: UnixSeconds, d: &Directive, intent: Intent) {
        let seq = d.sequence;
        let superseded = AbandonReason::Superseded { by: seq };
        match intent {
            Intent::Install(job) => {
                let old = self.take_job();
                let name = job.target.name.clone();
                let (id, url, target) = (job.id, job.url.clone(), job.target.clone());
                let total = target.length;
                let started = job.clone();
                self.enter(State::Downloading(Downloading {
                    job,
                    done: 0,
                    failures: 0,
                    retry_at: None,
                }));
                if let Some(old) = old {
                    self.discard(old, superseded, Some(seq));
                }
                self.report_install(&started, InstallStep::Downloading { done: 0, total });
                self.report_state(&name);
                self.push(Action::Download {
                    job: id,
                    url,
                    target,
                    resume_from: 0,
                });
            }
            Intent::Amend { mode } => self.amend(unix, d, mode),
            Intent::Commit => {
                let state = std::mem::replace(&mut self.state, State::Idle);
                if let State::Probation(p) = state {
                    self.commit(p.job, None);
                } else {
                    // `intent` returns Commit only on probation.
                    self.enter(state);
                }
            }
            Intent::Abandon => {
                if let Some(job) = self.take_job() {
                    self.abandon(job, AbandonReason::Verdict { directive: seq }, Some(seq));
                } else {
                    self.enter(State::Idle);
                }
            }
            Intent::RestorePrevious { name } => {
                let Some(p) = self.slots.get(&name).cloned() else {
                    return self.enter(self.state.clone());
                };
                let Some(previous) = p.previous.clone() else {
                    return self.enter(self.state.clone());
                };
                let old = self.take_job();
                let pointer = SlotPointer {
                    active: previous,
                    previous: None,
                };
                self.enter(State::RollingBack(RollingBack {
                    directive: seq,
                    name: name.clone(),
                    from: p.active.clone(),
                    pointer: pointer.clone(),
                }));
                if let Some(old) = old {
                    self.discard(old, superseded, Some(seq));
                }
                self.report_state(&name);
                self.push(Action::RollBack {
                    name,
                    from: p.active,
                    pointer,
                });
            }
            Intent::Retire { name } => {
                let old = self.take_job();
                let active = self.slots.get(&name).map(|p| p.active.clone());
                self.enter(State::Retiring(Retiring {
                    directive: seq,
                    name: name.clone(),
                    active,
                }));
                if let Some(old) = old {
                    self.discard(old, superseded, Some(seq));
                }
                self.push(Action::Retire { name });
            }
            Intent::Rebirth => {
                self.note_contact(unix);
                self.enter(self.state.clone());
                self.push(Action::Rebirth);
            }
            Intent::Nothing => {
                self.note_contact(unix);
                self.enter(self.state.clone());
            }
        }
    }

    /// A directive about the job in flight: its probation plan, grace and
    /// window now come from this directive.
    fn amend(&mut self, unix: UnixSeconds, d: &Directive, mode: Option<ProbationMode>) {
        if let Some(job) = self.state.job_mut() {
            job.probation = mode;
            job.grace = d.offline_grace;
            job.until = d.expires;
        }
        let state = std::mem::replace(&mut self.state, State::Idle);
        match (state, mode) {
            (State::Probation(p), Some(mode)) => {
                let changed = p.mode != mode;
                let job = p.job;
                let next = OnProbation {
                    job: job.clone(),
                    mode,
                    last_heard: unix,
                };
                self.enter(State::Probation(next));
                if changed {
                    self.report_install(&job, probation_step(mode));
                }
                self.report_state(&job.target.name);
                self.push(Action::StartProbation {
                    job: job.id,
                    candidate: job.candidate(),
                    mode,
                    until: job.until,
                });
            }
            (other, _) => self.enter(other),
        }
    }

    /// Self-tested and cleared to commit: the pointer write is the commit.
    pub(super) fn commit(&mut self, job: Job, report: Option<InstallStep>) {
        let candidate = job.candidate();
        let current = self.slots.get(&job.target.name);
        let pointer = SlotPointer {
            active: candidate.clone(),
            previous: current.map(|p| p.active.clone()),
        };
        // The old previous goes, unless it is coming back as a slot.
        let drop = current.and_then(|p| p.previous.clone()).filter(|d| {
            d.sha256 != candidate.sha256
                && pointer.previous.as_ref().map(|p| p.sha256) != Some(d.sha256)
        });
        let name = job.target.name.clone();
        let id = job.id;
        self.enter(State::Committing(Committing {
            job,
            pointer: pointer.clone(),
            drop: drop.clone(),
        }));
        if let (Some(step), State::Committing(c)) = (report, &self.state) {
            let job = c.job.clone();
            self.report_install(&job, step);
        }
        self.push(Action::Commit {
            job: id,
            name,
            pointer,
            drop,
        });
    }

    /// Takes the job in flight out of the state (which becomes idle).
    pub(super) fn take_job(&mut self) -> Option<Job> {
        let state = std::mem::replace(&mut self.state, State::Idle);
        match state {
            State::Downloading(s) => Some(s.job),
            State::Verifying(s) => Some(s.job),
            State::Staging(s) => Some(s.job),
            State::SelfTesting(s) => Some(s.job),
            State::Probation(s) => Some(s.job),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The server was heard from: a probation's grace starts over. Only
    /// updates the state; the caller persists.
    pub(super) fn note_contact(&mut self, unix: UnixSeconds) -> bool {
        if let State::Probation(p) = &mut self.state
            && unix >= p.last_heard.saturating_add(p.contact_step())
        {
            p.last_heard = unix;
            return true;
        }
        false
    }
}

pub(super) fn probation_step(mode: ProbationMode) -> InstallStep {
    match mode {
        ProbationMode::Shadow => InstallStep::Shadow,
        ProbationMode::Canary => InstallStep::Canary,
    }
}
