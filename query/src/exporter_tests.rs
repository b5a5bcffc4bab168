//! Tests of the partition exporter against a real log and a real RocksDB metadata store.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use axle_engine::{Message, MetaStore};
use axle_log::{FsyncPolicy, Log, LogConfig, Partition};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::file::writer_properties;
use crate::layout::HOUR_MS;
use crate::schema::TypedColumn;

/// 2026-12-01T10:00:00Z.
const T0: i64 = 1_796_119_200_000;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    log: Log,
    part: Partition,
    meta: Arc<MetaStore>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log =
        Log::open(dir.path().join("log"), LogConfig { fsync: FsyncPolicy::Never, ..LogConfig::default() }).unwrap();
    let part = log.partition("t-0").unwrap();
    let meta = Arc::new(MetaStore::open(&dir.path().join("meta")).unwrap());
    Fixture { root: dir.path().join("export"), _dir: dir, log, part, meta }
}

fn append(p: &Partition, ts: i64, speed: f64) {
    let m = Message {
        topic: "v/VIN1/telemetry".into(),
        payload: Bytes::from(format!("{{\"speed\":{speed}}}")),
        qos: 1,
        publisher: "car".into(),
        timestamp: ts,
        ..Message::default()
    };
    p.append_blocking(&[m.to_record("v/VIN1")]).unwrap();
}

fn exporter(f: &Fixture, roll: RollPolicy) -> PartitionExporter {
    let stats = Arc::new(ExportStats::new("t".into(), vec![PartitionExportStats::new("t-0".into())]));
    let stream = Arc::new(StreamExport {
        stream: "t".into(),
        root: f.root.clone(),
        roll,
        extractor: Arc::new(Extractor::new(vec![TypedColumn::parse("speed", "f64", "$.speed").unwrap()])),
        props: writer_properties(1000, 1).unwrap(),
        stats: stats.clone(),
    });
    PartitionExporter::open(stream, f.meta.clone(), f.part.clone(), 0, stats.partitions[0].clone()).unwrap()
}

/// Every committed file (path relative to the root) with the offsets and speeds it holds.
fn files(root: &Path) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if !rel.ends_with(".parquet") {
                out.insert(rel, Vec::new());
                continue;
            }
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap().build().unwrap();
            let mut rows = Vec::new();
            for b in reader {
                let b = b.unwrap();
                let off = b.column_by_name("offset").unwrap().as_primitive::<Int64Type>().clone();
                let sp = b.column_by_name("speed").unwrap().as_primitive::<Float64Type>().clone();
                rows.extend((0..b.num_rows()).map(|i| (off.value(i), sp.value(i))));
            }
            out.insert(rel, rows);
        }
    }
    out
}

fn all_offsets(files: &BTreeMap<String, Vec<(i64, f64)>>) -> Vec<i64> {
    let mut v: Vec<i64> = files.values().flatten().map(|r| r.0).collect();
    v.sort_unstable();
    v
}

#[test]
fn roll_rules_pick_the_first_limit_reached() {
    let p = RollPolicy { max_rows: 10, max_bytes: 1000, max_age: Duration::from_secs(60) };
    assert_eq!(p.due(9, 999, Duration::from_secs(59)), None);
    assert_eq!(p.due(10, 0, Duration::ZERO), Some(RollReason::Rows));
    assert_eq!(p.due(1, 1000, Duration::ZERO), Some(RollReason::Bytes));
    assert_eq!(p.due(1, 1, Duration::from_secs(60)), Some(RollReason::Age));
}

#[test]
fn files_roll_by_rows_and_never_straddle_an_hour() {
    let f = fixture();
    // Five records in hour 10, three in hour 11.
    for i in 0..5 {
        append(&f.part, T0 + HOUR_MS - 5 + i, i as f64);
    }
    for i in 5..8 {
        append(&f.part, T0 + HOUR_MS + i, i as f64);
    }
    let mut px = exporter(&f, RollPolicy { max_rows: 3, ..RollPolicy::default() });
    px.run_to(f.part.bounds().end, |_| {}).unwrap();
    let got = files(&f.root);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "t/date=2026-12-01/hour=10/0-00000000000000000000.parquet",
            "t/date=2026-12-01/hour=10/0-00000000000000000003.parquet",
            "t/date=2026-12-01/hour=11/0-00000000000000000005.parquet",
        ]
    );
    assert_eq!(got.values().map(Vec::len).collect::<Vec<_>>(), vec![3, 2, 3]);
    assert_eq!(all_offsets(&got), (0..8).collect::<Vec<_>>());
    assert_eq!(got.values().flatten().find(|r| r.0 == 6).unwrap().1, 6.0);
    assert_eq!(checkpoint::load(&f.meta, "t-0").unwrap(), 8);
    assert_eq!(px.stream.stats.rows(), 8);
    assert_eq!(px.stream.stats.files(), 3);
    f.log.close().unwrap();
}

#[test]
fn out_of_order_timestamps_go_to_their_own_hour_in_a_new_file() {
    let f = fixture();
    append(&f.part, T0 + 10, 0.0); // hour 10
    append(&f.part, T0 + HOUR_MS, 1.0); // hour 11
    append(&f.part, T0 + 20, 2.0); // late: hour 10 again
    append(&f.part, T0 + 30, 3.0);
    let mut px = exporter(&f, RollPolicy::default());
    px.run_to(f.part.bounds().end, |_| {}).unwrap();
    let got = files(&f.root);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "t/date=2026-12-01/hour=10/0-00000000000000000000.parquet",
            "t/date=2026-12-01/hour=10/0-00000000000000000002.parquet",
            "t/date=2026-12-01/hour=11/0-00000000000000000001.parquet",
        ]
    );
    assert_eq!(all_offsets(&got), vec![0, 1, 2, 3]);
    f.log.close().unwrap();
}

#[test]
fn resuming_after_a_crash_before_the_checkpoint_replaces_the_same_file() {
    let f = fixture();
    for i in 0..10 {
        append(&f.part, T0 + i, i as f64);
    }
    let mut px = exporter(&f, RollPolicy { max_rows: 4, ..RollPolicy::default() });
    px.run_to(f.part.bounds().end, |_| {}).unwrap();
    let before = files(&f.root);
    assert_eq!(before.len(), 3);
    // A crash after the rename of the last file (offsets 8..=9) but before its checkpoint,
    // while the next file was being written under its temporary name.
    checkpoint::store(&f.meta, "t-0", 8).unwrap();
    let stray = f.root.join("t/date=2026-12-01/hour=10/0-00000000000000000010.parquet.tmp");
    std::fs::write(&stray, b"half a file").unwrap();
    drop(px);
    for i in 10..12 {
        append(&f.part, T0 + 100 + i, i as f64);
    }
    let mut px = exporter(&f, RollPolicy { max_rows: 4, ..RollPolicy::default() });
    assert_eq!(px.next_offset(), 8);
    assert!(!stray.exists(), "the temporary file of the interrupted run is removed");
    px.run_to(f.part.bounds().end, |_| {}).unwrap();
    let after = files(&f.root);
    assert_eq!(all_offsets(&after), (0..12).collect::<Vec<_>>(), "no row lost or duplicated");
    assert_eq!(after.len(), 3, "the file at offset 8 was replaced, not duplicated: {:?}", after.keys());
    assert_eq!(after["t/date=2026-12-01/hour=10/0-00000000000000000008.parquet"].len(), 4);
    assert_eq!(checkpoint::load(&f.meta, "t-0").unwrap(), 12);
    f.log.close().unwrap();
}

#[test]
fn a_failed_file_is_rewound_to_the_checkpoint_and_written_again() {
    let f = fixture();
    for i in 0..6 {
        append(&f.part, T0 + i, i as f64);
    }
    let mut px = exporter(&f, RollPolicy { max_rows: 4, ..RollPolicy::default() });
    assert_eq!(px.step(f.part.bounds().end).unwrap(), 6);
    assert_eq!(px.checkpoint(), 4, "the first file is committed, the second is open");
    px.rewind();
    assert_eq!(px.next_offset(), 4);
    px.run_to(f.part.bounds().end, |_| {}).unwrap();
    let got = files(&f.root);
    assert_eq!(all_offsets(&got), (0..6).collect::<Vec<_>>());
    assert!(got.keys().all(|k| k.ends_with(".parquet")), "no temporary file is left: {:?}", got.keys());
    f.log.close().unwrap();
}
