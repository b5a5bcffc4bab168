//! Three-node replication end to end (docs/replication.md): real `axle serve` processes on
//! 127.0.0.1-3, QoS 1 publishers that fail over between nodes, and checks that nothing a
//! PUBACK acknowledged is lost when leaders are killed, paused or restarted, that every node
//! holds the same committed log, and that subscribers on surviving nodes see all of it.
//!
//! The tests run one at a time (each starts three brokers; the CI machine has two cores).

use std::collections::HashSet;
use std::time::Duration;

use axle_tests::cluster::check::{check_deliveries, check_log, check_same_log, Delivery, Ledger, MsgId, PartitionLog};
use axle_tests::cluster::load::{Load, PublisherReport, PublisherSpec, Subscriber, STREAMS_PER_CLIENT};
use axle_tests::cluster::{must, Cluster};

const STREAM: &str = "telemetry";
const PARTITIONS: u32 = 2;
const STREAMS: &str = r#"
[[streams]]
name = "telemetry"
filters = ["v/+/telemetry"]
partitions = 2
key = "levels:2"
acks = "quorum"
"#;

/// Generous bound for the load to make progress after a change (availability, never speed).
const PROGRESS_WAIT: Duration = Duration::from_secs(60);
/// How long publishers keep retrying their unacknowledged messages after the load stops.
const DRAIN: Duration = Duration::from_secs(30);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until the load has `more` PUBACKs beyond what it had; panics with the logs.
async fn progress(c: &Cluster, load: &Load, more: u64, when: &str) {
    let target = load.acked() + more;
    let ok = load.wait_acked(target, PROGRESS_WAIT).await;
    assert!(
        ok,
        "{when}: the load did not reach {target} PUBACKs within {PROGRESS_WAIT:?} (at {})\n{}",
        load.acked(),
        c.logs()
    );
}

fn print_reports(reports: &[PublisherReport]) {
    for r in reports {
        eprintln!(
            "publisher {}: {} acked {:?}, {} connections, {} ack timeouts, {} failures, {} unacked at stop; first errors: {:?}",
            r.client, r.acked, r.acked_by_node, r.connections, r.ack_timeouts, r.failures, r.unacked_at_stop, r.errors
        );
    }
}

/// After the load stopped: waits until every running node agrees on the high watermarks,
/// reads each partition from its leader and checks it against the ledger, then reads every
/// running node and checks it holds the same records. Returns the leaders' logs.
async fn verify_everywhere(c: &Cluster, ledger: &Ledger) -> Vec<PartitionLog> {
    let hw = c.wait_converged(STREAM, PARTITIONS, Duration::from_secs(2)).await;
    let mut reference = Vec::new();
    for p in 0..PARTITIONS {
        let leader = c.leader_of(STREAM, p).await;
        reference.push(must(
            c,
            c.fetch_all(leader, STREAM, p).await,
            &format!("reading {STREAM}/{p} from leader {leader}"),
        ));
    }
    let summary = check_log(ledger, &reference)
        .unwrap_or_else(|e| panic!("the leaders' committed log (high watermarks {hw:?}): {e}\n{}", c.logs()));
    eprintln!("committed log: {summary:?}; {} retried", ledger.retried.len());
    for id in c.running() {
        let logs = c.fetch_stream(id, STREAM, PARTITIONS).await;
        if let Err(e) = check_same_log(&reference, &logs) {
            panic!("node {id}'s replica differs from the leaders' log: {e}\n{}", c.logs());
        }
    }
    reference
}

/// Waits until `sub` received every message in `logs` (at least once), up to 60 s.
async fn wait_delivered(c: &Cluster, sub: &Subscriber, logs: &[PartitionLog], who: &str) {
    wait_delivered_with(c, sub, &[], logs, who).await
}

/// As [`wait_delivered`], counting `earlier` deliveries of the same session too (received by
/// a connection before `sub`).
async fn wait_delivered_with(c: &Cluster, sub: &Subscriber, earlier: &[Delivery], logs: &[PartitionLog], who: &str) {
    let want: HashSet<MsgId> =
        logs.iter().flat_map(|l| l.records.iter()).filter_map(|(_, p)| axle_tests::cluster::check::decode(p)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<MsgId> = earlier.iter().chain(sub.deliveries().iter()).map(|d| d.id).collect();
        let missing = want.difference(&got).count();
        if missing == 0 {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{who}: {missing} of {} committed messages not delivered within 60 s\n{}", want.len(), c.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kill rounds of the SIGKILL test: 20, or `AXLE_CLUSTER_ROUNDS` (to run longer locally).
fn rounds() -> usize {
    std::env::var("AXLE_CLUSTER_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// Deterministic pseudo-random delays of 50..=800 ms, one per round (xorshift, fixed seed).
fn delays(rounds: usize) -> Vec<Duration> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..rounds)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(50 + x % 751)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_acks_survive_sigkill_of_the_leader_twenty_times() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, STREAMS).await;
    // Every round kills the leader of partition 0 or 1 (alternately), whichever node it is.
    // The persistent subscriber starts on a node that leads nothing; when a round kills its
    // node, it reconnects to it after the restart (MQTT ports stay the same) and resumes its
    // session there. What its node sent after the session's last save comes again, with DUP.
    let (l0, l1) = (c.leader_of(STREAM, 0).await, c.leader_of(STREAM, 1).await);
    let keeper = c.ids().into_iter().rev().find(|i| *i != l0 && *i != l1).expect("3 nodes, 2 partitions");
    let addr = c.node(keeper).mqtt_addr().expect("a running node");
    let sub = must(&c, Subscriber::start(addr, "keeper", "v/+/telemetry", true).await, "subscribing on the keeper");
    let specs: Vec<PublisherSpec> = (0..3).map(|i| PublisherSpec::new(i, i + 1, 60.0)).collect();
    let load = Load::start(&c.directory(), specs);
    progress(&c, &load, 50, "before the first kill").await;
    let mut schedule = Vec::new();
    let mut keeper_killed = 0;
    for (round, delay) in delays(rounds()).into_iter().enumerate() {
        tokio::time::sleep(delay).await;
        let partition = (round % 2) as u32;
        let victim = c.leader_of(STREAM, partition).await;
        keeper_killed += usize::from(victim == keeper);
        c.kill9(victim).await;
        let new0 = c.leader_of(STREAM, 0).await;
        let new1 = c.leader_of(STREAM, 1).await;
        assert_ne!(if partition == 0 { new0 } else { new1 }, victim, "the dead node still leads\n{}", c.logs());
        schedule.push(format!(
            "round {}: +{delay:?} killed node {victim} (leader of partition {partition}); leaders now {new0}, {new1}",
            round + 1
        ));
        c.restart(victim).await;
        c.wait_caught_up(victim, STREAM, PARTITIONS).await;
        progress(&c, &load, 20, &format!("after round {}", round + 1)).await;
    }
    eprintln!("{}\nthe subscriber's node was killed in {keeper_killed} rounds", schedule.join("\n"));
    let (ledger, reports) = load.stop(DRAIN).await;
    print_reports(&reports);
    assert!(
        ledger.acked.len() as u64 >= 50 + 20 * rounds() as u64,
        "the load hardly ran: {} acked\n{}",
        ledger.acked.len(),
        c.logs()
    );
    let logs = verify_everywhere(&c, &ledger).await;
    wait_delivered(&c, &sub, &logs, "the keeper's persistent subscriber").await;
    let (got, report) = sub.stop().await;
    eprintln!("keeper subscriber on node {keeper}: {report:?}");
    assert_eq!(report.sessions_lost, 0, "the keeper's session was lost on its own node: {report:?}\n{}", c.logs());
    let summary = check_deliveries(&ledger, &logs, &got, false)
        .unwrap_or_else(|e| panic!("the keeper subscriber on node {keeper}: {e}\n{}", c.logs()));
    eprintln!("keeper deliveries: {summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_leader_acks_nothing_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, STREAMS).await;
    let old = c.leader_of(STREAM, 0).await;
    let others: Vec<u32> = c.ids().into_iter().filter(|i| *i != old).collect();
    // Client 0 is connected to the leader and stays connected through the pause (long
    // keepalive and ack timeout): whatever it is acknowledged after the resume must be in the
    // log. Clients 1 and 2 publish through the other nodes.
    let mut pinned = PublisherSpec::new(0, old, 60.0);
    pinned.keep_alive = Duration::from_secs(60);
    pinned.ack_timeout = Duration::from_secs(30);
    let specs = vec![pinned, PublisherSpec::new(1, others[0], 60.0), PublisherSpec::new(2, others[1], 60.0)];
    let load = Load::start(&c.directory(), specs);
    progress(&c, &load, 100, "before the pause").await;
    let epoch_of = |info: &axle_proto::v1::StreamInfo| {
        info.partitions.iter().find(|p| p.partition == 0).map(|p| p.leader_epoch).expect("partition 0")
    };
    let old_epoch = epoch_of(&c.describe(old, STREAM).await.expect("DescribeStream on the leader"));
    c.sigstop(old);
    let mark = load.ledger().acked.len();
    let new = c.leader_of(STREAM, 0).await;
    assert_ne!(new, old, "a paused node cannot be the agreed leader");
    // The new leader writes under a new epoch: the old one's epoch is never reused.
    let new_epoch = epoch_of(&c.describe(new, STREAM).await.expect("DescribeStream on the new leader"));
    assert!(new_epoch > old_epoch, "leader epoch {new_epoch} on node {new} after {old_epoch} on node {old}");
    c.leader_of(STREAM, 1).await;
    progress(&c, &load, 50, "while the old leader is paused").await;
    c.sigcont(old);
    // The old leader learns it was deposed and follows the agreed leader.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let agreed = c.leader_of(STREAM, 0).await;
        let view = c.partitions(old, STREAM).await;
        if view.as_ref().is_ok_and(|m| m.get(&0).is_some_and(|(l, _)| *l == Some(agreed))) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("node {old} did not report {agreed} as leader of partition 0 after SIGCONT: {view:?}\n{}", c.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_caught_up(old, STREAM, PARTITIONS).await;
    progress(&c, &load, 50, "after the old leader resumed").await;
    let (ledger, reports) = load.stop(DRAIN).await;
    print_reports(&reports);
    let logs = verify_everywhere(&c, &ledger).await;
    // Spelled out for the pinned client (check_log covers it too): every PUBACK it got from
    // the paused-then-resumed old leader is for a message in the committed log.
    let present: HashSet<MsgId> =
        logs.iter().flat_map(|l| l.records.iter()).filter_map(|(_, p)| axle_tests::cluster::check::decode(p)).collect();
    let pinned_after: Vec<MsgId> =
        ledger.acked[mark..].iter().filter(|id| id.publisher / STREAMS_PER_CLIENT == 0).copied().collect();
    let lost: Vec<&MsgId> = pinned_after.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged to the client of the paused leader {old} and not in the log: {lost:?}\n{}",
        c.logs()
    );
    eprintln!("client 0 (pinned to node {old}) was acknowledged {} messages after the pause began", pinned_after.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_loses_no_acked_message() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, STREAMS).await;
    let specs: Vec<PublisherSpec> = (0..3).map(|i| PublisherSpec::new(i, i + 1, 60.0)).collect();
    let load = Load::start(&c.directory(), specs);
    progress(&c, &load, 50, "before the rolling restart").await;
    for id in c.ids() {
        c.stop(id).await;
        c.leader_of(STREAM, 0).await;
        c.leader_of(STREAM, 1).await;
        progress(&c, &load, 30, &format!("while node {id} is down")).await;
        c.restart(id).await;
        c.wait_caught_up(id, STREAM, PARTITIONS).await;
        progress(&c, &load, 30, &format!("after node {id} came back")).await;
    }
    let (ledger, reports) = load.stop(DRAIN).await;
    print_reports(&reports);
    verify_everywhere(&c, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_on_a_follower_is_forwarded_and_read_everywhere() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, STREAMS).await;
    let (l0, l1) = (c.leader_of(STREAM, 0).await, c.leader_of(STREAM, 1).await);
    let follower = c.ids().into_iter().find(|i| *i != l0 && *i != l1).expect("3 nodes, 2 partitions");
    // A live subscriber on every node, so one is on the third node whichever partition the
    // topic maps to.
    let mut subs = Vec::new();
    for id in c.ids() {
        let addr = c.node(id).mqtt_addr().expect("a running node");
        subs.push((
            id,
            must(&c, Subscriber::start(addr, &format!("live-{id}"), "v/+/telemetry", false).await, "subscribing"),
        ));
    }
    let mut spec = PublisherSpec::new(0, follower, 200.0);
    spec.topics = 1;
    spec.max_messages = Some(100);
    let load = Load::start(&c.directory(), vec![spec]);
    let ok = load.wait_acked(100, PROGRESS_WAIT).await;
    assert!(ok, "100 QoS 1 publishes on follower {follower}: {} acknowledged\n{}", load.acked(), c.logs());
    let (ledger, reports) = load.stop(DRAIN).await;
    print_reports(&reports);
    assert!(
        ledger.retried.is_empty() && reports[0].connections == 1,
        "the publisher's connection to node {follower} failed, so exact counts do not hold: {reports:?}\n{}",
        c.logs()
    );
    let expected: Vec<MsgId> = (0..100).map(|seq| MsgId { publisher: 0, seq }).collect();
    let logs = verify_everywhere(&c, &ledger).await;
    for id in c.ids() {
        let theirs = c.fetch_stream(id, STREAM, PARTITIONS).await;
        let summary = check_log(&ledger, &theirs).unwrap_or_else(|e| panic!("node {id}: {e}\n{}", c.logs()));
        assert_eq!((summary.records, summary.distinct), (100, 100), "node {id}: {summary:?}\n{}", c.logs());
    }
    let partition = logs.iter().find(|l| !l.records.is_empty()).map(|l| l.partition).expect("100 records");
    let leader = c.leader_of(STREAM, partition).await;
    assert_ne!(leader, follower, "node {follower} led no partition when the publisher connected\n{}", c.logs());
    for (id, sub) in subs {
        wait_delivered(&c, &sub, &logs, &format!("the live subscriber on node {id}")).await;
        let (got, report) = sub.stop().await;
        let plain: Vec<Delivery> = expected.iter().map(|id| Delivery { id: *id, dup: false }).collect();
        assert_eq!(got, plain, "node {id}'s live subscriber: all 100, once, in order ({report:?})\n{}", c.logs());
    }
    // The admin API shows the same picture on every node.
    for id in c.ids() {
        let (status, view) = admin(&c, id, "GET", "/api/v1/cluster");
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["enabled"], true, "{view}");
        assert_eq!(view["node_id"], id, "{view}");
        assert_eq!(view["nodes"].as_array().map(Vec::len), Some(3), "{view}");
        let p = view["partitions"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == format!("{STREAM}-{partition}")))
            .unwrap_or_else(|| panic!("{STREAM}-{partition} missing on node {id}: {view}"));
        assert_eq!(p["leader"], leader, "{view}");
        assert_eq!(p["high_watermark"], 100, "{view}");
        assert_eq!(p["isr"].as_array().map(Vec::len), Some(3), "{view}");
    }
}

/// `method path` on node `id`'s admin API: (status, JSON body or null).
fn admin(c: &Cluster, id: u32, method: &str, path: &str) -> (u16, serde_json::Value) {
    let (base, token) = c.node(id).admin_api().expect("the admin API of a running node");
    let reply = ureq::request(method, &format!("{base}{path}")).set("Authorization", &format!("Bearer {token}")).call();
    let r = match reply {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path} on node {id}: {e}"),
    };
    let status = r.status();
    let text = r.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_removed_under_load_leaves_every_partition_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, STREAMS).await;
    let victim = c.leader_of(STREAM, 0).await;
    let others: Vec<u32> = c.ids().into_iter().filter(|i| *i != victim).collect();
    let specs = vec![PublisherSpec::new(0, others[0], 60.0), PublisherSpec::new(1, others[1], 60.0)];
    let load = Load::start(&c.directory(), specs);
    progress(&c, &load, 50, "before the removal").await;
    let (status, body) = admin(&c, others[0], "DELETE", &format!("/api/v1/cluster/nodes/{victim}"));
    assert_eq!(status, 204, "removing node {victim}: {body}\n{}", c.logs());
    c.kill9(victim).await;
    for id in &others {
        let (_, view) = admin(&c, *id, "GET", "/api/v1/cluster");
        assert_eq!(view["nodes"].as_array().map(Vec::len), Some(2), "node {id}: {view}");
        for p in view["partitions"].as_array().expect("partitions") {
            assert!(
                p["leader"] != victim && !p["replicas"].as_array().expect("replicas").contains(&victim.into()),
                "{p}"
            );
        }
    }
    progress(&c, &load, 100, "after the removal").await;
    let (status, body) = admin(&c, others[0], "DELETE", "/api/v1/cluster/nodes/99");
    assert_eq!(status, 404, "{body}");
    let (ledger, reports) = load.stop(DRAIN).await;
    print_reports(&reports);
    verify_everywhere(&c, &ledger).await;
}

/// Connects a persistent subscriber, retrying while the node cannot take the session yet
/// (a claim needs the session journal's leader).
async fn subscribe_on(c: &Cluster, id: u32, client: &str, reconnect: bool) -> Subscriber {
    let addr = c.node(id).mqtt_addr().expect("a running node");
    let mut last = None;
    for _ in 0..30 {
        match Subscriber::start_with(addr, client, "v/+/telemetry", true, reconnect).await {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("subscribing {client} on node {id}: {last:?}\n{}", c.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persistent_session_resumes_on_another_node_when_its_node_dies() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, STREAMS).await;
    let ids = c.ids();
    let (home, next) = (ids[2], ids[1]);
    let first = subscribe_on(&c, home, "mover", true).await;
    // Publishers avoid the subscriber's node, so that killing it stalls nothing but it.
    let specs: Vec<PublisherSpec> = (0..3).map(|i| PublisherSpec::new(i, ids[(i % 2) as usize], 60.0)).collect();
    let load = Load::start(&c.directory(), specs);
    progress(&c, &load, 100, "before the kill").await;
    c.kill9(home).await;
    let (mut got, report) = first.stop().await;
    eprintln!("on node {home} until its SIGKILL: {} deliveries; {report:?}", got.len());
    // Messages published while the client is away wait in the log for it.
    progress(&c, &load, 50, "with the subscriber away").await;
    let second = subscribe_on(&c, next, "mover", true).await;
    assert!(second.session_present, "node {next} did not resume the session node {home} held\n{}", c.logs());
    progress(&c, &load, 100, "after the move").await;
    c.restart(home).await;
    let (ledger, reports) = load.stop(DRAIN).await;
    print_reports(&reports);
    let logs = verify_everywhere(&c, &ledger).await;
    wait_delivered_with(&c, &second, &got, &logs, "the moved session").await;
    let (more, report) = second.stop().await;
    eprintln!("on node {next}: {} deliveries; {report:?}", more.len());
    assert_eq!(report.sessions_lost, 0, "the session was lost on node {next}: {report:?}\n{}", c.logs());
    got.extend(more);
    // Strict: whatever node `home` had sent after its last journal write comes again with
    // DUP, and nothing acknowledged is missing.
    let summary = check_deliveries(&ledger, &logs, &got, false)
        .unwrap_or_else(|e| panic!("the session moved from node {home} to node {next}: {e}\n{}", c.logs()));
    eprintln!("moved session deliveries: {summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_connecting_to_another_node_takes_its_session_over() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, STREAMS).await;
    let ids = c.ids();
    let first = subscribe_on(&c, ids[0], "roamer", false).await;
    let specs: Vec<PublisherSpec> = vec![PublisherSpec::new(0, ids[2], 60.0)];
    let load = Load::start(&c.directory(), specs);
    progress(&c, &load, 50, "before the take-over").await;
    // The same client id on another node: the first connection is told to go (0x8E), and the
    // session continues on node 2 with what node 1 last wrote to the journal.
    let second = subscribe_on(&c, ids[1], "roamer", true).await;
    assert!(second.session_present, "node {} did not resume the session\n{}", ids[1], c.logs());
    progress(&c, &load, 50, "after the take-over").await;
    let (ledger, reports) = load.stop(DRAIN).await;
    print_reports(&reports);
    let logs = verify_everywhere(&c, &ledger).await;
    let (mut got, first_report) = first.stop().await;
    wait_delivered_with(&c, &second, &got, &logs, "the taken-over session").await;
    let (more, _) = second.stop().await;
    // The first connection does not reconnect: it saw the broker close it.
    eprintln!("first connection: {} deliveries; {first_report:?}", got.len());
    assert!(!first_report.errors.is_empty(), "the first connection was never closed: {first_report:?}\n{}", c.logs());
    got.extend(more);
    // Until node 1 applies node 2's claim (a replication round), both connections are live
    // and both may send the newest messages: those can arrive twice without DUP (counted,
    // not failed). Nothing may be missing, foreign or out of order.
    let summary = check_deliveries(&ledger, &logs, &got, true)
        .unwrap_or_else(|e| panic!("the session taken over by node {}: {e}\n{}", ids[1], c.logs()));
    eprintln!("taken-over session deliveries: {summary:?}");
}
