//! Operating the broker, end to end against the real binary: Prometheus metrics (checked
//! with `promtool`), the REST admin API, `$SYS` topics and client events, and configuration
//! errors reported by `axle config check`.

mod common;

use std::process::Command;
use std::time::Duration;

use axle_tests::server::axle_bin;
use common::http::sample;
use common::mqtt::{opts, persistent, text, topic, Closed, V5};
use common::{Broker, WAIT};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

#[tokio::test]
async fn metrics_move_under_load_and_pass_promtool() {
    let b = Broker::with_config("[metrics]\ntopics = [\"v/+/telemetry\"]\n");
    let http = b.http();
    let mut sub = V5::connect(opts("sub", b.port)).await;
    sub.subscribe("v/+/telemetry", QoS::AtLeastOnce).await;
    let mut car = V5::connect(opts("car", b.port)).await;
    for i in 0..5 {
        car.publish_acked("v/1/telemetry", QoS::AtLeastOnce, false, format!("{i}")).await;
    }
    car.publish_acked("v/1/other", QoS::AtMostOnce, false, "x").await;
    assert_eq!(sub.publishes(5).await.len(), 5);
    let m = http.metrics();
    assert!(sample(&m, "axle_messages_received_total", "qos=\"1\"").unwrap_or(0.0) >= 5.0, "{m}");
    assert!(sample(&m, "axle_messages_sent_total", "qos=\"1\"").unwrap_or(0.0) >= 5.0, "{m}");
    assert_eq!(sample(&m, "axle_topic_messages_received_total", "filter=\"v/+/telemetry\""), Some(5.0), "{m}");
    assert_eq!(sample(&m, "axle_topic_messages_sent_total", "filter=\"v/+/telemetry\""), Some(5.0), "{m}");
    assert_eq!(sample(&m, "axle_connections", "listener=\"tcp\""), Some(2.0), "{m}");
    assert_eq!(sample(&m, "axle_sessions", "state=\"online\""), Some(2.0), "{m}");
    assert!(sample(&m, "axle_subscriptions", "").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(sample(&m, "axle_stream_appended_records_total", "stream=\"default\"").unwrap_or(0.0) >= 6.0, "{m}");
    assert!(sample(&m, "axle_log_fsync_duration_seconds_count", "").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(m.contains("axle_slow_subscriber_latency_seconds{client_id=\"sub\"}"), "{m}");

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .run_with_stdin(m.as_bytes());
    assert!(
        promtool.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );

    // Dropped messages are counted with their reason.
    car.publish_acked("$SYS/forged", QoS::AtMostOnce, false, "no").await;
    car.publish_acked("v/1/telemetry", QoS::AtLeastOnce, false, "barrier").await;
    let m = http.metrics();
    assert_eq!(sample(&m, "axle_messages_dropped_total", "reason=\"reserved_topic\""), Some(1.0), "{m}");
}

trait RunWithStdin {
    fn run_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl RunWithStdin for Command {
    fn run_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is installed by scripts/setup --tests");
        child.stdin.take().expect("stdin").write_all(input).expect("write to promtool");
        child.wait_with_output().expect("promtool runs")
    }
}

#[tokio::test]
async fn admin_api_needs_the_bearer_token() {
    let b = Broker::start();
    let http = b.http();
    assert_eq!(http.get_without_token("/api/v1/clients").status, 401);
    assert_eq!(http.get_with_token("/api/v1/clients", "wrong-token-0123456789").status, 401);
    assert_eq!(http.get("/api/v1/clients").status, 200);
    // The document and the metrics need no token.
    let doc = http.get_without_token("/api/v1/openapi.json");
    assert_eq!(doc.status, 200);
    assert!(doc.body["paths"]["/api/v1/clients/{client_id}"].is_object(), "{}", doc.text);
}

#[tokio::test]
async fn admin_api_reports_a_single_broker_as_not_clustered() {
    let b = Broker::start();
    let v = b.http().get("/api/v1/cluster");
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.body["enabled"], false, "{}", v.text);
    assert_eq!(v.body["partitions"].as_array().map(Vec::len), Some(0), "{}", v.text);
}

#[tokio::test]
async fn admin_api_lists_filters_inspects_and_kicks_clients() {
    let b = Broker::start();
    let http = b.http();
    let mut o = opts("car-7", b.port);
    o.set_credentials("fleet", "pw");
    let mut car = V5::connect(o).await;
    car.subscribe("v/car-7/cmd", QoS::AtLeastOnce).await;
    let _other = V5::connect(opts("ops-1", b.port)).await;

    let all = http.get("/api/v1/clients");
    assert_eq!(all.status, 200);
    assert_eq!(all.body.as_array().map(Vec::len), Some(2), "{}", all.text);
    let mine = http.get("/api/v1/clients?username=fleet");
    assert_eq!(mine.body.as_array().map(Vec::len), Some(1), "{}", mine.text);
    let c = &mine.body[0];
    assert_eq!(c["client_id"], "car-7");
    assert_eq!(c["protocol"], 5);
    assert_eq!(c["listener"], "tcp");
    assert!(c["peer"].as_str().unwrap_or("").starts_with("127.0.0.1:"), "{c}");
    assert_eq!(c["subscriptions"][0]["filter"], "v/car-7/cmd");
    assert_eq!(http.get("/api/v1/clients?client_id_prefix=ops").body.as_array().map(Vec::len), Some(1));
    assert_eq!(http.get("/api/v1/clients?limit=0").status, 400);
    assert_eq!(http.get("/api/v1/clients/car-7").body["username"], "fleet");
    assert_eq!(http.get("/api/v1/clients/nobody").status, 404);

    assert_eq!(http.delete("/api/v1/clients/car-7").status, 204);
    match car.closed().await {
        Closed::ServerDisconnect(code) => assert_eq!(code, 0x98, "administrative action"),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert_eq!(http.delete("/api/v1/clients/car-7").status, 404);
}

#[tokio::test]
async fn admin_api_shows_a_sessions_backlog_and_deletes_it() {
    let b = Broker::start();
    let http = b.http();
    let mut car = V5::connect(persistent("car-9", b.port, 3600)).await;
    car.subscribe("v/car-9/cmd", QoS::AtLeastOnce).await;
    car.disconnect().await;
    let mut ops = V5::connect(opts("ops", b.port)).await;
    for i in 0..3 {
        ops.publish_acked("v/car-9/cmd", QoS::AtLeastOnce, false, format!("c{i}")).await;
    }
    let listed = http.get("/api/v1/sessions");
    assert!(listed.text.contains("\"car-9\""), "{}", listed.text);
    let s = http.get("/api/v1/sessions/car-9");
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.body["connected"], false);
    assert_eq!(s.body["subscriptions"][0]["filter"], "v/car-9/cmd");
    assert!(s.body["backlog"].as_u64().unwrap_or(0) >= 3, "{}", s.text);
    let subs = http.get("/api/v1/subscriptions?client_id=car-9");
    assert_eq!(subs.body[0]["connected"], false, "{}", subs.text);

    assert_eq!(http.delete("/api/v1/sessions/car-9").status, 204);
    assert_eq!(http.get("/api/v1/sessions/car-9").status, 404);
    let car = V5::connect(persistent("car-9", b.port, 3600)).await;
    assert!(!car.connack.session_present, "the session is gone");
}

#[tokio::test]
async fn admin_api_lists_and_clears_retained_messages() {
    let b = Broker::start();
    let http = b.http();
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("ota/m1/notice", QoS::AtLeastOnce, true, "v2.1").await;
    p.publish_acked("ota/m2/notice", QoS::AtLeastOnce, true, "v2.2").await;
    let listed = http.get("/api/v1/retained?filter=ota/%2B/notice");
    assert_eq!(listed.body.as_array().map(Vec::len), Some(2), "{}", listed.text);
    let one = http.get("/api/v1/retained/ota%2Fm1%2Fnotice");
    assert_eq!(one.body["payload_text"], "v2.1", "{}", one.text);
    assert_eq!(http.delete("/api/v1/retained/ota%2Fm1%2Fnotice").status, 204);
    assert_eq!(http.get("/api/v1/retained/ota%2Fm1%2Fnotice").status, 404);
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("ota/+/notice", QoS::AtLeastOnce).await;
    let got = s.publishes(1).await;
    assert_eq!(topic(&got[0]), "ota/m2/notice");
    assert!(s.publishes_within(Duration::from_millis(500)).await.is_empty(), "the cleared one is not sent");
}

#[tokio::test]
async fn admin_api_shows_group_lag_and_resets_offsets() {
    use axle_proto::v1::consumer_client::ConsumerClient;
    use axle_proto::v1::*;
    let b = Broker::with_config("[[streams]]\nname = \"telemetry\"\nfilters = [\"v/+/telemetry\"]\npartitions = 2\n");
    let http = b.http();
    let mut p = V5::connect(opts("p", b.port)).await;
    for i in 0..6 {
        p.publish_acked(&format!("v/{i}/telemetry"), QoS::AtLeastOnce, false, "x").await;
    }
    let grpc = b.server.wait_grpc_port(WAIT).expect("grpc port");
    let mut c = ConsumerClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
    let j = c
        .join_group(JoinGroupRequest { group: "etl".into(), stream: "telemetry".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let streams = http.get("/api/v1/streams/telemetry");
    let ends: Vec<u64> =
        streams.body["partitions"].as_array().unwrap().iter().map(|p| p["end_offset"].as_u64().unwrap()).collect();
    assert_eq!(ends.iter().sum::<u64>(), 6, "{}", streams.text);
    c.commit_offsets(CommitOffsetsRequest {
        group: "etl".into(),
        member_id: j.member_id.clone(),
        generation: j.generation,
        offsets: vec![PartitionOffset { partition: 0, offset: ends[0] }],
    })
    .await
    .unwrap();
    let g = http.get("/api/v1/consumer-groups/etl");
    assert_eq!(g.body["members"].as_array().map(Vec::len), Some(1), "{}", g.text);
    assert_eq!(g.body["lag"].as_u64(), Some(ends[1]), "partition 0 is consumed, partition 1 not: {}", g.text);
    let m = http.metrics();
    assert_eq!(
        sample(&m, "axle_consumer_group_lag", "group=\"etl\",stream=\"telemetry\",partition=\"telemetry-1\""),
        Some(ends[1] as f64),
        "{m}"
    );
    // A live group cannot be reset; once it is empty it can.
    assert_eq!(http.post("/api/v1/consumer-groups/etl/offsets", json!({"to": "earliest"})).status, 409);
    c.leave_group(LeaveGroupRequest { group: "etl".into(), member_id: j.member_id }).await.unwrap();
    let r = http.post("/api/v1/consumer-groups/etl/offsets", json!({"to": "earliest"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["lag"].as_u64(), Some(6), "{}", r.text);
    assert_eq!(http.post("/api/v1/consumer-groups/etl/offsets", json!({"to": "yesterday"})).status, 400);
    assert_eq!(http.post("/api/v1/consumer-groups/nope/offsets", json!({"to": "latest"})).status, 404);
}

#[tokio::test]
async fn log_level_changes_at_run_time_and_bad_filters_are_refused() {
    let b = Broker::start();
    let http = b.http();
    let r = http.put("/api/v1/log-level", json!({"filter": "info,axle_broker::connection=debug"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["filter"].as_str().unwrap_or("").contains("axle_broker::connection=debug"), "{}", r.text);
    assert_eq!(http.put("/api/v1/log-level", json!({"filter": "info,[oops"})).status, 400);
    assert!(http.get("/api/v1/log-level").body["filter"].as_str().unwrap_or("").contains("connection=debug"));
}

#[tokio::test]
async fn bans_are_added_listed_and_lifted_and_absurd_durations_are_refused() {
    let b = Broker::start();
    let http = b.http();
    let r = http.post("/api/v1/bans", json!({"client_id": "rogue", "duration_secs": 3600, "reason": "test"}));
    assert_eq!(r.status, 201, "{}", r.text);
    let until = r.body["ban"]["until_ms"].as_i64().unwrap_or(0);
    let created = r.body["ban"]["created_ms"].as_i64().unwrap_or(0);
    assert_eq!(until - created, 3_600_000, "{}", r.text);
    let list = http.get("/api/v1/bans");
    assert!(list.body.as_array().is_some_and(|a| a.iter().any(|b| b["value"] == "rogue")), "{}", list.text);
    // Beyond 100 years (and beyond i64 milliseconds) is refused, not clamped.
    for secs in [3_155_760_001u64, 9_223_372_036_854_775_808] {
        let r = http.post("/api/v1/bans", json!({"username": "u", "duration_secs": secs}));
        assert_eq!(r.status, 400, "{secs}: {}", r.text);
        assert!(r.text.contains("duration_secs"), "{}", r.text);
    }
    assert_eq!(http.delete("/api/v1/bans?client_id=rogue").status / 100, 2);
    let list = http.get("/api/v1/bans");
    assert!(list.body.as_array().is_some_and(|a| a.iter().all(|b| b["value"] != "rogue")), "{}", list.text);
}

#[tokio::test]
async fn sys_topics_carry_version_and_client_events() {
    let b = Broker::start();
    let mut watcher = V5::connect(opts("watcher", b.port)).await;
    watcher.subscribe("$SYS/brokers/+/version", QoS::AtMostOnce).await;
    let v = watcher.publishes(1).await;
    assert_eq!(text(&v[0]), env!("CARGO_PKG_VERSION"));
    watcher.subscribe("$SYS/brokers/+/clients/car-42/+", QoS::AtMostOnce).await;
    let car = V5::connect(opts("car-42", b.port)).await;
    car.disconnect().await;
    // The broker publishes `version` (retained) as it starts: when that races the watcher's
    // SUBSCRIBE, the watcher gets it both as a retained and as a live message. Skip repeats.
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(watcher.publishes(1).await.into_iter().filter(|p| !topic(p).ends_with("/version")));
    }
    assert_eq!(topic(&events[0]), "$SYS/brokers/axle-1/clients/car-42/connected");
    assert_eq!(topic(&events[1]), "$SYS/brokers/axle-1/clients/car-42/disconnected");
    let body: serde_json::Value = serde_json::from_str(&text(&events[0])).unwrap();
    assert_eq!(body["client_id"], "car-42");
    // `#` does not reach `$SYS`.
    let mut all = V5::connect(opts("all", b.port)).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let _ = V5::connect(opts("car-43", b.port)).await;
    assert!(all.publishes_within(Duration::from_millis(500)).await.iter().all(|p| !topic(p).starts_with("$SYS")));
}

#[tokio::test]
async fn sys_topics_are_refused_where_the_acl_denies_them() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.txt");
    std::fs::write(&acl, "deny user:guest subscribe $SYS/#\nallow all pubsub #\nallow all subscribe $SYS/#\n").unwrap();
    let b = Broker::with_config(&format!("acl_file = {:?}\n", acl.display().to_string()));
    let mut o = opts("g", b.port);
    o.set_credentials("guest", "x");
    let mut guest = V5::connect(o).await;
    // rumqttc ends the connection on a refused subscription, naming the reason.
    guest.client.subscribe("$SYS/brokers/+/version", QoS::AtMostOnce).await.unwrap();
    match guest.closed().await {
        Closed::Other(e) => assert!(e.contains("NotAuthorized"), "SUBACK 0x87 expected: {e}"),
        other => panic!("SUBACK 0x87 expected, got {other:?}"),
    }
    let mut o = opts("a", b.port);
    o.set_credentials("admin", "x");
    let mut admin = V5::connect(o).await;
    admin.subscribe("$SYS/brokers/+/version", QoS::AtMostOnce).await;
    assert_eq!(admin.publishes(1).await.len(), 1);
}

#[test]
fn config_check_names_the_key_file_and_line_and_honours_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("axle.toml");
    std::fs::write(&f, "[mqtt]\nmax_keepalive = 60\nmax_keep_alive = 5\n").unwrap();
    let out = Command::new(axle_bin()).args(["config", "check"]).arg(&f).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("axle.toml, line 3") && err.contains("mqtt.max_keep_alive"), "{err}");

    std::fs::write(&f, "[mqtt]\nmax_keepalive = 60\n").unwrap();
    let ok = Command::new(axle_bin()).args(["config", "check"]).arg(&f).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad_env = Command::new(axle_bin())
        .args(["config", "check"])
        .arg(&f)
        .env("AXLE_MQTT__RECEIVE_MAXIMUM", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad_env.stderr);
    assert!(!bad_env.status.success() && err.contains("AXLE_MQTT__RECEIVE_MAXIMUM"), "{err}");
    let unknown_env =
        Command::new(axle_bin()).args(["config", "check"]).arg(&f).env("AXLE_MQTT__NO_SUCH_KEY", "1").output().unwrap();
    let err = String::from_utf8_lossy(&unknown_env.stderr);
    assert!(!unknown_env.status.success() && err.contains("no_such_key"), "{err}");
}

#[tokio::test]
async fn an_environment_override_changes_the_running_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Server::start has no environment hook: run the binary directly with the variable set.
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(axle_bin())
        .args(["serve", "--mqtt-tcp", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("AXLE_MQTT__MAX_KEEPALIVE", "30")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let port = wait_port(&log);
    let mut o = opts("k", port);
    o.set_keep_alive(Duration::from_secs(120));
    let c = V5::connect(o).await;
    let granted = c.connack.properties.as_ref().and_then(|p| p.server_keep_alive);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(granted, Some(30));
}

#[test]
fn offline_commands_read_the_same_environment_overrides_as_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exports = dir.path().join("elsewhere");
    std::fs::create_dir_all(exports.join("telemetry")).unwrap();
    let run = |args: &[&str], var: (&str, &str)| {
        Command::new(axle_bin()).args(args).arg("--data-dir").arg(&data).env(var.0, var.1).output().unwrap()
    };
    // Without --config, `query`, `export` and `user` apply AXLE_… overrides as `serve` does:
    // a bad one is refused, naming the variable, instead of being ignored.
    for args in [&["query", "SELECT 1"][..], &["export"], &["user", "list"]] {
        let out = run(args, ("AXLE_MQTT__NO_SUCH_KEY", "1"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("no_such_key"), "{args:?}: {err}");
    }
    // A good one takes effect: `axle query` looks under the overridden export root (empty
    // here, so it says so, naming that directory rather than <data dir>/export).
    let out = run(&["query", "SELECT 1"], ("AXLE_EXPORT__DIR", exports.to_str().unwrap()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("elsewhere") && !err.contains("data/export"), "{err}");
}

fn wait_port(log: &std::path::Path) -> u16 {
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        let out = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = out.lines().find(|l| l.contains("axle serving")) {
            let at = line.find(" mqtt_tcp=").expect("mqtt_tcp field") + " mqtt_tcp=".len();
            let addr: String = line[at..].chars().take_while(|c| !c.is_whitespace()).collect();
            return addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the broker did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// Every record of `stream` (partitions 0..n), read with gRPC Fetch up to each end offset.
async fn fetch_all(grpc: u16, stream: &str) -> Vec<String> {
    use axle_proto::v1::consumer_client::ConsumerClient;
    use axle_proto::v1::*;
    let mut c = ConsumerClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
    let d = c.describe_stream(DescribeStreamRequest { stream: stream.into() }).await.unwrap().into_inner();
    let mut out = Vec::new();
    for p in d.partitions {
        let mut next = p.log_start_offset;
        while next < p.high_watermark {
            let mut s = c
                .fetch(FetchRequest {
                    stream: stream.into(),
                    partition: p.partition,
                    offset: next,
                    max_wait_ms: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let resp =
                tokio::time::timeout(WAIT, s.message()).await.expect("fetch stalled").unwrap().expect("a response");
            for r in resp.records {
                out.push(String::from_utf8_lossy(&r.payload).to_string());
            }
            next = resp.next_offset;
        }
    }
    out
}

#[tokio::test]
async fn sigterm_under_load_loses_no_acknowledged_message_and_exits_0() {
    let mut b = Broker::start();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (port, acked) = (b.port, acked.clone());
        tasks.push(tokio::spawn(async move {
            // Ends (by panicking inside the task) when the broker disconnects it.
            let mut p = V5::connect(opts(&format!("load-{w}"), port)).await;
            for i in 0.. {
                let payload = format!("w{w}-{i}");
                p.publish_acked(&format!("load/{w}"), QoS::AtLeastOnce, false, payload.clone()).await;
                acked.lock().unwrap().push(payload);
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.server.signal(libc::SIGTERM);
    let status = b.server.wait_exit(WAIT).expect("the broker exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", b.log());
    for t in tasks {
        let _ = t.await;
    }
    assert!(b.server.output().contains("axle stopped cleanly"), "{}", b.log());
    b.restart_stopped();
    assert!(b.server.output().contains("no recovery needed"), "the next start says it needs no recovery\n{}", b.log());
    let grpc = b.server.wait_grpc_port(WAIT).expect("grpc port");
    let stored: std::collections::HashSet<String> = fetch_all(grpc, "default").await.into_iter().collect();
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<&String> = acked.iter().filter(|a| !stored.contains(*a)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}
