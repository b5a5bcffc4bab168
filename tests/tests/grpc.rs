//! The gRPC consumer API against the real `axle` binary, with the tonic client generated
//! from `proto/axle/v1/consumer.proto`: every RPC and its error paths, MQTT → Fetch and
//! gRPC Publish → MQTT (mosquitto clients), including an offline persistent session.

use std::process::Command;
use std::time::Duration;

use axle_proto::v1::consumer_client::ConsumerClient;
use axle_proto::v1::*;
use axle_tests::server::Server;
use tonic::transport::Channel;
use tonic::Code;

struct Axle {
    server: Server,
    mqtt: u16,
    client: ConsumerClient<Channel>,
    _dir: tempfile::TempDir,
}

const CONFIG: &str = "
[[streams]]
name = \"telemetry\"
filters = [\"v/+/telemetry\"]
partitions = 4
key = \"levels:2\"
";

async fn start() -> Axle {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("axle.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let (server, mqtt) =
        Server::start_ready(&dir.path().join("data"), &["--config", cfg.to_str().unwrap(), "--fsync", "never"])
            .unwrap();
    let grpc = server.wait_grpc_port(Duration::from_secs(10)).expect("grpc port in the log");
    let client = ConsumerClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
    Axle { server, mqtt, client, _dir: dir }
}

async fn publish(c: &mut ConsumerClient<Channel>, topic: &str, payload: &str) -> PublishResponse {
    c.publish(PublishRequest {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec().into(),
        qos: 1,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

async fn fetch_n(c: &mut ConsumerClient<Channel>, stream: &str, partition: u32, offset: u64, n: usize) -> Vec<Record> {
    let mut s = c
        .fetch(FetchRequest { stream: stream.into(), partition, offset, max_wait_ms: 200, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("fetch stalled");
        let resp = r.unwrap().expect("stream open");
        assert!(resp.high_watermark >= resp.next_offset);
        out.extend(resp.records);
    }
    out
}

#[tokio::test]
async fn streams_are_listed_and_described_with_their_partitions() {
    let mut a = start().await;
    let streams = a.client.list_streams(ListStreamsRequest {}).await.unwrap().into_inner().streams;
    let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["telemetry", "default"]);
    publish(&mut a.client, "v/car1/telemetry", "hello").await;
    let d = a.client.describe_stream(DescribeStreamRequest { stream: "telemetry".into() }).await.unwrap().into_inner();
    assert_eq!(d.partitions.len(), 4);
    assert_eq!(d.partition_key, "levels:2");
    assert_eq!(d.filters, vec!["v/+/telemetry"]);
    assert_eq!(d.partitions.iter().map(|p| p.high_watermark).sum::<u64>(), 1);
    assert!(d.partitions.iter().all(|p| !p.leader.is_empty()));
    let e = a.client.describe_stream(DescribeStreamRequest { stream: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a.client.describe_stream(DescribeStreamRequest { stream: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn fetch_returns_records_in_order_with_limits_and_follows_the_tail() {
    let mut a = start().await;
    let mut partition = 0;
    for i in 0..50 {
        partition = publish(&mut a.client, "v/car7/telemetry", &format!("m{i}")).await.partition;
    }
    // Limits per response.
    let mut s = a
        .client
        .fetch(FetchRequest { stream: "telemetry".into(), partition, offset: 10, max_records: 7, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(first.records.len(), 7);
    assert_eq!(first.records[0].offset, 10);
    assert_eq!(first.records[0].payload, b"m10".as_slice());
    assert_eq!(first.next_offset, 17);
    assert_eq!(first.high_watermark, 50);
    assert_eq!(first.log_start_offset, 0);
    drop(s);
    // Long-poll: an empty response at the tail, then new records as they come.
    let mut s = a
        .client
        .fetch(FetchRequest {
            stream: "telemetry".into(),
            partition,
            offset: 50,
            max_wait_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let empty = s.message().await.unwrap().unwrap();
    assert!(empty.records.is_empty());
    assert_eq!(empty.next_offset, 50);
    let mut c2 = a.client.clone();
    tokio::spawn(async move { publish(&mut c2, "v/car7/telemetry", "late").await });
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
        if let Some(rec) = r.records.first() {
            assert_eq!((rec.offset, rec.payload.as_ref()), (50, b"late".as_slice()));
            break;
        }
    }
}

#[tokio::test]
async fn fetch_outside_the_bounds_is_out_of_range_with_the_bounds() {
    let mut a = start().await;
    let p = publish(&mut a.client, "v/car1/telemetry", "x").await.partition;
    let e = a
        .client
        .fetch(FetchRequest { stream: "telemetry".into(), partition: p, offset: 2, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("high_watermark=1"), "{}", e.message());
    let e = a
        .client
        .fetch(FetchRequest { stream: "telemetry".into(), partition: 99, offset: 0, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn an_mqtt_publish_appears_in_fetch_with_its_topic_and_properties() {
    let mut a = start().await;
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &a.mqtt.to_string(), "-i", "car9", "-V", "mqttv5", "-q", "1"])
        .args(["-t", "v/car9/telemetry", "-m", "speed=42"])
        .args(["-D", "publish", "user-property", "unit", "kmh"])
        .args(["-D", "publish", "content-type", "text/plain"])
        .output()
        .expect("mosquitto_pub runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offsets = a
        .client
        .list_offsets(ListOffsetsRequest {
            stream: "telemetry".into(),
            partitions: vec![],
            spec: Some(list_offsets_request::Spec::Latest(true)),
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    let p = offsets.iter().find(|o| o.offset == 1).expect("one partition holds the message").partition;
    let r = &fetch_n(&mut a.client, "telemetry", p, 0, 1).await[0];
    assert_eq!(r.topic, "v/car9/telemetry");
    assert_eq!(r.payload, b"speed=42".as_slice());
    assert_eq!(r.publisher, "car9");
    assert_eq!(r.qos, 1);
    assert_eq!(r.key, b"v/car9".as_slice());
    assert_eq!(r.content_type.as_deref(), Some("text/plain"));
    assert_eq!(r.user_properties, vec![UserProperty { key: "unit".into(), value: "kmh".into() }]);
    let _ = &a.server;
}

#[tokio::test]
async fn list_offsets_answers_earliest_latest_and_by_timestamp() {
    let mut a = start().await;
    let p = publish(&mut a.client, "v/car2/telemetry", "a").await.partition;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&mut a.client, "v/car2/telemetry", "b").await;
    let ask = |spec| ListOffsetsRequest { stream: "telemetry".into(), partitions: vec![p], spec: Some(spec) };
    let get = |r: ListOffsetsResponse| r.offsets[0].offset;
    use list_offsets_request::Spec;
    assert_eq!(get(a.client.list_offsets(ask(Spec::Earliest(true))).await.unwrap().into_inner()), 0);
    assert_eq!(get(a.client.list_offsets(ask(Spec::Latest(true))).await.unwrap().into_inner()), 2);
    assert_eq!(get(a.client.list_offsets(ask(Spec::TimestampMs(t))).await.unwrap().into_inner()), 1);
    assert_eq!(get(a.client.list_offsets(ask(Spec::TimestampMs(t + 60_000))).await.unwrap().into_inner()), 2);
    let e = a
        .client
        .list_offsets(ListOffsetsRequest { stream: "telemetry".into(), partitions: vec![], spec: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn consumer_groups_rebalance_fence_stale_commits_and_store_offsets() {
    let mut a = start().await;
    let c = &mut a.client;
    let join = |member: &str| JoinGroupRequest {
        group: "analytics".into(),
        stream: "telemetry".into(),
        member_id: member.into(),
        ..Default::default()
    };
    let m1 = c.join_group(join("")).await.unwrap().into_inner();
    assert_eq!(m1.partitions, vec![0, 1, 2, 3]);
    let m2 = c.join_group(join("")).await.unwrap().into_inner();
    assert_eq!(m2.generation, m1.generation + 1);
    assert_eq!(m2.members.len(), 2);
    // m1 learns of the rebalance from its heartbeat; its stale commit is refused.
    let hb = c
        .heartbeat(HeartbeatRequest {
            group: "analytics".into(),
            member_id: m1.member_id.clone(),
            generation: m1.generation,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hb.rebalance_needed);
    let commit = |m: &JoinGroupResponse, generation: u64, partition: u32, offset: u64| CommitOffsetsRequest {
        group: "analytics".into(),
        member_id: m.member_id.clone(),
        generation,
        offsets: vec![PartitionOffset { partition, offset }],
    };
    let e = c.commit_offsets(commit(&m1, m1.generation, 0, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    let m1b = c.join_group(join(&m1.member_id)).await.unwrap().into_inner();
    assert_eq!(m1b.generation, m2.generation);
    let mine = m1b.partitions[0];
    c.commit_offsets(commit(&m1b, m1b.generation, mine, 0)).await.unwrap();
    // Committing a partition one does not own, or past the end, is refused.
    let theirs = m2.partitions[0];
    let e = c.commit_offsets(commit(&m1b, m1b.generation, theirs, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c.commit_offsets(commit(&m1b, m1b.generation, mine, 5)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    let got = c
        .fetch_committed(FetchCommittedRequest { group: "analytics".into(), partitions: vec![] })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(got, vec![PartitionOffset { partition: mine, offset: 0 }]);
    // Leaving hands everything to the other member.
    c.leave_group(LeaveGroupRequest { group: "analytics".into(), member_id: m1b.member_id.clone() }).await.unwrap();
    let m2b = c.join_group(join(&m2.member_id)).await.unwrap().into_inner();
    assert_eq!(m2b.partitions, vec![0, 1, 2, 3]);
    let e = c
        .heartbeat(HeartbeatRequest { group: "analytics".into(), member_id: m1b.member_id, generation: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .join_group(JoinGroupRequest { group: "analytics".into(), stream: "default".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "one group reads one stream");
}

#[tokio::test]
async fn a_member_that_stops_heartbeating_loses_its_partitions() {
    let mut a = start().await;
    let c = &mut a.client;
    let join = |member: &str, timeout: u32| JoinGroupRequest {
        group: "g".into(),
        stream: "telemetry".into(),
        member_id: member.into(),
        session_timeout_ms: timeout,
        ..Default::default()
    };
    let quiet = c.join_group(join("", 1000)).await.unwrap().into_inner();
    let alive = c.join_group(join("", 30_000)).await.unwrap().into_inner();
    assert_eq!(alive.members.len(), 2);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = c.join_group(join(&alive.member_id, 30_000)).await.unwrap().into_inner();
    assert_eq!(again.members, vec![alive.member_id.clone()], "{} timed out", quiet.member_id);
    assert_eq!(again.partitions, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn grpc_publish_reaches_an_offline_persistent_mqtt_session() {
    let mut a = start().await;
    let port = a.mqtt.to_string();
    let sub = |extra: &[&str]| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", "car5", "-c", "-q", "1", "-t", "v/car5/cmd"])
            .args(extra)
            .output()
            .expect("mosquitto_sub runs")
    };
    assert!(sub(&["-E"]).status.success(), "subscribed and left");
    let r = a
        .client
        .publish(PublishRequest {
            topic: "v/car5/cmd".into(),
            payload: b"unlock".to_vec().into(),
            qos: 1,
            publisher: "fleet-backend".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stream, "default");
    let out = sub(&["-C", "1", "-W", "5"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unlock");
    // Bad publishes are refused with INVALID_ARGUMENT.
    for (topic, qos) in [("v/+/cmd", 1), ("", 0), ("$SYS/x", 0), ("ok", 3)] {
        let e = a.client.publish(PublishRequest { topic: topic.into(), qos, ..Default::default() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{topic} {qos}");
    }
}

/// Decodes a FetchBatches response's concatenated batches, verifying each CRC; returns
/// (offset, topic, payload) per record.
fn decode_batches(buf: &bytes::Bytes) -> Vec<(u64, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let header = axle_log::verify_batch(&buf[pos..], buf.len() - pos).expect("a valid batch");
        let batch = buf.slice(pos..pos + header.length as usize);
        for r in axle_log::decode_records(&batch, &header).expect("records decode") {
            let topic = r.headers.iter().find(|h| h.key == "t").map(|h| String::from_utf8(h.value.to_vec()).unwrap());
            out.push((r.offset, topic.expect("topic header"), r.value.to_vec()));
        }
        pos += header.length as usize;
    }
    out
}

#[tokio::test]
async fn fetch_batches_sends_stored_batches_that_decode_to_the_published_records() {
    let mut a = start().await;
    let mut partition = 0;
    for i in 0..30 {
        partition = publish(&mut a.client, "v/car3/telemetry", &format!("m{i}")).await.partition;
    }
    let req = |offset, max_bytes| FetchRequest {
        stream: "telemetry".into(),
        partition,
        offset,
        max_bytes,
        max_wait_ms: 100,
        ..Default::default()
    };
    // Small responses: at least one batch each, and the pieces join up without gaps.
    let mut s = a.client.fetch_batches(req(5, 1)).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|r: &(u64, String, Vec<u8>)| r.0 < 29) {
        let resp = tokio::time::timeout(Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
        assert!(resp.batch_count >= 1);
        assert_eq!(resp.high_watermark, 30);
        assert_eq!(resp.log_start_offset, 0);
        let records = decode_batches(&resp.batches);
        assert_eq!(records.last().unwrap().0 + 1, resp.next_offset);
        seen.extend(records.into_iter().filter(|r| r.0 >= 5));
    }
    let expected: Vec<_> = (5..30).map(|i| (i, "v/car3/telemetry".to_string(), format!("m{i}").into_bytes())).collect();
    assert_eq!(seen, expected);
    // At the tail: an empty response with the bounds, then the next publish.
    let empty = tokio::time::timeout(Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
    assert!(empty.batches.is_empty());
    assert_eq!((empty.batch_count, empty.next_offset), (0, 30));
    publish(&mut a.client, "v/car3/telemetry", "late").await;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), s.message()).await.unwrap().unwrap().unwrap();
        if r.batch_count > 0 {
            assert_eq!(decode_batches(&r.batches), vec![(30, "v/car3/telemetry".to_string(), b"late".to_vec())]);
            break;
        }
    }
    // Out of range, with the bounds.
    let e = a.client.fetch_batches(req(32, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("high_watermark=31"), "{}", e.message());
}
