//! The persisted encodings of the embedded store's values (schema version 1).
//!
//! A record is `[flags u8][create_revision i64][mod_revision i64][version i64][lease i64]`
//! followed by the value, integers little-endian; flag bit 0 marks a deletion (tombstone). A
//! change list (the keys one revision wrote, in operation order) is a sequence of
//! `[len u32][key]`.

use bytes::Bytes;

use crate::{KeyValue, Revision};

const HEADER: usize = 1 + 8 * 4;
const TOMBSTONE: u8 = 1;

/// A decoding failure: the file is not what this schema wrote.
#[derive(Debug, thiserror::Error)]
#[error("corrupt {what}: {len} bytes")]
pub struct CorruptError {
    /// What was being decoded.
    pub what: &'static str,
    /// How long it was.
    pub len: usize,
}

/// One version of a key: a live pair or a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub tombstone: bool,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl Record {
    pub fn tombstone(mod_revision: Revision) -> Self {
        Record {
            tombstone: true,
            create_revision: 0,
            mod_revision,
            version: 0,
            lease: 0,
            value: Vec::new(),
        }
    }

    pub fn from_kv(kv: &KeyValue) -> Self {
        Record {
            tombstone: false,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
            value: kv.value.to_vec(),
        }
    }

    pub fn into_kv(self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.into(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.value.len());
        out.push(if self.tombstone { TOMBSTONE } else { 0 });
        for n in [self.create_revision, self.mod_revision, self.version, self.lease] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptError> {
        RecordRef::decode(bytes).map(RecordRef::to_owned)
    }
}

/// A record read in place: the header decoded, the value still borrowed from the page, so a
/// range that only counts or skips a version copies nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub tombstone: bool,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub lease: i64,
    pub value: &'a [u8],
}

impl<'a> RecordRef<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, CorruptError> {
        if bytes.len() < HEADER || bytes[0] & !TOMBSTONE != 0 {
            return Err(CorruptError { what: "record", len: bytes.len() });
        }
        let int = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[1 + 8 * i..1 + 8 * (i + 1)]);
            i64::from_le_bytes(b)
        };
        Ok(RecordRef {
            tombstone: bytes[0] & TOMBSTONE != 0,
            create_revision: int(0),
            mod_revision: int(1),
            version: int(2),
            lease: int(3),
            value: &bytes[HEADER..],
        })
    }

    pub fn to_owned(self) -> Record {
        Record {
            tombstone: self.tombstone,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            value: self.value.to_vec(),
        }
    }

    /// The pair, its value copied unless `keys_only`.
    pub fn to_kv(self, key: &[u8], keys_only: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: if keys_only { Bytes::new() } else { Bytes::copy_from_slice(self.value) },
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

pub(crate) fn encode_keys(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| k.len() + 4).sum());
    for k in keys {
        // Keys are bounded far below 4 GiB by the API server's request size limits.
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
    }
    out
}

pub(crate) fn decode_keys(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, CorruptError> {
    let total = bytes.len();
    let corrupt = || CorruptError { what: "change list", len: total };
    let mut keys = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(corrupt());
        }
        keys.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_garbage() {
        let r = Record {
            tombstone: false,
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: -7,
            value: b"v".to_vec(),
        };
        assert_eq!(Record::decode(&r.encode()).expect("decodes"), r);
        let t = Record::tombstone(12);
        assert_eq!(Record::decode(&t.encode()).expect("decodes"), t);
        assert!(Record::decode(&[0; 5]).is_err());
        let mut bad = r.encode();
        bad[0] = 0x80;
        assert!(Record::decode(&bad).is_err());
    }

    #[test]
    fn change_lists_round_trip_and_reject_truncation() {
        let keys = vec![b"a".to_vec(), Vec::new(), b"/registry/pods/x".to_vec()];
        let enc = encode_keys(&keys);
        assert_eq!(decode_keys(&enc).expect("decodes"), keys);
        assert!(decode_keys(&enc[..enc.len() - 1]).is_err());
    }
}
