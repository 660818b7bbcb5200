//! The simulated shell: performs the core's actions on the in-memory disk,
//! delivers events on simulated time, injects crashes.

use super::*;

impl<'w> Sim<'w> {
    /// v1 active, no update record yet.
    pub(super) fn new(w: &'w World) -> Sim<'w> {
        let mut s = Sim {
            w,
            start: Instant::now(),
            t: 0,
            core: None,
            config: UpdateConfig::default(),
            record: None,
            pointers: Slots::new(),
            files: BTreeMap::new(),
            pending: vec![],
            probation: None,
            script: vec![],
            delivered: vec![],
            faults: Faults::default(),
            actions: vec![],
            events: vec![],
            errors: vec![],
            max_sequence: 0,
            steps: 0,
            crashes: 0,
            order: 0,
            queued: Default::default(),
            resumed: vec![],
        };
        s.install(1, None);
        s.boot();
        s
    }

    /// Puts version `v` on disk as active (and `prev` as previous).
    pub(super) fn install(&mut self, v: usize, prev: Option<usize>) {
        for n in std::iter::once(v).chain(prev) {
            let (t, bytes) = &self.w.versions[n - 1];
            self.files.insert(opk(&t.sha256), bytes.clone());
        }
        let pointer = SlotPointer {
            active: self.w.model(v),
            previous: prev.map(|p| self.w.model(p)),
        };
        self.pointers.insert(NAME.into(), pointer);
        self.core = None;
        self.boot();
    }

    pub(super) fn at(&mut self, secs: u64, ev: Ev) {
        self.script.push((secs, ev));
        self.script.sort_by_key(|(t, _)| *t);
    }

    pub(super) fn cmd(&mut self, secs: u64, c: Command) {
        self.at(secs, Ev::Command(Box::new(c)));
    }

    pub(super) fn now(&self) -> Instant {
        self.start + Duration::from_secs(self.t)
    }

    pub(super) fn core(&mut self) -> &mut Updater {
        self.core.as_mut().unwrap()
    }

    pub(super) fn persisted(&self) -> Option<UpdateRecord> {
        self.record
            .as_ref()
            .map(|b| serde_json::from_slice(b).unwrap())
    }

    /// Starts the agent: restores from the record, collects files nothing
    /// references, checks that what serves is verified.
    pub(super) fn boot(&mut self) {
        let now = self.now();
        let unix = NOW + self.t;
        let slots = self.pointers.clone();
        let core = match self.persisted() {
            None => Updater::new(
                self.w.verifier(),
                self.config.clone(),
                self.w.trust(),
                slots,
                now,
                unix,
            ),
            Some(r) => {
                Updater::restore(self.w.verifier(), self.config.clone(), r, slots, now, unix)
                    .unwrap()
            }
        };
        self.core = Some(core);
        let step = self
            .persisted()
            .map_or("none".to_owned(), |r| r.state.name().to_owned());
        let queued: Vec<Action> = std::iter::from_fn(|| self.core().poll_action()).collect();
        let did = queued
            .iter()
            .filter_map(|a| match a {
                Action::Persist(_) | Action::Report(_) | Action::ReportState(_) => None,
                Action::Download { resume_from, .. } => {
                    Some(format!("Download(resume_from>0: {})", *resume_from > 0))
                }
                other => Some(
                    format!("{other:?}")
                        .split([' ', '{', '('])
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                ),
            })
            .collect::<Vec<_>>();
        let finished = queued
            .iter()
            .any(|a| matches!(a, Action::Persist(r) if matches!(r.state, State::Idle)));
        let did = if !did.is_empty() {
            did.join("+")
        } else if finished && step != "idle" {
            "finished the step (pointer already written)".to_owned()
        } else if step == "downloading" {
            "backoff timer resumes".to_owned()
        } else {
            "nothing to redo".to_owned()
        };
        self.resumed.push((step, did));
        self.queued = queued.into();
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for p in self.pointers.values() {
            keep.insert(opk(&p.active.sha256));
            if let Some(prev) = &p.previous {
                keep.insert(opk(&prev.sha256));
            }
        }
        if let Some(j) = self.persisted().and_then(|r| r.state.job().cloned()) {
            keep.insert(part(&j.target.sha256));
            keep.insert(opk(&j.target.sha256));
        }
        self.files.retain(|k, _| keep.contains(k));
        self.check();
    }

    /// Kills the process at this point: the disk stays (with an unsynced,
    /// torn tail on a download in flight), the rest is lost; the server
    /// redelivers the commands it sent (MQTT QoS 1).
    pub(super) fn crash(&mut self) {
        self.crashes += 1;
        self.core = None;
        self.pending.clear();
        self.probation = None;
        if let Some(r) = self.persisted()
            && let State::Downloading(d) = &r.state
            && let Some(f) = self.files.get_mut(&part(&d.job.target.sha256))
        {
            // Torn, never past the signed length (the shell stops there).
            let room = (d.job.target.length as usize)
                .saturating_sub(f.len())
                .min(37);
            f.extend(std::iter::repeat_n(0xEE, room));
        }
        self.t += 5;
        self.boot();
        for c in std::mem::take(&mut self.delivered) {
            let t = self.t + 1;
            self.at(t, Ev::Command(Box::new(c)));
        }
    }

    pub(super) fn later(&mut self, secs: u64, ev: Ev) {
        self.order += 1;
        self.pending.push((self.t + secs, self.order, ev));
    }

    /// One unit of work: perform one action, or deliver the next event or
    /// timer. False when nothing is left.
    pub(super) fn step(&mut self) -> bool {
        if let Some(a) = self
            .queued
            .pop_front()
            .or_else(|| self.core().poll_action())
        {
            self.perform(a);
        } else {
            let pending = self
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, (t, o, _))| (*t, *o))
                .map(|(i, (t, _, _))| (*t, i));
            let script = self.script.first().map(|(t, _)| *t);
            let timer = self
                .core
                .as_ref()
                .unwrap()
                .poll_timeout()
                .map(|i| i.saturating_duration_since(self.start).as_secs());
            let next = [pending.map(|p| p.0), script, timer]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = next else { return false };
            self.t = self.t.max(t);
            if pending.is_some_and(|p| p.0 == t) {
                let (_, _, ev) = self.pending.remove(pending.unwrap().1);
                self.deliver(ev);
            } else if script == Some(t) {
                let (_, ev) = self.script.remove(0);
                self.deliver(ev);
            } else {
                let now = self.now();
                self.core().handle_timeout(now);
            }
        }
        self.steps += 1;
        self.check();
        true
    }

    pub(super) fn drive(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    pub(super) fn deliver(&mut self, ev: Ev) {
        let now = self.now();
        let core = self.core.as_mut().unwrap();
        let r = match ev {
            Ev::Chunk { job, url, target } => {
                self.chunk(job, url, target);
                Ok(())
            }
            Ev::Progress { job, n } => core.handle_download_progress(now, job, n),
            Ev::Done { job, n } => core.handle_download_done(now, job, n),
            Ev::DlFailed { job, f } => core.handle_download_failed(now, job, f),
            Ev::Checked { job, r } => core.handle_artifact_checked(now, job, r),
            Ev::Staged { job, r } => core.handle_staged(now, job, r),
            Ev::Tested { job, o } => core.handle_self_test(now, job, o),
            Ev::SlotsWritten { name } => core.handle_slots_written(now, &name),
            Ev::Command(c) => {
                self.delivered.push((*c).clone());
                core.handle_command(now, &c)
            }
            Ev::Contact => {
                core.handle_server_contact(now);
                Ok(())
            }
            Ev::Health(f) => core.handle_health_failure(now, f),
        };
        if let Err(e) = r {
            self.errors.push(e);
        }
    }

    pub(super) fn body(&self, target: &TargetMeta) -> Vec<u8> {
        let (_, bytes) = self
            .w
            .versions
            .iter()
            .find(|(t, _)| t.sha256 == target.sha256)
            .unwrap();
        let mut b = bytes.clone();
        if self.faults.tamper {
            b[5_000] ^= 0xFF;
        }
        if self.faults.endless {
            b.extend_from_slice(&[0; 5_000]);
        }
        b
    }

    /// One chunk of a download arrives (or the connection drops).
    pub(super) fn chunk(&mut self, job: JobId, url: String, target: TargetMeta) {
        let body = self.body(&target);
        let name = part(&target.sha256);
        let have = self.files.get(&name).map_or(0, Vec::len);
        if self.faults.always_interrupt {
            let f = DownloadFailure::Interrupted {
                bytes_written: have as u64,
                detail: "connection refused".into(),
            };
            return self.later(0, Ev::DlFailed { job, f });
        }
        let mut end = (have + CHUNK).min(body.len());
        let cut = self
            .faults
            .interrupt_at
            .range(have as u64 + 1..=end as u64)
            .next()
            .copied();
        if let Some(cut) = cut {
            self.faults.interrupt_at.remove(&cut);
            end = cut as usize;
        }
        // The shell never writes past the signed length.
        let limit = target.length as usize;
        let endless = end > limit;
        end = end.min(limit);
        self.files
            .entry(name)
            .or_default()
            .extend_from_slice(&body[have..end]);
        let n = end as u64;
        if endless {
            let f = DownloadFailure::EndlessData;
            return self.later(0, Ev::DlFailed { job, f });
        }
        self.later(0, Ev::Progress { job, n });
        if cut.is_some() {
            let f = DownloadFailure::Interrupted {
                bytes_written: n,
                detail: "connection reset".into(),
            };
            self.later(0, Ev::DlFailed { job, f });
        } else if end == body.len() {
            self.later(0, Ev::Done { job, n });
        } else {
            self.later(1, Ev::Chunk { job, url, target });
        }
    }

    /// The shell performs an action, checking it was persisted first.
    pub(super) fn perform(&mut self, a: Action) {
        self.actions.push((self.t, a.clone()));
        let persisted = self.persisted();
        let step = |want: &str, job: Option<JobId>| {
            let r = persisted.as_ref().expect("an action before any Persist");
            assert_eq!(
                r.state.name(),
                want,
                "{a:?} performed before its step was persisted"
            );
            if let Some(job) = job {
                assert_eq!(r.state.job().map(|j| j.id), Some(job), "{a:?}");
            }
        };
        match a.clone() {
            Action::Persist(r) => {
                let seq = r.trust.last_sequence;
                assert!(
                    seq >= self.max_sequence,
                    "trust went back: {seq} < {}",
                    self.max_sequence
                );
                self.max_sequence = seq;
                self.record = Some(serde_json::to_vec(&r).unwrap());
            }
            Action::Download {
                job,
                url,
                target,
                resume_from,
            } => {
                step("downloading", Some(job));
                let f = self.files.entry(part(&target.sha256)).or_default();
                assert!(
                    f.len() as u64 >= resume_from,
                    "resume past the bytes on disk"
                );
                f.truncate(resume_from as usize);
                self.later(1, Ev::Chunk { job, url, target });
            }
            Action::VerifyArtifact { job, target } => {
                step("verifying", Some(job));
                let bytes = self
                    .files
                    .get(&part(&target.sha256))
                    .cloned()
                    .unwrap_or_default();
                let r = check_reader(&target, bytes.as_slice()).unwrap();
                self.later(1, Ev::Checked { job, r });
            }
            Action::Stage { job, target } => {
                step("staging", Some(job));
                let r = if self.faults.disk_full {
                    Err(DiskFailure::NoSpace)
                } else if let Some(mut bytes) = self.files.remove(&part(&target.sha256)) {
                    if self.faults.rot_staged {
                        bytes[100] ^= 1;
                    }
                    self.files.insert(opk(&target.sha256), bytes);
                    Ok(())
                } else if self.files.contains_key(&opk(&target.sha256)) {
                    Ok(())
                } else {
                    Err(DiskFailure::Io {
                        path: part(&target.sha256),
                        detail: "missing".into(),
                    })
                };
                self.later(1, Ev::Staged { job, r });
            }
            Action::SelfTest { job, candidate } => {
                step("self_testing", Some(job));
                let bytes = self
                    .files
                    .get(&opk(&candidate.sha256))
                    .cloned()
                    .unwrap_or_default();
                let o = match check_reader(&candidate, bytes.as_slice()).unwrap() {
                    Err(e) => SelfTestOutcome::Unverified(e),
                    Ok(()) if self.faults.fail_self_test.contains(&candidate.sha256) => {
                        SelfTestOutcome::Failed {
                            detail: "golden output 3 off by 0.4".into(),
                        }
                    }
                    Ok(()) => SelfTestOutcome::Passed,
                };
                self.later(2, Ev::Tested { job, o });
            }
            Action::StartProbation {
                job,
                candidate,
                mode,
                ..
            } => {
                step("probation", Some(job));
                self.probation = Some((candidate, mode));
            }
            Action::Commit {
                job,
                name,
                pointer,
                drop,
            } => {
                step("committing", Some(job));
                self.pointers.insert(name.clone(), pointer);
                if let Some(d) = drop {
                    self.files.remove(&opk(&d.sha256));
                }
                self.probation = None;
                self.later(0, Ev::SlotsWritten { name });
            }
            Action::Discard { job, candidate, .. } => {
                if let Some(r) = &persisted {
                    assert_ne!(
                        r.state.job().map(|j| j.id),
                        Some(job),
                        "discarding a job still persisted"
                    );
                }
                let referenced = self.pointers.values().any(|p| {
                    p.active.sha256 == candidate.sha256
                        || p.previous
                            .as_ref()
                            .is_some_and(|q| q.sha256 == candidate.sha256)
                });
                if !referenced {
                    self.files.remove(&opk(&candidate.sha256));
                }
                self.files.remove(&part(&candidate.sha256));
                if self
                    .probation
                    .as_ref()
                    .is_some_and(|(m, _)| *m == candidate)
                {
                    self.probation = None;
                }
                self.pending
                    .retain(|(_, _, e)| !matches!(e, Ev::Chunk { job: j, .. } if *j == job));
            }
            Action::RollBack {
                name,
                from,
                pointer,
            } => {
                step("rolling_back", None);
                self.pointers.insert(name.clone(), pointer);
                self.files.remove(&opk(&from.sha256));
                self.later(0, Ev::SlotsWritten { name });
            }
            Action::Retire { name } => {
                step("retiring", None);
                if let Some(p) = self.pointers.remove(&name) {
                    self.files.remove(&opk(&p.active.sha256));
                    if let Some(prev) = p.previous {
                        self.files.remove(&opk(&prev.sha256));
                    }
                }
                self.later(0, Ev::SlotsWritten { name });
            }
            Action::Report(e) => self.events.push(e),
            Action::Rebirth | Action::ReportState(_) => {}
            other => panic!("unknown action {other:?}"),
        }
    }

    /// What serves is verified; nothing partial or unsigned is active.
    pub(super) fn check(&self) {
        let verified = |m: &ModelRef, what: &str| {
            let bytes = self
                .files
                .get(&opk(&m.sha256))
                .unwrap_or_else(|| panic!("{what} {} has no package on disk", m.version));
            assert!(
                self.w.signed(&m.sha256),
                "{what} {} is not release-signed",
                m.version
            );
            assert_eq!(
                Sha256::of(bytes),
                m.sha256,
                "{what} {} does not match its digest",
                m.version
            );
        };
        for p in self.pointers.values() {
            verified(&p.active, "active");
            if let Some(prev) = &p.previous {
                verified(prev, "previous");
            }
        }
        if let Some((m, _)) = &self.probation {
            verified(m, "candidate on probation");
        }
    }

    pub(super) fn active(&self) -> Option<&str> {
        self.pointers.get(NAME).map(|p| p.active.version.as_str())
    }

    pub(super) fn previous(&self) -> Option<&str> {
        self.pointers
            .get(NAME)
            .and_then(|p| p.previous.as_ref())
            .map(|p| p.version.as_str())
    }

    pub(super) fn downloads(&self) -> Vec<u64> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Download { resume_from, .. } => Some(*resume_from),
                _ => None,
            })
            .collect()
    }

    pub(super) fn discards(&self) -> Vec<AbandonReason> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Discard { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn refusals(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventKind::VerificationFailed { check, .. } => Some(check.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn install_steps(&self) -> Vec<InstallStep> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventKind::Install { step, .. } => Some(*step),
                _ => None,
            })
            .collect()
    }

    /// Ends idle, with exactly the packages the pointers name on disk.
    pub(super) fn assert_settled(&mut self) {
        assert!(
            matches!(self.core().state(), State::Idle),
            "{:?}",
            self.core().state()
        );
        let mut want: BTreeSet<String> = BTreeSet::new();
        for p in self.pointers.values() {
            want.insert(opk(&p.active.sha256));
            if let Some(prev) = &p.previous {
                want.insert(opk(&prev.sha256));
            }
        }
        let have: BTreeSet<String> = self.files.keys().cloned().collect();
        assert_eq!(have, want, "leftover or missing files");
        assert!(self.probation.is_none());
    }
}
