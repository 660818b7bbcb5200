//! Checking a downloaded artifact against its signed length and digest,
//! chunk by chunk as it arrives, so an endless-data attack is cut off at
//! the signed length instead of filling the disk.

use std::io::Read;

use super::error::TrustError;
use super::metadata::TargetMeta;
use crate::bytes::Sha256;

/// Incremental check of one artifact.
pub struct ArtifactCheck {
    expected: Sha256,
    length: u64,
    seen: u64,
    digest: ring::digest::Context,
}

impl std::fmt::Debug for ArtifactCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCheck")
            .field("expected", &self.expected)
            .field("length", &self.length)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl ArtifactCheck {
    pub fn new(target: &TargetMeta) -> Self {
        ArtifactCheck {
            expected: target.sha256,
            length: target.length,
            seen: 0,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// Bytes accepted so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Feeds the next chunk; fails as soon as the total passes the signed
    /// length (the caller stops downloading and discards the file).
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), TrustError> {
        let total = self.seen.saturating_add(chunk.len() as u64);
        if total > self.length {
            return Err(TrustError::EndlessData {
                length: self.length,
            });
        }
        self.digest.update(chunk);
        self.seen = total;
        Ok(())
    }

    /// Length and digest must both match.
    pub fn finish(self) -> Result<(), TrustError> {
        if self.seen != self.length {
            return Err(TrustError::LengthMismatch {
                expected: self.length,
                got: self.seen,
            });
        }
        let mut got = [0u8; 32];
        got.copy_from_slice(self.digest.finish().as_ref());
        let got = Sha256(got);
        if got != self.expected {
            return Err(TrustError::HashMismatch {
                expected: self.expected,
                got,
            });
        }
        Ok(())
    }
}

/// Reads `reader` to its end (never more than the signed length + 1 bytes)
/// and checks it against `target`. I/O errors are the caller's to report
/// and are passed through unchanged.
pub fn check_reader(
    target: &TargetMeta,
    reader: impl Read,
) -> std::io::Result<Result<(), TrustError>> {
    let mut check = ArtifactCheck::new(target);
    // One byte past the signed length is enough to prove endless data.
    let mut limited = reader.take(target.length.saturating_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match limited.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(check.finish());
        }
        if let Err(e) = check.update(&buf[..n]) {
            return Ok(Err(e));
        }
    }
}
