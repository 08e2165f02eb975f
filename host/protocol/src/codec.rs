//! Encoding of task arguments and results, shared by plugins, the host and clients:
//! the one definition of the payload codecs.
//!
//! - [`Codec::Json`]: arguments are a JSON array matching the parameters in order
//!   (a task with no parameters also accepts an empty payload or `null`); the result
//!   is a JSON value.
//! - [`Codec::Bincode`]: arguments are a tuple of the parameters encoded with bincode 1
//!   in its standard form (`bincode::serialize`: fixed-width little-endian integers,
//!   lengths as u64); so is the result.
//!   Decoding is limited to [`MAX_PAYLOAD_BYTES`] so a hostile length prefix cannot
//!   allocate without bound.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

use crate::messages::Codec;

/// The largest payload or result a codec decodes.
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024 * 1024;

/// A payload that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// JSON encoding or decoding failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// bincode encoding or decoding failed.
    #[error("bincode: {0}")]
    Bincode(#[from] bincode::Error),
}

fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_PAYLOAD_BYTES)
}

/// Encodes `value` with `codec`.
pub fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(match codec {
        Codec::Json => serde_json::to_vec(value)?,
        Codec::Bincode => bincode_options().serialize(value)?,
    })
}

/// Decodes a `T` from `bytes` with `codec`.
pub fn decode<T: DeserializeOwned>(codec: Codec, bytes: &[u8]) -> Result<T, CodecError> {
    Ok(match codec {
        Codec::Json => serde_json::from_slice(bytes)?,
        Codec::Bincode => bincode_options().deserialize(bytes)?,
    })
}

/// Decodes the arguments of a task taking no parameters: anything empty is accepted.
pub fn decode_no_args(codec: Codec, bytes: &[u8]) -> Result<(), CodecError> {
    match codec {
        Codec::Json => {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            let value: serde_json::Value = serde_json::from_slice(bytes)?;
            match value {
                serde_json::Value::Null => Ok(()),
                serde_json::Value::Array(items) if items.is_empty() => Ok(()),
                other => Err(CodecError::Json(serde::de::Error::custom(format!(
                    "this task takes no arguments, got {other}"
                )))),
            }
        }
        Codec::Bincode => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_args_are_an_array() {
        let (x, y): (i64, i64) = decode(Codec::Json, b"[5, 3]").unwrap();
        assert_eq!((x, y), (5, 3));
        assert!(decode::<(i64, i64)>(Codec::Json, b"[5]").is_err());
        assert!(decode::<(i64, i64)>(Codec::Json, b"{").is_err());
    }

    #[test]
    fn bincode_round_trips_a_tuple() {
        let bytes = encode(Codec::Bincode, &(5i64, 3i64)).unwrap();
        assert_eq!(bytes, bincode::serialize(&(5i64, 3i64)).unwrap());
        let back: (i64, i64) = decode(Codec::Bincode, &bytes).unwrap();
        assert_eq!(back, (5, 3));
    }

    #[test]
    fn bincode_refuses_a_huge_length_prefix() {
        // A Vec<u8> claiming u64::MAX - 1 elements.
        let bytes = (u64::MAX - 1).to_le_bytes();
        assert!(decode::<Vec<u8>>(Codec::Bincode, &bytes).is_err());
    }

    #[test]
    fn no_args_accepts_empty_forms_only() {
        assert!(decode_no_args(Codec::Json, b"").is_ok());
        assert!(decode_no_args(Codec::Json, b"[]").is_ok());
        assert!(decode_no_args(Codec::Json, b"null").is_ok());
        assert!(decode_no_args(Codec::Json, b"[1]").is_err());
    }
}
