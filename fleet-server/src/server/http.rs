//! The HTTP API's plumbing: routes, errors as JSON, token checks.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde_json::{Value, json};

use super::{App, api, rollouts};
use crate::auth::{self, Permission, Role, TokenRecord};
use crate::store::StoreError;

/// Largest request body: one upload chunk, or a document.
pub(crate) const MAX_BODY: usize = 16 << 20;

/// An API error: status, a stable code, a message for people, details.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }
    pub(crate) fn with(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message, "code": self.code});
        if let Some(d) = self.details {
            body["details"] = d;
        }
        (self.status, axum::Json(body)).into_response()
    }
}

pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;

/// Checks the bearer token for `action`: 401 without a valid token, 403
/// when its role does not allow the call.
pub(crate) fn authorize(
    app: &App,
    headers: &HeaderMap,
    action: Permission,
) -> ApiResult<TokenRecord> {
    let refuse = |status: StatusCode, code, msg: String| {
        app.metrics
            .auth_refused
            .get_or_create(&super::metrics::StatusLabels {
                status: status.as_u16().to_string(),
            })
            .inc();
        ApiError::new(status, code, msg)
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "no token: send `Authorization: Bearer TOKEN` (the CLI: --token or OUTPOST_TOKEN)"
                .into(),
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let record = app
        .store
        .token_by_hash(&auth::hash_token(token))?
        .filter(|r| r.revoked_at.is_none());
    let Some(record) = record else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the token is unknown or revoked".into(),
        ));
    };
    if !record.role.allows(action) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} has role {}, which may not {}: this needs role {}",
                record.name,
                record.role,
                action.as_str(),
                Role::allowed_for(action).join(" or ")
            ),
        ));
    }
    Ok(record)
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(api::openapi_json))
        .route("/v1/whoami", get(api::whoami))
        .route("/v1/tokens", get(api::list_tokens).post(api::create_token))
        .route("/v1/tokens/{id}", delete(api::revoke_token))
        .route("/v1/uploads", post(api::start_upload))
        .route("/v1/uploads/{sha256}", patch(api::upload_chunk))
        .route("/v1/uploads/{sha256}/finish", post(api::finish_upload))
        .route("/v1/models", get(api::list_models))
        .route("/v1/models/{name}/{version}", get(api::show_model))
        .route("/v1/models/{name}/{version}/approve", post(api::approve))
        .route("/v1/models/{name}/{version}/reject", post(api::reject))
        .route(
            "/v1/models/{name}/{version}/transition",
            post(api::transition),
        )
        .route("/v1/models/{name}/{version}/retire", post(api::retire))
        .route(
            "/v1/models/{name}/{version}/impact-assessment",
            post(api::attach_impact_assessment),
        )
        .route(
            "/v1/models/{name}/{version}/release",
            get(api::release_metadata),
        )
        .route("/v1/retirement/candidates", get(api::retirement_candidates))
        .route("/v1/retirement/mark", post(api::mark_retirement))
        .route("/v1/artifacts/{sha256}", get(api::artifact))
        .route("/v1/trust/root", get(api::trust_root))
        .route("/v1/devices", get(api::list_devices))
        .route("/v1/devices/{id}", get(api::show_device))
        .route("/v1/devices/{id}/labels", post(api::label_device))
        .route("/v1/telemetry/windows", get(api::telemetry_windows))
        .route(
            "/v1/rollouts",
            get(rollouts::list_rollouts).post(rollouts::start_rollout),
        )
        .route("/v1/rollouts/{id}", get(rollouts::show_rollout))
        .route(
            "/v1/rollouts/{id}/{command}",
            post(rollouts::operate_rollout),
        )
        .route("/v1/models/{name}/{version}/deploy", post(rollouts::deploy))
        .route(
            "/v1/drift/{name}/{version}",
            get(super::drift_api::fleet_drift_report),
        )
        .route("/v1/alerts", get(super::alerting::list_alerts))
        .route("/v1/alerts/ack", post(super::alerting::ack_alert))
        .route("/v1/audit", get(api::audit_list))
        .route("/v1/audit/verify", get(api::audit_verify))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}
