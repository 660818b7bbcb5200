//! Performing the update machine's actions (shell side, blocking: run it
//! on a blocking thread). [`drive`] drains the core's actions in order,
//! performs each against the files ([`UpdateFiles`]), the network
//! ([`download`]) and the serving models ([`ModelHost`]), and feeds each
//! result back to the core, until the core has nothing left to do. What is
//! meant for the fleet (events, state, rebirth) is returned for the MQTT
//! side to publish.
//!
//! Probation puts the self-tested candidate in the model host's candidate
//! slot (shadow: run after the active model answers, within the CPU
//! budget; canary: it answers); a commit promotes that same loaded model,
//! a discard stops it. The device's own health checks during probation
//! (candidate error rate, crash loop) are the update task's
//! ([`crate::update_task`]).

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use outpost_protocol::messages::{EventKind, ModelRef, ModelState};
use outpost_protocol::trust::{TargetMeta, TrustError, check_reader};
use outpost_runtime::{Package, PackageLimits, Tensor};

use crate::config::Fallback;
use crate::download::{DownloadError, download_until};
use crate::serve::probation::{Candidate, ProbationStats};
use crate::serve::{LoadContext, LoadedModel, ModelHost};
use crate::update::{
    Action, DiskFailure, DownloadFailure, HealthFailure, SelfTestOutcome, SlotPointer, UpdateError,
    Updater,
};
use crate::update_fs::UpdateFiles;

/// Package members of the self-test (written by `outpost model pack`).
pub const GOLDEN_INPUTS: &str = "golden/inputs.npz";
pub const GOLDEN_OUTPUTS: &str = "golden/outputs.npz";

/// What the MQTT side publishes after a drive.
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub events: Vec<EventKind>,
    pub states: Vec<ModelState>,
    pub rebirth: bool,
    /// Models retired: their local telemetry is deleted by the caller.
    pub retired: Vec<String>,
    /// Probations started (a restart during one asks again).
    pub probations: Vec<ModelRef>,
}

/// Everything performing actions needs.
#[derive(Debug)]
pub struct Shell<'a> {
    pub files: &'a UpdateFiles,
    pub host: &'a ModelHost,
    pub http: &'a ureq::Agent,
    pub load: LoadContext<'a>,
    /// The fallback of newly deployed models.
    pub fallback: Fallback,
    /// Share of one CPU a shadow candidate may use.
    pub shadow_budget_percent: u8,
    /// Asked during downloads: a download stops (and the core pauses it)
    /// when input is waiting that must not wait for its end.
    pub interrupt: Option<Interrupt<'a>>,
}

/// "Is input waiting that a download must not hold up?" — the update task
/// answers from its channel (a command, or a shutdown).
#[derive(Clone, Copy)]
pub struct Interrupt<'a>(pub &'a dyn Fn() -> bool);

impl std::fmt::Debug for Interrupt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupt")
    }
}

/// Why driving stopped before the core was idle: the record could not be
/// persisted, so no later action may run (it would act on an unrecorded
/// step). The core resumes from the last record after a restart.
#[derive(Debug, thiserror::Error)]
#[error("cannot persist the update record: {0}")]
pub struct PersistFailed(#[from] std::io::Error);

/// Performs the core's actions until it has none left.
pub fn drive(core: &mut Updater, shell: &Shell<'_>) -> Result<Published, PersistFailed> {
    let mut out = Published::default();
    let mut queue: VecDeque<Action> = VecDeque::new();
    loop {
        while let Some(a) = core.poll_action() {
            queue.push_back(a);
        }
        let Some(action) = queue.pop_front() else {
            return Ok(out);
        };
        let now = Instant::now();
        // Results the core rejects as unexpected (a superseded job) need no
        // handling here: the core has moved on and said so in its state.
        let _: Result<(), UpdateError> = match action {
            Action::Persist(record) => {
                shell.files.write_record(&record)?;
                Ok(())
            }
            Action::Download {
                job,
                url,
                target,
                resume_from,
            } => {
                let path = shell.files.download_path(&target.sha256);
                let mut persisted = Ok(());
                let stop = || shell.interrupt.is_some_and(|i| (i.0)());
                let progress = |p| {
                    // Progress is durable: let the core persist it now.
                    let _ = core.handle_download_progress(Instant::now(), job, p);
                    while let Some(a) = core.poll_action() {
                        match a {
                            Action::Persist(r) => {
                                if let Err(e) = shell.files.write_record(&r) {
                                    persisted = Err(e);
                                }
                            }
                            other => queue.push_back(other),
                        }
                    }
                };
                let result = download_until(
                    shell.http,
                    &url,
                    &path,
                    resume_from,
                    target.length,
                    progress,
                    stop,
                );
                persisted?;
                match result {
                    Ok(n) => core.handle_download_done(now, job, n),
                    Err(DownloadError::Stopped { bytes_written, .. }) => {
                        core.handle_download_paused(now, job, bytes_written)
                    }
                    Err(e) => core.handle_download_failed(now, job, download_failure(e)),
                }
            }
            Action::VerifyArtifact { job, target } => {
                let path = shell.files.download_path(&target.sha256);
                let result = match std::fs::File::open(&path) {
                    Ok(f) => check_reader(&target, f).unwrap_or_else(|_| Err(short(&target))),
                    Err(_) => Err(short(&target)),
                };
                core.handle_artifact_checked(now, job, result)
            }
            Action::Stage { job, target } => {
                let result = shell.files.stage(&target).map(|_| ()).map_err(disk_failure);
                core.handle_staged(now, job, result)
            }
            Action::SelfTest { job, candidate } => {
                let outcome = self_test(shell, &candidate);
                core.handle_self_test(now, job, outcome)
            }
            Action::StartProbation {
                candidate, mode, ..
            } => match start_probation(core, shell, &candidate, mode) {
                Ok(()) => {
                    out.probations.push(candidate);
                    Ok(())
                }
                Err(detail) => core.handle_health_failure(now, HealthFailure::SelfTest { detail }),
            },
            Action::Commit {
                name,
                pointer,
                drop,
                ..
            } => {
                // The candidate that ran its probation is promoted as
                // loaded; otherwise (no probation, or after a restart) it
                // is loaded from its staged package first.
                let on_probation = shell
                    .host
                    .candidate_of(&name)
                    .map(|c| c.model)
                    .filter(|m| m.sha256 == pointer.active.sha256);
                let loaded = match on_probation {
                    Some(m) => Ok(m),
                    None => target_of(core, &pointer.active)
                        .ok_or_else(|| "the committed target is not known".to_owned())
                        .and_then(|t| {
                            let path = shell.files.package_path(&t.sha256);
                            LoadedModel::load_target(&path, &t, &shell.load, shell.fallback.clone())
                                .map(Arc::new)
                                .map_err(|e| e.to_string())
                        }),
                };
                let result = loaded.and_then(|loaded| {
                    // Loaded first, then the pointer: a candidate that
                    // cannot load is never made active on disk.
                    shell
                        .files
                        .write_pointer(&name, &pointer)
                        .map_err(|e| e.to_string())?;
                    let previous = shell.host.slots_of(&name).map(|(a, _)| a);
                    shell.host.set(loaded, previous);
                    Ok(())
                });
                match result {
                    Ok(()) => {
                        if let Some(d) = drop {
                            let _ = shell.files.delete(&d);
                        }
                        core.handle_slots_written(now, &name)
                    }
                    Err(detail) => core.handle_slots_write_failed(now, &name, detail),
                }
            }
            Action::Discard { candidate, .. } => {
                if shell
                    .host
                    .candidate_of(&candidate.name)
                    .is_some_and(|c| c.model.sha256 == candidate.sha256)
                {
                    shell.host.clear_candidate(&candidate.name);
                }
                // A candidate may be a model a pointer still names (a
                // canary of the previous version): its package stays.
                if !in_use(core, &candidate, None) {
                    let _ = shell.files.delete(&candidate);
                }
                Ok(())
            }
            Action::RollBack {
                name,
                from,
                pointer,
            } => match shell.files.write_pointer(&name, &pointer) {
                Ok(()) => {
                    restore_in_host(shell, &pointer.active);
                    if !in_use(core, &from, Some(&pointer)) {
                        let _ = shell.files.delete(&from);
                    }
                    core.handle_slots_written(now, &name)
                }
                Err(e) => core.handle_slots_write_failed(now, &name, e.to_string()),
            },
            Action::Retire { name } => {
                let installed = core.slots().get(&name).cloned();
                match shell.files.remove_pointer(&name) {
                    Ok(()) => {
                        shell.host.remove(&name);
                        // The pointer is gone (the commit point): its
                        // packages are unreferenced; a crash before these
                        // deletes leaves them to the start-up cleanup.
                        for m in installed
                            .iter()
                            .flat_map(|p| std::iter::once(&p.active).chain(&p.previous))
                        {
                            let _ = shell.files.delete(m);
                        }
                        out.retired.push(name.clone());
                        core.handle_slots_written(now, &name)
                    }
                    Err(e) => core.handle_slots_write_failed(now, &name, e.to_string()),
                }
            }
            Action::Rebirth => {
                out.rebirth = true;
                Ok(())
            }
            Action::Report(kind) => {
                out.events.push(kind);
                Ok(())
            }
            Action::ReportState(s) => {
                out.states.push(s);
                Ok(())
            }
        };
    }
}

/// Whether a pointer (the core's, or `new` about to replace its model's)
/// still names `m`: its package must stay. Found by the SIGKILL test: a
/// canary of the previous version, discarded, took the previous model's
/// package with it.
fn in_use(core: &Updater, m: &ModelRef, new: Option<&SlotPointer>) -> bool {
    let names = |p: &SlotPointer| {
        p.active.sha256 == m.sha256 || p.previous.as_ref().is_some_and(|q| q.sha256 == m.sha256)
    };
    new.is_some_and(names)
        || core
            .slots()
            .iter()
            .filter(|(name, _)| new.is_none_or(|n| n.active.name != **name))
            .any(|(_, p)| names(p))
}

/// Loads the self-tested candidate again (digest, length and constraints
/// checked again) and puts it in the host's candidate slot.
fn start_probation(
    core: &Updater,
    shell: &Shell<'_>,
    candidate: &ModelRef,
    mode: crate::update::ProbationMode,
) -> Result<(), String> {
    // Already running (a new probation plan for the same candidate): only
    // the mode changes, the counters go on.
    if let Some(c) = shell.host.candidate_of(&candidate.name)
        && c.model.sha256 == candidate.sha256
    {
        shell.host.set_candidate(Candidate { mode, ..c });
        return Ok(());
    }
    let target = target_of(core, candidate)
        .ok_or_else(|| "the candidate on probation is not known".to_owned())?;
    let path = shell.files.package_path(&target.sha256);
    let loaded = LoadedModel::load_target(&path, &target, &shell.load, shell.fallback.clone())
        .map_err(|e| format!("the candidate does not load: {e}"))?;
    let c = Candidate {
        model: Arc::new(loaded),
        mode,
        stats: Arc::new(ProbationStats::new(
            shell.shadow_budget_percent,
            Instant::now(),
        )),
    };
    if shell.host.set_candidate(c) {
        Ok(())
    } else {
        Err(format!(
            "no active {} to run the candidate beside",
            candidate.name
        ))
    }
}

/// Serves `m` (the previous model a rollback restores): from memory when
/// the host still holds it, else from its installed package.
fn restore_in_host(shell: &Shell<'_>, m: &ModelRef) {
    if let Some((_, Some(previous))) = shell.host.slots_of(&m.name)
        && previous.sha256 == m.sha256
    {
        shell.host.set(previous, None);
        return;
    }
    match load_installed(shell.files, m, &shell.load, shell.fallback.clone()) {
        Ok(loaded) => shell.host.set(Arc::new(loaded), None),
        Err(e) => tracing::error!(error = %e, "the restored model does not load"),
    }
}

/// Loads an installed model from its digest-named package: the digest is
/// checked again (the file may have rotted); its signatures and constraints
/// were checked when it was installed.
pub fn load_installed(
    files: &UpdateFiles,
    m: &ModelRef,
    ctx: &LoadContext<'_>,
    fallback: Fallback,
) -> Result<LoadedModel, crate::serve::LoadError> {
    let path = files.package_path(&m.sha256);
    let length = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
    let target = TargetMeta {
        name: m.name.clone(),
        version: m.version.clone(),
        sha256: m.sha256,
        length,
        constraints: Default::default(),
    };
    LoadedModel::load_target(&path, &target, ctx, fallback)
}

/// The release-signed target behind a model the core names.
fn target_of(core: &Updater, m: &ModelRef) -> Option<TargetMeta> {
    core.state()
        .job()
        .map(|j| j.target.clone())
        .filter(|t| t.sha256 == m.sha256)
}

fn short(target: &TargetMeta) -> TrustError {
    TrustError::LengthMismatch {
        expected: target.length,
        got: 0,
    }
}

fn disk_failure(e: std::io::Error) -> DiskFailure {
    // ENOSPC is 28 on Linux and the BSDs.
    if e.raw_os_error() == Some(28) {
        DiskFailure::NoSpace
    } else {
        DiskFailure::Io {
            path: String::new(),
            detail: e.to_string(),
        }
    }
}

fn download_failure(e: DownloadError) -> DownloadFailure {
    match e {
        DownloadError::Status { status, .. } if (400..500).contains(&status) => {
            DownloadFailure::Refused { status }
        }
        DownloadError::TooLong { .. } => DownloadFailure::EndlessData,
        DownloadError::Disk { source, .. } => DownloadFailure::Disk(disk_failure(source)),
        other => DownloadFailure::Interrupted {
            bytes_written: other.bytes_written(),
            detail: other.to_string(),
        },
    }
}

/// Loads the staged candidate (digest, length and constraints checked
/// again) and runs its golden inputs: every output within 1e-4 absolute +
/// 1e-4 relative of the golden outputs.
fn self_test(shell: &Shell<'_>, candidate: &TargetMeta) -> SelfTestOutcome {
    let path = shell.files.package_path(&candidate.sha256);
    let loaded = match LoadedModel::load_target(&path, candidate, &shell.load, Fallback::Reject) {
        Ok(l) => l,
        Err(crate::serve::LoadError::Trust { source, .. }) => {
            return SelfTestOutcome::Unverified(source);
        }
        Err(e) => {
            return SelfTestOutcome::Failed {
                detail: e.to_string(),
            };
        }
    };
    match golden_check(&path, &loaded) {
        Ok(()) => SelfTestOutcome::Passed,
        Err(detail) => SelfTestOutcome::Failed { detail },
    }
}

fn golden_check(path: &std::path::Path, loaded: &LoadedModel) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let limits = PackageLimits {
        max_total_bytes: bytes.len() as u64,
        ..PackageLimits::default()
    };
    let pkg = Package::from_bytes(&bytes, &path.display().to_string(), &limits)
        .map_err(|e| e.to_string())?;
    let npz = |member: &str| -> Result<Vec<(String, Tensor)>, String> {
        let b = pkg
            .member(member)
            .ok_or_else(|| format!("the package has no {member} (pack it with golden rows)"))?;
        outpost_runtime::npy::read_npz(Cursor::new(b), member).map_err(|e| e.to_string())
    };
    let (inputs, expected) = (npz(GOLDEN_INPUTS)?, npz(GOLDEN_OUTPUTS)?);
    let got = loaded
        .model
        .session()
        .and_then(|mut s| s.run_named(inputs))
        .map_err(|e| format!("golden inputs do not run: {e}"))?;
    let names: Vec<&str> = loaded
        .model
        .info()
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    for (name, want) in &expected {
        let i = names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("golden output {name} is not an output of the model"))?;
        let have = got.get(i).ok_or_else(|| format!("no output {name}"))?;
        let (h, w) = (f64s(have)?, f64s(want)?);
        if h.len() != w.len() {
            return Err(format!(
                "output {name}: {} values, golden has {}",
                h.len(),
                w.len()
            ));
        }
        if let Some((j, (a, b))) =
            h.iter().zip(&w).enumerate().find(|(_, (a, b))| {
                (*a - *b).abs() > 1e-4 + 1e-4 * b.abs() || a.is_nan() != b.is_nan()
            })
        {
            return Err(format!("output {name}[{j}] = {a}, golden {b}"));
        }
    }
    Ok(())
}

fn f64s(t: &Tensor) -> Result<Vec<f64>, String> {
    let c = t.cast_to::<f64>().map_err(|e| e.to_string())?;
    Ok(c.to_plain_array_view::<f64>()
        .map_err(|e| e.to_string())?
        .iter()
        .copied()
        .collect())
}
