//! The update machine's files (shell side): the persisted record, one slot
//! pointer file per model, downloads in progress and staged packages.
//!
//! ```text
//! {data_dir}/update/record.json          UpdateRecord (write_atomic)
//! {data_dir}/update/slots/{model}.json   SlotPointer: the commit point
//! {data_dir}/update/downloads/{sha}.part a download in progress
//! {data_dir}/update/packages/{sha}.opk   verified packages (active, previous, candidate)
//! ```
//!
//! Design: packages are named by digest, so the same bytes are never
//! stored twice and a pointer names exactly what was verified. Pointer
//! files are JSON for the operator reading them on a device; every write
//! is atomic (temporary file, fsync, rename, fsync of the folder), so a
//! power cut leaves the old pointer or the new one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use outpost_protocol::bytes::Sha256;
use outpost_protocol::messages::ModelRef;
use outpost_protocol::trust::TargetMeta;

use crate::store::write_atomic;
use crate::update::{SlotPointer, Slots, UpdateRecord};

/// The update machine's folder.
#[derive(Debug, Clone)]
pub struct UpdateFiles {
    root: PathBuf,
}

/// A model name that cannot be a file name here (signed names are still
/// names from outside: never let one reach outside its folder).
fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("model name {name:?} is not 1-128 of A-Z a-z 0-9 - _ . (not starting with .)"),
        ))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl UpdateFiles {
    /// Opens (creating) `{data_dir}/update`.
    pub fn open(data_dir: &Path) -> io::Result<UpdateFiles> {
        let root = data_dir.join("update");
        for sub in ["slots", "downloads", "packages"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(UpdateFiles { root })
    }

    pub fn download_path(&self, sha256: &Sha256) -> PathBuf {
        self.root.join("downloads").join(format!("{sha256}.part"))
    }

    pub fn package_path(&self, sha256: &Sha256) -> PathBuf {
        self.root.join("packages").join(format!("{sha256}.opk"))
    }

    fn pointer_path(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join("slots").join(format!("{name}.json")))
    }

    /// The persisted record, if the machine has written one.
    pub fn read_record(&self) -> io::Result<Option<UpdateRecord>> {
        match fs::read(self.root.join("record.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write_record(&self, record: &UpdateRecord) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        write_atomic(&self.root.join("record.json"), &bytes)
    }

    /// Every pointer file, by model name. A file that does not parse is an
    /// error naming it: the shell must not guess which model is active.
    pub fn read_slots(&self) -> io::Result<Slots> {
        let mut slots = Slots::new();
        for entry in fs::read_dir(self.root.join("slots"))? {
            let path = entry?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue; // temporary files of an interrupted write
            };
            if name.starts_with('.') {
                continue;
            }
            let pointer: SlotPointer = serde_json::from_slice(&fs::read(&path)?).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            slots.insert(name.to_owned(), pointer);
        }
        Ok(slots)
    }

    /// The commit point of a commit or rollback.
    pub fn write_pointer(&self, name: &str, pointer: &SlotPointer) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(pointer).map_err(io::Error::other)?;
        write_atomic(&self.pointer_path(name)?, &bytes)
    }

    /// The commit point of a retire.
    pub fn remove_pointer(&self, name: &str) -> io::Result<()> {
        let path = self.pointer_path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.root.join("slots")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves a verified download into the packages folder (fsync of the
    /// file and the folder). Idempotent: already staged is success.
    pub fn stage(&self, target: &TargetMeta) -> io::Result<PathBuf> {
        let (part, opk) = (
            self.download_path(&target.sha256),
            self.package_path(&target.sha256),
        );
        if !part.exists() && opk.exists() {
            return Ok(opk);
        }
        fs::File::open(&part)?.sync_all()?;
        fs::rename(&part, &opk)?;
        sync_dir(&self.root.join("packages"))?;
        Ok(opk)
    }

    /// Deletes a model's download and package (a discarded candidate, a
    /// dropped previous).
    pub fn delete(&self, model: &ModelRef) -> io::Result<()> {
        for path in [
            self.download_path(&model.sha256),
            self.package_path(&model.sha256),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes every package and download that no pointer and no entry of
    /// `keep` (the job in flight) references; returns what it removed.
    /// Run at start, after `restore`: a crash between a pointer write and
    /// the deletes after it leaves such files behind.
    pub fn cleanup(&self, slots: &Slots, keep: &[Sha256]) -> io::Result<Vec<PathBuf>> {
        let mut wanted: Vec<String> = keep.iter().map(Sha256::to_hex).collect();
        for p in slots.values() {
            wanted.push(p.active.sha256.to_hex());
            wanted.extend(p.previous.iter().map(|m| m.sha256.to_hex()));
        }
        let mut removed = Vec::new();
        for sub in ["downloads", "packages"] {
            for entry in fs::read_dir(self.root.join(sub))? {
                let path = entry?.path();
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if !wanted.iter().any(|w| w == stem) {
                    fs::remove_file(&path)?;
                    removed.push(path);
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn model(name: &str, b: u8) -> ModelRef {
        ModelRef {
            name: name.into(),
            version: format!("1.0.{b}"),
            sha256: Sha256([b; 32]),
        }
    }

    fn target(m: &ModelRef) -> TargetMeta {
        TargetMeta {
            name: m.name.clone(),
            version: m.version.clone(),
            sha256: m.sha256,
            length: 3,
            constraints: Default::default(),
        }
    }

    #[test]
    fn pointers_round_trip_and_retire_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = UpdateFiles::open(dir.path()).unwrap();
        assert!(f.read_slots().unwrap().is_empty());
        let p = SlotPointer {
            active: model("digits", 2),
            previous: Some(model("digits", 1)),
        };
        f.write_pointer("digits", &p).unwrap();
        // A temporary file of an interrupted write is ignored.
        std::fs::write(dir.path().join("update/slots/.digits.json.tmp"), b"{").unwrap();
        assert_eq!(f.read_slots().unwrap()["digits"], p);
        f.remove_pointer("digits").unwrap();
        f.remove_pointer("digits").unwrap();
        assert!(f.read_slots().unwrap().is_empty());
        assert!(f.read_record().unwrap().is_none());
    }

    #[test]
    fn names_that_could_escape_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = UpdateFiles::open(dir.path()).unwrap();
        let p = SlotPointer {
            active: model("x", 1),
            previous: None,
        };
        for bad in ["../etc", "a/b", "", ".hidden", "é"] {
            assert_eq!(
                f.write_pointer(bad, &p).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        // A corrupt pointer is an error naming it, not a guess.
        std::fs::write(dir.path().join("update/slots/m.json"), b"garbage").unwrap();
        let err = f.read_slots().unwrap_err();
        assert!(err.to_string().contains("m.json"), "{err}");
    }

    #[test]
    fn staging_is_idempotent_and_cleanup_keeps_what_is_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let f = UpdateFiles::open(dir.path()).unwrap();
        let (a, b, c, stray) = (model("m", 1), model("m", 2), model("m", 3), model("m", 4));
        for m in [&a, &b, &c, &stray] {
            std::fs::write(f.download_path(&m.sha256), b"abc").unwrap();
        }
        let staged = f.stage(&target(&a)).unwrap();
        assert!(staged.exists() && !f.download_path(&a.sha256).exists());
        assert_eq!(f.stage(&target(&a)).unwrap(), staged);
        f.stage(&target(&b)).unwrap();
        f.stage(&target(&stray)).unwrap();
        // Nothing to stage and nothing staged: an error, not a success.
        assert!(f.stage(&target(&model("m", 9))).is_err());
        let mut slots = Slots::new();
        slots.insert(
            "m".into(),
            SlotPointer {
                active: b.clone(),
                previous: Some(a.clone()),
            },
        );
        // c is the job in flight (still downloading); stray is garbage.
        let removed = f.cleanup(&slots, &[c.sha256]).unwrap();
        assert_eq!(removed, vec![f.package_path(&stray.sha256)]);
        assert!(f.package_path(&a.sha256).exists() && f.download_path(&c.sha256).exists());
        f.delete(&c).unwrap();
        f.delete(&c).unwrap();
        assert!(!f.download_path(&c.sha256).exists());
    }
}
