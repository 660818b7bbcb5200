//! First boot: a configured model serves only if it verifies against the
//! pinned root; a broken store is recreated and serving goes on.

use outpost_agent::serve::LoadError;
use outpost_agent::{AgentState, StartError};
use outpost_protocol::trust::TrustError;

use crate::common::*;

fn start_err(w: &World, device: &str) -> StartError {
    AgentState::start(w.config(device, 1, "")).unwrap_err()
}

#[test]
fn a_tampered_package_is_refused_at_first_boot() {
    let w = World::new();
    let mut bytes = w.package.clone();
    let n = bytes.len();
    bytes[n / 2] ^= 0x20;
    std::fs::write(&w.package_path, &bytes).unwrap();
    match start_err(&w, "start-tampered") {
        StartError::Model(e) => assert!(matches!(*e, LoadError::NotReleased { .. }), "{e}"),
        other => panic!("{other}"),
    }
}

#[test]
fn expired_or_foreign_release_metadata_is_refused_at_first_boot() {
    let w = World::new();
    let target = w.target("digits", "1.0.0", &w.package);
    w.write_release(&w.release_path, std::slice::from_ref(&target), -1);
    match start_err(&w, "start-expired") {
        StartError::Model(e) => match *e {
            LoadError::Trust { source, .. } => assert_eq!(source.check(), "expired"),
            other => panic!("{other}"),
        },
        other => panic!("{other}"),
    }
    // Signed by a key the root does not know.
    let meta = outpost_protocol::trust::ReleaseMetadata {
        version: 1,
        expires: now() + 86_400,
        targets: vec![target],
    };
    let stranger = outpost_protocol::trust::keys::SigningKey::generate().unwrap();
    let signed = outpost_protocol::trust::keys::sign(
        &meta,
        outpost_protocol::trust::Role::Release,
        &[&stranger],
    )
    .unwrap();
    std::fs::write(
        &w.release_path,
        outpost_protocol::codec::encode(&signed).unwrap(),
    )
    .unwrap();
    match start_err(&w, "start-stranger") {
        StartError::Model(e) => match *e {
            LoadError::Trust { source, .. } => {
                assert!(matches!(source, TrustError::UnknownKey { .. }), "{source}")
            }
            other => panic!("{other}"),
        },
        other => panic!("{other}"),
    }
    // Garbage instead of metadata.
    std::fs::write(&w.release_path, b"garbage").unwrap();
    assert!(matches!(
        start_err(&w, "start-garbage"),
        StartError::Model(_)
    ));
}

#[test]
fn a_store_that_does_not_open_is_recreated_and_the_model_serves() {
    let w = World::new();
    let config = w.config("start-store", 1, "");
    // A file where the store's folder should be: sled cannot open it.
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::write(config.data_dir.join("store"), b"not a sled store").unwrap();
    let a = Running::start(config.clone());
    assert_eq!(get(&a.url("/readyz")).0, 200);
    let (_, metrics) = get(&a.url("/metrics"));
    assert!(
        metrics.contains("outpost_agent_store_recreated_total 1"),
        "{metrics}"
    );
    let moved = std::fs::read_dir(&config.data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("store.broken-"));
    assert!(moved, "the broken store was kept aside for inspection");
}

fn installed(config: &outpost_agent::config::AgentConfig) -> outpost_agent::update_fs::UpdateFiles {
    outpost_agent::update_fs::UpdateFiles::open(&config.data_dir).unwrap()
}

fn mref(version: &str, bytes: &[u8]) -> outpost_protocol::messages::ModelRef {
    outpost_protocol::messages::ModelRef {
        name: "digits".into(),
        version: version.into(),
        sha256: outpost_protocol::bytes::Sha256::of(bytes),
    }
}

#[test]
fn first_boot_installs_the_package_and_a_restart_serves_what_was_installed_since() {
    use outpost_agent::update::SlotPointer;
    let w = World::new();
    let config = w.config("start-installed", 1, "");
    let a = AgentState::start(config.clone()).unwrap();
    let files = installed(&config);
    let v1 = mref("1.0.0", &w.package);
    assert_eq!(files.read_slots().unwrap()["digits"].active, v1);
    assert!(files.package_path(&v1.sha256).exists());
    drop(a);

    // The update machine committed 2.0.0 (its package and pointer), and the
    // first-boot package's release metadata has since expired.
    let v2_bytes = package_bytes("digits", "2.0.0");
    let v2 = mref("2.0.0", &v2_bytes);
    std::fs::write(files.package_path(&v2.sha256), &v2_bytes).unwrap();
    files
        .write_pointer(
            "digits",
            &SlotPointer {
                active: v2.clone(),
                previous: Some(v1.clone()),
            },
        )
        .unwrap();
    let t1 = w.target("digits", "1.0.0", &w.package);
    w.write_release(&w.release_path, &[t1], -1);
    let a = AgentState::start(config.clone()).unwrap();
    let (active, previous) = a.host.slots_of("digits").unwrap();
    assert_eq!(active.version, "2.0.0");
    assert_eq!(previous.unwrap().version, "1.0.0");
    drop(a);

    // The installed 2.0.0 rots on disk: the previous verified model serves.
    let mut rotten = v2_bytes.clone();
    let n = rotten.len();
    rotten[n / 3] ^= 0x10;
    std::fs::write(files.package_path(&v2.sha256), &rotten).unwrap();
    let a = AgentState::start(config).unwrap();
    let (active, previous) = a.host.slots_of("digits").unwrap();
    assert_eq!(
        (active.version.as_str(), previous.is_none()),
        ("1.0.0", true)
    );
}
