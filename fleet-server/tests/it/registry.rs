//! The registry through a real server: push (resumed, idempotent), the
//! card check, evaluation and McNemar, approvals, the lifecycle, audit.

use outpost_runtime::manifest::{ModelCard, ModelFormat};
use outpost_runtime::package::MODEL_ONNX;
use outpost_runtime::{LoadOptions, Manifest, Model, PackageBuilder};
use serde_json::json;

use crate::support::*;

/// A package the registry must refuse: its card has a purpose only.
fn incomplete_package(dir: &std::path::Path) -> std::path::PathBuf {
    let onnx = std::fs::read(fixture("mlp_fp32.onnx")).unwrap();
    let model = Model::from_onnx_bytes(&onnx, "digits", None, &LoadOptions::default()).unwrap();
    let manifest = Manifest {
        format_version: 1,
        name: "digits".into(),
        version: "9.9.9".into(),
        created_at: "2026-11-26T00:00:00Z".into(),
        format: ModelFormat::Onnx,
        inputs: model.info().inputs.clone(),
        outputs: model.info().outputs.clone(),
        target: Default::default(),
        card: ModelCard {
            purpose: Some("tests".into()),
            ..ModelCard::default()
        },
        runtime: None,
        members: Default::default(),
    };
    let mut b = PackageBuilder::new(manifest);
    b.add(MODEL_ONNX, onnx).unwrap();
    let path = dir.join("incomplete.opk");
    std::fs::write(&path, b.to_bytes().unwrap()).unwrap();
    path
}

#[test]
fn push_resumes_never_duplicates_and_refuses_incomplete_cards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &[]);
    let op = server.token("otto", "operator");
    let opk = pack(d, "mlp_fp32.onnx", "1.0.0", "low");
    let bytes = std::fs::read(&opk).unwrap();

    // An interrupted push: the first half is uploaded, then the client dies.
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    let a = agent();
    let auth = format!("Bearer {op}");
    let r = a
        .post(server.url("/v1/uploads"))
        .header("Authorization", &auth)
        .send_json(json!({"sha256": sha, "length": bytes.len()}))
        .unwrap();
    assert_eq!(r.status(), 200);
    let half = bytes.len() / 2;
    let r = a
        .patch(server.url(&format!("/v1/uploads/{sha}?offset=0")))
        .header("Authorization", &auth)
        .send(&bytes[..half])
        .unwrap();
    assert_eq!(r.status(), 200);
    // A chunk at the wrong offset is refused with the right one.
    let r = a
        .patch(server.url(&format!("/v1/uploads/{sha}?offset=0")))
        .header("Authorization", &auth)
        .send(&bytes[..10])
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.into_body().read_json().unwrap();
    assert_eq!(body["details"]["offset"], half as u64);

    // The retried push resumes where the first one stopped.
    let v = server.json(&op, &["model", "push", s(&opk)], 0);
    assert_eq!(v["created"], true, "{v}");
    assert_eq!(v["resumed_at"], half as u64, "{v}");
    assert_eq!(v["version"]["sha256"], sha);
    assert_eq!(v["version"]["status"], "draft");
    assert_eq!(v["version"]["submitted_by"], "otto");
    // Again: no duplicate.
    let v = server.json(&op, &["model", "push", s(&opk)], 0);
    assert_eq!(v["created"], false, "{v}");
    let list = server.json(&op, &["model", "list"], 0);
    assert_eq!(list["versions"].as_array().unwrap().len(), 1, "{list}");
    // Other bytes under the same version: conflict.
    let other = pack(&d.join("other").tap_mkdir(), "mlp_qop.onnx", "1.0.0", "low");
    let v = server.json(&op, &["model", "push", s(&other)], 5);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("already registered with other bytes"),
        "{v}"
    );

    // The package bytes are served for devices, with HTTP Range.
    let r = a
        .get(server.url(&format!("/v1/artifacts/{sha}")))
        .header("Range", "bytes=10-19")
        .call()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers().get("content-range").unwrap().to_str().unwrap(),
        format!("bytes 10-19/{}", bytes.len())
    );
    assert_eq!(r.into_body().read_to_vec().unwrap(), bytes[10..20].to_vec());
    let r = a
        .get(server.url(&format!("/v1/artifacts/{sha}")))
        .call()
        .unwrap();
    assert_eq!(
        r.into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap(),
        bytes
    );

    // A card missing fields is refused, every missing field listed.
    let bad = incomplete_package(d);
    let v = server.json(&op, &["model", "push", s(&bad)], 2);
    let err = v["error"].as_str().unwrap();
    for field in [
        "owner",
        "intended_use",
        "data_sources",
        "training.dataset_version",
        "training.seed",
        "training.environment",
        "evaluation",
        "limitations",
        "failure_modes",
        "risk_class",
    ] {
        assert!(err.contains(field), "{field} not listed: {err}");
    }
    assert_eq!(v["details"]["missing"].as_array().unwrap().len(), 10, "{v}");
    let list = server.json(&op, &["model", "list"], 0);
    assert_eq!(list["versions"].as_array().unwrap().len(), 1);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn approvals_lifecycle_eval_and_mcnemar() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &[]);
    // sam submits with an admin token, so the only thing stopping sam from
    // approving is being the submitter.
    let sam = server.token("sam", "admin");
    let ann = server.token("ann", "approver");
    let bob = server.token("bob", "approver");
    let cat = server.token("cat", "approver");
    let op = server.token("otto", "operator");

    let v1 = pack(d, "mlp_fp32.onnx", "1.0.0", "low");
    let pushed = server.json(&sam, &["model", "push", s(&v1)], 0);
    let eval = &pushed["version"]["eval"];
    assert_eq!(eval["rows"], 450, "{eval}");
    let acc = eval["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "accuracy")
        .unwrap();
    assert_eq!(acc["claimed"], 0.97);
    let measured = acc["measured"].as_f64().unwrap();
    assert!(measured > 0.9 && measured <= 1.0, "{acc}");
    assert_eq!(acc["mismatch"], (measured - 0.97).abs() > 0.02);
    assert!(eval["comparison"].is_null(), "nothing deployed yet");

    // Self-approval refused; an operator cannot approve; two people can.
    let v = server.json(&sam, &["model", "approve", "digits", "1.0.0"], 3);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("sam submitted digits 1.0.0"),
        "{v}"
    );
    server.json(&op, &["model", "approve", "digits", "1.0.0"], 3);
    let v = server.json(&ann, &["model", "approve", "digits", "1.0.0"], 0);
    assert_eq!(v["status"], "draft");
    assert!(
        v["missing"][0]
            .as_str()
            .unwrap()
            .contains("1 more approval"),
        "{v}"
    );
    let v = server.json(&ann, &["model", "approve", "digits", "1.0.0"], 5);
    assert!(v["error"].as_str().unwrap().contains("already gave"), "{v}");
    // Not yet approved: no canary.
    let v = server.json(
        &op,
        &["model", "promote", "digits", "1.0.0", "--to", "canary"],
        5,
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("draft: it cannot move to canary"),
        "{v}"
    );
    let v = server.json(&bob, &["model", "approve", "digits", "1.0.0"], 0);
    assert_eq!(v["status"], "approved", "{v}");

    // The lifecycle, enforced.
    let v = server.json(&op, &["model", "retire", "digits", "1.0.0"], 5);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("from approved: canary, deprecated"),
        "{v}"
    );
    server.json(
        &op,
        &["model", "promote", "digits", "1.0.0", "--to", "canary"],
        0,
    );
    server.json(
        &op,
        &["model", "promote", "digits", "1.0.0", "--to", "deployed"],
        0,
    );
    let v = server.json(
        &op,
        &["model", "promote", "digits", "1.0.0", "--to", "draft"],
        5,
    );
    assert!(v["error"].as_str().unwrap().contains("deployed"), "{v}");
    let list = server.json(&cat, &["model", "list", "--status", "deployed"], 0);
    assert_eq!(list["versions"][0]["version"], "1.0.0");

    // The next version is compared with the deployed one by McNemar's test.
    let v2 = pack(d, "mlp_qop.onnx", "1.1.0", "low");
    let pushed = server.json(&op, &["model", "push", s(&v2)], 0);
    let c = &pushed["version"]["eval"]["comparison"];
    assert_eq!(c["baseline_version"], "1.0.0", "{c}");
    assert_eq!(c["test"], "mcnemar_exact");
    let p = c["p_value"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{c}");
    let shown = server.json(&cat, &["model", "show", "digits", "1.1.0"], 0);
    assert_eq!(shown["eval"]["comparison"]["p_value"], c["p_value"]);
    assert!(
        shown["artifact_url"]
            .as_str()
            .unwrap()
            .contains("/v1/artifacts/")
    );
    // Rejection by an approver.
    server.json(
        &cat,
        &["model", "reject", "digits", "1.1.0", "--reason", "not now"],
        0,
    );
    server.json(&cat, &["model", "approve", "digits", "1.1.0"], 5);

    // High risk: risk and legal approvals and an impact assessment.
    let v3 = pack(d, "mlp_fp32.onnx", "2.0.0", "high");
    server.json(&op, &["model", "push", s(&v3)], 0);
    server.json(&ann, &["model", "approve", "digits", "2.0.0"], 0);
    let v = server.json(
        &bob,
        &["model", "approve", "digits", "2.0.0", "--kind", "risk"],
        0,
    );
    assert_eq!(v["status"], "draft");
    let missing = v["missing"].to_string();
    assert!(
        missing.contains("legal") && missing.contains("impact assessment"),
        "{v}"
    );
    let v = server.json(
        &cat,
        &["model", "approve", "digits", "2.0.0", "--kind", "legal"],
        0,
    );
    assert_eq!(v["status"], "draft", "{v}");
    assert!(
        v["missing"][0]
            .as_str()
            .unwrap()
            .contains("impact assessment"),
        "{v}"
    );
    let ia = d.join("impact.md");
    std::fs::write(&ia, "# Impact assessment\nLow impact on people.\n").unwrap();
    let v = server.json(
        &op,
        &[
            "model",
            "attach",
            "digits",
            "2.0.0",
            "--impact-assessment",
            s(&ia),
        ],
        0,
    );
    assert_eq!(v["status"], "approved", "{v}");

    // Deprecate and retire 1.0.0 (no device runs it: no directive).
    server.json(&op, &["model", "deprecate", "digits", "1.0.0"], 0);
    let v = server.json(&op, &["model", "retire", "digits", "1.0.0"], 0);
    assert_eq!(v["status"], "retired");

    // Every action is in the audit log, with its actor, and it verifies.
    let log = server.json(&cat, &["audit", "list", "--action", "version."], 0);
    let actions: Vec<(String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("sam", "version.push"),
        ("ann", "version.approve"),
        ("bob", "version.approve"),
        ("otto", "version.transition"),
        ("cat", "version.reject"),
        ("otto", "version.attach_impact_assessment"),
        ("otto", "version.retire"),
    ] {
        assert!(
            actions.contains(&(want.0.into(), want.1.into())),
            "{want:?} not in {actions:?}"
        );
    }
    let v = server.json(&cat, &["audit", "verify"], 0);
    assert_eq!(v["ok"], true, "{v}");
}
