//! `read_committed_span`, the bulk consumer's read: whole batches byte for byte as the segment
//! file holds them, in one buffer, bounded by `max_bytes`, the high watermark and the
//! segment, and never returning a damaged batch.

mod common;

use axle_log::{decode_records, verify_batch, LogError, Span};
use common::*;

const P: &str = "p";

/// The records of a span, decoded after checking every batch's CRC, as (offset, value).
fn decode_span(span: &Span) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let (mut pos, mut batches) = (0usize, 0u32);
    while pos < span.bytes.len() {
        let header = verify_batch(&span.bytes[pos..], span.bytes.len() - pos).expect("a whole, valid batch");
        let batch = span.bytes.slice(pos..pos + header.length as usize);
        for r in decode_records(&batch, &header).expect("records decode") {
            out.push((r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
        }
        pos += header.length as usize;
        batches += 1;
    }
    assert_eq!(batches, span.batches, "batch count");
    assert_eq!(out.last().map(|r| r.0 + 1), Some(span.next_offset), "next offset follows the last record");
    out
}

/// Reads span after span from offset 0 to the end, checking every value; the offsets seen.
fn read_all(p: &axle_log::Partition, max_bytes: usize) -> Vec<u64> {
    let (mut at, mut seen) = (0u64, Vec::new());
    while let Some(span) = p.read_committed_span(at, max_bytes).unwrap() {
        for (offset, value) in decode_span(&span) {
            assert_eq!(value, expected_value(offset));
            seen.push(offset);
        }
        at = span.next_offset;
    }
    seen
}

#[tokio::test]
async fn a_span_is_the_segment_bytes_from_the_batch_holding_the_offset() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), config(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 40).await;
        let path = segment_path(dir.path(), P, 0);
        let file = std::fs::read(&path).unwrap();
        let batches = batches_in(&path);
        for at in [0u64, 1, 17, 39] {
            let span = p.read_committed_span(at, usize::MAX >> 1).unwrap().expect("records readable");
            let start = batches[at as usize].pos as usize;
            let end = batches[39].end() as usize;
            assert_eq!(&span.bytes[..], &file[start..end], "byte for byte from offset {at}");
            let recs = decode_span(&span);
            assert_eq!(recs.len() as u64, 40 - at);
            for (offset, value) in recs {
                assert_eq!(value, expected_value(offset));
            }
        }
        assert!(p.read_committed_span(40, 1 << 20).unwrap().is_none(), "nothing at the end");
        assert!(matches!(p.read_committed_span(41, 1 << 20), Err(LogError::OffsetOutOfRange { .. })));
    }
}

#[tokio::test]
async fn a_span_holds_whole_batches_within_max_bytes_and_at_least_one() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), config(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 30).await;
        let batches = batches_in(&segment_path(dir.path(), P, 0));
        // Room for the first three batches and part of the fourth.
        let max = (batches[3].end() - 5) as usize;
        let span = p.read_committed_span(0, max).unwrap().unwrap();
        assert_eq!(span.batches, 3);
        assert_eq!(span.bytes.len() as u64, batches[2].end());
        assert_eq!(span.next_offset, 3);
        // A limit smaller than one batch still returns that batch, whole.
        let one = p.read_committed_span(5, 10).unwrap().unwrap();
        assert_eq!((one.batches, one.bytes.len() as u64), (1, batches[5].len));
        assert_eq!(decode_span(&one), vec![(5, expected_value(5))]);
        // Reading span after span gets every record once, in order.
        assert_eq!(read_all(&p, 200), (0..30).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_span_stops_at_the_high_watermark() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), config(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 10).await;
        p.enable_high_watermark(6);
        let span = p.read_committed_span(2, 1 << 20).unwrap().unwrap();
        assert_eq!(decode_span(&span).iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        for at in [6, 9, 10] {
            assert!(p.read_committed_span(at, 1 << 20).unwrap().is_none(), "offset {at} waits for the watermark");
        }
        assert!(matches!(p.read_committed_span(11, 1 << 20), Err(LogError::OffsetOutOfRange { .. })));
    }
}

#[tokio::test]
async fn a_span_ends_with_its_segment_and_the_next_read_continues_in_the_next_one() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_segments(backend, 4096));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 200).await;
        let files = segment_files(dir.path(), P);
        assert!(files.len() > 2, "the records span several segments");
        let second = files[1].0;
        let span = p.read_committed_span(0, usize::MAX >> 1).unwrap().unwrap();
        assert_eq!(span.next_offset, second, "the first span ends with the first segment");
        assert_eq!(read_all(&p, usize::MAX >> 1), (0..200).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_span_ends_before_a_damaged_batch_and_reading_it_names_the_file_and_position() {
    // Where in batch 4 the damage is: its records (caught by the CRC), its magic, and its base
    // offset (outside the CRC: caught by offset contiguity).
    type Where = fn(&BatchAt) -> u64;
    let damage: [(&str, Where); 3] =
        [("records", |b| b.end() - 2), ("magic", |b| b.pos + 16), ("base offset", |b| b.pos)];
    for backend in BACKENDS {
        for (what, at) in damage {
            let dir = tempfile::tempdir().unwrap();
            let path = segment_path(dir.path(), P, 0);
            {
                let log = open(dir.path(), config(backend));
                append_recs(&log.partition(P).unwrap(), 0, 10).await;
                log.close().unwrap();
            }
            let batches = batches_in(&path);
            // The damage appears while the broker runs (bit rot, a stray write), after the
            // log checked the file at open.
            let log = open(dir.path(), config(backend));
            let p = log.partition(P).unwrap();
            flip_byte(&path, at(&batches[4]));
            // The batches before the damage are served; the read that starts at it fails.
            let span = p.read_committed_span(0, 1 << 20).unwrap().unwrap();
            assert_eq!(decode_span(&span).iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2, 3], "{what}");
            match p.read_committed_span(span.next_offset, 1 << 20) {
                Err(LogError::CorruptBatch { path: file, position, .. }) => {
                    assert_eq!(file, path, "{what}");
                    assert_eq!(position, batches[4].pos, "{what}");
                }
                other => panic!("damaged {what}: expected CorruptBatch, got {other:?}"),
            }
        }
    }
}
