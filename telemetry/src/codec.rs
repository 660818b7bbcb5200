//! Byte encoding shared by profiles and references: one format-version byte,
//! then postcard (the same framing as the protocol's payloads, ARCHITECTURE §7).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::DecodeError;

/// Format version of reference encodings (`reference.bin` in packages).
pub(crate) const REFERENCE_VERSION: u8 = 1;

/// Format version of window profiles and profile sets. Version 2 added
/// ground-truth feedback (a [`crate::Confusion`] per window and segment);
/// version 1 windows still decode, with empty feedback.
pub(crate) const WINDOW_VERSION: u8 = 2;

/// The first window format version that this build still reads.
pub(crate) const OLDEST_WINDOW_VERSION: u8 = 1;

pub(crate) fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Serializing into a Vec cannot fail for these types (no unsized
    // sequences); an empty body would be rejected on decode, so a failure
    // can never pass as a valid profile.
    if let Ok(body) = postcard::to_extend(value, Vec::new()) {
        out.extend_from_slice(&body);
    }
    out
}

/// Checks the size limit and the version byte (one of `oldest..=newest`);
/// returns the version and the body.
pub(crate) fn split<'a>(
    what: &'static str,
    bytes: &'a [u8],
    limit: usize,
    oldest: u8,
    newest: u8,
) -> Result<(u8, &'a [u8]), DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            what,
            len: bytes.len(),
            limit,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty { what })?;
    if !(oldest..=newest).contains(&version) {
        return Err(DecodeError::UnsupportedVersion {
            what,
            found: version,
            supported: newest,
        });
    }
    Ok((version, body))
}

/// Decodes a whole postcard body (trailing bytes are an error).
pub(crate) fn body<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|source| DecodeError::Postcard { what, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::Postcard {
            what,
            source: postcard::Error::DeserializeBadEncoding,
        });
    }
    Ok(value)
}

/// Decodes an encoding that has exactly one readable version.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    limit: usize,
    version: u8,
) -> Result<T, DecodeError> {
    let (_, rest) = split(what, bytes, limit, version, version)?;
    body(what, rest)
}

/// FNV-1a, 64-bit: a stable, dependency-free fingerprint for references.
/// Not a security hash: it only tells honest mismatches apart (the package
/// signature protects the reference itself).
#[derive(Debug)]
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Writes a length-prefixed string so that ("ab","c") ≠ ("a","bc").
    pub(crate) fn write_str(&mut self, s: &str) {
        self.write(&(s.len() as u64).to_le_bytes());
        self.write(s.as_bytes());
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// Decodes a window-format value: the current layout, or the version-1
/// layout `Old` converted (windows and sets share the versioning).
pub(crate) fn decode_window<T, Old>(
    what: &'static str,
    bytes: &[u8],
    limit: usize,
) -> Result<T, DecodeError>
where
    T: DeserializeOwned,
    Old: DeserializeOwned + Into<T>,
{
    let (version, rest) = split(what, bytes, limit, OLDEST_WINDOW_VERSION, WINDOW_VERSION)?;
    if version == WINDOW_VERSION {
        body(what, rest)
    } else {
        Ok(body::<Old>(what, rest)?.into())
    }
}
