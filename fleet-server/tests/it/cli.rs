//! The `outpost` binary, run as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn outpost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/tests/fixtures/digits")
        .join(name)
}

#[test]
fn model_inspect_reports_quantization_and_strategy() {
    let out = outpost(&[
        "model",
        "inspect",
        fixture("cnn_qop.onnx").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("quantization q_operator"), "{text}");
    assert!(text.contains("com.microsoft::QGemm"), "{text}");
    assert!(text.contains("strategy     "), "{text}");
    assert!(text.contains("input        input f32 [N,1,8,8]"), "{text}");

    let out = outpost(&[
        "--json",
        "model",
        "inspect",
        fixture("mlp_qdq_pc.onnx").to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["quantization"], "qdq");
    assert_eq!(v["rewrites"]["softmax_guarded"], 1);
}

#[test]
fn model_run_writes_outputs_and_prints_latency() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.npz");
    let x = fixture("digits_test_x.npy");
    let out = outpost(&[
        "model",
        "run",
        fixture("mlp_qop.onnx").to_str().unwrap(),
        "--input",
        &format!("input={}", x.display()),
        "--output",
        out_path.to_str().unwrap(),
        "--repeat",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("latency over 5 runs"), "{text}");
    let arrays =
        outpost_runtime::npy::read_npz(std::fs::File::open(&out_path).unwrap(), "out.npz").unwrap();
    assert_eq!(arrays.len(), 1);
    assert_eq!(arrays[0].0, "probabilities");
    assert_eq!(arrays[0].1.shape(), &[450, 10]);
}

#[test]
fn bad_input_and_bad_files_fail_with_a_message_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"definitely not a model").unwrap();
    let out = outpost(&["model", "inspect", garbage.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed model"));

    // The CNN takes [N,1,8,8]; the flat [N,64] digits are the wrong shape.
    let out = outpost(&[
        "model",
        "run",
        fixture("cnn_fp32.onnx").to_str().unwrap(),
        "--input",
        fixture("digits_test_x.npy").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected shape [N,1,8,8]"), "{err}");
}

#[test]
fn shape_overrides_are_parsed_and_applied() {
    let out = outpost(&[
        "--json",
        "model",
        "inspect",
        fixture("cnn_fp32.onnx").to_str().unwrap(),
        "--shape",
        "input=4,1,8,8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([4, 1, 8, 8]));
    let out = outpost(&[
        "model",
        "inspect",
        fixture("cnn_fp32.onnx").to_str().unwrap(),
        "--shape",
        "input=4,?",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap rejects a malformed --shape"
    );
}

// ---- keys, pack and sign -------------------------------------------------

use outpost_protocol::bytes::Sha256;
use outpost_protocol::codec;
use outpost_protocol::trust::{
    ArtifactCheck, DeviceIdentity, MAX_METADATA_BYTES, ReleaseMetadata, Root, Signed, TrustState,
    Verifier,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs with `--json`, asserts the exit code, returns the parsed stdout.
fn outpost_json(args: &[&str], code: i32) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = outpost(&all);
    assert_eq!(
        out.status.code(),
        Some(code),
        "outpost {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn example_card() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/card.toml")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn read_signed<T: serde::Serialize + serde::de::DeserializeOwned>(p: &Path) -> Signed<T> {
    codec::decode(&std::fs::read(p).unwrap(), 2 * MAX_METADATA_BYTES).unwrap()
}

fn verifier() -> Verifier {
    Verifier::new(DeviceIdentity {
        id: outpost_protocol::topic::DeviceId::new("test-device").unwrap(),
        arch: std::env::consts::ARCH.into(),
        memory_mb: 4096,
        engines: vec!["cpu".into()],
        cohorts: vec![],
    })
}

fn init_keys(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["keys", "init", "--dir", s(dir)];
    args.extend_from_slice(extra);
    outpost_json(&args, 0)
}

/// Packs the digits MLP with the example card; `extra` adds options.
fn pack_digits(out: &Path, extra: &[&str]) -> serde_json::Value {
    let (model, x) = (fixture("mlp_fp32.onnx"), fixture("digits_test_x.npy"));
    let card = example_card();
    let mut args = vec![
        "model",
        "pack",
        "--model",
        s(&model),
        "--card",
        s(&card),
        "--reference",
        s(&x),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    outpost_json(&args, 0)
}

#[test]
fn keys_init_writes_a_private_key_set_and_a_self_signed_root() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let v = init_keys(
        &keys,
        &[
            "--root",
            "3",
            "--root-threshold",
            "2",
            "--release",
            "2",
            "--release-threshold",
            "2",
        ],
    );
    assert_eq!(v["files"].as_array().unwrap().len(), 3 + 2 + 1 + 1, "{v}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("root-1.pk8"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let root_file = keys.join("root.signed");
    let shown = outpost_json(
        &[
            "keys",
            "show",
            s(&root_file),
            s(&keys.join("release-2.pk8")),
            s(&keys.join("release-2.pk8.pub")),
        ],
        0,
    );
    let root = &shown[0];
    assert_eq!(root["kind"], "root");
    assert_eq!(root["version"], 1);
    assert_eq!(root["roles"]["root"]["threshold"], 2);
    assert_eq!(root["roles"]["root"]["keys"].as_array().unwrap().len(), 3);
    assert_eq!(
        root["roles"]["director"]["keys"].as_array().unwrap().len(),
        1
    );
    assert_eq!(root["self_signed"], true, "{root}");
    // A private key and its .pub have the same fingerprint, listed in the root.
    assert_eq!(shown[1]["key_id"], shown[2]["key_id"]);
    assert!(
        root["roles"]["release"]["keys"]
            .as_array()
            .unwrap()
            .contains(&shown[1]["key_id"])
    );
    // The file is codec::encode(&Signed<Root>), and a device pins it.
    let signed: Signed<Root> = read_signed(&root_file);
    TrustState::pinned(&signed).unwrap();
    assert_eq!(signed.signatures.len(), 3);

    // Never overwrites, and says what is in the way.
    let out = outpost(&["keys", "init", "--dir", s(&keys)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    // A threshold its keys cannot meet is a usage error.
    let v = outpost_json(
        &[
            "keys",
            "init",
            "--dir",
            s(&dir.path().join("k2")),
            "--release",
            "1",
            "--release-threshold",
            "2",
        ],
        2,
    );
    assert!(
        v["error"].as_str().unwrap().contains("threshold 2 of 1"),
        "{v}"
    );
    assert!(!dir.path().join("k2/root.signed").exists());
}

#[test]
fn keys_rotate_reports_the_missing_threshold_until_every_holder_signed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_keys(d, &[]);
    let new_key = d.join("root-new.pk8");
    outpost_json(&["keys", "generate", "--out", s(&new_key)], 0);
    let (v1, v2) = (d.join("root.signed"), d.join("root-v2.signed"));
    let new_pub = d.join("root-new.pk8.pub");
    // v2 adds a root key and needs both: the old holder signs first.
    let v = outpost_json(
        &[
            "keys",
            "rotate",
            "--root",
            s(&v1),
            "--out",
            s(&v2),
            "--add-root",
            s(&new_pub),
            "--root-threshold",
            "2",
            "--sign",
            s(&d.join("root-1.pk8")),
        ],
        1,
    );
    assert_eq!(v["check"], "below_threshold", "{v}");
    assert_eq!(v["details"]["new_root_keys"]["signed"], 1);
    assert_eq!(v["details"]["new_root_keys"]["threshold"], 2);
    let partial: Signed<Root> = read_signed(&v2);
    let state = TrustState::pinned(&read_signed(&v1)).unwrap();
    assert_eq!(
        state.rotate(&partial).unwrap_err().check(),
        "below_threshold"
    );
    // Changing a proposal that exists is refused: holders sign the same bytes.
    let out = outpost(&[
        "keys",
        "rotate",
        "--root",
        s(&v1),
        "--out",
        s(&v2),
        "--root-threshold",
        "1",
        "--sign",
        s(&new_key),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // The new holder adds a signature: complete.
    let v = outpost_json(
        &[
            "keys",
            "rotate",
            "--root",
            s(&v1),
            "--out",
            s(&v2),
            "--sign",
            s(&new_key),
        ],
        0,
    );
    assert_eq!(v["complete"], true, "{v}");
    let complete: Signed<Root> = read_signed(&v2);
    assert_eq!(
        complete.payload, partial.payload,
        "signing changed the payload"
    );
    let state = state.rotate(&complete).unwrap();
    assert_eq!(state.root.version, 2);
    assert_eq!(state.root.root.keys.len(), 2);
    let shown = outpost_json(&["keys", "show", s(&v2)], 0);
    assert_eq!(shown[0]["roles"]["root"]["threshold"], 2);

    // v3 drops the old key, signed by the new key alone: one of the two
    // current root keys is not enough to authorise it.
    let old_id = outpost_json(&["keys", "show", s(&d.join("root-1.pk8"))], 0)[0]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = outpost_json(
        &[
            "keys",
            "rotate",
            "--root",
            s(&v2),
            "--out",
            s(&d.join("root-v3.signed")),
            "--remove-root",
            &old_id,
            "--root-threshold",
            "1",
            "--sign",
            s(&new_key),
        ],
        1,
    );
    assert_eq!(v["check"], "rotation_not_authorized", "{v}");
}

#[test]
fn model_pack_builds_a_package_the_runtime_loads_with_reference_and_golden_members() {
    let dir = tempfile::tempdir().unwrap();
    let opk = dir.path().join("digits.opk");
    let v = pack_digits(&opk, &["--golden", "5"]);
    assert_eq!(v["reference"]["columns"], 65, "{v}");
    assert_eq!(v["reference"]["rows"], 450);
    assert_eq!(v["golden_rows"], 5);
    for member in [
        "model.onnx",
        "model.nnef.tar",
        "reference.bin",
        "golden/inputs.npz",
        "golden/outputs.npz",
    ] {
        assert!(v["members"].get(member).is_some(), "{member} missing: {v}");
    }

    let model =
        outpost_runtime::Model::load(&opk, &outpost_runtime::LoadOptions::default()).unwrap();
    let info = model.info();
    assert_eq!(info.version.as_deref(), Some("1.0.0"));
    assert_eq!(
        info.source,
        outpost_runtime::GraphSource::Nnef,
        "{:?}",
        info.preoptimized_skipped
    );
    assert_eq!(info.outputs[0].labels.len(), 10);
    assert_eq!(info.inputs[0].range.unwrap().max, 1.0);

    let pkg = outpost_runtime::Package::open(&opk, &Default::default()).unwrap();
    let m = pkg.manifest();
    assert_eq!(m.card.risk_class.as_deref(), Some("low"));
    assert_eq!(m.card.training.as_ref().unwrap().seed, Some(0));
    assert_eq!(m.inputs[0].feature_names.len(), 64);
    assert_eq!(
        m.runtime.as_ref().unwrap().tract_version,
        outpost_runtime::TRACT_VERSION
    );
    let reference = outpost_telemetry::ReferenceProfile::from_bytes(
        pkg.member("reference.bin").unwrap(),
        outpost_telemetry::REFERENCE_DECODE_LIMIT,
    )
    .unwrap();
    assert_eq!(reference.columns().len(), 65);
    assert_eq!(
        reference.column("class").unwrap().role(),
        outpost_telemetry::Role::Output
    );
    assert_eq!(
        reference.column("f63").unwrap().role(),
        outpost_telemetry::Role::Input
    );
    assert_eq!(reference.column("f0").unwrap().completeness().count, 450);

    let npz = |name: &str| {
        outpost_runtime::npy::read_npz(std::io::Cursor::new(pkg.member(name).unwrap()), name)
            .unwrap()
    };
    let (ins, outs) = (npz("golden/inputs.npz"), npz("golden/outputs.npz"));
    assert_eq!(ins[0].0, "input");
    assert_eq!(ins[0].1.shape(), &[5, 64]);
    let all = outpost_runtime::npy::read_npy(fixture("digits_test_x.npy")).unwrap();
    assert_eq!(
        ins[0].1,
        all.slice(0, 0, 5).unwrap(),
        "golden inputs are the first rows"
    );
    let got = model.run(vec![ins[0].1.clone()]).unwrap();
    assert_eq!(outs[0].0, "probabilities");
    let (want, got) = (
        outs[0].1.to_plain_array_view::<f32>().unwrap(),
        got[0].to_plain_array_view::<f32>().unwrap(),
    );
    assert_eq!(want.shape(), got.shape());
    for (a, b) in want.iter().zip(got.iter()) {
        assert!((a - b).abs() < 1e-5, "golden {a} vs run {b}");
    }
}

#[test]
fn model_pack_takes_a_csv_by_feature_name_and_an_eval_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = outpost_runtime::npy::read_npy(fixture("digits_test_x.npy")).unwrap();
    let y = outpost_runtime::npy::read_npy(fixture("digits_test_y.npy")).unwrap();
    let xs = x.to_plain_array_view::<f32>().unwrap();
    let ys = y.to_plain_array_view::<i64>().unwrap();
    let mut csv = (0..64)
        .map(|j| format!("px{j}"))
        .collect::<Vec<_>>()
        .join(",")
        + ",label\n";
    for i in 0..60 {
        let row: Vec<String> = (0..64).map(|j| xs[[i, j]].to_string()).collect();
        csv += &format!("{},{}\n", row.join(","), ys[[i]]);
    }
    let csv_path = d.join("ref.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let model = fixture("mlp_fp32.onnx");
    let pack = |card: &Path, eval: &Path, code: i32| {
        outpost_json(
            &[
                "model",
                "pack",
                "--model",
                s(&model),
                "--card",
                s(card),
                "--reference",
                s(&csv_path),
                "--eval",
                s(eval),
                "--no-preoptimized",
                "--out",
                s(&d.join("csv.opk")),
            ],
            code,
        )
    };
    let eval = d.join("eval.npz");
    outpost_runtime::npy::write_npz(
        &eval,
        &[("input".into(), x.clone()), ("labels".into(), y.clone())],
    )
    .unwrap();
    // Without feature names the CSV's 65 columns (with `label`) do not fit.
    let v = pack(&example_card(), &eval, 2);
    assert!(
        v["error"].as_str().unwrap().contains("65 feature columns"),
        "{v}"
    );

    let names: Vec<String> = (0..64).map(|j| format!("\"px{j}\"")).collect();
    let text = std::fs::read_to_string(example_card()).unwrap().replace(
        "# feature_names = [\"px0\", \"px1\", …]",
        &format!("feature_names = [{}]", names.join(", ")),
    );
    let card = d.join("card.toml");
    std::fs::write(&card, text).unwrap();
    let v = pack(&card, &eval, 0);
    assert_eq!(v["reference"]["rows"], 60, "{v}");
    assert!(v["members"].get("eval/eval.npz").is_some(), "{v}");
    assert!(v["members"].get("model.nnef.tar").is_none(), "{v}");
    let pkg = outpost_runtime::Package::open(d.join("csv.opk"), &Default::default()).unwrap();
    assert_eq!(pkg.manifest().inputs[0].feature_names[63], "px63");
    let reference = outpost_telemetry::ReferenceProfile::from_bytes(
        pkg.member("reference.bin").unwrap(),
        outpost_telemetry::REFERENCE_DECODE_LIMIT,
    )
    .unwrap();
    assert!(reference.column("px5").is_some() && reference.column("label").is_none());

    // An evaluation set without labels is refused.
    let bad = d.join("bad.npz");
    outpost_runtime::npy::write_npz(&bad, &[("input".into(), x)]).unwrap();
    let v = pack(&card, &bad, 2);
    assert!(v["error"].as_str().unwrap().contains("\"labels\""), "{v}");
}

#[test]
fn model_pack_refuses_a_card_listing_every_missing_field() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.toml");
    std::fs::write(
        &card,
        "name = \"digits\"\nversion = \"1.0.0\"\npurpose = \"tests\"\n[training]\nseed = 3\n",
    )
    .unwrap();
    let (model, x) = (fixture("mlp_fp32.onnx"), fixture("digits_test_x.npy"));
    let opk = dir.path().join("x.opk");
    let args = [
        "model",
        "pack",
        "--model",
        s(&model),
        "--card",
        s(&card),
        "--reference",
        s(&x),
        "--out",
        s(&opk),
    ];
    let out = outpost(&args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "owner",
        "intended_use",
        "data_sources",
        "training.dataset_version",
        "training.environment",
        "evaluation",
        "limitations",
        "failure_modes",
        "risk_class",
    ] {
        assert!(err.contains(field), "{field} not listed: {err}");
    }
    assert!(
        !err.contains("purpose") && !err.contains("training.seed"),
        "{err}"
    );
    assert!(!dir.path().join("x.opk").exists());
}

#[test]
fn model_sign_collects_a_two_of_two_release_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_keys(d, &["--release", "2", "--release-threshold", "2"]);
    let opk = d.join("digits.opk");
    pack_digits(&opk, &["--no-preoptimized", "--golden", "2"]);
    let root_file = d.join("root.signed");
    let sign = |key: &str, code: i32| {
        outpost_json(
            &[
                "model",
                "sign",
                s(&opk),
                "--key",
                s(&d.join(key)),
                "--root",
                s(&root_file),
            ],
            code,
        )
    };
    let v = sign("release-1.pk8", 0);
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(v["check"], "below_threshold");
    let release_file = d.join("digits.release");
    let first: Signed<ReleaseMetadata> = read_signed(&release_file);
    // The director key is no release key: refused before touching the file.
    let v = sign("director.pk8", 2);
    assert!(
        v["error"].as_str().unwrap().contains("not a release key"),
        "{v}"
    );
    let v = sign("release-2.pk8", 0);
    assert_eq!(v["complete"], true, "{v}");
    let v = sign("release-2.pk8", 0);
    assert_eq!(v["already_signed"], true);

    let release: Signed<ReleaseMetadata> = read_signed(&release_file);
    assert_eq!(
        release.payload, first.payload,
        "a second signature changed the payload"
    );
    assert_eq!(release.signatures.len(), 2);
    let state = TrustState::pinned(&read_signed(&root_file)).unwrap();
    let verified = verifier().verify_release(&state, &release, now()).unwrap();
    let target = &verified.metadata().targets[0];
    let bytes = std::fs::read(&opk).unwrap();
    assert_eq!(
        (target.name.as_str(), target.version.as_str()),
        ("digits", "1.0.0")
    );
    assert_eq!(target.sha256, Sha256::of(&bytes));
    assert_eq!(target.length, bytes.len() as u64);
    assert_eq!(target.constraints.min_memory_mb, Some(64));
    let mut check = ArtifactCheck::new(target);
    check.update(&bytes).unwrap();
    check.finish().unwrap();

    // Tampered after signing: the signed digest no longer matches.
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    assert_ne!(target.sha256, Sha256::of(&tampered));
    let mut check = ArtifactCheck::new(target);
    check.update(&tampered).unwrap();
    assert_eq!(check.finish().unwrap_err().check(), "hash_mismatch");
    // Another build under the same name and version cannot collect
    // signatures on this release file.
    let other = d.join("other.opk");
    pack_digits(&other, &["--no-preoptimized", "--golden", "3"]);
    let v = outpost_json(
        &[
            "model",
            "sign",
            s(&other),
            "--key",
            s(&d.join("release-1.pk8")),
            "--release",
            s(&release_file),
        ],
        1,
    );
    assert!(
        v["error"].as_str().unwrap().contains("but this package is"),
        "{v}"
    );
}

#[test]
fn a_reader_that_closes_the_pipe_early_gets_a_quiet_exit_not_a_panic() {
    // As `outpost … | head` does: the reader is gone before the output.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["keys", "init", "--dir", dir.path().to_str().unwrap()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
