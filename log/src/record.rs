//! Records as callers hand them to the log and as readers get them back.

use bytes::Bytes;

/// One header of a record: a UTF-8 name and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

/// A record to append. Key, value and header values are reference-counted buffers: the log
/// copies their bytes exactly once, into the batch buffer that is written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Milliseconds since the Unix epoch. `None` means "now", taken when the batch is encoded.
    pub timestamp: Option<i64>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

impl Record {
    /// A record with only a value, stamped with the current time.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Record { value: value.into(), ..Record::default() }
    }

    /// Sets the key (used by partition-key indexes and by compaction-style readers).
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the timestamp in milliseconds since the Unix epoch.
    pub fn with_timestamp(mut self, ts_ms: i64) -> Self {
        self.timestamp = Some(ts_ms);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header { key: key.into(), value: value.into() });
        self
    }
}

/// A record read back from the log. Its buffers are slices of the read buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
    /// Leader epoch of the batch that holds the record.
    pub leader_epoch: u32,
}

/// A record inside a batch's bytes, as [`crate::for_each_record`] and
/// [`crate::Partition::read_map`] hand it out: nothing is copied or allocated until asked
/// for. The batch was validated before the view was made (every field in bounds, header
/// names UTF-8).
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Leader epoch of the batch that holds the record.
    pub leader_epoch: u32,
    pub(crate) batch: &'a Bytes,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: &'a [u8],
    /// The encoded header list (`header_count` pairs).
    pub(crate) headers: &'a [u8],
    pub(crate) header_count: usize,
}

impl<'a> RecordView<'a> {
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    pub fn value(&self) -> &'a [u8] {
        self.value
    }

    /// `part` (the key, the value or a header value of this record) as a [`Bytes`] that
    /// shares the batch's buffer instead of copying; bytes from elsewhere are copied.
    pub fn share(&self, part: &[u8]) -> Bytes {
        let base = self.batch.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        match at.checked_sub(base) {
            Some(start) if !part.is_empty() && start + part.len() <= self.batch.len() => {
                self.batch.slice(start..start + part.len())
            }
            _ => Bytes::copy_from_slice(part),
        }
    }

    /// The headers as (name, value) pairs, in stored order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { buf: self.headers, pos: 0, left: self.header_count }
    }

    /// An owned copy of the record (its buffers still share the batch's).
    pub fn to_stored(&self) -> StoredRecord {
        StoredRecord {
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.map(|k| self.share(k)),
            value: self.share(self.value),
            headers: self.headers().map(|(k, v)| Header { key: k.to_string(), value: self.share(v) }).collect(),
            leader_epoch: self.leader_epoch,
        }
    }
}

/// The headers of a [`RecordView`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    buf: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The batch was validated when the view was made; a failure here ends the list.
        let mut field = || {
            let len = crate::batch::get_varint(self.buf, &mut self.pos).ok()? as usize;
            let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len())?;
            let out = &self.buf[self.pos..end];
            self.pos = end;
            Some(out)
        };
        let name = std::str::from_utf8(field()?).ok()?;
        let value = field()?;
        Some((name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// Current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
