//! A published message as the engine stores it: one log record per PUBLISH.
//!
//! Record layout: key = the stream's partition key; value = the payload; headers, in this
//! order: `t` topic, `c` publisher client id, `q` QoS (one byte 0..=2), then optional `r`
//! (retain, empty value), `pf` payload format indicator (one byte), `x` absolute expiry (ms
//! since the Unix epoch, 8 bytes LE), `ct` content type, `rt` response topic, `cd`
//! correlation data, and one `u.<name>` per user property, in order. Unknown headers are
//! ignored when reading, so fields can be added.

use bytes::Bytes;

use axle_log::{BatchBuilder, Header, Record, RecordView, StoredRecord};

/// A message on its way into or out of the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// 0, 1 or 2.
    pub qos: u8,
    pub retain: bool,
    /// Client id of the publisher (empty for internal publishers).
    pub publisher: String,
    pub payload_format_utf8: Option<bool>,
    /// Absolute expiry, ms since the Unix epoch.
    pub expires_at: Option<i64>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    /// Publish time, ms since the Unix epoch (set from the record when read).
    pub timestamp: i64,
}

impl Message {
    /// The record to append, with `key` as its partition key.
    pub fn to_record(&self, key: &str) -> Record {
        let headers = self.with_headers(|hs| {
            hs.iter().map(|(k, v)| Header { key: (*k).to_string(), value: Bytes::copy_from_slice(v) }).collect()
        });
        Record {
            timestamp: (self.timestamp != 0).then_some(self.timestamp),
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: self.payload.clone(),
            headers,
        }
    }

    /// Encodes the record [`Message::to_record`] would make straight into `batch`, without
    /// the record: no header name or value is allocated on the way (user properties aside,
    /// whose `u.` names are formatted). A zero timestamp is written as `now` (ms).
    pub fn push_to(&self, key: &str, now: i64, batch: &mut BatchBuilder) {
        let ts = if self.timestamp != 0 { self.timestamp } else { now };
        self.with_headers(|hs| batch.push(ts, Some(key.as_bytes()), &self.payload, hs.iter().copied()));
    }

    /// Calls `f` with the record's headers (module documentation) as (name, value) pairs,
    /// built on the stack unless the message has user properties.
    fn with_headers<R>(&self, f: impl FnOnce(&[(&str, &[u8])]) -> R) -> R {
        let qos = [self.qos];
        let pf = self.payload_format_utf8.map(|f| [u8::from(f)]);
        let expiry = self.expires_at.map(i64::to_le_bytes);
        // The three fixed headers and at most six optional ones.
        let mut hs: [(&str, &[u8]); 9] = [("", &[]); 9];
        hs[0] = ("t", self.topic.as_bytes());
        hs[1] = ("c", self.publisher.as_bytes());
        hs[2] = ("q", &qos);
        let mut n = 3;
        let optional = [
            self.retain.then_some(("r", &[][..])),
            pf.as_ref().map(|b| ("pf", &b[..])),
            expiry.as_ref().map(|b| ("x", &b[..])),
            self.content_type.as_deref().map(|v| ("ct", v.as_bytes())),
            self.response_topic.as_deref().map(|v| ("rt", v.as_bytes())),
            self.correlation_data.as_deref().map(|v| ("cd", v)),
        ];
        for h in optional.into_iter().flatten() {
            hs[n] = h;
            n += 1;
        }
        if self.user_properties.is_empty() {
            return f(&hs[..n]);
        }
        let names: Vec<String> = self.user_properties.iter().map(|(k, _)| format!("u.{k}")).collect();
        let mut all = hs[..n].to_vec();
        all.extend(names.iter().zip(&self.user_properties).map(|(k, (_, v))| (k.as_str(), v.as_bytes())));
        f(&all)
    }

    /// The message a record holds; `None` if it lacks a topic (not written by the engine).
    pub fn from_record(r: &StoredRecord) -> Option<Message> {
        let headers = r.headers.iter().map(|h| (h.key.as_str(), h.value.as_ref()));
        Message::from_parts(r.value.clone(), r.timestamp, headers, Bytes::copy_from_slice)
    }

    /// [`Message::from_record`] of a record still inside its batch (`Partition::read_map`):
    /// the payload shares the read buffer, and no header is copied out except into the
    /// message's own fields.
    pub fn from_view(r: &RecordView<'_>) -> Option<Message> {
        Message::from_parts(r.share(r.value()), r.timestamp, r.headers(), |v| r.share(v))
    }

    /// The message of a record with `payload`, `timestamp` and `headers`; `bytes` makes a
    /// header value into an owned buffer.
    fn from_parts<'h>(
        payload: Bytes,
        timestamp: i64,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
        bytes: impl Fn(&'h [u8]) -> Bytes,
    ) -> Option<Message> {
        let mut m = Message { payload, timestamp, ..Message::default() };
        let text = |v: &[u8]| std::str::from_utf8(v).ok().map(str::to_owned);
        let mut has_topic = false;
        for (k, v) in headers {
            match k {
                "t" => {
                    m.topic = text(v)?;
                    has_topic = true;
                }
                "c" => m.publisher = text(v)?,
                "q" => m.qos = v.first().copied().filter(|q| *q <= 2)?,
                "r" => m.retain = true,
                "pf" => m.payload_format_utf8 = v.first().map(|b| *b == 1),
                "x" => {
                    let b: [u8; 8] = v.try_into().ok()?;
                    m.expires_at = Some(i64::from_le_bytes(b));
                }
                "ct" => m.content_type = text(v),
                "rt" => m.response_topic = text(v),
                "cd" => m.correlation_data = Some(bytes(v)),
                k => {
                    if let Some(name) = k.strip_prefix("u.") {
                        m.user_properties.push((name.to_string(), text(v)?));
                    }
                }
            }
        }
        has_topic.then_some(m)
    }
}

impl Message {
    /// A self-contained binary form, for copies kept outside the log (retained messages):
    /// `u32` header count, then per header `u16` name length, name, `u32` value length,
    /// value; then `u32` payload length, payload, `i64` timestamp. Little-endian.
    pub fn encode_bytes(&self) -> Vec<u8> {
        Message::encode_record(&self.to_record(""))
    }

    /// [`Message::encode_bytes`] of the message `r` holds (its key is not kept; a missing
    /// timestamp is written as 0, "now" again when decoded and appended).
    pub fn encode_record(r: &Record) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + r.value.len());
        out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for h in &r.headers {
            out.extend_from_slice(&(h.key.len() as u16).to_le_bytes());
            out.extend_from_slice(h.key.as_bytes());
            out.extend_from_slice(&(h.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&h.value);
        }
        out.extend_from_slice(&(r.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.value);
        out.extend_from_slice(&r.timestamp.unwrap_or(0).to_le_bytes());
        out
    }

    /// Inverse of [`Message::encode_bytes`]; `None` for anything malformed.
    pub fn decode_bytes(b: &[u8]) -> Option<Message> {
        let mut p = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = b.get(p..p.checked_add(n)?)?;
            p += n;
            Some(s)
        };
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let mut headers = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let kl = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
            let key = String::from_utf8(take(kl)?.to_vec()).ok()?;
            let vl = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            headers.push(Header { key, value: Bytes::copy_from_slice(take(vl)?) });
        }
        let pl = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let value = Bytes::copy_from_slice(take(pl)?);
        let timestamp = i64::from_le_bytes(take(8)?.try_into().ok()?);
        if p != b.len() {
            return None;
        }
        Message::from_record(&StoredRecord { offset: 0, timestamp, key: None, value, headers, leader_epoch: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_records() {
        let m = Message {
            topic: "v/VIN1/cmd".into(),
            payload: Bytes::from_static(b"{\"lock\":true}"),
            qos: 2,
            retain: true,
            publisher: "tsp-1".into(),
            payload_format_utf8: Some(true),
            expires_at: Some(1_900_000_000_000),
            content_type: Some("application/json".into()),
            response_topic: Some("v/VIN1/cmd/resp".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            timestamp: 1_800_000_000_000,
        };
        let rec = m.to_record("v/VIN1");
        let stored = StoredRecord {
            offset: 5,
            timestamp: rec.timestamp.unwrap(),
            key: rec.key.clone(),
            value: rec.value.clone(),
            headers: rec.headers.clone(),
            leader_epoch: 0,
        };
        assert_eq!(Message::from_record(&stored), Some(m.clone()));
        // The same record read in place from its batch.
        let dir = tempfile::tempdir().unwrap();
        let log = axle_log::Log::open(dir.path(), axle_log::LogConfig::default()).unwrap();
        let part = log.partition("p").unwrap();
        part.append_blocking(std::slice::from_ref(&rec)).unwrap();
        let viewed = part.read_map(0, 10, usize::MAX, |r| Message::from_view(&r)).unwrap();
        assert_eq!(viewed, [Some(m.clone())]);
        let bytes = m.encode_bytes();
        assert_eq!(Message::decode_bytes(&bytes), Some(m));
        assert_eq!(Message::decode_bytes(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn a_message_pushed_into_a_batch_encodes_as_its_record_does() {
        let full = Message {
            topic: "v/VIN1/cmd".into(),
            payload: Bytes::from_static(b"{}"),
            qos: 1,
            retain: true,
            publisher: "tsp-1".into(),
            payload_format_utf8: Some(false),
            expires_at: Some(1_900_000_000_000),
            content_type: Some("application/json".into()),
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::from_static(b"\x01")),
            user_properties: vec![("k".into(), "v".into())],
            timestamp: 1_800_000_000_000,
        };
        let bare = Message { topic: "a".into(), timestamp: 1_800_000_000_001, ..Message::default() };
        let mut built = BatchBuilder::default();
        full.push_to("v/VIN1", 0, &mut built);
        bare.push_to("", 0, &mut built);
        let built = built.finish().expect("two records");
        let encoded = axle_log::EncodedBatch::encode(&[full.to_record("v/VIN1"), bare.to_record("")]);
        assert_eq!(built.as_bytes(), encoded.as_bytes());
    }
}
