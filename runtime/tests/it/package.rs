//! Model packages: round trip, pre-optimized form, and every way a package
//! can be tampered with or malformed.

use outpost_runtime::manifest::{ModelCard, ModelFormat, TargetConstraints};
use outpost_runtime::package::{MODEL_NNEF, MODEL_ONNX};
use outpost_runtime::{
    Error, GraphSource, InputError, LoadOptions, Manifest, Model, Package, PackageBuilder,
    PackageError, PackageLimits, Tensor, ValueRange,
};

use crate::common::{f32s, fixtures, max_abs_diff};

fn manifest_for(model: &Model) -> Manifest {
    let info = model.info();
    let mut inputs = info.inputs.clone();
    inputs[0].range = Some(ValueRange { min: 0.0, max: 1.0 });
    let mut outputs = info.outputs.clone();
    outputs[0].labels = (0..10).map(|d| d.to_string()).collect();
    Manifest {
        format_version: 1,
        name: "digits-mlp".into(),
        version: "1.2.0".into(),
        created_at: "2026-11-26T00:00:00Z".into(),
        format: ModelFormat::Onnx,
        inputs,
        outputs,
        target: TargetConstraints::default(),
        card: ModelCard {
            purpose: Some("test".into()),
            ..ModelCard::default()
        },
        runtime: None,
        members: Default::default(),
    }
}

fn builder(with_nnef: bool) -> PackageBuilder {
    let onnx = std::fs::read(fixtures().join("digits/mlp_fp32.onnx")).unwrap();
    let model = Model::from_onnx_bytes(&onnx, "mlp", None, &LoadOptions::default()).unwrap();
    let mut b = PackageBuilder::new(manifest_for(&model));
    b.add(MODEL_ONNX, onnx.clone()).unwrap();
    if with_nnef {
        let (nnef, _) = outpost_runtime::preoptimize(&onnx, &LoadOptions::default()).unwrap();
        b.add(MODEL_NNEF, nnef).unwrap();
        b.manifest_mut().runtime = Some(outpost_runtime::manifest::RuntimeInfo {
            tract_version: outpost_runtime::TRACT_VERSION.into(),
            strategy: Some("float".into()),
            measured_on: None,
        });
    }
    b
}

fn digits_batch() -> Tensor {
    outpost_runtime::npy::read_npy(fixtures().join("digits/digits_test_x.npy")).unwrap()
}

#[test]
fn a_package_round_trips_and_runs_like_its_onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.opk");
    builder(false).write(&path).unwrap();
    let pkg = Package::open(&path, &PackageLimits::default()).unwrap();
    assert_eq!(pkg.manifest().version, "1.2.0");
    let from_pkg = Model::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(from_pkg.info().source, GraphSource::Onnx);
    assert_eq!(from_pkg.info().version.as_deref(), Some("1.2.0"));
    assert_eq!(from_pkg.info().outputs[0].labels.len(), 10);
    let plain = Model::load(
        fixtures().join("digits/mlp_fp32.onnx"),
        &LoadOptions::default(),
    )
    .unwrap();
    let x = digits_batch();
    let a = f32s(&from_pkg.run(vec![x.clone()]).unwrap()[0]);
    let b = f32s(&plain.run(vec![x]).unwrap()[0]);
    assert_eq!(a, b);
}

#[test]
fn the_preoptimized_form_is_preferred_and_computes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.opk");
    builder(true).write(&path).unwrap();
    let fast = Model::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(
        fast.info().source,
        GraphSource::Nnef,
        "{:?}",
        fast.info().preoptimized_skipped
    );
    let slow = Model::load(
        &path,
        &LoadOptions {
            use_preoptimized: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(slow.info().source, GraphSource::Onnx);
    let x = digits_batch();
    let a = f32s(&fast.run(vec![x.clone()]).unwrap()[0]);
    let b = f32s(&slow.run(vec![x]).unwrap()[0]);
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn a_preoptimized_form_from_another_tract_release_is_skipped_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.opk");
    let mut b = builder(true);
    b.manifest_mut().runtime.as_mut().unwrap().tract_version = "0.1.0".into();
    b.write(&path).unwrap();
    let m = Model::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(m.info().source, GraphSource::Onnx);
    assert!(
        m.info()
            .preoptimized_skipped
            .as_deref()
            .unwrap()
            .contains("0.1.0")
    );
}

#[test]
fn manifest_ranges_are_enforced_on_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.opk");
    builder(false).write(&path).unwrap();
    let m = Model::load(&path, &LoadOptions::default()).unwrap();
    let mut x = Tensor::zero::<f32>(&[1, 64]).unwrap();
    x.to_plain_array_view_mut::<f32>()
        .unwrap()
        .as_slice_mut()
        .unwrap()[5] = 7.0;
    match m.run(vec![x.clone()]) {
        Err(Error::Input(InputError::OutOfRange { index: 5, .. })) => {}
        other => panic!("expected OutOfRange, got {other:?}"),
    }
    x.to_plain_array_view_mut::<f32>()
        .unwrap()
        .as_slice_mut()
        .unwrap()[5] = f32::NAN;
    assert!(matches!(
        m.run(vec![x]),
        Err(Error::Input(InputError::OutOfRange { index: 5, .. }))
    ));
}

/// Rewrites one member's bytes inside a package, keeping the manifest.
fn tamper(bytes: &[u8], member: &str, f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut ar = tar::Archive::new(std::io::Cursor::new(bytes));
    let mut out = tar::Builder::new(Vec::new());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = vec![];
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if name == member {
            f(&mut data);
        }
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, &name, &*data).unwrap();
    }
    out.into_inner().unwrap()
}

fn open(bytes: &[u8]) -> Result<Package, PackageError> {
    Package::from_bytes(bytes, "test.opk", &PackageLimits::default())
}

#[test]
fn a_flipped_byte_in_the_model_is_a_hash_mismatch() {
    let good = builder(false).to_bytes().unwrap();
    let bad = tamper(&good, MODEL_ONNX, |d| d[100] ^= 1);
    match open(&bad) {
        Err(PackageError::HashMismatch { member, .. }) => assert_eq!(member, MODEL_ONNX),
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    // And through Model::load, the same typed error.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.opk");
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        Model::load(&path, &LoadOptions::default()),
        Err(Error::Package(PackageError::HashMismatch { .. }))
    ));
}

#[test]
fn an_edited_manifest_no_longer_matches_its_members() {
    let good = builder(false).to_bytes().unwrap();
    // Someone swaps the model but also fixes the size in the manifest: the hash still differs.
    let bad = tamper(&good, MODEL_ONNX, |d| d.truncate(d.len() - 1));
    assert!(matches!(open(&bad), Err(PackageError::HashMismatch { .. })));
    let bad = tamper(&good, "manifest.toml", |d| {
        let s = String::from_utf8(d.clone())
            .unwrap()
            .replace("version = \"1.2.0\"", "version = \"one\"");
        *d = s.into_bytes();
    });
    match open(&bad) {
        Err(PackageError::Manifest { reason, .. }) => {
            assert!(reason.contains("semver"), "{reason}")
        }
        other => panic!("expected a manifest error, got {other:?}"),
    }
}

#[test]
fn unlisted_members_and_escaping_names_are_rejected() {
    let good = builder(false).to_bytes().unwrap();
    let mut ar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    ar.append_data(&mut h, "extra.bin", &b"abc"[..]).unwrap();
    let extra = ar.into_inner().unwrap();
    // Concatenate: good members then one more (drop the good archive's end blocks).
    let mut with_extra = good[..good.len() - 1024].to_vec();
    with_extra.extend_from_slice(&extra);
    assert!(matches!(
        open(&with_extra),
        Err(PackageError::Membership { .. })
    ));

    let mut raw = good[..good.len() - 1024].to_vec();
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_entry_type(tar::EntryType::Regular);
    // Write a `..` name by hand: tar::Builder refuses to produce one.
    h.as_old_mut().name[..9].copy_from_slice(b"../evil\0\0");
    h.set_cksum();
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&[b'x'; 512]);
    raw.extend_from_slice(&[0; 1024]);
    assert!(
        matches!(open(&raw), Err(PackageError::BadMember { .. })),
        "{:?}",
        open(&raw)
    );
}

#[test]
fn truncated_and_oversized_packages_are_refused() {
    let good = builder(false).to_bytes().unwrap();
    for cut in [0, 100, 600, good.len() / 2, good.len() - 1100] {
        let err = open(&good[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                PackageError::Archive { .. }
                    | PackageError::Manifest { .. }
                    | PackageError::Membership { .. }
            ),
            "cut at {cut}: {err:?}"
        );
    }
    let small = PackageLimits {
        max_member_bytes: 1000,
        ..PackageLimits::default()
    };
    assert!(matches!(
        Package::from_bytes(&good, "t", &small),
        Err(PackageError::TooLarge { .. })
    ));
    let tiny = PackageLimits {
        max_total_bytes: 2000,
        ..PackageLimits::default()
    };
    assert!(matches!(
        Package::from_bytes(&good, "t", &tiny),
        Err(PackageError::TooLarge { .. })
    ));
}

#[test]
fn package_bytes_are_deterministic() {
    assert_eq!(
        builder(false).to_bytes().unwrap(),
        builder(false).to_bytes().unwrap()
    );
}

#[test]
fn reference_variants_have_a_preoptimized_form_that_computes_the_same() {
    let mut failures = vec![];
    for v in [
        "mlp_fp32",
        "mlp_qdq_pt",
        "mlp_qdq_pc",
        "mlp_qop",
        "mlp_dyn",
        "cnn_fp32",
        "cnn_qdq_pt",
        "cnn_qdq_pc",
        "cnn_qop",
        "cnn_dyn",
    ] {
        let onnx = std::fs::read(fixtures().join(format!("digits/{v}.onnx"))).unwrap();
        let reference = Model::from_onnx_bytes(&onnx, v, None, &LoadOptions::default()).unwrap();
        let (nnef, decision) = match outpost_runtime::preoptimize(&onnx, &LoadOptions::default()) {
            Ok(done) => done,
            // tract-onnx keeps DynamicQuantizeLinearU8 private, so it cannot
            // be given an NNEF serializer: a typed error that names it.
            Err(e) if v.ends_with("_dyn") && e.to_string().contains("DynamicQuantizeLinearU8") => {
                continue;
            }
            Err(e) => {
                failures.push(format!("{v}: {e}"));
                continue;
            }
        };
        let mut b = PackageBuilder::new(manifest_for(&reference));
        b.add(MODEL_ONNX, onnx)
            .unwrap()
            .add(MODEL_NNEF, nnef)
            .unwrap();
        b.manifest_mut().runtime = Some(outpost_runtime::manifest::RuntimeInfo {
            tract_version: outpost_runtime::TRACT_VERSION.into(),
            strategy: None,
            measured_on: None,
        });
        let pkg =
            Package::from_bytes(&b.to_bytes().unwrap(), v, &PackageLimits::default()).unwrap();
        let fast = match Model::from_package(&pkg, &LoadOptions::default()) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{v}: {e}"));
                continue;
            }
        };
        assert_eq!(
            fast.info().source,
            GraphSource::Nnef,
            "{v}: {:?}",
            fast.info().preoptimized_skipped
        );
        assert_eq!(fast.info().strategy.strategy, decision.strategy, "{v}");
        let x = crate::digits::test_x(if v.starts_with("cnn") { "cnn" } else { "mlp" });
        // Inputs of the digits split lie in [0, 1]; the manifest says so.
        let a = f32s(&fast.run(vec![x.clone()]).unwrap()[0]);
        let b = f32s(&reference.run(vec![x]).unwrap()[0]);
        let diff = max_abs_diff(&a, &b);
        if diff > 1e-5 {
            failures.push(format!("{v}: pre-optimized output differs by {diff}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_strategy_measured_at_pack_time_on_this_architecture_is_used_at_load() {
    let onnx = std::fs::read(fixtures().join("digits/cnn_qop.onnx")).unwrap();
    let model = Model::from_onnx_bytes(&onnx, "cnn", None, &LoadOptions::default()).unwrap();
    let load = |arch: &str| {
        let mut m = manifest_for(&model);
        m.runtime = Some(outpost_runtime::manifest::RuntimeInfo {
            tract_version: outpost_runtime::TRACT_VERSION.into(),
            // The opposite of what this machine measures, so the test can
            // tell the recorded choice from a fresh measurement.
            strategy: Some("integer".into()),
            measured_on: Some(arch.into()),
        });
        let mut b = PackageBuilder::new(m);
        b.add(MODEL_ONNX, onnx.clone()).unwrap();
        let pkg = Package::from_bytes(&b.to_bytes().unwrap(), "cnn.opk", &PackageLimits::default())
            .unwrap();
        Model::from_package(&pkg, &LoadOptions::default()).unwrap()
    };
    let here = load(std::env::consts::ARCH);
    assert_eq!(
        here.info().strategy.strategy,
        outpost_runtime::ExecStrategy::Integer
    );
    assert!(
        here.info()
            .strategy
            .reason
            .contains("recorded in its manifest"),
        "{}",
        here.info().strategy.reason
    );
    assert!(
        here.info().strategy.integer_ms.is_none(),
        "nothing was measured at load"
    );
    let elsewhere = load("riscv64");
    assert!(
        elsewhere
            .info()
            .strategy
            .reason
            .starts_with("measured at load"),
        "{}",
        elsewhere.info().strategy.reason
    );
}

/// Regression: the pre-optimized path skipped the engine check, so an
/// explicit GPU request was served by the CPU. A package with a
/// pre-optimized form either runs on the GPU engine (which lowers its ONNX
/// member) or is refused with a typed error: never a CPU run.
#[test]
fn a_gpu_request_is_refused_for_packages_with_a_preoptimized_form_too() {
    let bytes = builder(true).to_bytes().unwrap();
    let pkg = Package::from_bytes(&bytes, "mlp.opk", &PackageLimits::default()).unwrap();
    let opts = LoadOptions {
        engine: Some(outpost_runtime::EngineKind::Gpu),
        ..LoadOptions::default()
    };
    match Model::from_package(&pkg, &opts) {
        Ok(model) => {
            assert!(outpost_runtime::gpu::probe().available);
            assert_eq!(model.info().engine, outpost_runtime::EngineKind::Gpu);
            assert_eq!(model.info().source, outpost_runtime::GraphSource::Onnx);
            assert!(model.info().preoptimized_skipped.is_some());
        }
        Err(err) => {
            assert!(!outpost_runtime::gpu::probe().available, "{err}");
            assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        }
    }
}

/// And a package whose model the GPU engine cannot run (ArgMax, which it
/// lacks) is refused when the GPU is requested, pre-optimized form or not.
#[test]
fn a_gpu_request_for_a_package_the_gpu_cannot_run_is_refused() {
    use crate::common::onnx::{attr_i, model, value_info, value_info_any};
    let argmax = tract_onnx::pb::NodeProto {
        name: "pick".into(),
        op_type: "ArgMax".into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        attribute: vec![attr_i("axis", 1), attr_i("keepdims", 0)],
        ..Default::default()
    };
    let onnx = model(
        vec![argmax],
        vec![],
        vec![value_info("x", &[1, 10])],
        vec![value_info_any("y")],
    );
    let cpu = Model::from_onnx_bytes(&onnx, "argmax", None, &LoadOptions::default()).unwrap();
    let mut manifest = manifest_for(&cpu);
    manifest.inputs[0].range = None;
    manifest.outputs[0].labels = vec![];
    let mut b = PackageBuilder::new(manifest);
    b.add(MODEL_ONNX, onnx.clone()).unwrap();
    let (nnef, _) = outpost_runtime::preoptimize(&onnx, &LoadOptions::default()).unwrap();
    b.add(MODEL_NNEF, nnef).unwrap();
    b.manifest_mut().runtime = Some(outpost_runtime::manifest::RuntimeInfo {
        tract_version: outpost_runtime::TRACT_VERSION.into(),
        strategy: Some("float".into()),
        measured_on: None,
    });
    let bytes = b.to_bytes().unwrap();
    let pkg = Package::from_bytes(&bytes, "argmax.opk", &PackageLimits::default()).unwrap();
    let opts = LoadOptions {
        engine: Some(outpost_runtime::EngineKind::Gpu),
        ..LoadOptions::default()
    };
    let err = Model::from_package(&pkg, &opts).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    if outpost_runtime::gpu::probe().available {
        assert!(err.to_string().contains("ArgMax"), "{err}");
    }
    // The CPU still serves it from the pre-optimized form.
    let m = Model::from_package(&pkg, &LoadOptions::default()).unwrap();
    assert_eq!(m.info().source, GraphSource::Nnef);
}
