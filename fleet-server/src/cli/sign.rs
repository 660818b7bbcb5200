//! `outpost model sign`: release signatures, k-of-n.

use std::path::PathBuf;

use anyhow::{Context, Result};
use outpost_fleet::clock::{self, DAY};
use outpost_fleet::trust::{self, ReleaseError};
use outpost_protocol::trust::keys::SigningKey;
use outpost_protocol::trust::{ReleaseMetadata, Root, Signed, TrustError};
use outpost_runtime::{Package, PackageLimits};

use super::{CheckFailed, classify, emit, invalid};

#[derive(Debug, clap::Args)]
pub(crate) struct SignArgs {
    /// The package (.opk).
    package: PathBuf,
    /// This holder's release key (PKCS#8, mode 0600).
    #[arg(long)]
    key: PathBuf,
    /// The release metadata to create or add to (default: PACKAGE.release).
    #[arg(long)]
    release: Option<PathBuf>,
    /// The root (root.signed): check the key is a release key, and report
    /// whether the release threshold is met.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Expiry of new release metadata, in days (an existing file keeps its own).
    #[arg(long)]
    expires_days: Option<u64>,
}

/// Release metadata expires after this many days unless told otherwise.
const DEFAULT_EXPIRES_DAYS: u64 = 365;

pub(crate) fn run(args: SignArgs, json: bool) -> Result<()> {
    let bytes = std::fs::read(&args.package)
        .with_context(|| format!("reading {}", args.package.display()))
        .map_err(invalid)?;
    let origin = args.package.display().to_string();
    let pkg = Package::from_bytes(&bytes, &origin, &PackageLimits::default()).map_err(invalid)?;
    let target = trust::target_for(pkg.manifest(), &bytes);
    let path = args
        .release
        .clone()
        .unwrap_or_else(|| trust::release_path_for(&args.package));
    let existing: Option<Signed<ReleaseMetadata>> = if path.exists() {
        if args.expires_days.is_some() {
            return Err(invalid(anyhow::anyhow!(
                "{} exists: adding a signature never changes its payload, so --expires-days \
                 cannot apply (remove the file to start over)",
                path.display()
            )));
        }
        Some(trust::read_signed(&path, "release metadata").map_err(|e| {
            let inv = e.is_invalid_input();
            classify(e, inv)
        })?)
    } else {
        None
    };
    let root: Option<Signed<Root>> = match &args.root {
        Some(p) => Some(trust::read_signed(p, "root metadata").map_err(|e| {
            let inv = e.is_invalid_input();
            classify(e, inv)
        })?),
        None => None,
    };
    let root_meta = match &root {
        Some(r) => Some(r.decode_unverified().map_err(invalid)?),
        None => None,
    };
    let key = SigningKey::read(&args.key).map_err(invalid)?;
    let now = clock::now_unix();
    let expires = now.saturating_add(
        args.expires_days
            .unwrap_or(DEFAULT_EXPIRES_DAYS)
            .saturating_mul(DAY),
    );
    let created = existing.is_none();
    let (signed, already) =
        trust::add_release_signature(existing, &target, expires, &key, root_meta.as_ref())
            .map_err(|e| {
                let inv = matches!(
                    e,
                    ReleaseError::NotAReleaseKey { .. } | ReleaseError::Decode(_)
                );
                classify(e, inv)
            })?;
    trust::write_signed(&path, &signed, !created).map_err(|e| {
        let inv = e.is_invalid_input();
        classify(e, inv)
    })?;
    let status: Option<Result<(), TrustError>> = root
        .as_ref()
        .map(|r| trust::verify_release(r, &signed, now).map(|_| ()));
    let meta = signed.decode_unverified().map_err(invalid)?;
    let value = serde_json::json!({
        "ok": true,
        "release": path,
        "created": created,
        "already_signed": already,
        "key_id": key.key_id().to_hex(),
        "target": {
            "name": target.name,
            "version": target.version,
            "sha256": target.sha256.to_hex(),
            "length": target.length,
        },
        "expires": meta.expires,
        "expires_at": clock::rfc3339(meta.expires),
        "signed_by": signed.signatures.iter().map(|s| s.key_id.to_hex()).collect::<Vec<_>>(),
        "threshold": root_meta.as_ref().map(|r| r.release.threshold),
        "complete": status.as_ref().map(Result::is_ok),
        "check": status.as_ref().and_then(|s| s.as_ref().err()).map(TrustError::check),
    });
    // A missing signature is the expected state between holders; any other
    // refusal (expired, a bad signature in the file) is a failure.
    if let Some(Err(e)) = &status
        && !matches!(e, TrustError::BelowThreshold { .. })
    {
        return Err(anyhow::Error::new(CheckFailed {
            check: e.check(),
            message: format!("{}: {e}", path.display()),
            details: value,
        }));
    }
    emit(json, &value, || {
        let verb = if already { "already signed" } else { "signed" };
        println!(
            "{verb} {} {} (sha256 {}, {} bytes) with key {}",
            target.name,
            target.version,
            target.sha256,
            target.length,
            key.key_id()
        );
        println!(
            "release      {} ({} signature{}, expires {})",
            path.display(),
            signed.signatures.len(),
            if signed.signatures.len() == 1 {
                ""
            } else {
                "s"
            },
            clock::rfc3339(meta.expires)
        );
        match &status {
            Some(Ok(())) => {
                println!("status       complete: devices pinned to this root accept it")
            }
            Some(Err(e)) => println!("status       incomplete ({}): {e}", e.check()),
            None => {
                println!("status       unchecked (pass --root root.signed to check the threshold)")
            }
        }
    })
}
