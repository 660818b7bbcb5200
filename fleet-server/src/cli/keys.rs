//! `outpost keys init|generate|show|rotate`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use outpost_fleet::clock::{self, DAY};
use outpost_fleet::trust::{self, Described, InitOptions, RotationChanges, TrustFileError};
use outpost_protocol::bytes::KeyId;
use outpost_protocol::trust::keys::{self, SigningKey};
use outpost_protocol::trust::{Role, Root, Signed};
use serde_json::{Value, json};

use super::{CheckFailed, classify, emit, invalid};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Generate root, release and director keys (PKCS#8, mode 0600, with
    /// .pub files) and root.signed, root version 1. Never overwrites.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Root keys to generate.
        #[arg(long, default_value_t = 1)]
        root: u32,
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// Release keys to generate.
        #[arg(long, default_value_t = 1)]
        release: u32,
        #[arg(long, default_value_t = 1)]
        release_threshold: u32,
        /// Days until root version 1 expires.
        #[arg(long, default_value_t = 365)]
        expires_days: u64,
    },
    /// Generate one key, e.g. for a holder who joins a role by rotation.
    Generate {
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Fingerprints of key files; version, expiry, roles and signers of
    /// root or release metadata.
    Show {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Write the next root version and sign it; or, when --out exists, add
    /// signatures to it. Exits 1, naming the check, until a threshold of
    /// both the current and the new root keys has signed.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    /// The current root (root.signed).
    #[arg(long)]
    root: PathBuf,
    /// The next root version (created, or signed when it exists).
    #[arg(long)]
    out: PathBuf,
    /// Public key (.pub) to add to the release role.
    #[arg(long)]
    add_release: Vec<PathBuf>,
    /// Key id (hex) to remove from the release role.
    #[arg(long)]
    remove_release: Vec<String>,
    /// Public key (.pub) to add to the root role.
    #[arg(long)]
    add_root: Vec<PathBuf>,
    /// Key id (hex) to remove from the root role.
    #[arg(long)]
    remove_root: Vec<String>,
    #[arg(long)]
    release_threshold: Option<u32>,
    #[arg(long)]
    root_threshold: Option<u32>,
    /// Days until the new version expires (default 365).
    #[arg(long)]
    expires_days: Option<u64>,
    /// Private root key(s) of the current or the new version to sign with.
    #[arg(long)]
    sign: Vec<PathBuf>,
}

fn lib(e: TrustFileError) -> anyhow::Error {
    let inv = e.is_invalid_input();
    classify(e, inv)
}

pub(crate) fn run(cmd: KeysCommand, json: bool) -> Result<()> {
    match cmd {
        KeysCommand::Init {
            dir,
            root,
            root_threshold,
            release,
            release_threshold,
            expires_days,
        } => {
            let opts = InitOptions {
                root,
                root_threshold,
                release,
                release_threshold,
                expires: clock::now_unix().saturating_add(expires_days.saturating_mul(DAY)),
            };
            let report = trust::init_keys(&dir, &opts).map_err(lib)?;
            let value = json!({
                "ok": true,
                "files": report.files,
                "root": root_json(&report.root),
            });
            emit(json, &value, || {
                for f in &report.files {
                    println!("wrote {}", f.display());
                }
                print_root(&report.root);
            })
        }
        KeysCommand::Generate { out } => {
            let id = trust::generate_key(&out).map_err(lib)?;
            let value = json!({"ok": true, "path": out, "key_id": id.to_hex()});
            emit(json, &value, || println!("{id}  {}", out.display()))
        }
        KeysCommand::Show { paths } => {
            let described = paths
                .iter()
                .map(|p| trust::describe(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(lib)?;
            let value = Value::Array(described.iter().map(describe_json).collect());
            emit(json, &value, || described.iter().for_each(print_described))
        }
        KeysCommand::Rotate(args) => rotate(args, json),
    }
}

fn ids(keys: &[KeyId]) -> Vec<String> {
    keys.iter().map(KeyId::to_hex).collect()
}

fn root_json(r: &Root) -> Value {
    let role = |role: Role| {
        let rk = r.role(role);
        json!({"threshold": rk.threshold, "keys": ids(&rk.keys)})
    };
    json!({
        "version": r.version,
        "expires": r.expires,
        "expires_at": clock::rfc3339(r.expires),
        "roles": {"root": role(Role::Root), "release": role(Role::Release), "director": role(Role::Director)},
    })
}

fn print_root(r: &Root) {
    println!(
        "root version {}, expires {}",
        r.version,
        clock::rfc3339(r.expires)
    );
    for role in [Role::Root, Role::Release, Role::Director] {
        let rk = r.role(role);
        println!("  {role:<9} {} of {} key(s)", rk.threshold, rk.keys.len());
        for k in &rk.keys {
            println!("    {k}");
        }
    }
}

fn describe_json(d: &Described) -> Value {
    match d {
        Described::Key { path, key_id } => {
            json!({"path": path, "kind": "key", "key_id": key_id.to_hex()})
        }
        Described::Root {
            path,
            root,
            signed_by,
            self_check,
        } => {
            let mut v = root_json(root);
            v["path"] = json!(path);
            v["kind"] = "root".into();
            v["signed_by"] = json!(ids(signed_by));
            v["self_signed"] = json!(self_check.is_ok());
            v["check"] = json!(self_check.err());
            v
        }
        Described::Release {
            path,
            release,
            signed_by,
        } => json!({
            "path": path,
            "kind": "release",
            "version": release.version,
            "expires": release.expires,
            "expires_at": clock::rfc3339(release.expires),
            "targets": release.targets.iter().map(|t| json!({
                "name": t.name, "version": t.version,
                "sha256": t.sha256.to_hex(), "length": t.length,
            })).collect::<Vec<_>>(),
            "signed_by": ids(signed_by),
        }),
        _ => json!({}),
    }
}

fn print_described(d: &Described) {
    match d {
        Described::Key { path, key_id } => println!("{key_id}  {}", path.display()),
        Described::Root {
            path,
            root,
            signed_by,
            self_check,
        } => {
            println!("{}:", path.display());
            print_root(root);
            let check = match self_check {
                Ok(()) => "verifies against its own root keys".to_owned(),
                Err(c) => format!("does not verify on its own ({c})"),
            };
            println!("  signed by {} key(s); {check}", signed_by.len());
        }
        Described::Release {
            path,
            release,
            signed_by,
        } => {
            println!(
                "{}: release metadata version {}, expires {}",
                path.display(),
                release.version,
                clock::rfc3339(release.expires)
            );
            for t in &release.targets {
                println!(
                    "  target {} {} sha256 {} ({} bytes)",
                    t.name, t.version, t.sha256, t.length
                );
            }
            println!("  signed by {}", ids(signed_by).join(", "));
        }
        _ => {}
    }
}

fn key_id(hex: &str) -> Result<KeyId> {
    KeyId::from_hex(hex.trim())
        .ok_or_else(|| invalid(anyhow::anyhow!("{hex:?} is not a key id (64 hex digits)")))
}

fn rotate(args: RotateArgs, json: bool) -> Result<()> {
    let current: Signed<Root> = trust::read_signed(&args.root, "root metadata").map_err(lib)?;
    let current_root = current.decode_unverified().map_err(invalid)?;
    let changing = !(args.add_release.is_empty()
        && args.remove_release.is_empty()
        && args.add_root.is_empty()
        && args.remove_root.is_empty()
        && args.release_threshold.is_none()
        && args.root_threshold.is_none()
        && args.expires_days.is_none());
    let exists = args.out.exists();
    let mut proposed: Signed<Root> = if exists {
        if changing {
            return Err(invalid(anyhow::anyhow!(
                "{} exists: to add signatures to it, pass only --root, --out and --sign \
                 (remove it to propose different changes)",
                args.out.display()
            )));
        }
        trust::read_signed(&args.out, "root metadata").map_err(lib)?
    } else {
        let public = |ps: &[PathBuf]| {
            ps.iter()
                .map(|p| keys::read_public(p).map_err(invalid))
                .collect::<Result<Vec<_>>>()
        };
        let changes = RotationChanges {
            add_root: public(&args.add_root)?,
            remove_root: args
                .remove_root
                .iter()
                .map(|h| key_id(h))
                .collect::<Result<_>>()?,
            add_release: public(&args.add_release)?,
            remove_release: args
                .remove_release
                .iter()
                .map(|h| key_id(h))
                .collect::<Result<_>>()?,
            root_threshold: args.root_threshold,
            release_threshold: args.release_threshold,
            expires: clock::now_unix()
                .saturating_add(args.expires_days.unwrap_or(365).saturating_mul(DAY)),
        };
        let next = trust::next_root(&current_root, &changes).map_err(lib)?;
        keys::sign(&next, Role::Root, &[]).map_err(invalid)?
    };
    let signers = args
        .sign
        .iter()
        .map(|p| SigningKey::read(p).map_err(invalid))
        .collect::<Result<Vec<_>>>()?;
    trust::sign_rotation(&current_root, &mut proposed, &signers).map_err(lib)?;
    trust::write_signed(&args.out, &proposed, exists).map_err(lib)?;
    let next = proposed.decode_unverified().map_err(invalid)?;
    let signed_by: Vec<KeyId> = proposed.signatures.iter().map(|s| s.key_id).collect();
    let count = |r: &Root| signed_by.iter().filter(|k| r.root.keys.contains(k)).count();
    let status = trust::rotation_status(&current, &proposed);
    let value = json!({
        "ok": status.is_ok(),
        "path": args.out,
        "root": root_json(&next),
        "signed_by": ids(&signed_by),
        "current_root_keys": {"signed": count(&current_root), "threshold": current_root.root.threshold},
        "new_root_keys": {"signed": count(&next), "threshold": next.root.threshold},
        "complete": status.is_ok(),
    });
    if let Err(e) = status {
        return Err(anyhow::Error::new(CheckFailed {
            check: e.check(),
            message: format!(
                "root version {} written to {} is not yet valid ({}): {e}; the next holder adds a \
                 signature with `outpost keys rotate --root {} --out {} --sign KEY.pk8`",
                next.version,
                args.out.display(),
                e.check(),
                args.root.display(),
                args.out.display()
            ),
            details: value,
        }));
    }
    emit(json, &value, || {
        println!(
            "root version {} is complete: {} of {} current and {} of {} new root keys signed",
            next.version,
            count(&current_root),
            current_root.root.threshold,
            count(&next),
            next.root.threshold
        );
        println!("wrote {}", args.out.display());
        print_root(&next);
    })
}
