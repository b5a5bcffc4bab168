//! Building a batch record by record, from borrowed parts.
//!
//! [`BatchBuilder`] writes each record straight into the batch buffer as it is pushed, so a
//! caller that holds its data in its own form (a decoded MQTT message, say) need not first
//! build a [`crate::Record`] with owned header names and reference-counted values only for
//! the encoder to copy them once more. The one copy the format allows is the one made here:
//! from the caller's slices into the buffer that the writer puts on disk.
//!
//! [`crate::EncodedBatch::encode`] is built on it, so there is one encoder.
//!
//! Invariants:
//! - The header's first 48 bytes are reserved at creation and filled by [`BatchBuilder::finish`];
//!   records follow in push order with offset deltas `0, 1, 2, ...`.
//! - `first_timestamp` is the first pushed record's; deltas are relative to it, zigzag-encoded
//!   (a later record may be older).

use crate::batch::{put_varint, varint_len, zigzag, EncodedBatch, CRC_START, HEADER_LEN, MAGIC, VERSION};

/// A batch being built; see the module documentation.
#[derive(Debug)]
pub struct BatchBuilder {
    /// A `Vec` rather than a `BytesMut`: a one-byte push is a store, not a copy call, and
    /// the allocation becomes the sealed batch's without a copy.
    buf: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    key_hashes: Vec<u32>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchBuilder {
    /// An empty batch whose buffer has room for `body_bytes` bytes of records (it grows as
    /// needed).
    pub fn with_capacity(body_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + body_bytes);
        buf.resize(HEADER_LEN, 0);
        BatchBuilder { buf, count: 0, first_timestamp: 0, max_timestamp: i64::MIN, key_hashes: Vec::new() }
    }

    /// Records pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The batch's encoded size so far, header included, in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Appends one record: `timestamp` in milliseconds since the Unix epoch, an optional
    /// key, the value, and the headers as (UTF-8 name, value) pairs. Each part is copied
    /// once, into the batch buffer.
    pub fn push<'h, H>(&mut self, timestamp: i64, key: Option<&[u8]>, value: &[u8], headers: H)
    where
        H: IntoIterator<Item = (&'h str, &'h [u8])>,
        H::IntoIter: ExactSizeIterator + Clone,
    {
        if self.count == 0 {
            self.first_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let headers = headers.into_iter();
        let offset_delta = u64::from(self.count);
        let ts_delta = zigzag(timestamp.wrapping_sub(self.first_timestamp));
        let key_field = key.map_or(0, |k| k.len() as u64 + 1);
        let key_len = key.map_or(0, <[u8]>::len);
        let header_count = headers.len();
        let headers_len: usize = headers
            .clone()
            .map(|(k, v)| varint_len(k.len() as u64) + k.len() + varint_len(v.len() as u64) + v.len())
            .sum();
        let body_len = varint_len(offset_delta)
            + varint_len(ts_delta)
            + varint_len(key_field)
            + key_len
            + varint_len(value.len() as u64)
            + value.len()
            + varint_len(header_count as u64)
            + headers_len;
        self.buf.reserve(varint_len(body_len as u64) + body_len);
        let buf = &mut self.buf;
        put_varint(buf, body_len as u64);
        put_varint(buf, offset_delta);
        put_varint(buf, ts_delta);
        put_varint(buf, key_field);
        if let Some(k) = key {
            buf.extend_from_slice(k);
            self.key_hashes.push(crate::keys::key_hash(k));
        }
        put_varint(buf, value.len() as u64);
        buf.extend_from_slice(value);
        put_varint(buf, header_count as u64);
        for (k, v) in headers {
            put_varint(buf, k.len() as u64);
            buf.extend_from_slice(k.as_bytes());
            put_varint(buf, v.len() as u64);
            buf.extend_from_slice(v);
        }
        self.count += 1;
    }

    /// Fills in the header (all but the writer's fields: base offset and leader epoch) and
    /// the CRC. `None` when nothing was pushed: a batch holds at least one record.
    pub fn finish(self) -> Option<EncodedBatch> {
        if self.count == 0 {
            return None;
        }
        let BatchBuilder { mut buf, count, first_timestamp, max_timestamp, mut key_hashes } = self;
        let length = buf.len() as u32;
        buf[8..12].copy_from_slice(&length.to_le_bytes());
        buf[16..20].copy_from_slice(&MAGIC.to_le_bytes());
        buf[24] = VERSION;
        buf[28..32].copy_from_slice(&count.to_le_bytes());
        buf[32..40].copy_from_slice(&first_timestamp.to_le_bytes());
        buf[40..48].copy_from_slice(&max_timestamp.to_le_bytes());
        let crc = crc32fast::hash(&buf[CRC_START..]);
        buf[20..24].copy_from_slice(&crc.to_le_bytes());
        if key_hashes.len() > 1 {
            key_hashes.sort_unstable();
            key_hashes.dedup();
        }
        Some(EncodedBatch { buf, record_count: count, first_timestamp, max_timestamp, key_hashes })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::batch::decode_records;
    use crate::Record;

    #[test]
    fn a_built_batch_is_byte_for_byte_the_encoding_of_the_same_records() {
        let records = vec![
            Record::new(Bytes::from_static(b"v1")).with_key(Bytes::from_static(b"k")).with_timestamp(1_000),
            Record::new(Bytes::from_static(b""))
                .with_timestamp(900)
                .with_header("t", Bytes::from_static(b"a/b"))
                .with_header("q", Bytes::from_static(&[1])),
            Record::new(vec![7u8; 300]).with_key(Bytes::from_static(b"k2")).with_timestamp(1_200),
        ];
        let mut b = BatchBuilder::with_capacity(16);
        b.push(1_000, Some(b"k"), b"v1", []);
        b.push(900, None, b"", [("t", &b"a/b"[..]), ("q", &[1u8][..])]);
        b.push(1_200, Some(b"k2"), &[7u8; 300], []);
        assert_eq!(b.count(), 3);
        let built = b.finish().expect("three records");
        let encoded = EncodedBatch::encode(&records);
        assert_eq!(built.buf, encoded.buf);
        assert_eq!(built.key_hashes, encoded.key_hashes);
        assert_eq!((built.first_timestamp, built.max_timestamp), (1_000, 1_200));
        let bytes = built.seal(40, 2);
        let header = crate::batch::verify(&bytes, usize::MAX).expect("a valid batch");
        let back = decode_records(&bytes, &header).expect("valid records");
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].timestamp, 900);
        assert_eq!(back[1].headers[0].key, "t");
        assert_eq!(back[2].offset, 42);
    }

    #[test]
    fn an_empty_builder_makes_no_batch() {
        assert!(BatchBuilder::default().finish().is_none());
    }
}
