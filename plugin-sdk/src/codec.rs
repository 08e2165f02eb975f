//! Encoding of task arguments and results: the ABI's [`Codec`] over the one
//! definition of the payload codecs, in `fastworker-protocol` (shared with the host
//! and clients).
//!
//! - [`Codec::Json`]: arguments are a JSON array matching the parameters in order
//!   (a task with no parameters also accepts an empty payload or `null`); the result
//!   is a JSON value.
//! - [`Codec::Bincode`]: arguments are a tuple of the parameters encoded with bincode 1
//!   in its standard form; so is the result. Decoding is limited to
//!   [`MAX_PAYLOAD_BYTES`].

use fastworker_protocol::codec as wire;
use serde::{de::DeserializeOwned, Serialize};

use crate::abi::Codec;

pub use wire::{CodecError, MAX_PAYLOAD_BYTES};

impl From<Codec> for fastworker_protocol::Codec {
    fn from(codec: Codec) -> Self {
        match codec {
            Codec::Json => fastworker_protocol::Codec::Json,
            Codec::Bincode => fastworker_protocol::Codec::Bincode,
        }
    }
}

/// Encodes `value` with `codec`.
pub fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Vec<u8>, CodecError> {
    wire::encode(codec.into(), value)
}

/// Decodes a `T` from `bytes` with `codec`.
pub fn decode<T: DeserializeOwned>(codec: Codec, bytes: &[u8]) -> Result<T, CodecError> {
    wire::decode(codec.into(), bytes)
}

/// Decodes the arguments of a task taking no parameters: anything empty is accepted.
pub fn decode_no_args(codec: Codec, bytes: &[u8]) -> Result<(), CodecError> {
    wire::decode_no_args(codec.into(), bytes)
}
