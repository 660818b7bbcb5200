//! Handlers of everything but the registry: health, metrics, tokens,
//! devices, telemetry, audit, artifacts and trust metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::http::{ApiError, ApiResult, authorize};
use crate::auth::{self, Permission, Role};
use crate::clock::now_unix;
use crate::store::WindowQuery;

pub(crate) use super::models::*;

pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Response {
    let store = app.store.get_state("readyz").is_ok();
    let mqtt = app.mqtt.ready();
    let ready = store && mqtt;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "store": store, "mqtt_subscribed": mqtt})),
    )
        .into_response()
}

pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Ok(devices) = app.store.list_devices() {
        app.metrics.devices_known.set(devices.len() as i64);
        app.metrics
            .devices_online
            .set(devices.iter().filter(|d| d.online).count() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

pub(crate) async fn openapi_json() -> Json<Value> {
    Json(super::openapi())
}

pub(crate) async fn whoami(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let t = authorize(&app, &headers, Permission::Read)?;
    Ok(Json(json!({"id": t.id, "name": t.name, "role": t.role})))
}

// ---- tokens ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct NewToken {
    name: String,
    role: String,
}

pub(crate) async fn create_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<NewToken>,
) -> ApiResult<Response> {
    let caller = authorize(&app, &headers, Permission::Admin)?;
    let role: Role = req.role.parse().map_err(ApiError::bad_request)?;
    let now = now_unix();
    let (token, rec) = auth::new_token(&req.name, role, &caller.name, now)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    app.store.put_token(&rec)?;
    app.audit.append(
        now,
        &caller.name,
        "token.create",
        json!({"id": rec.id, "name": rec.name, "role": role}),
    )?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "id": rec.id, "name": rec.name, "role": role})),
    )
        .into_response())
}

pub(crate) async fn list_tokens(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Admin)?;
    let tokens: Vec<Value> = app
        .store
        .list_tokens()?
        .into_iter()
        .map(|t| {
            json!({"id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at,
                   "created_by": t.created_by, "revoked_at": t.revoked_at})
        })
        .collect();
    Ok(Json(json!({"tokens": tokens})))
}

pub(crate) async fn revoke_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Admin)?;
    let mut t = app
        .store
        .list_tokens()?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no token {id}")))?;
    let now = now_unix();
    if t.revoked_at.is_none() {
        t.revoked_at = Some(now);
        app.store.put_token(&t)?;
        app.audit.append(
            now,
            &caller.name,
            "token.revoke",
            json!({"id": id, "name": t.name}),
        )?;
    }
    Ok(Json(json!({"id": id, "revoked_at": t.revoked_at})))
}

// ---- devices ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct DeviceFilter {
    model: Option<String>,
    version: Option<String>,
    online: Option<bool>,
    group: Option<String>,
}

pub(crate) async fn list_devices(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(f): Query<DeviceFilter>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let devices: Vec<_> = app
        .store
        .list_devices()?
        .into_iter()
        .filter(|d| f.online.is_none_or(|o| d.online == o))
        .filter(|d| f.group.as_ref().is_none_or(|g| d.groups.contains(g)))
        .filter(|d| {
            f.model.as_ref().is_none_or(|m| {
                d.installed
                    .iter()
                    .any(|i| i.name == *m && f.version.as_ref().is_none_or(|v| i.version == *v))
            })
        })
        .collect();
    Ok(Json(json!({"devices": devices})))
}

pub(crate) async fn show_device(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let d = app
        .store
        .get_device(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no device {id:?} in the inventory")))?;
    Ok(Json(json!(d)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LabelChange {
    set: BTreeMap<String, String>,
    remove: Vec<String>,
    add_groups: Vec<String>,
    remove_groups: Vec<String>,
}

fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
}

pub(crate) async fn label_device(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(ch): Json<LabelChange>,
) -> ApiResult<Json<Value>> {
    let caller = authorize(&app, &headers, Permission::Operate)?;
    let names = ch
        .set
        .keys()
        .chain(&ch.remove)
        .chain(&ch.add_groups)
        .chain(&ch.remove_groups);
    for n in names {
        if !label_ok(n) {
            return Err(ApiError::bad_request(format!(
                "label or group {n:?}: use 1–64 of A–Z a–z 0–9 - _ . : /"
            )));
        }
    }
    let d = {
        let _guard = app.devices_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut d = app
            .store
            .get_device(&id)?
            .ok_or_else(|| ApiError::not_found(format!("no device {id:?} in the inventory")))?;
        for (k, v) in &ch.set {
            d.labels.insert(k.clone(), v.clone());
        }
        for k in &ch.remove {
            d.labels.remove(k);
        }
        d.groups.extend(ch.add_groups.iter().cloned());
        let leaving: BTreeSet<&String> = ch.remove_groups.iter().collect();
        d.groups.retain(|g| !leaving.contains(g));
        app.store.put_device(&d)?;
        d
    };
    app.audit.append(
        now_unix(),
        &caller.name,
        "device.label",
        json!({"device": id, "set": ch.set, "remove": ch.remove,
               "add_groups": ch.add_groups, "remove_groups": ch.remove_groups}),
    )?;
    Ok(Json(json!(d)))
}

// ---- telemetry ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct WindowFilter {
    model: String,
    version: Option<String>,
    device: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
}

pub(crate) async fn telemetry_windows(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(f): Query<WindowFilter>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let device = f
        .device
        .map(outpost_protocol::topic::DeviceId::new)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let windows = app.store.windows(&WindowQuery {
        model: f.model,
        version: f.version,
        device,
        from: f.from,
        to: f.to,
    })?;
    let list: Vec<Value> = windows
        .iter()
        .map(|w| {
            json!({"device": w.device, "model": w.window.model.name, "version": w.window.model.version,
                   "slot": w.window.slot, "window_start": w.window.window_start,
                   "window_secs": w.window.window_secs, "received_at": w.received_at,
                   "profile_bytes": w.window.profile.len()})
        })
        .collect();
    Ok(Json(json!({"count": list.len(), "windows": list})))
}

// ---- audit ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct AuditFilter {
    since: Option<u64>,
    action: Option<String>,
}

pub(crate) async fn audit_list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(f): Query<AuditFilter>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    let entries: Vec<_> = app
        .audit
        .entries()?
        .into_iter()
        .filter(|e| f.since.is_none_or(|s| e.seq > s))
        .filter(|e| {
            f.action
                .as_ref()
                .is_none_or(|a| e.action.starts_with(a.as_str()))
        })
        .collect();
    Ok(Json(json!({"entries": entries})))
}

pub(crate) async fn audit_verify(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, Permission::Read)?;
    Ok(Json(match app.audit.verify()? {
        Ok(v) => json!({"ok": true, "entries": v.entries, "head": v.head}),
        Err(p) => json!({"ok": false, "error": p.to_string(), "problem": p}),
    }))
}

// ---- artifacts and trust metadata (no token: devices fetch them) -----------

/// `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX` (RFC 9110 §14.1.2);
/// one range only. `None` when absent; `Err` when unsatisfiable.
fn parse_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let spec = v.to_str().map_err(|_| ())?.trim();
    let spec = spec.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start > end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

pub(crate) async fn artifact(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(sha): Path<String>,
) -> ApiResult<Response> {
    let bytes = app
        .store
        .get_blob(&sha.to_ascii_lowercase())?
        .ok_or_else(|| ApiError::not_found(format!("no artifact {sha}")))?;
    let len = bytes.len() as u64;
    let octets = HeaderValue::from_static("application/octet-stream");
    match parse_range(&headers, len) {
        Ok(None) => Ok((
            [
                (header::CONTENT_TYPE, octets),
                (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            ],
            bytes,
        )
            .into_response()),
        Ok(Some((start, end))) => {
            let part = bytes[start as usize..=end as usize].to_vec();
            let range = format!("bytes {start}-{end}/{len}");
            let mut r = Response::new(Body::from(part));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, octets);
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&range) {
                h.insert(header::CONTENT_RANGE, v);
            }
            Ok(r)
        }
        Err(()) => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            Ok(r)
        }
    }
}

pub(crate) async fn trust_root(State(app): State<Arc<App>>) -> ApiResult<Response> {
    let root = app.root.clone().ok_or_else(|| {
        ApiError::not_found("this server publishes no root: start it with --root root.signed")
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], root).into_response())
}
