//! Serving: verified models by name, inference behind a circuit breaker
//! with bounded retries, and the out-of-distribution fallback.

pub mod breaker;
pub mod probation;
pub mod tensor;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use outpost_protocol::bytes::Sha256;
use outpost_protocol::codec;
use outpost_protocol::messages::{EngineReport, ModelRef, Slot};
use outpost_protocol::trust::{
    MAX_METADATA_BYTES, ReleaseMetadata, Signed, TargetMeta, TrustError, TrustState, Verifier,
    check_reader,
};
use outpost_runtime::{
    InputError, LoadOptions, Model, Package, PackageLimits, TargetProfile, Tensor,
};
use outpost_telemetry::{REFERENCE_DECODE_LIMIT, ReferenceProfile};

/// The package member holding the reference profile (ARCHITECTURE §3).
pub const REFERENCE_MEMBER: &str = "reference.bin";

use crate::config::{BreakerConfig, Fallback};
use breaker::{Admit, Breaker};

/// Why a model could not be brought up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    /// The release metadata or the package failed a trust check.
    #[error("{path}: {source}")]
    Trust { path: String, source: TrustError },
    /// The package's digest is in no target of its release metadata.
    #[error("{path}: sha256 {sha256} is not a target of its release metadata")]
    NotReleased { path: String, sha256: Sha256 },
    /// The runtime refused the package.
    #[error("{path}: {source}")]
    Runtime {
        path: String,
        source: Box<outpost_runtime::Error>,
    },
}

/// What verifying and loading a model needs to know.
#[derive(Debug, Clone, Copy)]
pub struct LoadContext<'a> {
    pub state: &'a TrustState,
    pub verifier: &'a Verifier,
    pub target: &'a TargetProfile,
    pub now_unix: u64,
    pub breaker: &'a BreakerConfig,
}

/// A verified, loaded model.
#[derive(Debug)]
pub struct LoadedModel {
    pub name: String,
    pub version: String,
    pub sha256: Sha256,
    pub model: Model,
    /// The package's `reference.bin`, when it has one (profiles need it).
    pub reference: Option<Arc<ReferenceProfile>>,
    pub fallback: Fallback,
    breaker: Mutex<Breaker>,
    retries: u32,
}

impl LoadedModel {
    /// Verifies `package` against its signed `release` metadata under the
    /// trust state (signatures, expiry, digest, length, constraints), then
    /// loads it for `target`.
    pub fn load_verified(
        package: &Path,
        release: &Path,
        ctx: &LoadContext<'_>,
        fallback: Fallback,
    ) -> Result<LoadedModel, LoadError> {
        let LoadContext {
            state,
            verifier,
            now_unix,
            ..
        } = *ctx;
        let ppath = package.display().to_string();
        let rpath = release.display().to_string();
        let read = |p: &Path, path: &str| {
            std::fs::read(p).map_err(|e| LoadError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let signed: Signed<ReleaseMetadata> =
            codec::decode(&read(release, &rpath)?, MAX_METADATA_BYTES).map_err(|e| {
                LoadError::Read {
                    path: rpath.clone(),
                    reason: format!("not signed release metadata: {e}"),
                }
            })?;
        let verified = verifier
            .verify_release(state, &signed, now_unix)
            .map_err(|source| LoadError::Trust {
                path: rpath.clone(),
                source,
            })?;
        let bytes = read(package, &ppath)?;
        let sha256 = Sha256::of(&bytes);
        let target_meta = verified
            .metadata()
            .targets
            .iter()
            .find(|t| t.sha256 == sha256)
            .ok_or_else(|| LoadError::NotReleased {
                path: ppath.clone(),
                sha256,
            })?;
        Self::from_verified_bytes(package, &bytes, target_meta, ctx, fallback)
    }

    /// Loads a package whose release-signed target is already known (the
    /// update machine verified the metadata): its bytes must still match
    /// the target's digest and length (a staged file may have rotted), the
    /// device must meet its constraints, and its manifest must name it.
    pub fn load_target(
        package: &Path,
        target_meta: &TargetMeta,
        ctx: &LoadContext<'_>,
        fallback: Fallback,
    ) -> Result<LoadedModel, LoadError> {
        let bytes = std::fs::read(package).map_err(|e| LoadError::Read {
            path: package.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_verified_bytes(package, &bytes, target_meta, ctx, fallback)
    }

    fn from_verified_bytes(
        package: &Path,
        bytes: &[u8],
        target_meta: &TargetMeta,
        ctx: &LoadContext<'_>,
        fallback: Fallback,
    ) -> Result<LoadedModel, LoadError> {
        let LoadContext {
            verifier,
            target,
            breaker,
            ..
        } = *ctx;
        let ppath = package.display().to_string();
        let sha256 = Sha256::of(bytes);
        let trust = |source| LoadError::Trust {
            path: ppath.clone(),
            source,
        };
        check_reader(target_meta, bytes)
            .map_err(|e| LoadError::Read {
                path: ppath.clone(),
                reason: e.to_string(),
            })?
            .map_err(trust)?;
        verifier.check_target(target_meta).map_err(trust)?;
        let opts = LoadOptions {
            target: Some(target.clone()),
            ..LoadOptions::default()
        };
        let runtime = |source| LoadError::Runtime {
            path: ppath.clone(),
            source: Box::new(source),
        };
        // The bytes are already read (and hashed): parse the package once
        // for the model and its reference profile.
        let (model, reference) = if outpost_runtime::package::looks_like_package(bytes) {
            let limits = PackageLimits {
                max_total_bytes: opts.max_model_bytes,
                ..PackageLimits::default()
            };
            let pkg = Package::from_bytes(bytes, &ppath, &limits)
                .map_err(|e| runtime(outpost_runtime::Error::Package(e)))?;
            (
                Model::from_package(&pkg, &opts).map_err(runtime)?,
                reference_of(&pkg, &ppath)?,
            )
        } else {
            // A bare ONNX model (no reference profile to profile against).
            (Model::load(package, &opts).map_err(runtime)?, None)
        };
        let info = model.info();
        if info.name != target_meta.name
            || info.version.as_deref() != Some(target_meta.version.as_str())
        {
            return Err(LoadError::Read {
                path: ppath,
                reason: format!(
                    "manifest says {} {}, release metadata says {} {}",
                    info.name,
                    info.version.as_deref().unwrap_or("?"),
                    target_meta.name,
                    target_meta.version
                ),
            });
        }
        Ok(LoadedModel {
            name: target_meta.name.clone(),
            version: target_meta.version.clone(),
            sha256,
            model,
            reference,
            fallback,
            breaker: Mutex::new(Breaker::new(
                breaker.failures,
                Duration::from_secs(breaker.open_secs),
            )),
            retries: breaker.retries,
        })
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.lock().map(|b| b.is_open()).unwrap_or(true)
    }

    /// Which engine runs this model and why, as the agent reports it
    /// (the `engine_selected` event, `/metrics`, `/v1/status`): the
    /// runtime's decision at load.
    pub fn engine_report(&self, slot: Slot) -> EngineReport {
        let d = self.model.engine_decision();
        let us = |v: Option<f64>| {
            v.filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v.round() as u64)
        };
        EngineReport {
            model: ModelRef {
                name: self.name.clone(),
                version: self.version.clone(),
                sha256: self.sha256,
            },
            slot,
            engine: d.engine.to_string(),
            reason: d.reason.clone(),
            cpu_us: us(d.cpu_us),
            gpu_us: us(d.gpu_us),
            adapter: d.gpu.as_ref().and_then(|g| {
                g.adapter.as_ref().map(|a| {
                    format!(
                        "{a} on {} ({})",
                        g.backend.as_deref().unwrap_or("?"),
                        g.device_type.as_deref().unwrap_or("?")
                    )
                })
            }),
        }
    }
}

/// The reference profile in a package, if any. A malformed one refuses the
/// package: it is signed content that does not decode.
fn reference_of(pkg: &Package, path: &str) -> Result<Option<Arc<ReferenceProfile>>, LoadError> {
    pkg.member(REFERENCE_MEMBER)
        .map(|b| {
            ReferenceProfile::from_bytes(b, REFERENCE_DECODE_LIMIT)
                .map(Arc::new)
                .map_err(|e| LoadError::Read {
                    path: path.to_owned(),
                    reason: format!("{REFERENCE_MEMBER}: {e}"),
                })
        })
        .transpose()
}

/// Why an inference got no model answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// No such model is loaded (404).
    #[error("no model {0:?} is loaded")]
    UnknownModel(String),
    /// The request is malformed: wrong names, dtypes, shapes (400).
    #[error("{0}")]
    BadInput(String),
    /// The input is outside the model's declared distribution and the
    /// fallback is to reject (422).
    #[error("out of distribution: {0}")]
    OutOfDistribution(String),
    /// The breaker is open after repeated engine failures (503).
    #[error(
        "model {model:?} is unavailable after repeated engine failures; retry in {retry_after:?}"
    )]
    Unavailable {
        model: String,
        retry_after: Duration,
    },
    /// The engine failed on every try (500).
    #[error("engine failed: {0}")]
    Engine(String),
}

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweredBy {
    Active,
    /// The previous model, as the OOD fallback.
    Previous,
    /// The configured default value, as the OOD fallback.
    Default,
    /// The candidate on canary probation.
    Candidate,
}

#[derive(Debug)]
pub struct InferOutcome {
    pub model: Arc<LoadedModel>,
    pub outputs: Vec<(String, Tensor)>,
    pub answered_by: AnsweredBy,
    pub latency: Duration,
    /// A shadow run of the candidate on the same inputs, for the caller to
    /// perform after answering (the budget admitted it).
    pub shadow: Option<probation::ShadowJob>,
}

/// The active, previous and candidate model of each name.
#[derive(Debug, Default)]
pub struct ModelHost {
    slots: RwLock<BTreeMap<String, Slots>>,
}

#[derive(Debug, Clone)]
struct Slots {
    active: Arc<LoadedModel>,
    previous: Option<Arc<LoadedModel>>,
    candidate: Option<probation::Candidate>,
}

impl ModelHost {
    /// Makes `model` the active one of its name; the old active becomes
    /// the previous.
    pub fn activate(&self, model: LoadedModel) {
        let model = Arc::new(model);
        if let Ok(mut slots) = self.slots.write() {
            let previous = slots.remove(&model.name).map(|s| s.active);
            slots.insert(
                model.name.clone(),
                Slots {
                    active: model,
                    previous,
                    candidate: None,
                },
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.read().map(|s| s.is_empty()).unwrap_or(true)
    }

    /// Sets the active and previous slots of `active.name` (a rollback
    /// swaps them back); any candidate of that name stops running.
    pub fn set(&self, active: Arc<LoadedModel>, previous: Option<Arc<LoadedModel>>) {
        if let Ok(mut slots) = self.slots.write() {
            slots.insert(
                active.name.clone(),
                Slots {
                    active,
                    previous,
                    candidate: None,
                },
            );
        }
    }

    /// Puts `candidate` on probation beside the active model of its name.
    /// `false` when no model of that name is served (nothing to compare
    /// with, nothing to fall back to).
    pub fn set_candidate(&self, candidate: probation::Candidate) -> bool {
        self.slots
            .write()
            .is_ok_and(|mut slots| match slots.get_mut(&candidate.model.name) {
                Some(s) => {
                    s.candidate = Some(candidate);
                    true
                }
                None => false,
            })
    }

    /// Stops running `name`'s candidate; returns it.
    pub fn clear_candidate(&self, name: &str) -> Option<probation::Candidate> {
        self.slots
            .write()
            .ok()?
            .get_mut(name)
            .and_then(|s| s.candidate.take())
    }

    /// `name`'s candidate on probation, if any.
    pub fn candidate_of(&self, name: &str) -> Option<probation::Candidate> {
        self.get(name)?.candidate
    }

    /// Stops serving `name` (retire). Whether it was served.
    pub fn remove(&self, name: &str) -> bool {
        self.slots
            .write()
            .map(|mut s| s.remove(name).is_some())
            .unwrap_or(false)
    }

    /// `(active, previous)` of `name`.
    pub fn slots_of(&self, name: &str) -> Option<(Arc<LoadedModel>, Option<Arc<LoadedModel>>)> {
        self.get(name).map(|s| (s.active, s.previous))
    }

    /// The engine of every loaded model: each name's active model and its
    /// candidate on probation.
    pub fn engines(&self) -> Vec<EngineReport> {
        self.slots
            .read()
            .map(|s| {
                s.values()
                    .flat_map(|sl| {
                        std::iter::once(sl.active.engine_report(Slot::Active)).chain(
                            sl.candidate
                                .as_ref()
                                .map(|c| c.model.engine_report(Slot::Candidate)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `(active, previous)` of every name.
    pub fn list(&self) -> Vec<(Arc<LoadedModel>, Option<Arc<LoadedModel>>)> {
        self.slots
            .read()
            .map(|s| {
                s.values()
                    .map(|sl| (sl.active.clone(), sl.previous.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn get(&self, name: &str) -> Option<Slots> {
        self.slots.read().ok()?.get(name).cloned()
    }

    /// Runs `name` on named inputs (`None` = the model's only input).
    /// The active model answers, or the candidate on canary probation;
    /// with a candidate on shadow probation the outcome carries the shadow
    /// run to perform after answering. Blocking: call from a blocking
    /// thread.
    pub fn infer(
        &self,
        name: &str,
        inputs: Vec<(Option<String>, Tensor)>,
    ) -> Result<InferOutcome, InferError> {
        let slots = self
            .get(name)
            .ok_or_else(|| InferError::UnknownModel(name.to_owned()))?;
        let started = Instant::now();
        let canary = slots
            .candidate
            .as_ref()
            .filter(|c| c.mode == crate::update::ProbationMode::Canary);
        // Who answers, and who is the fallback's "previous" model.
        let (serving, previous, answered_by) = match canary {
            Some(c) => (
                c.model.clone(),
                Some(slots.active.clone()),
                AnsweredBy::Candidate,
            ),
            None => (
                slots.active.clone(),
                slots.previous.clone(),
                AnsweredBy::Active,
            ),
        };
        let named = name_inputs(&serving.model, inputs)?;
        let rows = named
            .first()
            .and_then(|(_, t)| t.shape().first().copied())
            .unwrap_or(1);
        let shadow = slots
            .candidate
            .as_ref()
            .filter(|c| c.mode == crate::update::ProbationMode::Shadow);
        let shadow_inputs = shadow.map(|_| named.clone());
        let result = run_guarded(&serving, named.clone());
        if let Some(c) = canary {
            c.stats
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if matches!(
                result,
                Err(RunError::Engine(_) | RunError::Unavailable { .. })
            ) {
                c.stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        match result {
            Ok(outputs) => {
                let shadow = shadow.zip(shadow_inputs).and_then(|(c, inputs)| {
                    c.stats
                        .admit_shadow(Instant::now())
                        .then(|| probation::ShadowJob {
                            candidate: c.model.clone(),
                            stats: c.stats.clone(),
                            inputs,
                            active_output: outputs.first().map(|(_, t)| t.clone()),
                        })
                });
                Ok(InferOutcome {
                    model: serving,
                    outputs,
                    answered_by,
                    latency: started.elapsed(),
                    shadow,
                })
            }
            Err(RunError::Ood(reason)) => match &serving.fallback {
                Fallback::Reject => Err(InferError::OutOfDistribution(reason)),
                Fallback::Default(values) => {
                    let out_name = serving
                        .model
                        .info()
                        .outputs
                        .first()
                        .map(|o| o.name.clone())
                        .unwrap_or_else(|| "output".into());
                    let data: Vec<f32> = (0..rows).flat_map(|_| values.iter().copied()).collect();
                    let t = Tensor::from_shape(&[rows, values.len()], &data)
                        .map_err(|e| InferError::Engine(e.to_string()))?;
                    Ok(InferOutcome {
                        model: serving,
                        outputs: vec![(out_name, t)],
                        answered_by: AnsweredBy::Default,
                        latency: started.elapsed(),
                        shadow: None,
                    })
                }
                Fallback::Previous => {
                    let prev = previous.ok_or_else(|| {
                        InferError::OutOfDistribution(format!(
                            "{reason} (fallback: previous, but no previous model is loaded)"
                        ))
                    })?;
                    let outputs = run_guarded(&prev, named).map_err(RunError::into_infer)?;
                    Ok(InferOutcome {
                        model: prev,
                        outputs,
                        answered_by: AnsweredBy::Previous,
                        latency: started.elapsed(),
                        shadow: None,
                    })
                }
            },
            Err(e) => Err(e.into_infer()),
        }
    }
}

/// Gives `None`-named inputs the model's input names, in order.
fn name_inputs(
    model: &Model,
    inputs: Vec<(Option<String>, Tensor)>,
) -> Result<Vec<(String, Tensor)>, InferError> {
    let specs = model.inputs();
    if inputs.iter().any(|(n, _)| n.is_none()) && inputs.len() != specs.len() {
        return Err(InferError::BadInput(format!(
            "{} unnamed input(s) for a model with inputs {}",
            inputs.len(),
            specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(inputs
        .into_iter()
        .zip(specs)
        .map(|((n, t), s)| (n.unwrap_or_else(|| s.name.clone()), t))
        .collect())
}

enum RunError {
    Ood(String),
    Bad(String),
    Unavailable {
        model: String,
        retry_after: Duration,
    },
    Engine(String),
}

impl RunError {
    fn into_infer(self) -> InferError {
        match self {
            RunError::Ood(r) => InferError::OutOfDistribution(r),
            RunError::Bad(r) => InferError::BadInput(r),
            RunError::Unavailable { model, retry_after } => {
                InferError::Unavailable { model, retry_after }
            }
            RunError::Engine(r) => InferError::Engine(r),
        }
    }
}

/// One model call behind its breaker, with bounded retries of engine
/// failures. Input errors are the caller's and never trip the breaker.
fn run_guarded(
    m: &LoadedModel,
    named: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>, RunError> {
    let admit = m
        .breaker
        .lock()
        .map(|mut b| b.admit(Instant::now()))
        .unwrap_or(Admit::Refused {
            retry_after: Duration::from_secs(1),
        });
    if let Admit::Refused { retry_after } = admit {
        return Err(RunError::Unavailable {
            model: m.name.clone(),
            retry_after,
        });
    }
    let out_names: Vec<String> = m
        .model
        .info()
        .outputs
        .iter()
        .map(|o| o.name.clone())
        .collect();
    let tries = if admit == Admit::Probe {
        1
    } else {
        1 + m.retries
    };
    let mut last = String::new();
    for _ in 0..tries {
        let result = m
            .model
            .session()
            .and_then(|mut s| s.run_named(named.clone()));
        match result {
            Ok(outs) => {
                if let Ok(mut b) = m.breaker.lock() {
                    b.success();
                }
                return Ok(out_names
                    .iter()
                    .cloned()
                    .chain((out_names.len()..).map(|i| format!("output_{i}")))
                    .zip(outs)
                    .collect());
            }
            Err(outpost_runtime::Error::Input(
                e @ (InputError::OutOfRange { .. } | InputError::UnknownCategory { .. }),
            )) => return Err(RunError::Ood(e.to_string())),
            Err(outpost_runtime::Error::Input(e)) => return Err(RunError::Bad(e.to_string())),
            Err(e) => last = e.to_string(),
        }
    }
    if let Ok(mut b) = m.breaker.lock() {
        b.failure(Instant::now());
    }
    Err(RunError::Engine(last))
}
