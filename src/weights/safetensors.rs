//! The safetensors container: an 8-byte little-endian header length, a JSON header mapping names
//! to `{dtype, shape, data_offsets}`, then the tensor bytes back to back.
//!
//! Written by hand rather than with the `safetensors` crate because both our uses need what it
//! does not offer: parsing a header as bytes stream in (the browser), and writing a header before
//! the data exists so multi-gigabyte tensors can be written row by row in bounded memory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Refuse headers beyond this: a corrupt length must not become a huge allocation.
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    I8,
    I32,
    /// Packed int4 weights: eight 4-bit values per little-endian word.
    U32,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I8 => 1,
        }
    }
}

/// One tensor of a safetensors file; offsets are absolute within the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Sorted by offset.
    pub entries: Vec<Entry>,
    /// Where the tensor data begins: 8 + the JSON length.
    pub data_start: u64,
    /// End of the last tensor: the size the file must have.
    pub file_size: u64,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// The JSON length encoded in a file's first 8 bytes.
pub fn json_len(prefix: [u8; 8]) -> Result<u64> {
    let len = u64::from_le_bytes(prefix);
    if len == 0 || len > MAX_HEADER_BYTES {
        return Err(Error::Weights(format!("invalid safetensors header length {len}")));
    }
    Ok(len)
}

/// Parses and validates the JSON header: known dtypes, byte sizes that match the shapes, and
/// tensors that tile the data region without gaps or overlaps.
pub fn parse_header(json: &[u8]) -> Result<Header> {
    let bad = |msg: String| Error::Weights(format!("safetensors header: {msg}"));
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| bad(format!("bad JSON ({e})")))?;
    let data_start = 8 + json.len() as u64;
    let mut entries = Vec::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let entry: RawEntry = serde_json::from_value(value).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let dtype = match entry.dtype.as_str() {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I8" => Dtype::I8,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            other => return Err(bad(format!("tensor {name} has unsupported dtype {other}"))),
        };
        let [start, end] = entry.data_offsets;
        let Some(expected) = byte_size(dtype, &entry.shape) else {
            return Err(bad(format!("tensor {name} {dtype:?} {:?} is larger than 2^64 bytes", entry.shape)));
        };
        if end < start || end - start != expected {
            return Err(bad(format!(
                "tensor {name} {:?} {:?} needs {expected} bytes, offsets give {}",
                dtype,
                entry.shape,
                end as i128 - start as i128
            )));
        }
        let (Some(start), Some(end)) = (data_start.checked_add(start), data_start.checked_add(end)) else {
            return Err(bad(format!("tensor {name} lies past 2^64 bytes")));
        };
        entries.push(Entry { name, dtype, shape: entry.shape, start, end });
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut cursor = data_start;
    for e in &entries {
        if e.start != cursor {
            return Err(bad(format!("tensor {} starts at {} but the previous data ends at {cursor}", e.name, e.start)));
        }
        cursor = e.end;
    }
    Ok(Header { entries, data_start, file_size: cursor })
}

/// The bytes of a tensor, or `None` where they do not fit in a u64 (in debug and release alike).
pub fn byte_size(dtype: Dtype, shape: &[usize]) -> Option<u64> {
    shape.iter().try_fold(dtype.size() as u64, |bytes, &n| bytes.checked_mul(n as u64))
}

/// The header of a whole safetensors file held in memory.
pub fn header_of(bytes: &[u8]) -> Result<Header> {
    let truncated = || Error::Weights("safetensors file truncated inside its header".into());
    let prefix = bytes.get(..8).ok_or_else(truncated)?;
    let len = json_len(prefix.try_into().expect("8 bytes"))?;
    let end = usize::try_from(8 + len).map_err(|_| truncated())?;
    parse_header(bytes.get(8..end).ok_or_else(truncated)?)
}

/// The bytes of a header (length prefix + JSON, space-padded to a multiple of 8) for tensors
/// laid out back to back in the given order.
pub fn write_header(tensors: &[(String, Dtype, Vec<usize>)], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), serde_json::to_value(metadata).expect("string map"));
    }
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let bytes = byte_size(*dtype, shape).expect("tensors being written fit in memory");
        map.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&map).expect("header serializes");
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_aligned() {
        let tensors = vec![("b".to_string(), Dtype::I8, vec![3, 5]), ("a".to_string(), Dtype::F32, vec![2])];
        let bytes = write_header(&tensors, &BTreeMap::from([("format".into(), "pt".into())]));
        assert_eq!(bytes.len() % 8, 0);
        let len = json_len(bytes[..8].try_into().unwrap()).unwrap();
        let header = parse_header(&bytes[8..8 + len as usize]).unwrap();
        let start = bytes.len() as u64;
        assert_eq!(header.entries[0].name, "b");
        assert_eq!((header.entries[0].start, header.entries[0].end), (start, start + 15));
        assert_eq!((header.entries[1].start, header.entries[1].end), (start + 15, start + 23));
        assert_eq!(header.file_size, start + 23);
        let packed = write_header(&[("p".to_string(), Dtype::U32, vec![2, 4])], &BTreeMap::new());
        let len = json_len(packed[..8].try_into().unwrap()).unwrap();
        let header = parse_header(&packed[8..8 + len as usize]).unwrap();
        assert!(std::str::from_utf8(&packed[8..]).unwrap().contains(r#""dtype":"U32""#));
        assert_eq!((header.entries[0].dtype, header.entries[0].end - header.entries[0].start), (Dtype::U32, 32));
    }

    #[test]
    fn rejects_inconsistent_headers() {
        let cases = [
            (r#"{"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}"#, "unsupported dtype F64"),
            (r#"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, "needs 12 bytes"),
            (r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#, "starts at"),
            (r#"{"w": {"dtype": "F32", "shape": [1]"#, "bad JSON"),
        ];
        for (json, message) in cases {
            let err = parse_header(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(message), "{err} should mention {message}");
        }
        assert!(json_len(u64::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn sizes_past_2_pow_64_are_errors_not_overflows() {
        let huge = format!(r#"{{"w": {{"dtype": "F32", "shape": [{0}, {0}], "data_offsets": [0, 0]}}}}"#, 1u64 << 32);
        let err = parse_header(huge.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("larger than 2^64"), "{err}");
        let far =
            format!(r#"{{"w": {{"dtype": "I8", "shape": [4], "data_offsets": [{}, {}]}}}}"#, u64::MAX - 4, u64::MAX);
        let err = parse_header(far.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("past 2^64"), "{err}");
    }
}
