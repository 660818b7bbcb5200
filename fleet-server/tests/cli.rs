//! The `outpost` binary, run as a user runs it.
#![allow(clippy::unwrap_used)]

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
