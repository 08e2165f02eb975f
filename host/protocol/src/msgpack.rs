//! [`value_len`]: where one MessagePack value ends, read off its markers without
//! decoding it.
//!
//! Version 3 headers are decoded straight from the frame's bytes, so strings (every
//! field name of every record) are borrowed, not copied out one by one through a
//! reader. That decoder does not say how much it read; this does, so a header with
//! bytes after its message is still refused.

/// The length of the one MessagePack value at the start of `bytes`, or `None` if it is
/// cut short or uses the one marker MessagePack leaves unused (`0xc1`). Iterative, so
/// nesting costs no stack; every value takes at least one byte, so the work is bounded
/// by `bytes.len()` whatever lengths the markers claim.
pub fn value_len(bytes: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    // Values still to step over: 1, plus each array's elements and each map's keys
    // and values as their markers are read.
    let mut values: u64 = 1;
    while values > 0 {
        values -= 1;
        let marker = *bytes.get(pos)?;
        pos += 1;
        let (skip, more): (u64, u64) = match marker {
            // positive and negative fixint, nil, false, true
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            // bin and str 8, 16, 32: a length, then the bytes
            0xc4 | 0xd9 => (be(bytes, &mut pos, 1)?, 0),
            0xc5 | 0xda => (be(bytes, &mut pos, 2)?, 0),
            0xc6 | 0xdb => (be(bytes, &mut pos, 4)?, 0),
            // ext 8, 16, 32: a length, a type byte, then the bytes
            0xc7 => (be(bytes, &mut pos, 1)? + 1, 0),
            0xc8 => (be(bytes, &mut pos, 2)? + 1, 0),
            0xc9 => (be(bytes, &mut pos, 4)? + 1, 0),
            // float 32 and 64, uint and int 8 to 64
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            // fixext 1, 2, 4, 8, 16: a type byte and the data
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            // array 16 and 32, map 16 and 32
            0xdc => (0, be(bytes, &mut pos, 2)?),
            0xdd => (0, be(bytes, &mut pos, 4)?),
            0xde => (0, 2 * be(bytes, &mut pos, 2)?),
            0xdf => (0, 2 * be(bytes, &mut pos, 4)?),
            0xc1 => return None,
        };
        pos = pos.checked_add(usize::try_from(skip).ok()?)?;
        if pos > bytes.len() {
            return None;
        }
        values = values.checked_add(more)?;
    }
    Some(pos)
}

/// The big-endian number of `width` bytes at `pos`, stepping past it.
fn be(bytes: &[u8], pos: &mut usize, width: usize) -> Option<u64> {
    let end = pos.checked_add(width)?;
    let field = bytes.get(*pos..end)?;
    *pos = end;
    Some(field.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Sample {
        name: String,
        numbers: Vec<i64>,
        floats: (f32, f64),
        blob: serde_bytes_like::Blob,
        nested: Vec<Option<(bool, String)>>,
        map: std::collections::BTreeMap<String, u64>,
    }

    mod serde_bytes_like {
        /// Bytes written as MessagePack `bin`.
        pub struct Blob(pub Vec<u8>);

        impl serde::Serialize for Blob {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    fn encoded(seed: u64, len: usize) -> Vec<u8> {
        let sample = Sample {
            name: "x".repeat(len),
            numbers: vec![
                0,
                1,
                -1,
                127,
                128,
                -33,
                255,
                256,
                65_536,
                i64::MIN,
                i64::MAX,
                seed as i64,
            ],
            floats: (1.5, f64::MAX),
            blob: serde_bytes_like::Blob(vec![7; len * 3]),
            nested: vec![None, Some((true, "y".repeat(len % 40)))],
            map: (0..(len % 20) as u64)
                .map(|i| (format!("k{i}"), i.wrapping_mul(seed)))
                .collect(),
        };
        rmp_serde::to_vec_named(&sample).unwrap()
    }

    proptest! {
        #[test]
        fn it_finds_the_end_of_any_encoded_value(seed in any::<u64>(), len in 0usize..70_000) {
            let bytes = encoded(seed, len);
            prop_assert_eq!(value_len(&bytes), Some(bytes.len()));
            // Followed by anything, it still ends where it ends.
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[0xc0, 0x01]);
            prop_assert_eq!(value_len(&longer), Some(bytes.len()));
            // Cut anywhere, it is cut short.
            let cut = (seed as usize) % bytes.len();
            prop_assert_eq!(value_len(&bytes[..cut]), None);
        }
    }

    #[test]
    fn markers_that_claim_more_than_there_is_are_cut_short() {
        assert_eq!(value_len(&[]), None);
        assert_eq!(value_len(&[0xc1]), None);
        // An array of 2^32 - 1 elements with none present.
        assert_eq!(value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff]), None);
        // A map of 2^32 - 1 pairs with one present.
        assert_eq!(value_len(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02]), None);
        // A str32 claiming 4 GiB.
        assert_eq!(value_len(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']), None);
        // ext8 and fixext.
        assert_eq!(value_len(&[0xc7, 0x02, 0x05, 0xaa, 0xbb]), Some(5));
        assert_eq!(value_len(&[0xd4, 0x05, 0xaa]), Some(3));
        assert_eq!(value_len(&[0x92, 0x01, 0xa1, b'z', 0xff]), Some(4));
    }

    #[test]
    fn every_marker_with_a_length_or_a_count_is_stepped_over() {
        // array 16 and 32, map 16 and 32, as an encoder writes them.
        let long: Vec<u32> = (0..70_000).collect();
        let map: std::collections::BTreeMap<u32, bool> = (0..20).map(|i| (i, true)).collect();
        let big_map: std::collections::BTreeMap<u32, ()> = (0..70_000).map(|i| (i, ())).collect();
        for bytes in [
            rmp_serde::to_vec(&long[..20]).unwrap(),
            rmp_serde::to_vec(&long).unwrap(),
            rmp_serde::to_vec(&map).unwrap(),
            rmp_serde::to_vec(&big_map).unwrap(),
        ] {
            assert!(matches!(bytes[0], 0xdc..=0xdf), "{:#x}", bytes[0]);
            assert_eq!(value_len(&bytes), Some(bytes.len()));
            assert_eq!(value_len(&bytes[..bytes.len() - 1]), None);
        }
        // ext 16 and 32 (length, type, data), fixext 2, 4, 8, 16 (type, data).
        let mut ext16 = vec![0xc8, 0x01, 0x00, 0x07];
        ext16.extend(vec![0xaa; 256]);
        let mut ext32 = vec![0xc9, 0x00, 0x01, 0x00, 0x00, 0x07];
        ext32.extend(vec![0xaa; 65_536]);
        for (marker, data) in [(0xd5u8, 2usize), (0xd6, 4), (0xd7, 8), (0xd8, 16)] {
            let mut fixext = vec![marker, 0x07];
            fixext.extend(vec![0xaa; data]);
            assert_eq!(value_len(&fixext), Some(fixext.len()));
            assert_eq!(value_len(&fixext[..fixext.len() - 1]), None);
        }
        for bytes in [ext16, ext32] {
            assert_eq!(value_len(&bytes), Some(bytes.len()));
            assert_eq!(value_len(&bytes[..bytes.len() - 1]), None);
        }
        // Negative fixint, nil, booleans.
        assert_eq!(value_len(&[0x93, 0xe0, 0xc0, 0xc3]), Some(4));
    }
}
