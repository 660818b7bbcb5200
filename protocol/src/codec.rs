//! Payload encoding (ARCHITECTURE §7): one version byte, then postcard; and
//! a JSON encoding of the same types for other IoT platforms.
//!
//! Decoders take a size limit and return [`DecodeError`] on anything that
//! is not exactly one well-formed message of the expected type: empty,
//! oversized, unknown version, truncated, trailing bytes, garbage.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The wire version this build writes and reads.
pub const WIRE_VERSION: u8 = 1;

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty payload")]
    Empty,
    /// Larger than the caller's limit; nothing was parsed.
    #[error("payload is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// A version byte this build does not know (a newer peer, or garbage).
    #[error("unknown wire version {0} (this build reads {WIRE_VERSION})")]
    UnknownVersion(u8),
    /// The bytes end before the message does.
    #[error("truncated payload: {0}")]
    Truncated(String),
    /// Bytes remain after a complete message.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// The bytes are not a message of the expected type.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// Why a message could not be encoded (a type serde cannot express).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(String);

/// `[WIRE_VERSION] ++ postcard(msg)`.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![WIRE_VERSION];
    out.extend(postcard::to_stdvec(msg).map_err(|e| EncodeError(e.to_string()))?);
    Ok(out)
}

/// Decodes exactly one message of type `T` from at most `limit` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated(e.to_string()),
        other => DecodeError::Malformed(other.to_string()),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// The JSON form of a message (no version byte: JSON is self-describing).
pub fn encode_json<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    serde_json::to_vec(msg).map_err(|e| EncodeError(e.to_string()))
}

/// Decodes one JSON message of type `T` from at most `limit` bytes.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            DecodeError::Truncated(e.to_string())
        } else {
            DecodeError::Malformed(e.to_string())
        }
    })
}
