//! `outpost serve` as a process: health, metrics, OpenAPI, tokens and
//! roles, port-taken messages, completions.

use std::net::TcpListener;

use crate::support::*;

#[test]
fn health_metrics_and_openapi_are_served_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = agent();
    let mut r = a.get(server.url("/healthz")).call().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body_mut().read_to_string().unwrap().trim(), "ok");
    let mut r = a.get(server.url("/readyz")).call().unwrap();
    let v: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["mqtt_subscribed"], true, "{v}");

    let mut r = a.get(server.url("/openapi.json")).call().unwrap();
    let doc: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every documented operation exists: never 404 for a route, nor 405.
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());
    assert_eq!(
        paths["/v1/models/{name}/{version}/approve"]["post"]["x-outpost-role"],
        "approver"
    );
    for (path, ops) in paths {
        let concrete = path
            .replace("{name}", "nosuch")
            .replace("{version}", "0.0.0")
            .replace("{id}", "nosuch")
            .replace("{sha256}", &"0".repeat(64));
        for method in ops.as_object().unwrap().keys() {
            let url = server.url(&concrete);
            let resp = match method.as_str() {
                "get" => a.get(&url).call(),
                "delete" => a.delete(&url).call(),
                "post" => a.post(&url).send_json(serde_json::json!({})),
                "patch" => a.patch(&url).send(&b""[..]),
                other => panic!("unexpected method {other}"),
            }
            .unwrap();
            let status = resp.status().as_u16();
            assert!(status != 405, "{method} {path}: {status}");
            // A public lookup of something absent is a 404 *with a message*.
            if status == 404 {
                let body: serde_json::Value = resp.into_body().read_json().unwrap();
                assert!(body["error"].is_string(), "{method} {path}: {body}");
            }
        }
    }

    let mut r = a.get(server.url("/metrics")).call().unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert!(text.contains("outpost_devices_known"), "{text}");
    assert!(
        text.contains("outpost_http_auth_refused_total{status=\"401\"}"),
        "{text}"
    );
}

#[test]
fn every_call_is_checked_against_the_tokens_role() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let viewer = server.token("vera", "viewer");
    let operator = server.token("otto", "operator");
    let approver = server.token("ann", "approver");
    let a = agent();

    // No token, a wrong one: 401 with a message.
    let r = a.get(server.url("/v1/models")).call().unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.into_body().read_json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no token"),
        "{body}"
    );
    let r = a
        .get(server.url("/v1/models"))
        .header("Authorization", "Bearer outpost_00000000_nope")
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);

    // Reads for everyone; each mutation for its roles only (403 names them).
    for t in [&viewer, &operator, &approver, &server.admin] {
        server.json(t, &["model", "list"], 0);
    }
    let v = server.json(&viewer, &["model", "approve", "digits", "1.0.0"], 3);
    assert_eq!(v["status"], 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("needs role approver or admin"),
        "{v}"
    );
    let v = server.json(&operator, &["model", "approve", "digits", "1.0.0"], 3);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("otto has role operator"),
        "{v}"
    );
    // An approver reaches the registry (404: nothing pushed yet).
    server.json(&approver, &["model", "approve", "digits", "1.0.0"], 4);
    let v = server.json(&approver, &["model", "deprecate", "digits", "1.0.0"], 3);
    assert!(
        v["error"].as_str().unwrap().contains("operator or admin"),
        "{v}"
    );
    let v = server.json(
        &operator,
        &["tokens", "create", "--role", "admin", "--name", "eve"],
        3,
    );
    assert!(
        v["error"].as_str().unwrap().contains("needs role admin"),
        "{v}"
    );
    let v = server.json(&viewer, &["devices", "label", "pump-1", "site=north"], 3);
    assert_eq!(v["status"], 403);
    // A missing token from the CLI says how to give one.
    let out = outpost()
        .args(["--server", &server.http, "model", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUTPOST_TOKEN"));

    // Revoked tokens stop working; tokens are listed without secrets.
    let list = server.json(&server.admin, &["tokens", "list"], 0);
    let vera = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "vera")
        .unwrap()
        .clone();
    assert!(!list.to_string().contains(&viewer));
    server.json(
        &server.admin,
        &["tokens", "revoke", vera["id"].as_str().unwrap()],
        0,
    );
    server.json(&viewer, &["model", "list"], 3);

    // Environment variables work as the flags do.
    let out = outpost()
        .env("OUTPOST_SERVER", &server.http)
        .env("OUTPOST_TOKEN", &operator)
        .args(["--json", "model", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    let mut r = a.get(server.url("/metrics")).call().unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert!(
        text.contains("outpost_http_auth_refused_total{status=\"403\"}"),
        "{text}"
    );
}

#[test]
fn an_unreachable_server_exits_6() {
    let port = free_port();
    let out = outpost()
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            "x",
            "model",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));
}

#[test]
fn a_taken_port_is_named_with_how_to_choose_another() {
    let dir = tempfile::tempdir().unwrap();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let Err((code, err)) = Server::try_start(dir.path(), &["--mqtt-port", &port]) else {
        panic!("the server started on a taken MQTT port");
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("MQTT port {port} is taken")), "{err}");
    assert!(
        err.contains("--mqtt-port") && err.contains("--mqtt-url"),
        "{err}"
    );

    let Err((code, err)) = Server::try_start(dir.path(), &["--http", &format!("127.0.0.1:{port}")])
    else {
        panic!("the server started on a taken HTTP port");
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("HTTP port {port} is taken")), "{err}");
    assert!(err.contains("--http"), "{err}");
    drop(held);
}

#[test]
fn completions_are_generated_for_bash() {
    let out = outpost().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("_outpost()"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.contains("approve") && text.contains("serve"));
}

#[test]
fn the_first_admin_token_can_be_made_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let v = local_json(
        &[
            "tokens",
            "create",
            "--role",
            "admin",
            "--name",
            "root-admin",
            "--data-dir",
            s(&data),
        ],
        0,
    );
    let token = v["token"].as_str().unwrap().to_owned();
    let server = Server::start(dir.path(), &[]);
    // The store had a token already: no second admin token was made.
    assert!(server.admin.is_empty());
    let me = server.json(&token, &["audit", "list"], 0);
    assert_eq!(me["entries"][0]["action"], "token.create");
    assert_eq!(me["entries"][0]["actor"], "offline");
}
