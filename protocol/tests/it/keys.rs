//! Key files: generation, modes, fingerprints, interop with OpenSSL.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use outpost_protocol::trust::keys::{self, KeyError, SigningKey};
use outpost_protocol::trust::{Role, TrustState};

use crate::common::World;

#[test]
fn generated_keys_are_written_0600_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("release-1.pk8");
    let key = SigningKey::generate().unwrap();
    key.write(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = keys::public_path(&path);
    assert_eq!(
        std::fs::read_to_string(&public).unwrap().trim(),
        key.public_key().to_hex()
    );
    let back = SigningKey::read(&path).unwrap();
    assert_eq!(back.key_id(), key.key_id());
    // The fingerprint is the same from either file, and is the key id.
    assert_eq!(keys::fingerprint(&path).unwrap(), key.key_id());
    assert_eq!(keys::fingerprint(&public).unwrap(), key.key_id());
    assert_eq!(keys::read_public(&public).unwrap(), key.public_key());
    // Signatures from the reread key verify like the original's.
    assert_eq!(
        back.sign(Role::Release, b"x"),
        key.sign(Role::Release, b"x")
    );
}

#[test]
fn an_existing_key_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.pk8");
    let first = SigningKey::generate().unwrap();
    first.write(&path).unwrap();
    let err = SigningKey::generate().unwrap().write(&path).unwrap_err();
    assert!(
        matches!(&err, KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
    );
    assert_eq!(SigningKey::read(&path).unwrap().key_id(), first.key_id());
}

#[test]
fn a_private_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("director.pk8");
    SigningKey::generate().unwrap().write(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        SigningKey::read(&path).unwrap_err(),
        KeyError::Permissions { mode: 0o644, .. }
    ));
}

#[test]
fn a_file_that_is_not_a_key_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk");
    std::fs::write(&path, b"not a key").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        SigningKey::read(&path).unwrap_err(),
        KeyError::Malformed { .. }
    ));
    assert!(matches!(
        keys::fingerprint(&path).unwrap_err(),
        KeyError::Malformed { .. }
    ));
    assert!(matches!(
        keys::fingerprint(&dir.path().join("missing")).unwrap_err(),
        KeyError::Io { .. }
    ));
}

#[test]
fn keys_generated_by_openssl_can_sign() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openssl.der");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "ed25519",
            "-outform",
            "DER",
            "-out",
        ])
        .arg(&path)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            crate::common::skip_or_fail(&format!("openssl genpkey failed: {other:?}"));
            return;
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = SigningKey::read(&path).unwrap();
    // Use it as a root key: a pinned root signed by it verifies.
    let mut w = World::new();
    w.root.keys.push(key.public_key());
    w.root.root.keys = vec![key.key_id()];
    w.root.root.threshold = 1;
    let signed = keys::sign(&w.root, Role::Root, &[&key]).unwrap();
    TrustState::pinned(&signed).unwrap();
}
