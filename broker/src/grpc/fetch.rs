//! `Fetch`: a server stream reading one partition from an offset and following its tail.
//!
//! Each response holds at most `max_records` records and about `max_bytes` of keys and
//! payloads (always at least one record when one is readable), and carries the partition's
//! bounds. At the tail the task waits for the next append up to `max_wait_ms`, then sends an
//! empty response with the current bounds, so a client can tell "caught up" from "stuck". A
//! bounded channel of two responses gives backpressure: a slow client slows its own reads and
//! nobody else's.

use std::pin::Pin;
use std::time::Duration;

use axle_engine::log::{LogError, Partition, StoredRecord};
use axle_engine::Message;
use axle_proto::v1::{FetchRequest, FetchResponse, Record, UserProperty};
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Defaults and caps of a fetch request's limits.
const DEFAULT_RECORDS: u32 = 1000;
const MAX_RECORDS: u32 = 100_000;
const DEFAULT_BYTES: u32 = 1 << 20;
/// Largest `max_bytes` a client may ask for.
pub const MAX_FETCH_BYTES: u32 = 16 << 20;
const DEFAULT_WAIT_MS: u32 = 500;
const MAX_WAIT_MS: u32 = 30_000;

pub type FetchStream = Pin<Box<dyn Stream<Item = Result<FetchResponse, Status>> + Send>>;

fn out_of_range(partition: &str, requested: u64, log_start: u64, end: u64) -> Status {
    Status::out_of_range(format!(
        "offset {requested} is outside partition {partition}'s readable range [{log_start}, {end}]: \
         log_start_offset={log_start} high_watermark={end}"
    ))
}

/// Validates the request and starts the reading task.
pub fn start(part: Partition, req: &FetchRequest) -> Result<FetchStream, Status> {
    let pick = |v: u32, default: u32, max: u32| if v == 0 { default } else { v.min(max) };
    let max_records = pick(req.max_records, DEFAULT_RECORDS, MAX_RECORDS) as usize;
    let max_bytes = pick(req.max_bytes, DEFAULT_BYTES, MAX_FETCH_BYTES) as usize;
    let max_wait = Duration::from_millis(u64::from(pick(req.max_wait_ms, DEFAULT_WAIT_MS, MAX_WAIT_MS)));
    let b = part.bounds();
    if req.offset < b.log_start || req.offset > b.end {
        return Err(out_of_range(part.name(), req.offset, b.log_start, b.end));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let mut offset = req.offset;
    tokio::spawn(async move {
        loop {
            let records = match part.read(offset, max_records, max_bytes) {
                Ok(r) => r,
                Err(LogError::OffsetOutOfRange { requested, log_start, end, .. }) => {
                    // Retention deleted the segment under the reader.
                    let _ = tx.send(Err(out_of_range(part.name(), requested, log_start, end))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("reading {}: {e}", part.name())))).await;
                    return;
                }
            };
            if records.is_empty() {
                match tokio::time::timeout(max_wait, part.wait_past(offset)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => {
                        let _ = tx.send(Err(Status::unavailable("the broker is shutting down"))).await;
                        return;
                    }
                    Err(_) => {
                        let b = part.bounds();
                        let empty = FetchResponse {
                            records: Vec::new(),
                            high_watermark: b.end,
                            log_start_offset: b.log_start,
                            next_offset: offset,
                        };
                        if tx.send(Ok(empty)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            offset = records.last().map_or(offset, |r| r.offset + 1);
            let b = part.bounds();
            let response = FetchResponse {
                records: records.iter().map(to_proto).collect(),
                high_watermark: b.end,
                log_start_offset: b.log_start,
                next_offset: offset,
            };
            if tx.send(Ok(response)).await.is_err() {
                return; // the client went away
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// One log record as the API shows it.
fn to_proto(r: &StoredRecord) -> Record {
    let m = Message::from_record(r).unwrap_or_default();
    Record {
        offset: r.offset,
        timestamp_ms: r.timestamp,
        topic: m.topic,
        key: r.key.clone().unwrap_or_default(),
        payload: r.value.clone(),
        user_properties: m.user_properties.into_iter().map(|(key, value)| UserProperty { key, value }).collect(),
        publisher: m.publisher,
        qos: u32::from(m.qos),
        retain: m.retain,
        content_type: m.content_type,
        response_topic: m.response_topic,
        correlation_data: m.correlation_data,
        payload_utf8: m.payload_format_utf8.unwrap_or(false),
        expires_at_ms: m.expires_at,
    }
}
