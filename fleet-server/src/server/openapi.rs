//! `GET /openapi.json`: the API described as OpenAPI 3.1, built from one
//! table of operations so the document and the router are checked against
//! each other by the tests.

use serde_json::{Map, Value, json};

/// `(method, path, role needed, summary)`; role `public` needs no token.
pub const OPERATIONS: &[(&str, &str, &str, &str)] = &[
    ("get", "/healthz", "public", "Liveness"),
    (
        "get",
        "/readyz",
        "public",
        "Readiness: store open and MQTT subscriptions acknowledged",
    ),
    (
        "get",
        "/metrics",
        "public",
        "Prometheus metrics (OpenMetrics text)",
    ),
    ("get", "/openapi.json", "public", "This document"),
    (
        "get",
        "/v1/whoami",
        "viewer",
        "The caller's token name and role",
    ),
    (
        "get",
        "/v1/tokens",
        "admin",
        "List tokens (never their secrets)",
    ),
    (
        "post",
        "/v1/tokens",
        "admin",
        "Create a token {name, role}; the secret is shown once",
    ),
    ("delete", "/v1/tokens/{id}", "admin", "Revoke a token"),
    (
        "post",
        "/v1/uploads",
        "operator",
        "Start or resume a push {sha256, length} → {offset}",
    ),
    (
        "patch",
        "/v1/uploads/{sha256}",
        "operator",
        "Append bytes at ?offset=N (409 with the right offset otherwise)",
    ),
    (
        "post",
        "/v1/uploads/{sha256}/finish",
        "operator",
        "Check and register the pushed package {release?: base64}",
    ),
    (
        "get",
        "/v1/models",
        "viewer",
        "List versions (?name, ?status) with where each runs",
    ),
    (
        "get",
        "/v1/models/{name}/{version}",
        "viewer",
        "A version: card, status, approvals, eval, devices",
    ),
    (
        "post",
        "/v1/models/{name}/{version}/approve",
        "approver",
        "Approve {kind: domain|risk|legal, comment}",
    ),
    (
        "post",
        "/v1/models/{name}/{version}/reject",
        "approver",
        "Reject {reason}",
    ),
    (
        "post",
        "/v1/models/{name}/{version}/transition",
        "operator",
        "Lifecycle move {to, reason}",
    ),
    (
        "post",
        "/v1/models/{name}/{version}/retire",
        "operator",
        "Retire; sends signed retire directives {reason}",
    ),
    (
        "post",
        "/v1/models/{name}/{version}/impact-assessment",
        "operator",
        "Upload an impact assessment (?filename)",
    ),
    (
        "get",
        "/v1/models/{name}/{version}/release",
        "public",
        "The release metadata pushed beside the package",
    ),
    (
        "get",
        "/v1/retirement/candidates",
        "viewer",
        "Versions the retirement policy would mark",
    ),
    (
        "post",
        "/v1/retirement/mark",
        "operator",
        "Mark the policy's candidates for retirement",
    ),
    (
        "get",
        "/v1/artifacts/{sha256}",
        "public",
        "Package bytes (HTTP Range supported)",
    ),
    (
        "get",
        "/v1/trust/root",
        "public",
        "root.signed for provisioning",
    ),
    (
        "get",
        "/v1/devices",
        "viewer",
        "Inventory (?model, ?version, ?online, ?group)",
    ),
    ("get", "/v1/devices/{id}", "viewer", "One device"),
    (
        "post",
        "/v1/devices/{id}/labels",
        "operator",
        "Change labels and groups {set, remove, add_groups, remove_groups}",
    ),
    (
        "get",
        "/v1/telemetry/windows",
        "viewer",
        "Stored telemetry windows (?model, ?version, ?device, ?from, ?to)",
    ),
    (
        "post",
        "/v1/models/{name}/{version}/deploy",
        "operator",
        "Deploy an approved version to every device (of {group?}) without probation: a fleet's first install ({force?} past a deployed version)",
    ),
    (
        "get",
        "/v1/rollouts",
        "viewer",
        "List rollouts with their state and stage",
    ),
    (
        "post",
        "/v1/rollouts",
        "operator",
        "Start a canary rollout {model, version, plan (TOML), group?, id?}",
    ),
    (
        "get",
        "/v1/rollouts/{id}",
        "viewer",
        "A rollout's state, cohorts, gate verdicts with statistics and error bounds, directives, timeline",
    ),
    (
        "post",
        "/v1/rollouts/{id}/{command}",
        "operator",
        "Operator command: pause, resume or abort",
    ),
    (
        "get",
        "/v1/audit",
        "viewer",
        "Audit entries (?since, ?action)",
    ),
    (
        "get",
        "/v1/audit/verify",
        "viewer",
        "Verify the audit hash chain",
    ),
    (
        "get",
        "/v1/drift/{name}/{version}",
        "viewer",
        "Fleet drift of a version: PSI/KS per feature and output, completeness, per-class \
         view (?group, ?since, ?until: Unix seconds or a duration ago such as 1h; 422 when \
         there is no reference or the windows do not merge)",
    ),
    (
        "get",
        "/v1/alerts",
        "viewer",
        "Alerts firing now (acknowledged or not), the rules and the sinks",
    ),
    (
        "post",
        "/v1/alerts/ack",
        "operator",
        "Acknowledge a firing alert {rule, subject}: its escalation stops (404 if not firing)",
    ),
];

/// The OpenAPI document.
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for (method, path, role, summary) in OPERATIONS {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": summary,
            "x-outpost-role": role,
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
            },
        });
        if *role != "public" {
            op["security"] = json!([{"bearer": []}]);
        }
        let entry = paths
            .entry((*path).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Outpost fleet server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Registry, inventory and audit of an Outpost fleet. Tokens: \
                `Authorization: Bearer TOKEN`; roles viewer, operator, approver, admin.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {
                "description": "An error",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["error", "code"],
                    "properties": {
                        "error": {"type": "string"},
                        "code": {"type": "string"},
                        "details": {},
                    },
                }}},
            }},
        },
    })
}
