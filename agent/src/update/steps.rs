//! The shell's reports on the actions it performed, health checks, server
//! contact and timers: each moves the job one step on or abandons it.

use std::time::Instant;

use outpost_protocol::messages::{EventKind, InstallStep};
use outpost_protocol::trust::{TrustError, UnixSeconds};

use super::action::{
    AbandonReason, Action, DiskFailure, DownloadFailure, DownloadFailureKind, HealthFailure, JobId,
    SelfTestOutcome,
};
use super::directive::probation_step;
use super::state::{Downloading, Job, OnProbation, SelfTesting, Staging, State, Verifying};
use super::{UpdateError, Updater};

impl Updater {
    /// `bytes_written` of the download are durably on disk (report after
    /// an fsync; how often is the shell's choice).
    pub fn handle_download_progress(
        &mut self,
        _now: Instant,
        job: JobId,
        bytes_written: u64,
    ) -> Result<(), UpdateError> {
        let State::Downloading(d) = &mut self.state else {
            return Err(self.unexpected("download progress", Some(job)));
        };
        if d.job.id != job || d.retry_at.is_some() {
            return Err(self.unexpected("download progress", Some(job)));
        }
        if bytes_written > d.job.target.length {
            return self.endless_data(job);
        }
        if bytes_written <= d.done {
            return Ok(());
        }
        d.done = bytes_written;
        // Failures count attempts in a row that made no progress: a slow
        // link that keeps moving is not given up on.
        d.failures = 0;
        let (total, job) = (d.job.target.length, d.job.clone());
        self.enter(self.state.clone());
        self.report_install(
            &job,
            InstallStep::Downloading {
                done: bytes_written,
                total,
            },
        );
        Ok(())
    }

    /// The download ended with `bytes_written` bytes in the file.
    pub fn handle_download_done(
        &mut self,
        now: Instant,
        job: JobId,
        bytes_written: u64,
    ) -> Result<(), UpdateError> {
        let length = match &self.state {
            State::Downloading(d) if d.job.id == job && d.retry_at.is_none() => d.job.target.length,
            _ => return Err(self.unexpected("download done", Some(job))),
        };
        if bytes_written > length {
            return self.endless_data(job);
        }
        if bytes_written < length {
            // The server closed early: an interruption like any other.
            let failure = DownloadFailure::Interrupted {
                bytes_written,
                detail: format!("closed after {bytes_written} of {length} bytes"),
            };
            return self.handle_download_failed(now, job, failure);
        }
        if let State::Downloading(d) = std::mem::replace(&mut self.state, State::Idle) {
            let target = d.job.target.clone();
            self.enter(State::Verifying(Verifying { job: d.job }));
            self.push(Action::VerifyArtifact { job, target });
        }
        Ok(())
    }

    /// A download attempt failed. Interruptions are retried with backoff
    /// from the bytes written; the rest abandon the job.
    pub fn handle_download_failed(
        &mut self,
        now: Instant,
        job: JobId,
        failure: DownloadFailure,
    ) -> Result<(), UpdateError> {
        let d = match std::mem::replace(&mut self.state, State::Idle) {
            State::Downloading(d) if d.job.id == job && d.retry_at.is_none() => d,
            other => {
                self.state = other;
                return Err(self.unexpected("download failure", Some(job)));
            }
        };
        let unix = self.clock.unix(now);
        let kind = match failure {
            DownloadFailure::Interrupted { bytes_written, .. } => {
                let failures = d.failures.saturating_add(1);
                if failures >= self.config.max_download_failures {
                    DownloadFailureKind::RetriesExhausted
                } else {
                    let done = bytes_written.min(d.job.target.length);
                    let retry_at = unix.saturating_add(self.backoff(failures));
                    self.enter(State::Downloading(Downloading {
                        done,
                        failures,
                        retry_at: Some(retry_at),
                        ..d
                    }));
                    return Ok(());
                }
            }
            DownloadFailure::Refused { .. } => DownloadFailureKind::Refused,
            DownloadFailure::Disk(DiskFailure::NoSpace) => DownloadFailureKind::NoSpace,
            DownloadFailure::Disk(_) => DownloadFailureKind::Io,
            DownloadFailure::EndlessData => {
                self.state = State::Downloading(d);
                return self.endless_data(job);
            }
        };
        self.abandon(d.job, AbandonReason::Download(kind), None);
        Ok(())
    }

    /// The shell stopped the download after `bytes_written` (fsynced) bytes
    /// to let a waiting command through. Not a failure: no attempt is
    /// counted and there is no backoff. The download resumes from there at
    /// the next [`Updater::handle_timeout`], which is due at once, unless
    /// the command that was let through changes the job first.
    ///
    /// Design: the resumption is a timer rather than a new `Download`
    /// action, so the shell's drive ends with the core waiting and the
    /// command is handled before any further download starts.
    pub fn handle_download_paused(
        &mut self,
        now: Instant,
        job: JobId,
        bytes_written: u64,
    ) -> Result<(), UpdateError> {
        let unix = self.clock.unix(now);
        let d = match std::mem::replace(&mut self.state, State::Idle) {
            State::Downloading(d) if d.job.id == job && d.retry_at.is_none() => d,
            other => {
                self.state = other;
                return Err(self.unexpected("download paused", Some(job)));
            }
        };
        // What is on disk now (a server that ignored the range restarted
        // the file from zero).
        let done = bytes_written.min(d.job.target.length);
        self.enter(State::Downloading(Downloading {
            done,
            retry_at: Some(unix),
            ..d
        }));
        Ok(())
    }

    fn backoff(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(20);
        self.config
            .retry_base_secs
            .saturating_mul(1u64 << shift)
            .min(self.config.retry_max_secs)
            .max(1)
    }

    fn endless_data(&mut self, job: JobId) -> Result<(), UpdateError> {
        let length = self.state.job().map(|j| j.target.length).unwrap_or(0);
        self.unverified(job, TrustError::EndlessData { length });
        Ok(())
    }

    /// Reports a failed trust check on the job's artifact and abandons it.
    fn unverified(&mut self, job: JobId, e: TrustError) {
        let Some(j) = self.take_current(job) else {
            return;
        };
        self.report(EventKind::VerificationFailed {
            directive: Some(j.id),
            check: e.check().to_owned(),
            detail: e.to_string(),
        });
        let check = e.check().to_owned();
        self.abandon(j, AbandonReason::Unverified { check }, None);
    }

    /// The downloaded file's length and digest check.
    pub fn handle_artifact_checked(
        &mut self,
        _now: Instant,
        job: JobId,
        result: Result<(), TrustError>,
    ) -> Result<(), UpdateError> {
        if !matches!(&self.state, State::Verifying(v) if v.job.id == job) {
            return Err(self.unexpected("artifact check", Some(job)));
        }
        match result {
            Err(e) => self.unverified(job, e),
            Ok(()) => {
                if let State::Verifying(v) = std::mem::replace(&mut self.state, State::Idle) {
                    let (target, j) = (v.job.target.clone(), v.job.clone());
                    self.enter(State::Staging(Staging { job: v.job }));
                    self.report_install(&j, InstallStep::Verified);
                    self.push(Action::Stage { job, target });
                }
            }
        }
        Ok(())
    }

    /// The candidate slot file was written (or the disk refused it: the
    /// job is abandoned with a typed reason, the active model untouched).
    pub fn handle_staged(
        &mut self,
        _now: Instant,
        job: JobId,
        result: Result<(), DiskFailure>,
    ) -> Result<(), UpdateError> {
        let s = match std::mem::replace(&mut self.state, State::Idle) {
            State::Staging(s) if s.job.id == job => s,
            other => {
                self.state = other;
                return Err(self.unexpected("staged", Some(job)));
            }
        };
        match result {
            Err(f) => self.abandon(s.job, AbandonReason::Disk(f.kind()), None),
            Ok(()) => {
                let (candidate, j) = (s.job.target.clone(), s.job.clone());
                self.enter(State::SelfTesting(SelfTesting { job: s.job }));
                self.report_install(&j, InstallStep::Staged);
                self.report_state(&j.target.name);
                self.push(Action::SelfTest { job, candidate });
            }
        }
        Ok(())
    }

    /// The staged candidate's load and self-test.
    pub fn handle_self_test(
        &mut self,
        now: Instant,
        job: JobId,
        outcome: SelfTestOutcome,
    ) -> Result<(), UpdateError> {
        if !matches!(&self.state, State::SelfTesting(s) if s.job.id == job) {
            return Err(self.unexpected("self-test", Some(job)));
        }
        match outcome {
            SelfTestOutcome::Unverified(e) => self.unverified(job, e),
            SelfTestOutcome::Failed { detail } => {
                if let Some(j) = self.take_current(job) {
                    self.abandon(j, AbandonReason::SelfTest { detail }, None);
                }
            }
            SelfTestOutcome::Passed => {
                if let Some(j) = self.take_current(job) {
                    self.passed(self.clock.unix(now), j);
                }
            }
        }
        Ok(())
    }

    fn passed(&mut self, unix: UnixSeconds, job: Job) {
        match job.probation {
            None => self.commit(job, Some(InstallStep::SelfTested)),
            Some(mode) => {
                let (id, candidate, until) = (job.id, job.candidate(), job.until);
                let name = job.target.name.clone();
                self.enter(State::Probation(OnProbation {
                    job: job.clone(),
                    mode,
                    last_heard: unix,
                }));
                self.report_install(&job, InstallStep::SelfTested);
                self.report_install(&job, probation_step(mode));
                self.report_state(&name);
                self.push(Action::StartProbation {
                    job: id,
                    candidate,
                    mode,
                    until,
                });
            }
        }
    }

    /// A health check failed. On probation the candidate is discarded;
    /// otherwise there is nothing of the update's to undo.
    pub fn handle_health_failure(
        &mut self,
        _now: Instant,
        failure: HealthFailure,
    ) -> Result<(), UpdateError> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Probation(p) => {
                self.abandon(p.job, AbandonReason::Health(failure), None);
                Ok(())
            }
            other => {
                self.state = other;
                Err(self.unexpected("health failure", None))
            }
        }
    }

    /// The shell heard from the server (connected, or a message arrived):
    /// a probation's offline grace starts over.
    pub fn handle_server_contact(&mut self, now: Instant) {
        if self.note_contact(self.clock.unix(now)) {
            self.enter(self.state.clone());
        }
    }

    /// A `Commit`, `RollBack` or `Retire` pointer write is durable.
    pub fn handle_slots_written(&mut self, now: Instant, name: &str) -> Result<(), UpdateError> {
        if self.writing_slots_of() != Some(name) {
            return Err(self.unexpected("slots written", None));
        }
        self.finish_slot_write();
        self.drain_deferred(now);
        Ok(())
    }

    /// A pointer write failed; the old pointer stands. A failed commit
    /// discards the candidate; a failed rollback or retire leaves the
    /// active model as it is and returns [`UpdateError::SlotWrite`].
    pub fn handle_slots_write_failed(
        &mut self,
        now: Instant,
        name: &str,
        detail: String,
    ) -> Result<(), UpdateError> {
        if self.writing_slots_of() != Some(name) {
            return Err(self.unexpected("slots write failed", None));
        }
        let result = match std::mem::replace(&mut self.state, State::Idle) {
            State::Committing(c) => {
                self.abandon(c.job, AbandonReason::CommitFailed { detail }, None);
                Ok(())
            }
            _ => {
                self.enter(State::Idle);
                self.report_state(name);
                Err(UpdateError::SlotWrite {
                    name: name.to_owned(),
                    detail,
                })
            }
        };
        self.drain_deferred(now);
        result
    }

    fn writing_slots_of(&self) -> Option<&str> {
        match &self.state {
            State::Committing(c) => Some(&c.pointer.active.name),
            State::RollingBack(r) => Some(&r.name),
            State::Retiring(r) => Some(&r.name),
            _ => None,
        }
    }

    /// The pointer write of the current step is durable: record it, go
    /// idle, report.
    pub(super) fn finish_slot_write(&mut self) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Committing(c) => {
                let name = c.pointer.active.name.clone();
                self.slots.insert(name.clone(), c.pointer);
                self.enter(State::Idle);
                self.report_install(&c.job, InstallStep::Committed);
                self.report_state(&name);
            }
            State::RollingBack(r) => {
                self.slots.insert(r.name.clone(), r.pointer.clone());
                self.enter(State::Idle);
                self.report(EventKind::RolledBack {
                    directive: Some(r.directive),
                    from: r.from,
                    to: Some(r.pointer.active),
                    reason: format!("verdict: rollback directive {}", r.directive),
                });
                self.report_state(&r.name);
            }
            State::Retiring(r) => {
                self.slots.remove(&r.name);
                self.enter(State::Idle);
                if let Some(from) = r.active {
                    self.report(EventKind::RolledBack {
                        directive: Some(r.directive),
                        from,
                        to: None,
                        reason: format!("retired by directive {}", r.directive),
                    });
                }
                self.report_state(&r.name);
            }
            other => self.state = other,
        }
    }

    /// Timers: a download retry, or a probation's grace. Idempotent: a
    /// timer that fired moved the state on, so calling again does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let unix = self.clock.unix(now);
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Downloading(d) if d.retry_at.is_some_and(|t| t <= unix) => {
                self.download(Downloading {
                    retry_at: None,
                    ..d
                });
            }
            State::Probation(p) if p.deadline().is_some_and(|t| t <= unix) => {
                self.abandon(p.job, AbandonReason::GraceExpired, None);
            }
            other => self.state = other,
        }
    }

    /// (Re)starts the download from the bytes written; one already
    /// complete (a crash between its last progress and its end) goes
    /// straight to the artifact check.
    pub(super) fn download(&mut self, d: Downloading) {
        let (job, target) = (d.job.id, d.job.target.clone());
        if d.done >= target.length {
            self.enter(State::Verifying(Verifying { job: d.job }));
            self.push(Action::VerifyArtifact { job, target });
            return;
        }
        let action = Action::Download {
            job,
            url: d.job.url.clone(),
            target,
            resume_from: d.done,
        };
        self.enter(State::Downloading(d));
        self.push(action);
    }

    /// Takes the job out of the state if it is `job` (the state becomes
    /// idle; the caller enters the next one).
    fn take_current(&mut self, job: JobId) -> Option<Job> {
        if self.state.job().map(|j| j.id) != Some(job) {
            return None;
        }
        self.take_job()
    }
}
