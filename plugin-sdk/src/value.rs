//! [`Value`]: any JSON value, usable as a task parameter or result in both codecs.
//!
//! `serde_json::Value` cannot be decoded from bincode (bincode is not self-describing).
//! This newtype is the JSON value itself in human-readable formats (JSON), and the
//! value's JSON text as a string in binary formats (bincode), so it round-trips in both.

use std::fmt;

use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

/// Any JSON value, in either codec.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Value(pub serde_json::Value);

impl Value {
    /// The JSON value inside.
    pub fn into_inner(self) -> serde_json::Value {
        self.0
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value(v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.0.serialize(serializer)
        } else {
            serializer.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            serde_json::Value::deserialize(deserializer).map(Value)
        } else {
            let text = String::deserialize(deserializer)?;
            serde_json::from_str(&text)
                .map(Value)
                .map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{abi::Codec, codec};

    #[test]
    fn round_trips_in_both_codecs() {
        let v = Value(serde_json::json!({"a": [1, 2.5, "x", null, true]}));
        for c in [Codec::Json, Codec::Bincode] {
            let bytes = codec::encode(c, &v).unwrap();
            let back: Value = codec::decode(c, &bytes).unwrap();
            assert_eq!(back, v);
        }
    }
}
