//! Model packages (`.opk`): a tar archive of `manifest.toml`, the model and
//! its companions, each member hashed in the manifest (ARCHITECTURE §3).
//!
//! Reading is defensive: size limits are checked from the tar headers
//! before any member is read, member names cannot escape the package, only
//! regular files are accepted, every member must be listed with a matching
//! sha256, and nothing unlisted is accepted.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::{Component, Path};

use ring::digest;

use crate::error::PackageError;
use crate::manifest::{MANIFEST_FORMAT, Manifest, MemberDigest, ModelFormat};

/// Name of the manifest member.
pub const MANIFEST: &str = "manifest.toml";
/// Name of the ONNX model member.
pub const MODEL_ONNX: &str = "model.onnx";
/// Name of the pre-optimized (tract NNEF) member.
pub const MODEL_NNEF: &str = "model.nnef.tar";
/// Name of the reference profile member.
pub const REFERENCE: &str = "reference.bin";

/// Limits applied while reading a package from outside.
#[derive(Debug, Clone)]
pub struct PackageLimits {
    pub max_total_bytes: u64,
    pub max_member_bytes: u64,
    pub max_manifest_bytes: u64,
    pub max_members: usize,
}

impl Default for PackageLimits {
    fn default() -> Self {
        PackageLimits {
            max_total_bytes: 1 << 30,
            max_member_bytes: 1 << 30,
            max_manifest_bytes: 1 << 20,
            max_members: 4096,
        }
    }
}

/// A verified package held in memory.
#[derive(Debug, Clone)]
pub struct Package {
    origin: String,
    manifest: Manifest,
    members: BTreeMap<String, Vec<u8>>,
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// True when the bytes look like a tar archive (the `ustar` magic).
pub fn looks_like_package(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar")
}

impl Package {
    /// Reads and verifies a package file.
    pub fn open(path: impl AsRef<Path>, limits: &PackageLimits) -> Result<Package, PackageError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let archive = |reason: String| PackageError::Archive {
            path: origin.clone(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| archive(e.to_string()))?
            .len();
        if len > limits.max_total_bytes {
            return Err(PackageError::TooLarge {
                path: origin,
                what: "the package".into(),
                size: len,
                limit: limits.max_total_bytes,
            });
        }
        let bytes = std::fs::read(path).map_err(|e| archive(e.to_string()))?;
        Package::from_bytes(&bytes, &origin, limits)
    }

    /// Reads and verifies a package from bytes; `origin` names it in errors.
    pub fn from_bytes(
        bytes: &[u8],
        origin: &str,
        limits: &PackageLimits,
    ) -> Result<Package, PackageError> {
        let archive_err = |reason: String| PackageError::Archive {
            path: origin.into(),
            reason,
        };
        if bytes.len() as u64 > limits.max_total_bytes {
            return Err(PackageError::TooLarge {
                path: origin.into(),
                what: "the package".into(),
                size: bytes.len() as u64,
                limit: limits.max_total_bytes,
            });
        }
        if !looks_like_package(bytes) {
            return Err(archive_err("no tar header (is this an .opk file?)".into()));
        }
        let mut archive = tar::Archive::new(Cursor::new(bytes));
        let mut members = BTreeMap::new();
        let mut total = 0u64;
        let entries = archive.entries().map_err(|e| archive_err(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| archive_err(e.to_string()))?;
            let name = member_name(&entry, origin)?;
            let size = entry
                .header()
                .size()
                .map_err(|e| archive_err(e.to_string()))?;
            let limit = if name == MANIFEST {
                limits.max_manifest_bytes
            } else {
                limits.max_member_bytes
            };
            if size > limit {
                return Err(PackageError::TooLarge {
                    path: origin.into(),
                    what: format!("member {name:?}"),
                    size,
                    limit,
                });
            }
            total += size;
            if total > limits.max_total_bytes {
                return Err(PackageError::TooLarge {
                    path: origin.into(),
                    what: "the unpacked package".into(),
                    size: total,
                    limit: limits.max_total_bytes,
                });
            }
            if members.len() >= limits.max_members {
                return Err(PackageError::BadMember {
                    path: origin.into(),
                    member: name,
                    reason: format!("more than {} members", limits.max_members),
                });
            }
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(size)
                .read_to_end(&mut data)
                .map_err(|e| archive_err(e.to_string()))?;
            if data.len() as u64 != size {
                return Err(archive_err(format!("member {name:?} is truncated")));
            }
            if members.insert(name.clone(), data).is_some() {
                return Err(PackageError::BadMember {
                    path: origin.into(),
                    member: name,
                    reason: "appears twice".into(),
                });
            }
        }
        let manifest_bytes = members
            .remove(MANIFEST)
            .ok_or_else(|| PackageError::Manifest {
                path: origin.into(),
                reason: format!("no {MANIFEST} member"),
            })?;
        let manifest = parse_manifest(&manifest_bytes, origin)?;
        verify_members(&manifest, &members, origin)?;
        Ok(Package {
            origin: origin.into(),
            manifest,
            members,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where the package came from (a path), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A member's bytes, verified against the manifest.
    pub fn member(&self, name: &str) -> Option<&[u8]> {
        self.members.get(name).map(Vec::as_slice)
    }

    /// Names of all members but the manifest.
    pub fn member_names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// The ONNX model.
    pub fn model_bytes(&self) -> Result<&[u8], PackageError> {
        self.member(MODEL_ONNX)
            .ok_or_else(|| PackageError::Membership {
                path: self.origin.clone(),
                member: MODEL_ONNX.into(),
                reason: "is missing".into(),
            })
    }

    /// The pre-optimized form, when the package has one.
    pub fn preoptimized(&self) -> Option<&[u8]> {
        self.member(MODEL_NNEF)
    }
}

fn member_name(
    entry: &tar::Entry<'_, Cursor<&[u8]>>,
    origin: &str,
) -> Result<String, PackageError> {
    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let bad = |reason: &str| PackageError::BadMember {
        path: origin.into(),
        member: raw.clone(),
        reason: reason.into(),
    };
    if !entry.header().entry_type().is_file() {
        return Err(bad("not a regular file"));
    }
    let path = entry.path().map_err(|_| bad("name is not valid"))?;
    let mut parts = vec![];
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| bad("name is not UTF-8"))?
                    .to_owned(),
            ),
            Component::CurDir => {}
            _ => return Err(bad("name must be a relative path without `..`")),
        }
    }
    if parts.is_empty() {
        return Err(bad("empty name"));
    }
    Ok(parts.join("/"))
}

fn parse_manifest(bytes: &[u8], origin: &str) -> Result<Manifest, PackageError> {
    let err = |reason: String| PackageError::Manifest {
        path: origin.into(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| err("not UTF-8".into()))?;
    let m: Manifest = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    validate_manifest(&m).map_err(err)?;
    Ok(m)
}

/// Field checks that serde cannot express.
pub(crate) fn validate_manifest(m: &Manifest) -> Result<(), String> {
    if m.format_version != MANIFEST_FORMAT {
        return Err(format!(
            "format_version {} is not supported (expected {MANIFEST_FORMAT})",
            m.format_version
        ));
    }
    if m.name.is_empty()
        || m.name.len() > 128
        || !m
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "name {:?}: use 1–128 characters among A–Z a–z 0–9 - _ .",
            m.name
        ));
    }
    semver::Version::parse(&m.version)
        .map_err(|e| format!("version {:?} is not semver: {e}", m.version))?;
    if m.format == ModelFormat::Onnx && !m.members.contains_key(MODEL_ONNX) {
        return Err(format!(
            "format is onnx but {MODEL_ONNX} is not listed in members"
        ));
    }
    if m.inputs.is_empty() || m.outputs.is_empty() {
        return Err("inputs and outputs must be declared".into());
    }
    Ok(())
}

fn verify_members(
    m: &Manifest,
    members: &BTreeMap<String, Vec<u8>>,
    origin: &str,
) -> Result<(), PackageError> {
    for (name, digest) in &m.members {
        let data = members.get(name).ok_or_else(|| PackageError::Membership {
            path: origin.into(),
            member: name.clone(),
            reason: "is listed in the manifest but missing".into(),
        })?;
        let actual = sha256_hex(data);
        if actual != digest.sha256 || data.len() as u64 != digest.size {
            return Err(PackageError::HashMismatch {
                path: origin.into(),
                member: name.clone(),
                expected: format!("{} ({} bytes)", digest.sha256, digest.size),
                actual: format!("{actual} ({} bytes)", data.len()),
            });
        }
    }
    if let Some(extra) = members.keys().find(|k| !m.members.contains_key(*k)) {
        return Err(PackageError::Membership {
            path: origin.into(),
            member: extra.clone(),
            reason: "is present but not listed in the manifest".into(),
        });
    }
    Ok(())
}

/// Builds a package: add members, then write. The manifest's member list
/// is filled in from what was added.
#[derive(Debug, Clone)]
pub struct PackageBuilder {
    manifest: Manifest,
    members: BTreeMap<String, Vec<u8>>,
}

impl PackageBuilder {
    pub fn new(manifest: Manifest) -> Self {
        PackageBuilder {
            manifest,
            members: BTreeMap::new(),
        }
    }

    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    /// Adds (or replaces) a member. Names are relative paths with `/`.
    pub fn add(&mut self, name: &str, bytes: Vec<u8>) -> Result<&mut Self, PackageError> {
        let bad = |reason: &str| PackageError::BadMember {
            path: "(new package)".into(),
            member: name.into(),
            reason: reason.into(),
        };
        if name == MANIFEST {
            return Err(bad("the manifest is written by the builder"));
        }
        if name.is_empty()
            || name.starts_with('/')
            || name
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(bad(
                "name must be a relative path without `.` or `..` parts",
            ));
        }
        self.members.insert(name.to_owned(), bytes);
        Ok(self)
    }

    /// The package bytes: deterministic (sorted members, zero mtimes).
    pub fn to_bytes(&self) -> Result<Vec<u8>, PackageError> {
        let mut manifest = self.manifest.clone();
        manifest.members = self
            .members
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    MemberDigest {
                        sha256: sha256_hex(v),
                        size: v.len() as u64,
                    },
                )
            })
            .collect();
        let err = |reason: String| PackageError::Manifest {
            path: "(new package)".into(),
            reason,
        };
        validate_manifest(&manifest).map_err(err)?;
        let text = toml::to_string(&manifest).map_err(|e| err(e.to_string()))?;
        let mut tar = tar::Builder::new(Vec::new());
        let mut append = |name: &str, data: &[u8]| -> Result<(), PackageError> {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, data)
                .map_err(|e| err(e.to_string()))
        };
        append(MANIFEST, text.as_bytes())?;
        for (name, data) in &self.members {
            append(name, data)?;
        }
        tar.into_inner().map_err(|e| err(e.to_string()))
    }

    /// Writes the package atomically: a temporary file in the same
    /// directory, fsync, rename, fsync of the directory.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), PackageError> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        let err = |e: std::io::Error| PackageError::Archive {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("package")
        ));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}
