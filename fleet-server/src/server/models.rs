//! Registry handlers: resumable push, listing, approvals, lifecycle,
//! retirement (with retire directives), documents, release metadata.
//!
//! Push protocol (resumable, idempotent by content):
//! 1. `POST /v1/uploads {sha256, length}` → `{offset}`: bytes the server
//!    already holds for this digest (all of them if the blob exists);
//! 2. `PATCH /v1/uploads/{sha256}?offset=N` with the next bytes; a wrong
//!    offset gets 409 and the right one, so a retried push continues where
//!    the last one stopped;
//! 3. `POST /v1/uploads/{sha256}/finish {release?}` checks digest, package,
//!    card and eval set and registers the version; finishing the same
//!    bytes again answers 200 with the existing version (no duplicate).

use std::io::Write;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use outpost_protocol::codec;
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::{
    DirectiveAction, MAX_METADATA_BYTES, ReleaseMetadata, Selector, Signed,
};
use outpost_runtime::{Package, PackageLimits};
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::http::{ApiError, ApiResult, authorize};
use crate::auth::Permission;
use crate::clock::now_unix;
use crate::director::Director;
use crate::registry::{
    self, ApprovalKind, Document, RegistryError, RetirementMark, Status, Transition, VersionRecord,
};

/// Largest package accepted.
const MAX_PACKAGE: u64 = 1 << 30;
/// How long a retire directive stays valid.
const DIRECTIVE_TTL: u64 = 7 * crate::clock::DAY;

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::SelfApproval { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "self_approval", e.to_string())
        }
        _ => ApiError::conflict(e.to_string()),
    }
}

fn check_sha(sha: &str) -> ApiResult<String> {
    let s = sha.to_ascii_lowercase();
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(ApiError::bad_request(format!(
            "{sha:?} is not a SHA-256 (64 hex digits)"
        )))
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct StartUpload {
    sha256: String,
    length: u64,
}

fn part_paths(app: &App, sha: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        app.uploads.join(format!("{sha}.part")),
        app.uploads.join(format!("{sha}.len")),
    )
}

pub(crate) async fn start_upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<StartUpload>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Operate)?;
    let sha = check_sha(&req.sha256)?;
    if req.length == 0 || req.length > MAX_PACKAGE {
        return Err(ApiError::bad_request(format!(
            "length {} is outside 1..={MAX_PACKAGE}",
            req.length
        )));
    }
    if app.store.get_blob(&sha)?.is_some() {
        return Ok(Json(
            json!({"sha256": sha, "offset": req.length, "length": req.length}),
        ));
    }
    let (part, len) = part_paths(&app, &sha);
    let io = |e: std::io::Error| ApiError::internal(format!("upload {sha}: {e}"));
    let known: Option<u64> = std::fs::read_to_string(&len)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut offset = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if known != Some(req.length) || offset > req.length {
        std::fs::write(&len, req.length.to_string()).map_err(io)?;
        std::fs::write(&part, b"").map_err(io)?;
        offset = 0;
    }
    Ok(Json(
        json!({"sha256": sha, "offset": offset, "length": req.length}),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChunkAt {
    offset: u64,
}

pub(crate) async fn upload_chunk(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(sha): Path<String>,
    Query(at): Query<ChunkAt>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Operate)?;
    let sha = check_sha(&sha)?;
    let (part, len) = part_paths(&app, &sha);
    let io = |e: std::io::Error| ApiError::internal(format!("upload {sha}: {e}"));
    let length: u64 = std::fs::read_to_string(&len)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::not_found(format!("no upload {sha}: start it with POST /v1/uploads"))
        })?;
    let _guard = app.registry_lock.lock().await;
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if at.offset != have {
        return Err(ApiError::conflict(format!(
            "upload {sha} is at offset {have}, not {}",
            at.offset
        ))
        .with(json!({"offset": have})));
    }
    if have + body.len() as u64 > length {
        return Err(ApiError::bad_request(format!(
            "upload {sha}: {} bytes at offset {have} go past its length {length}",
            body.len()
        )));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&part)
        .map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_data().map_err(io)?;
    Ok(Json(
        json!({"sha256": sha, "offset": have + body.len() as u64, "length": length}),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Finish {
    /// The `.release` file, base64.
    release: Option<String>,
}

/// Names of package members taken as an impact assessment.
fn impact_member(pkg: &Package) -> Option<String> {
    pkg.member_names()
        .find(|n| {
            let base = n.rsplit('/').next().unwrap_or(n);
            base.starts_with("impact_assessment") || base.starts_with("impact-assessment")
        })
        .map(str::to_owned)
}

/// The deployed version of `name` that entered deployment last.
fn deployed(app: &App, name: &str) -> Result<Option<VersionRecord>, ApiError> {
    Ok(app
        .store
        .list_versions()?
        .into_iter()
        .filter(|v| v.name == name && v.status == Status::Deployed)
        .max_by_key(|v| v.entered(Status::Deployed).unwrap_or(0)))
}

fn check_release(
    release_b64: &str,
    name: &str,
    version: &str,
    sha: &str,
    len: u64,
) -> ApiResult<Vec<u8>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(release_b64.trim())
        .map_err(|e| ApiError::bad_request(format!("release: not base64: {e}")))?;
    let signed: Signed<ReleaseMetadata> = codec::decode(&bytes, 2 * MAX_METADATA_BYTES)
        .map_err(|e| ApiError::bad_request(format!("release metadata does not decode: {e}")))?;
    let meta = signed
        .decode_unverified()
        .map_err(|e| ApiError::bad_request(format!("release metadata does not decode: {e}")))?;
    let ok = meta.targets.iter().any(|t| {
        t.name == name && t.version == version && t.sha256.to_hex() == sha && t.length == len
    });
    if !ok {
        return Err(ApiError::bad_request(format!(
            "the release metadata does not vouch for {name} {version} (sha256 {sha}, {len} bytes): \
             sign this package with `outpost model sign`"
        )));
    }
    Ok(bytes)
}

pub(crate) async fn finish_upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(sha): Path<String>,
    body: Option<Json<Finish>>,
) -> ApiResult<Response> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    let sha = check_sha(&sha)?;
    let finish = body.map(|Json(f)| f).unwrap_or_default();
    let _guard = app.registry_lock.lock().await;
    let (part, len) = part_paths(&app, &sha);
    let bytes = match app.store.get_blob(&sha)? {
        Some(b) => b,
        None => std::fs::read(&part).map_err(|_| {
            ApiError::not_found(format!("no upload {sha}: start it with POST /v1/uploads"))
        })?,
    };
    let actual = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    if actual != sha {
        let _ = std::fs::remove_file(&part);
        return Err(ApiError::bad_request(format!(
            "the uploaded bytes are sha256 {actual}, not {sha}: push again"
        )));
    }
    let pkg = Package::from_bytes(&bytes, &format!("upload {sha}"), &PackageLimits::default())
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_package",
                e.to_string(),
            )
        })?;
    let m = pkg.manifest().clone();
    if let Err(e) = crate::card::check_card(&m.card) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "card_incomplete",
            format!("{} {}: {e}", m.name, m.version),
        )
        .with(json!({"missing": e.missing, "invalid": e.invalid})));
    }
    let release = finish
        .release
        .as_deref()
        .map(|r| check_release(r, &m.name, &m.version, &sha, bytes.len() as u64))
        .transpose()?;
    if let Some(mut existing) = app.store.get_version(&m.name, &m.version)? {
        if existing.sha256 != sha {
            return Err(ApiError::conflict(format!(
                "{} {} is already registered with other bytes (sha256 {}): give the new build a new version",
                m.name, m.version, existing.sha256
            )));
        }
        if let (Some(r), None) = (&release, &existing.release_sha256) {
            existing.release_sha256 = Some(app.store.put_blob(r)?);
            app.store.put_version(&existing)?;
        }
        cleanup(&part, &len);
        return Ok((
            StatusCode::OK,
            Json(json!({"created": false, "version": existing})),
        )
            .into_response());
    }
    let baseline = deployed(&app, &m.name)?;
    let baseline_bytes = match &baseline {
        Some(b) => app.store.get_blob(&b.sha256)?,
        None => None,
    };
    let claimed = m.card.evaluation.clone();
    let tolerance = app.config.eval_tolerance;
    let eval_bytes = bytes.clone();
    let base_version = baseline.as_ref().map(|b| b.version.clone());
    let eval = tokio::task::spawn_blocking(move || {
        let pkg = Package::from_bytes(&eval_bytes, "upload", &PackageLimits::default())
            .map_err(|e| e.to_string())?;
        let base = match (&base_version, &baseline_bytes) {
            (Some(v), Some(b)) => Package::from_bytes(b, v, &PackageLimits::default())
                .ok()
                .map(|p| (v.clone(), p)),
            _ => None,
        };
        crate::eval::evaluate(
            &pkg,
            &claimed,
            tolerance,
            base.as_ref().map(|(v, p)| (v.as_str(), p)),
        )
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::internal(format!("evaluation task: {e}")))?
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_eval_set", e))?;
    let now = now_unix();
    let stored = app.store.put_blob(&bytes)?;
    let impact_assessment = impact_member(&pkg).and_then(|member| {
        pkg.member(&member).map(|b| Document {
            source: format!("package:{member}"),
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, b)),
            length: b.len() as u64,
        })
    });
    let record = VersionRecord {
        name: m.name.clone(),
        version: m.version.clone(),
        sha256: stored,
        length: bytes.len() as u64,
        status: Status::Draft,
        risk_class: m.card.risk_class.clone().unwrap_or_default(),
        card: m.card.clone(),
        submitted_by: caller.name.clone(),
        submitted_at: now,
        approvals: vec![],
        history: vec![Transition {
            from: None,
            to: Status::Draft,
            actor: caller.name.clone(),
            at: now,
            reason: Some("pushed".into()),
        }],
        eval,
        release_sha256: release
            .as_ref()
            .map(|r| app.store.put_blob(r))
            .transpose()?,
        impact_assessment,
        retirement: None,
    };
    app.store.put_version(&record)?;
    app.audit.append(
        now,
        &caller.name,
        "version.push",
        json!({"name": record.name, "version": record.version, "sha256": record.sha256,
               "length": record.length, "risk_class": record.risk_class,
               "eval_mismatch": record.eval.as_ref().map(|e| e.mismatch),
               "mcnemar_p": record.eval.as_ref().and_then(|e| e.comparison.as_ref()).map(|c| c.p_value)}),
    )?;
    app.store.flush()?;
    app.metrics.pushes.inc();
    cleanup(&part, &len);
    Ok((
        StatusCode::CREATED,
        Json(json!({"created": true, "version": record})),
    )
        .into_response())
}

fn cleanup(part: &std::path::Path, len: &std::path::Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(len);
}

// ---- reading -----------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct ModelFilter {
    name: Option<String>,
    status: Option<String>,
}

fn summary(v: &VersionRecord, devices: &[String]) -> Value {
    let accuracy = v.eval.as_ref().and_then(|e| {
        e.metrics
            .iter()
            .find(|m| m.metric == "accuracy")
            .and_then(|m| m.measured)
    });
    json!({
        "name": v.name, "version": v.version, "status": v.status, "risk_class": v.risk_class,
        "sha256": v.sha256, "length": v.length,
        "submitted_by": v.submitted_by, "submitted_at": v.submitted_at,
        "approvers": v.approvals.iter().map(|a| format!("{}({})", a.actor, a.kind.as_str())).collect::<Vec<_>>(),
        "measured_accuracy": accuracy,
        "eval_mismatch": v.eval.as_ref().map(|e| e.mismatch),
        "mcnemar_p": v.eval.as_ref().and_then(|e| e.comparison.as_ref()).map(|c| c.p_value),
        "marked_for_retirement": v.retirement.as_ref().map(|r| r.reason.clone()),
        "devices": devices,
    })
}

fn placement(
    app: &App,
) -> Result<std::collections::BTreeMap<(String, String), Vec<String>>, ApiError> {
    Ok(crate::inventory::placement(&app.store.list_devices()?))
}

pub(crate) async fn list_models(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(f): Query<ModelFilter>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let status: Option<Status> = f
        .status
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let placed = placement(&app)?;
    let versions: Vec<Value> = app
        .store
        .list_versions()?
        .iter()
        .filter(|v| f.name.as_ref().is_none_or(|n| *n == v.name))
        .filter(|v| status.is_none_or(|s| s == v.status))
        .map(|v| {
            let devices = placed
                .get(&(v.name.clone(), v.version.clone()))
                .cloned()
                .unwrap_or_default();
            summary(v, &devices)
        })
        .collect();
    Ok(Json(json!({"versions": versions})))
}

fn load(app: &App, name: &str, version: &str) -> ApiResult<VersionRecord> {
    app.store
        .get_version(name, version)?
        .ok_or_else(|| ApiError::not_found(format!("no version {name} {version} in the registry")))
}

fn detail(app: &App, v: &VersionRecord) -> ApiResult<Value> {
    let devices = placement(app)?
        .get(&(v.name.clone(), v.version.clone()))
        .cloned()
        .unwrap_or_default();
    let mut out = json!(v);
    out["devices"] = json!(devices);
    out["missing_approvals"] = json!(if v.status == Status::Draft {
        registry::missing_approvals(v, &app.config.approvals)
    } else {
        vec![]
    });
    out["allowed_transitions"] = json!(v.status.next());
    out["artifact_url"] = json!(format!("{}/v1/artifacts/{}", app.public_url, v.sha256));
    out["release_url"] = json!(v.release_sha256.as_ref().map(|_| format!(
        "{}/v1/models/{}/{}/release",
        app.public_url, v.name, v.version
    )));
    Ok(out)
}

pub(crate) async fn show_model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let v = load(&app, &name, &version)?;
    Ok(Json(detail(&app, &v)?))
}

pub(crate) async fn release_metadata(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let v = load(&app, &name, &version)?;
    let bytes = v
        .release_sha256
        .as_deref()
        .map(|s| app.store.get_blob(s))
        .transpose()?
        .flatten()
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "{name} {version} was pushed without release metadata"
            ))
        })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

// ---- approvals and lifecycle ---------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ApproveReq {
    kind: Option<String>,
    comment: Option<String>,
}

pub(crate) async fn approve(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Option<Json<ApproveReq>>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Approve)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let kind: ApprovalKind = req
        .kind
        .as_deref()
        .unwrap_or("domain")
        .parse()
        .map_err(ApiError::bad_request)?;
    let _guard = app.registry_lock.lock().await;
    let mut v = load(&app, &name, &version)?;
    let now = now_unix();
    let missing = registry::approve(
        &mut v,
        &caller.name,
        kind,
        req.comment.clone(),
        now,
        &app.config.approvals,
    )
    .map_err(registry_error)?;
    app.store.put_version(&v)?;
    app.audit.append(
        now,
        &caller.name,
        "version.approve",
        json!({"name": name, "version": version, "kind": kind.as_str(), "comment": req.comment,
               "status": v.status, "missing": missing}),
    )?;
    Ok(Json(
        json!({"name": name, "version": version, "status": v.status,
                   "approvals": v.approvals, "missing": missing}),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ReasonReq {
    reason: Option<String>,
}

pub(crate) async fn reject(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Option<Json<ReasonReq>>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Approve)?;
    let reason = body.and_then(|Json(b)| b.reason);
    let _guard = app.registry_lock.lock().await;
    let mut v = load(&app, &name, &version)?;
    let now = now_unix();
    registry::reject(&mut v, &caller.name, reason.clone(), now).map_err(registry_error)?;
    app.store.put_version(&v)?;
    app.audit.append(
        now,
        &caller.name,
        "version.reject",
        json!({"name": name, "version": version, "reason": reason}),
    )?;
    Ok(Json(
        json!({"name": name, "version": version, "status": v.status}),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TransitionReq {
    to: String,
    reason: Option<String>,
}

pub(crate) async fn transition(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    Json(req): Json<TransitionReq>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    let to: Status = req.to.parse().map_err(ApiError::bad_request)?;
    if to == Status::Retired {
        return retire_inner(&app, &caller.name, &name, &version, req.reason).await;
    }
    let _guard = app.registry_lock.lock().await;
    let mut v = load(&app, &name, &version)?;
    let from = v.status;
    let now = now_unix();
    registry::transition(&mut v, to, &caller.name, now, req.reason.clone())
        .map_err(registry_error)?;
    app.store.put_version(&v)?;
    app.audit.append(
        now,
        &caller.name,
        "version.transition",
        json!({"name": name, "version": version, "from": from, "to": to, "reason": req.reason}),
    )?;
    Ok(Json(
        json!({"name": name, "version": version, "from": from, "status": v.status}),
    ))
}

pub(crate) async fn retire(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Option<Json<ReasonReq>>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    let reason = body.and_then(|Json(b)| b.reason);
    retire_inner(&app, &caller.name, &name, &version, reason).await
}

/// Moves a version to retired and sends a signed retire directive to every
/// device the inventory says runs it.
async fn retire_inner(
    app: &App,
    actor: &str,
    name: &str,
    version: &str,
    reason: Option<String>,
) -> ApiResult<Json<Value>> {
    let _guard = app.registry_lock.lock().await;
    let mut v = load(app, name, version)?;
    let from = v.status;
    let now = now_unix();
    registry::transition(&mut v, Status::Retired, actor, now, reason.clone())
        .map_err(registry_error)?;
    let devices: Vec<DeviceId> = app
        .store
        .list_devices()?
        .into_iter()
        .filter(|d| d.runs(name, version))
        .map(|d| d.id)
        .collect();
    let mut sent = vec![];
    let mut notes = vec![];
    match &app.director {
        None if !devices.is_empty() => notes.push(
            "no director key: no retire directive was sent (start the server with --director-key)"
                .to_owned(),
        ),
        None => {}
        Some(director) => {
            for id in &devices {
                let signed = director
                    .issue(
                        Selector::Device(id.clone()),
                        DirectiveAction::Retire {
                            model: name.to_owned(),
                        },
                        None,
                        now,
                        DIRECTIVE_TTL,
                    )
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let sequence = signed.decode_unverified().map(|d| d.sequence).unwrap_or(0);
                let cmd = Director::command(signed, None, None);
                match app.mqtt.publish_command(id, &cmd).await {
                    Ok(()) => {
                        app.metrics.directives.inc();
                        sent.push(json!({"device": id, "sequence": sequence}));
                    }
                    Err(e) => notes.push(format!("{id}: directive {sequence} not published: {e}")),
                }
            }
        }
    }
    app.store.put_version(&v)?;
    app.audit.append(
        now,
        actor,
        "version.retire",
        json!({"name": name, "version": version, "from": from, "reason": reason,
               "directives": sent, "notes": notes}),
    )?;
    Ok(Json(
        json!({"name": name, "version": version, "from": from, "status": v.status,
                   "directives": sent, "notes": notes}),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DocName {
    filename: Option<String>,
}

pub(crate) async fn attach_impact_assessment(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<DocName>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    if body.is_empty() {
        return Err(ApiError::bad_request("the impact assessment is empty"));
    }
    let _guard = app.registry_lock.lock().await;
    let mut v = load(&app, &name, &version)?;
    if !matches!(v.status, Status::Draft) {
        return Err(ApiError::conflict(format!(
            "{name} {version} is {}: documents are attached to drafts",
            v.status
        )));
    }
    let sha = app.store.put_blob(&body)?;
    let filename = q.filename.unwrap_or_else(|| "impact-assessment".into());
    v.impact_assessment = Some(Document {
        source: format!("uploaded:{filename}"),
        sha256: sha.clone(),
        length: body.len() as u64,
    });
    let now = now_unix();
    // Approvals may all be in already, waiting for this document.
    let missing = registry::missing_approvals(&v, &app.config.approvals);
    if missing.is_empty() {
        v.history.push(Transition {
            from: Some(Status::Draft),
            to: Status::Approved,
            actor: caller.name.clone(),
            at: now,
            reason: Some("impact assessment attached; approvals complete".into()),
        });
        v.status = Status::Approved;
    }
    app.store.put_version(&v)?;
    app.audit.append(
        now,
        &caller.name,
        "version.attach_impact_assessment",
        json!({"name": name, "version": version, "filename": filename, "sha256": sha, "status": v.status}),
    )?;
    Ok(Json(
        json!({"name": name, "version": version, "status": v.status, "missing": missing,
                   "impact_assessment": v.impact_assessment}),
    ))
}

// ---- retirement policy ---------------------------------------------------------

fn candidates(app: &App) -> ApiResult<Vec<(VersionRecord, String)>> {
    let now = now_unix();
    Ok(app
        .store
        .list_versions()?
        .into_iter()
        .filter_map(|v| {
            registry::retirement_reason(&v, &app.config.retirement, now).map(|r| (v, r))
        })
        .collect())
}

pub(crate) async fn retirement_candidates(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let list: Vec<Value> = candidates(&app)?
        .iter()
        .map(
            |(v, r)| json!({"name": v.name, "version": v.version, "status": v.status, "reason": r}),
        )
        .collect();
    Ok(Json(
        json!({"policy": app.config.retirement, "candidates": list}),
    ))
}

pub(crate) async fn mark_retirement(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    let _guard = app.registry_lock.lock().await;
    let now = now_unix();
    let mut marked = vec![];
    for (mut v, reason) in candidates(&app)? {
        if v.retirement.is_some() {
            continue;
        }
        v.retirement = Some(RetirementMark {
            reason: reason.clone(),
            at: now,
            actor: caller.name.clone(),
        });
        app.store.put_version(&v)?;
        app.audit.append(
            now,
            &caller.name,
            "version.mark_retirement",
            json!({"name": v.name, "version": v.version, "reason": reason}),
        )?;
        marked.push(json!({"name": v.name, "version": v.version, "reason": reason}));
    }
    Ok(Json(json!({"marked": marked})))
}
