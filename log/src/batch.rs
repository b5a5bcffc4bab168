//! The record-batch format (see `docs/log-format.md`).
//!
//! A batch is a 48-byte header followed by its records. All integers are little-endian.
//! The CRC32 (Castagnoli is not used: plain CRC-32/ISO-HDLC from `crc32fast`) covers bytes
//! `[24, length)`, i.e. everything from `version` to the end of the last record. The base
//! offset and leader epoch sit before the CRC'd region, as in Kafka, so that the writer can
//! assign them without re-hashing the batch the caller already encoded; they are verified by
//! offset contiguity instead.
//!
//! ```text
//!  0 u64 base_offset      assigned by the writer
//!  8 u32 length           whole batch in bytes, header included
//! 12 u32 leader_epoch     assigned by the writer
//! 16 u32 magic            "AXLB"
//! 20 u32 crc32            over [24, length)
//! 24 u8  version          1
//! 25 u8  reserved         0
//! 26 u16 attributes       0 (no compression); other values are refused
//! 28 u32 record_count     >= 1
//! 32 i64 first_timestamp  ms since the Unix epoch
//! 40 i64 max_timestamp    ms since the Unix epoch
//! 48 ... records
//! ```
//!
//! A record is `varint body_len`, then the body: `varint offset_delta`, `zigzag-varint
//! timestamp_delta` (from `first_timestamp`), `varint key_len + 1` (0 = no key) and the key,
//! `varint value_len` and the value, `varint header_count`, and for each header `varint
//! name_len`, the UTF-8 name, `varint value_len` and the value.

use bytes::Bytes;

use crate::builder::BatchBuilder;
#[cfg(test)]
use crate::record::Header;
use crate::record::{now_ms, Record, RecordView, StoredRecord};

/// Size of the batch header in bytes.
pub const HEADER_LEN: usize = 48;
/// The magic number, `b"AXLB"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"AXLB");
/// The only batch format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Byte position of the magic inside the header.
pub const MAGIC_POS: usize = 16;
pub(crate) const CRC_START: usize = 24;

/// Why bytes could not be taken as a batch. Kept as a plain enum so that recovery can tell
/// "no batch starts here" from "a batch starts here but is damaged".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchDefect {
    /// Fewer bytes than a header or than the declared length.
    Truncated {
        have: usize,
        need: usize,
    },
    /// The magic number is wrong: no batch starts here.
    BadMagic,
    /// Length field outside `[HEADER_LEN, max]`.
    BadLength(u32),
    BadVersion(u8),
    UnsupportedAttributes(u16),
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
    /// The records inside a CRC-valid batch do not parse (a bug or deliberate tampering).
    BadRecords(&'static str),
    /// The base offset (outside the CRC) does not continue the previous batch.
    OffsetGap {
        expected: u64,
        found: u64,
    },
}

impl std::fmt::Display for BatchDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchDefect::Truncated { have, need } => {
                write!(f, "truncated batch: {have} bytes present, {need} needed")
            }
            BatchDefect::BadMagic => write!(f, "no batch magic"),
            BatchDefect::BadLength(l) => write!(f, "implausible batch length {l}"),
            BatchDefect::BadVersion(v) => write!(f, "unknown batch version {v}"),
            BatchDefect::UnsupportedAttributes(a) => write!(f, "unsupported attributes {a:#x}"),
            BatchDefect::CrcMismatch { stored, computed } => {
                write!(f, "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            BatchDefect::BadRecords(why) => write!(f, "malformed records: {why}"),
            BatchDefect::OffsetGap { expected, found } => {
                write!(f, "base offset {found} where {expected} was expected (offsets are contiguous)")
            }
        }
    }
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub length: u32,
    pub leader_epoch: u32,
    pub crc: u32,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
}

impl BatchHeader {
    /// Offset one past the last record of the batch (saturating: a damaged base offset, which
    /// the CRC does not cover, must not overflow).
    pub fn next_offset(&self) -> u64 {
        self.base_offset.saturating_add(u64::from(self.record_count))
    }

    /// Parses and sanity-checks a header (not the CRC). `max_len` bounds the length field.
    pub fn parse(buf: &[u8], max_len: usize) -> Result<BatchHeader, BatchDefect> {
        if buf.len() < HEADER_LEN {
            return Err(BatchDefect::Truncated { have: buf.len(), need: HEADER_LEN });
        }
        if le_u32(buf, MAGIC_POS) != MAGIC {
            return Err(BatchDefect::BadMagic);
        }
        let length = le_u32(buf, 8);
        if (length as usize) < HEADER_LEN || length as usize > max_len {
            return Err(BatchDefect::BadLength(length));
        }
        if buf[24] != VERSION {
            return Err(BatchDefect::BadVersion(buf[24]));
        }
        let attributes = u16::from_le_bytes([buf[26], buf[27]]);
        if attributes != 0 {
            return Err(BatchDefect::UnsupportedAttributes(attributes));
        }
        let record_count = le_u32(buf, 28);
        if record_count == 0 {
            return Err(BatchDefect::BadRecords("batch with zero records"));
        }
        Ok(BatchHeader {
            base_offset: le_u64(buf, 0),
            length,
            leader_epoch: le_u32(buf, 12),
            crc: le_u32(buf, 20),
            record_count,
            first_timestamp: le_u64(buf, 32) as i64,
            max_timestamp: le_u64(buf, 40) as i64,
        })
    }
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses a header and verifies the CRC of a whole batch held in `buf` (which may extend
/// beyond the batch). Returns the header; the batch is `buf[..header.length]`.
pub fn verify(buf: &[u8], max_len: usize) -> Result<BatchHeader, BatchDefect> {
    let header = BatchHeader::parse(buf, max_len)?;
    let len = header.length as usize;
    if buf.len() < len {
        return Err(BatchDefect::Truncated { have: buf.len(), need: len });
    }
    let computed = crc32fast::hash(&buf[CRC_START..len]);
    if computed != header.crc {
        return Err(BatchDefect::CrcMismatch { stored: header.crc, computed });
    }
    Ok(header)
}

/// A batch encoded by the caller, waiting for the writer to assign its base offset and epoch.
#[derive(Debug)]
pub struct EncodedBatch {
    pub(crate) buf: Vec<u8>,
    pub(crate) record_count: u32,
    pub(crate) first_timestamp: i64,
    pub(crate) max_timestamp: i64,
    /// Distinct `key_hash`es of the records' keys, for the key index.
    pub(crate) key_hashes: Vec<u32>,
}

impl EncodedBatch {
    /// Encodes `records` into one batch. Each key, value and header is copied exactly once.
    /// Records without a timestamp get the current time.
    pub fn encode(records: &[Record]) -> EncodedBatch {
        // Read the clock only if some record needs it (the broker stamps its own).
        let stamped = !records.is_empty() && records.iter().all(|r| r.timestamp.is_some());
        let now = if stamped { 0 } else { now_ms() };
        let body_estimate: usize = records
            .iter()
            .map(|r| {
                24 + r.value.len()
                    + r.key.as_ref().map_or(0, |k| k.len())
                    + r.headers.iter().map(|h| 10 + h.key.len() + h.value.len()).sum::<usize>()
            })
            .sum();
        let mut b = BatchBuilder::with_capacity(body_estimate);
        for r in records {
            let headers = r.headers.iter().map(|h| (h.key.as_str(), &h.value[..]));
            b.push(r.timestamp.unwrap_or(now), r.key.as_deref(), &r.value, headers);
        }
        b.finish().unwrap_or_else(|| {
            // No records: a bare header, which `Partition` refuses before it gets here.
            let buf = vec![0; HEADER_LEN];
            EncodedBatch { buf, record_count: 0, first_timestamp: now, max_timestamp: now, key_hashes: Vec::new() }
        })
    }

    /// The encoded batch; its base offset and leader epoch are still zero (the writer's).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Total encoded size in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Always false: a batch holds at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Stamps the writer-assigned fields and freezes the buffer.
    pub(crate) fn seal(mut self, base_offset: u64, leader_epoch: u32) -> Bytes {
        self.buf[0..8].copy_from_slice(&base_offset.to_le_bytes());
        self.buf[12..16].copy_from_slice(&leader_epoch.to_le_bytes());
        // A `Vec` with spare capacity becomes a `Bytes` through a second allocation (its
        // shared header); a trimmed one does not. The builder reserves an estimate, so trim
        // when at least half of it is used: allocators shrink that in place, where a smaller
        // fill would be copied to a new block.
        if self.buf.len() * 2 >= self.buf.capacity() {
            self.buf.shrink_to_fit();
        }
        Bytes::from(self.buf)
    }
}

/// Decodes the records of a verified batch. `batch` must be exactly the batch's bytes and
/// `header` its verified header. Never panics on malformed input.
pub fn decode_records(batch: &Bytes, header: &BatchHeader) -> Result<Vec<StoredRecord>, BatchDefect> {
    // Each record takes at least 6 bytes, so the batch length bounds the allocation.
    let mut out = Vec::with_capacity((header.record_count as usize).min(batch.len() / 6));
    for_each_record(batch, header, |r| {
        out.push(r.to_stored());
        true
    })?;
    Ok(out)
}

/// Walks the records of a verified batch (as [`decode_records`]) without building them:
/// `f` sees each record as a [`RecordView`] borrowed from `batch`, in offset order, and
/// returns whether to go on. No allocation per record. A defect found in record `n` is
/// returned after `f` has seen records `0..n`; callers that must not act on part of a
/// damaged batch collect first and drop what they collected on error.
pub fn for_each_record<'a>(
    batch: &'a Bytes,
    header: &BatchHeader,
    mut f: impl FnMut(RecordView<'a>) -> bool,
) -> Result<(), BatchDefect> {
    let mut pos = HEADER_LEN;
    let end = batch.len();
    for expected_delta in 0..header.record_count as u64 {
        let body_len = get_varint(batch, &mut pos)? as usize;
        let body_end = pos
            .checked_add(body_len)
            .filter(|e| *e <= end)
            .ok_or(BatchDefect::BadRecords("record runs past the batch"))?;
        let delta = get_varint(batch, &mut pos)?;
        if delta != expected_delta {
            return Err(BatchDefect::BadRecords("offset deltas are not contiguous"));
        }
        let ts_delta = unzigzag(get_varint(batch, &mut pos)?);
        let key_len = get_varint(batch, &mut pos)?;
        let key = if key_len == 0 { None } else { Some(take(batch, &mut pos, key_len as usize - 1, body_end)?) };
        let value_len = get_varint(batch, &mut pos)? as usize;
        let value = take(batch, &mut pos, value_len, body_end)?;
        let header_count = get_varint(batch, &mut pos)?;
        if header_count > body_len as u64 {
            return Err(BatchDefect::BadRecords("header count exceeds record size"));
        }
        let headers_start = pos;
        for _ in 0..header_count {
            let kl = get_varint(batch, &mut pos)? as usize;
            let k = take(batch, &mut pos, kl, body_end)?;
            if std::str::from_utf8(k).is_err() {
                return Err(BatchDefect::BadRecords("header name is not UTF-8"));
            }
            let vl = get_varint(batch, &mut pos)? as usize;
            take(batch, &mut pos, vl, body_end)?;
        }
        if pos != body_end {
            return Err(BatchDefect::BadRecords("record length does not match its fields"));
        }
        // The base offset is outside the CRC: a damaged one must not overflow.
        let offset = header
            .base_offset
            .checked_add(expected_delta)
            .ok_or(BatchDefect::BadRecords("record offset overflows (damaged base offset)"))?;
        let view = RecordView {
            offset,
            timestamp: header.first_timestamp.wrapping_add(ts_delta),
            leader_epoch: header.leader_epoch,
            batch,
            key,
            value,
            headers: &batch[headers_start..body_end],
            header_count: header_count as usize,
        };
        if !f(view) {
            return Ok(());
        }
    }
    if pos != end {
        return Err(BatchDefect::BadRecords("trailing bytes after the last record"));
    }
    Ok(())
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, len: usize, limit: usize) -> Result<&'a [u8], BatchDefect> {
    let end =
        pos.checked_add(len).filter(|e| *e <= limit).ok_or(BatchDefect::BadRecords("field runs past its record"))?;
    let out = &buf[*pos..end];
    *pos = end;
    Ok(out)
}

/// Appends `v` as a varint (LEB128). One byte at a time into a `Vec`: a store each, where
/// `BufMut::put_u8` on a `BytesMut` is a copy call.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, BatchDefect> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(BatchDefect::BadRecords("varint runs past the batch"))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(BatchDefect::BadRecords("varint longer than 10 bytes"))
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(any::<i64>()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..20)), 0..4),
        )
            .prop_map(|(ts, key, value, headers)| Record {
                timestamp: ts,
                key: key.map(Bytes::from),
                value: Bytes::from(value),
                headers: headers.into_iter().map(|(k, v)| Header { key: k, value: Bytes::from(v) }).collect(),
            })
    }

    proptest! {
        #[test]
        fn batch_encoding_round_trips(records in proptest::collection::vec(arb_record(), 1..20),
                                      base in 0u64..u64::MAX / 2, epoch in any::<u32>()) {
            let enc = EncodedBatch::encode(&records);
            let bytes = enc.seal(base, epoch);
            let header = verify(&bytes, usize::MAX).expect("valid batch");
            prop_assert_eq!(header.base_offset, base);
            prop_assert_eq!(header.leader_epoch, epoch);
            prop_assert_eq!(header.length as usize, bytes.len());
            let decoded = decode_records(&bytes, &header).expect("decodes");
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(d.offset, base + i as u64);
                if let Some(ts) = r.timestamp { prop_assert_eq!(d.timestamp, ts); }
                prop_assert_eq!(&d.key, &r.key);
                prop_assert_eq!(&d.value, &r.value);
                prop_assert_eq!(&d.headers, &r.headers);
            }
        }

        #[test]
        fn any_single_byte_flip_in_crc_region_is_detected(
            records in proptest::collection::vec(arb_record(), 1..5),
            pick in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = EncodedBatch::encode(&records).seal(7, 1);
            let mut damaged = bytes.to_vec();
            let at = CRC_START + pick.index(damaged.len() - CRC_START);
            damaged[at] ^= 1 << bit;
            prop_assert!(verify(&damaged, usize::MAX).is_err());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(mut raw in proptest::collection::vec(any::<u8>(), 48..400)) {
            // Make it look like a batch so the record decoder is exercised.
            raw[16..20].copy_from_slice(&MAGIC.to_le_bytes());
            let len = raw.len() as u32;
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[24] = VERSION; raw[26] = 0; raw[27] = 0;
            let crc = crc32fast::hash(&raw[CRC_START..]);
            raw[20..24].copy_from_slice(&crc.to_le_bytes());
            let bytes = Bytes::from(raw);
            if let Ok(h) = verify(&bytes, usize::MAX) {
                let _ = decode_records(&bytes, &h);
            }
        }
    }

    #[test]
    fn a_base_offset_that_would_overflow_is_a_defect_not_a_panic() {
        let records = [Record::new("a"), Record::new("b")];
        let bytes = EncodedBatch::encode(&records).seal(u64::MAX, 0);
        let header = verify(&bytes, usize::MAX).expect("the CRC does not cover the base offset");
        assert!(matches!(decode_records(&bytes, &header), Err(BatchDefect::BadRecords(_))));
    }

    #[test]
    fn varint_len_matches_encoding() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut p = 0;
            assert_eq!(get_varint(&out, &mut p).unwrap(), v);
        }
    }
}
