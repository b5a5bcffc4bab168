//! Parquet export and `axle query` end to end: messages published with a real MQTT client
//! (rumqttc, MQTT 5), read back from the log over gRPC `Fetch`, exported by the real `axle`
//! binary (`axle export`, and inside `axle serve`), then read with pyarrow and DuckDB
//! (tests/python/read_export.py) and with `axle query`, and compared with the log.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use axle_proto::v1::consumer_client::ConsumerClient;
use axle_proto::v1::{FetchRequest, Record};
use axle_tests::server::{axle_bin, Server};
use common::mqtt::{opts, V5};
use common::tools::{python, script, wait_output};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

const VINS: usize = 5;

fn config(export_enabled: bool, roll_rows: u64) -> String {
    format!(
        r#"
[[streams]]
name = "telemetry"
filters = ["v/+/telemetry"]
partitions = 2
[streams.export]
enabled = {export_enabled}
roll_rows = {roll_rows}
roll_age_secs = 1
columns = [
  {{ name = "vin", type = "utf8", from = "topic:2" }},
  {{ name = "speed", type = "f64", from = "$.speed" }},
  {{ name = "soc", type = "f64", from = "$.battery.soc" }},
  {{ name = "alarm", type = "bool", from = "$.alarm" }},
  {{ name = "fw", type = "utf8", from = "prop:fw" }},
]

[[streams]]
name = "alarms"
filters = ["v/+/event/alarm"]
[streams.export]
enabled = {export_enabled}
columns = [
  {{ name = "vin", type = "utf8", from = "topic:2" }},
  {{ name = "code", type = "i64", from = "$.code" }},
]
"#
    )
}

/// The payload of telemetry message `i`: valid JSON, except every tenth-and-seventh
/// (malformed) and tenth-and-eighth (truncated) message.
fn payload(i: usize) -> String {
    match i % 10 {
        7 => format!("not json {{ {i}"),
        8 => format!("{{\"speed\": {i}.5, \"battery\": {{\"soc\""),
        _ => format!(
            "{{\"speed\":{}.5,\"battery\":{{\"soc\":0.{i:02},\"temp\":[1,2]}},\"alarm\":{}}}",
            i,
            i.is_multiple_of(3)
        ),
    }
}

fn vin(i: usize) -> String {
    format!("VIN{}", i % VINS)
}

/// What the typed columns must hold for telemetry message `i`.
fn expected_typed(i: usize) -> (Option<f64>, Option<f64>, Option<bool>) {
    match i % 10 {
        7 | 8 => (None, None, None),
        _ => (Some(i as f64 + 0.5), Some(format!("0.{i:02}").parse().unwrap()), Some(i.is_multiple_of(3))),
    }
}

struct Env {
    _dir: tempfile::TempDir,
    data: PathBuf,
    cfg: PathBuf,
    root: PathBuf,
}

fn env(toml: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("axle.toml");
    std::fs::write(&cfg, toml).unwrap();
    let root = data.join("export");
    Env { _dir: dir, data, cfg, root }
}

fn serve(e: &Env) -> (Server, u16) {
    Server::start_ready(&e.data, &["--config", e.cfg.to_str().unwrap()]).expect("the broker starts")
}

/// Runs the `axle` binary with `args` (bounded in time).
fn axle(args: &[&str]) -> Output {
    let child = Command::new(axle_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn axle");
    wait_output(child, Duration::from_secs(120))
}

fn export(e: &Env) -> String {
    let out = axle(&["export", "--config", e.cfg.to_str().unwrap(), "--data-dir", e.data.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "axle export failed: {stderr}");
    stderr
}

fn query(e: &Env, sql: &str, format: &str) -> Output {
    axle(&["query", sql, "--format", format, "--data-dir", e.data.to_str().unwrap()])
}

fn query_json(e: &Env, sql: &str) -> Vec<Value> {
    let out = query(e, sql, "json");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn read_export(root: &Path, stream: &str, mode: &str) -> Value {
    let child = Command::new(python())
        .arg(script("read_export.py"))
        .args([root.to_str().unwrap(), stream, mode])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python (AXLE_TEST_PYTHON, with pyarrow and duckdb from tests/python/requirements.txt)");
    let out = wait_output(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "read_export.py failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("read_export.py prints JSON")
}

/// Publishes telemetry messages `from..to` (QoS 1, acknowledged; every third with user
/// properties) and `alarms` alarm messages.
async fn publish(port: u16, from: usize, to: usize, alarms: usize) {
    let mut c = V5::connect(opts(&format!("pub-{from}"), port)).await;
    for i in from..to {
        let topic = format!("v/{}/telemetry", vin(i));
        let props = PublishProperties {
            user_properties: if i.is_multiple_of(3) {
                vec![("fw".into(), format!("1.{i}")), ("fw".into(), "x".into())]
            } else {
                vec![]
            },
            ..Default::default()
        };
        c.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload(i), props).await.unwrap();
    }
    for _ in from..to {
        c.wait_for("PUBACK", |p| matches!(p, rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))).await;
    }
    for a in 0..alarms {
        let topic = format!("v/VIN{}/event/alarm", a % 3);
        c.publish_acked(&topic, QoS::ExactlyOnce, false, format!("{{\"code\": {}}}", 100 + a)).await;
    }
    c.disconnect().await;
}

/// Every record of `stream` partition `p` in the log, read over gRPC Fetch.
async fn fetch_all(grpc: u16, stream: &str, partitions: u32) -> BTreeMap<(u32, u64), Record> {
    let mut c = ConsumerClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let mut offset = 0;
        loop {
            let req =
                FetchRequest { stream: stream.into(), partition: p, offset, max_wait_ms: 100, ..Default::default() };
            let mut s = c.fetch(req).await.unwrap().into_inner();
            let resp = tokio::time::timeout(Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
            for r in resp.records {
                out.insert((p, r.offset), r);
            }
            offset = resp.next_offset;
            if offset >= resp.high_watermark {
                break;
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `YYYY-MM-DD` and `HH` of a UTC timestamp in ms (civil-from-days).
fn utc_date_hour(ts_ms: i64) -> (String, String) {
    let secs = ts_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}-{m:02}-{d:02}"), format!("{hour:02}"))
}

/// Telemetry message number of a record (from its payload).
fn index_of(r: &Record, payloads: &HashMap<Vec<u8>, usize>) -> usize {
    payloads[&r.payload.to_vec()]
}

const N: usize = 60;

/// Publishes N telemetry and 5 alarm messages, reads the log back, stops the server and runs
/// `axle export`. Returns the log's telemetry and alarm records and export's stderr.
async fn exported(e: &Env) -> (BTreeMap<(u32, u64), Record>, BTreeMap<(u32, u64), Record>, String) {
    let (mut server, port) = serve(e);
    publish(port, 0, N, 5).await;
    let grpc = server.wait_grpc_port(Duration::from_secs(10)).unwrap();
    let telemetry = fetch_all(grpc, "telemetry", 2).await;
    let alarms = fetch_all(grpc, "alarms", 1).await;
    assert_eq!(telemetry.len(), N);
    assert_eq!(alarms.len(), 5);
    server.stop();
    let stderr = export(e);
    (telemetry, alarms, stderr)
}

#[tokio::test]
async fn exported_files_match_the_log_in_pyarrow_and_duckdb() {
    let e = env(&config(false, 1_000_000));
    let (log, _, stderr) = exported(&e).await;
    assert!(stderr.contains(&format!("exported stream telemetry: {N} rows")), "{stderr}");
    assert!(stderr.contains("12 payloads not valid JSON"), "{stderr}");
    let payloads: HashMap<Vec<u8>, usize> = (0..N).map(|i| (payload(i).into_bytes(), i)).collect();

    let v = read_export(&e.root, "telemetry", "full");
    for f in v["files"].as_array().unwrap() {
        let f = f.as_str().unwrap();
        let name = f.rsplit('/').next().unwrap();
        let (part, off) = name.trim_end_matches(".parquet").split_once('-').unwrap();
        assert!(f.starts_with("telemetry/date=") && f.contains("/hour="), "{f}");
        assert!(part == "0" || part == "1", "{f}");
        assert_eq!(off.len(), 20, "{f}");
    }
    let pa = &v["pyarrow"];
    let types = &pa["types"];
    assert_eq!(types["ts"], "timestamp[ms, tz=UTC]");
    for (col, ty) in [("topic", "string"), ("partition", "int32"), ("offset", "int64"), ("client_id", "string")] {
        assert_eq!(types[col], ty, "{col}");
    }
    for (col, ty) in [("qos", "int8"), ("payload", "binary"), ("vin", "string"), ("speed", "double")] {
        assert_eq!(types[col], ty, "{col}");
    }
    assert_eq!(types["soc"], "double");
    assert_eq!(types["alarm"], "bool");
    assert!(types["user_properties"].as_str().unwrap().starts_with("list<item: struct<key: string"), "{types}");
    assert_eq!(pa["nullable"]["speed"], true);
    assert_eq!(pa["nullable"]["offset"], false);
    assert_eq!(pa["compression"], serde_json::json!(["ZSTD"]));
    assert_eq!(pa["statistics"], true);

    let rows = pa["rows"].as_array().unwrap();
    assert_eq!(rows.len(), log.len(), "row count");
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        let key = (row["partition"].as_u64().unwrap() as u32, row["offset"].as_u64().unwrap());
        assert!(seen.insert(key), "row {key:?} exported twice");
        let r = &log[&key];
        assert_eq!(row["ts"].as_i64().unwrap(), r.timestamp_ms, "{key:?}");
        assert_eq!(row["topic"], r.topic.as_str());
        assert_eq!(row["client_id"], r.publisher.as_str());
        assert_eq!(row["qos"].as_u64().unwrap(), u64::from(r.qos));
        assert_eq!(row["payload"], hex(&r.payload));
        let props: Vec<(String, String)> = row["user_properties"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["key"].as_str().unwrap().into(), p["value"].as_str().unwrap().into()))
            .collect();
        let log_props: Vec<(String, String)> =
            r.user_properties.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
        assert_eq!(props, log_props, "{key:?}");
        let i = index_of(r, &payloads);
        let (speed, soc, alarm) = expected_typed(i);
        assert_eq!(row["vin"], vin(i).as_str());
        assert_eq!(row["speed"].as_f64(), speed, "speed of message {i}");
        assert_eq!(row["soc"].as_f64(), soc, "soc of message {i}");
        assert_eq!(row["alarm"].as_bool(), alarm, "alarm of message {i}");
        assert_eq!(row["fw"].as_str().map(str::to_string), (i.is_multiple_of(3)).then(|| format!("1.{i}")));
    }

    let dk = &v["duckdb"];
    let dt = &dk["types"];
    assert_eq!(dt["ts"], "TIMESTAMP WITH TIME ZONE");
    for (col, ty) in [("speed", "DOUBLE"), ("alarm", "BOOLEAN"), ("vin", "VARCHAR"), ("offset", "BIGINT")] {
        assert_eq!(dt[col], ty, "{col}");
    }
    assert_eq!(dt["partition"], "INTEGER");
    assert_eq!(dt["payload"], "BLOB");
    let drows = dk["rows"].as_array().unwrap();
    assert_eq!(drows.len(), log.len());
    for (row, ((p, o), r)) in drows.iter().zip(&log) {
        assert_eq!((row["partition"].as_u64().unwrap() as u32, row["offset"].as_u64().unwrap()), (*p, *o));
        assert_eq!(row["ts"].as_i64().unwrap(), r.timestamp_ms);
        assert_eq!(row["payload"], hex(&r.payload));
        let (date, hour) = utc_date_hour(r.timestamp_ms);
        assert_eq!(row["date"], date.as_str(), "hive date of {p}/{o}");
        assert_eq!(row["hour"].as_i64().unwrap(), hour.parse::<i64>().unwrap(), "hive hour of {p}/{o}");
        let (speed, _, alarm) = expected_typed(index_of(r, &payloads));
        assert_eq!(row["speed"].as_f64(), speed);
        assert_eq!(row["alarm"].as_bool(), alarm);
    }
}

#[tokio::test]
async fn axle_query_filters_by_time_aggregates_by_vin_and_hour_and_joins_streams() {
    let e = env(&config(false, 1_000_000));
    let (log, alarms, _) = exported(&e).await;
    let payloads: HashMap<Vec<u8>, usize> = (0..N).map(|i| (payload(i).into_bytes(), i)).collect();

    // Aggregate by vin.
    let got = query_json(&e, "SELECT vin, count(*) AS n, sum(speed) AS s FROM telemetry GROUP BY vin ORDER BY vin");
    let mut want: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for r in log.values() {
        let i = index_of(r, &payloads);
        let w = want.entry(vin(i)).or_default();
        w.0 += 1;
        w.1 += expected_typed(i).0.unwrap_or(0.0);
    }
    assert_eq!(got.len(), VINS);
    for (row, (v, (n, s))) in got.iter().zip(&want) {
        assert_eq!(row["vin"], v.as_str());
        assert_eq!(row["n"].as_u64().unwrap(), *n);
        assert!((row["s"].as_f64().unwrap() - s).abs() < 1e-9, "{row} vs {s}");
    }

    // Aggregate by hour (the Hive partition columns).
    let got = query_json(&e, "SELECT date, hour, count(*) AS n FROM telemetry GROUP BY date, hour ORDER BY date, hour");
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in log.values() {
        *want.entry(utc_date_hour(r.timestamp_ms)).or_default() += 1;
    }
    let got: Vec<((String, String), u64)> = got
        .iter()
        .map(|r| ((r["date"].as_str().unwrap().into(), r["hour"].as_str().unwrap().into()), r["n"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    let (date, _) = utc_date_hour(log.values().next().unwrap().timestamp_ms);
    let all = query_json(&e, &format!("SELECT count(*) AS n FROM telemetry WHERE date >= '{date}'"));
    assert_eq!(all[0]["n"].as_u64().unwrap(), N as u64);
    let none = query_json(&e, "SELECT count(*) AS n FROM telemetry WHERE date = '2001-01-01'");
    assert_eq!(none[0]["n"].as_u64().unwrap(), 0);

    // Time range on `ts`.
    let mut ts: Vec<i64> = log.values().map(|r| r.timestamp_ms).collect();
    ts.sort_unstable();
    let (a, b) = (ts[10], ts[40]);
    let want = ts.iter().filter(|t| **t >= a && **t < b).count() as u64;
    let sql = format!(
        "SELECT count(*) AS n, min(\"offset\") AS lo FROM telemetry WHERE ts >= to_timestamp_millis({a}) AND ts < to_timestamp_millis({b})"
    );
    assert_eq!(query_json(&e, &sql)[0]["n"].as_u64().unwrap(), want);

    // Join of two streams: telemetry rows per vehicle that raised an alarm.
    let got = query_json(
        &e,
        "SELECT a.vin, a.code, count(t.\"offset\") AS n FROM alarms a JOIN telemetry t ON a.vin = t.vin \
         GROUP BY a.vin, a.code ORDER BY a.code",
    );
    assert_eq!(got.len(), alarms.len());
    for (row, a) in got.iter().zip(alarms.values()) {
        let v = a.topic.split('/').nth(1).unwrap();
        assert_eq!(row["vin"], v);
        let n = log.values().filter(|r| r.topic.split('/').nth(1) == Some(v)).count() as u64;
        assert_eq!(row["n"].as_u64().unwrap(), n, "{row}");
    }
    let codes: Vec<u64> = got.iter().map(|r| r["code"].as_u64().unwrap()).collect();
    assert_eq!(codes, vec![100, 101, 102, 103, 104]);

    // Other output formats.
    let out = query(&e, "SELECT vin, count(*) AS n FROM telemetry GROUP BY vin ORDER BY vin", "csv");
    let csv = String::from_utf8_lossy(&out.stdout);
    assert_eq!(csv.lines().next(), Some("vin,n"), "{csv}");
    assert_eq!(csv.lines().count(), VINS + 1);
    let out =
        query(&e, "SELECT \"offset\", user_properties, payload FROM telemetry WHERE fw IS NOT NULL LIMIT 1", "csv");
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && csv.contains("[{key: fw, value: 1."),
        "{csv}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = query(&e, "SELECT count(*) AS n FROM telemetry", "table");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("| n ") && table.contains(&format!("| {N} ")), "{table}");
    let pq = e.data.join("result.parquet");
    let out = axle(&[
        "query",
        "SELECT * FROM telemetry",
        "--format",
        "parquet",
        "--output",
        pq.to_str().unwrap(),
        "--data-dir",
        e.data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&pq).unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));

    // SQL errors are reported with their position.
    let out = query(&e, "SELECT count(*) FROM telemetry WHERE", "table");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("SQL error") && err.contains("line 1, column 37") && err.contains('^'), "{err}");
    let out = query(&e, "SELECT count(* FROM telemetry", "table");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 1, column 16") && err.contains("FROM"), "{err}");
    let out = query(&e, "SELECT * FROM nope", "table");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope") && err.contains("alarms, telemetry"), "{err}");
}

/// Waits (bounded) until the export of `stream` holds `rows` rows; returns the last count.
fn wait_rows(root: &Path, stream: &str, rows: u64) -> Value {
    let start = Instant::now();
    loop {
        let v = if root.join(stream).exists() { read_export(root, stream, "count") } else { Value::Null };
        if v["rows"].as_u64() >= Some(rows) || start.elapsed() > Duration::from_secs(30) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_exactly_once(v: &Value, log_ends: &[u64]) {
    let total: u64 = log_ends.iter().sum();
    assert_eq!(v["rows"].as_u64(), Some(total), "rows: {v}");
    assert_eq!(v["distinct"].as_u64(), Some(total), "duplicated rows: {v}");
    for (p, end) in log_ends.iter().enumerate().filter(|(_, e)| **e > 0) {
        let part = v["partitions"].as_array().unwrap().iter().find(|r| r[0].as_u64() == Some(p as u64)).unwrap();
        assert_eq!(part, &serde_json::json!([p, 0, end - 1, end]), "partition {p}: {v}");
    }
}

async fn log_ends(grpc: u16) -> Vec<u64> {
    let log = fetch_all(grpc, "telemetry", 2).await;
    (0..2).map(|p| log.keys().filter(|k| k.0 == p).count() as u64).collect()
}

#[tokio::test]
async fn serve_exports_the_tail_closes_idle_files_and_survives_sigkill() {
    let e = env(&config(true, 50));
    let (mut server, port) = serve(&e);
    publish(port, 0, 300, 0).await;
    // The last file of each partition holds fewer than 50 rows: only the age roll closes it.
    let v = wait_rows(&e.root, "telemetry", 300);
    assert_eq!(v["rows"].as_u64(), Some(300), "{v}\n{}", server.output());

    // `axle export` refuses to run beside the server.
    let out = axle(&["export", "--config", e.cfg.to_str().unwrap(), "--data-dir", e.data.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use by a running `axle serve`"), "{err}");

    publish(port, 300, 500, 0).await;
    server.kill9();
    let (mut server, port) = serve(&e);
    publish(port, 500, 600, 0).await;
    let grpc = server.wait_grpc_port(Duration::from_secs(10)).unwrap();
    let ends = log_ends(grpc).await;
    assert_eq!(ends.iter().sum::<u64>(), 600);
    let v = wait_rows(&e.root, "telemetry", 600);
    server.stop();
    let v_after_stop = read_export(&e.root, "telemetry", "count");
    assert_exactly_once(&v, &ends);
    assert_exactly_once(&v_after_stop, &ends);
}

#[tokio::test]
async fn sigkill_in_the_middle_of_axle_export_then_rerun_loses_and_duplicates_nothing() {
    let e = env(&config(false, 100));
    let (mut server, port) = serve(&e);
    let total = 20_000;
    publish(port, 0, total, 0).await;
    let grpc = server.wait_grpc_port(Duration::from_secs(10)).unwrap();
    let ends = log_ends(grpc).await;
    assert_eq!(ends.iter().sum::<u64>(), total as u64);
    server.stop();

    let mut child = Command::new(axle_bin())
        .args(["export", "--config", e.cfg.to_str().unwrap(), "--data-dir", e.data.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has committed a few files (about 200 files will be written).
    let start = Instant::now();
    let hour_dirs = |root: &Path| -> usize {
        let mut n = 0;
        for d in std::fs::read_dir(root.join("telemetry")).into_iter().flatten().flatten() {
            for h in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                n += std::fs::read_dir(h.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|f| f.file_name().to_string_lossy().ends_with(".parquet"))
                    .count();
            }
        }
        n
    };
    while hour_dirs(&e.root) < 5 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the export was still running when killed");
    let partial = read_export(&e.root, "telemetry", "count");
    assert!(partial["rows"].as_u64().unwrap() < total as u64, "{partial}");

    export(&e);
    assert_exactly_once(&read_export(&e.root, "telemetry", "count"), &ends);
    // A second run finds nothing new and changes nothing.
    let stderr = export(&e);
    assert!(stderr.contains("exported stream telemetry: 0 rows"), "{stderr}");
    assert_exactly_once(&read_export(&e.root, "telemetry", "count"), &ends);
}
