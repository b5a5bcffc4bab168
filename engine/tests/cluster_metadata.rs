//! A 3-node metadata cluster in one process on 127.0.0.1 (ephemeral ports, one tonic server
//! per node): Raft leader election, proposals from any node, failover of partition leadership
//! when the Raft leader's node stops, and the stopped node rejoining from its raft directory.
//! Then membership changes: a fourth node joining, restarting, and nodes being removed.
//!
//! Timeouts are generous and nothing asserts on elapsed time: the machine is slow and shared.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axle_engine::cluster::{
    ClusterConfig, ClusterError, ClusterState, MetaCommand, MetaReply, Metadata, NodeId, NodeInfo,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

const WAIT: Duration = Duration::from_secs(90);

struct Node {
    meta: Arc<Metadata>,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

struct Cluster {
    /// Every node's address, node `id` at index `id - 1`; the first `seeds` are the seeds.
    addrs: Vec<(NodeId, SocketAddr)>,
    seeds: usize,
    dirs: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn config(&self, id: NodeId) -> ClusterConfig {
        let listen = self.addrs[(id - 1) as usize].1;
        ClusterConfig {
            node_id: id,
            listen,
            advertise: String::new(),
            seeds: self.addrs[..self.seeds].iter().map(|(i, a)| (*i, a.to_string())).collect(),
            heartbeat_ms: 100,
            node_timeout_ms: 3_000,
            raft_dir: self.dirs[(id - 1) as usize].clone(),
        }
    }

    fn info(&self, id: NodeId) -> NodeInfo {
        NodeInfo {
            id,
            cluster_addr: self.addrs[(id - 1) as usize].1.to_string(),
            mqtt_addr: format!("127.0.0.1:{}", 18830 + id),
            grpc_addr: format!("127.0.0.1:{}", 19090 + id),
        }
    }

    /// Starts node `id` on `listener` (bound to its address).
    async fn start(&self, id: NodeId, listener: TcpListener) -> Node {
        start_with(self.config(id), self.info(id), listener).await
    }
}

/// Starts a metadata node with `cfg` and serves its RPC on `listener`.
async fn start_with(cfg: ClusterConfig, info: NodeInfo, listener: TcpListener) -> Node {
    // A node stopped a moment ago may still hold its RocksDB lock for a little while (its Raft
    // tasks wind down after `shutdown` returns); a process exit would release it at once.
    let deadline = tokio::time::Instant::now() + WAIT;
    let meta = loop {
        match Metadata::start(cfg.clone(), info.clone()).await {
            Ok(meta) => break meta,
            Err(ClusterError::Storage { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("metadata does not start: {e}"),
        }
    };
    let (stop_server, stopped) = oneshot::channel::<()>();
    let svc = meta.raft_service();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("cluster RPC server runs");
    });
    Node { meta, stop_server, server }
}

impl Node {
    /// Stops the RPC server and the metadata node, as a process exit would.
    async fn stop(self) {
        let _ = self.stop_server.send(());
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(20), &mut server).await.is_err() {
            server.abort();
        }
        self.meta.shutdown().await;
    }
}

/// Polls `check` until it holds, panicking with `what` after [`WAIT`].
async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn controller_of(nodes: &[&Node]) -> Option<NodeId> {
    nodes.iter().find(|n| n.meta.is_controller()).map(|n| n.meta.node_id())
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_replicate_fail_over_and_rejoin() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let tmp = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push((id, l.local_addr().unwrap()));
        listeners.push(l);
    }
    let dirs = (1..=3).map(|id| tmp.path().join(format!("node{id}/raft"))).collect();
    let cluster = Cluster { addrs, seeds: 3, dirs, _tmp: tmp };
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(Some(cluster.start(i as u64 + 1, l).await));
    }

    // A Raft leader is elected and every node registers itself.
    for n in nodes.iter().flatten() {
        n.meta.wait_ready(WAIT).await.expect("node becomes ready");
    }
    let all: Vec<&Node> = nodes.iter().flatten().collect();
    eventually("every node sees three members", || all.iter().all(|n| n.meta.state().nodes.len() == 3)).await;
    eventually("one node is the controller", || controller_of(&all).is_some()).await;
    let leader = controller_of(&all).unwrap();

    // A proposal on a follower is forwarded to the leader and applied everywhere.
    let follower = all.iter().find(|n| n.meta.node_id() != leader).unwrap();
    let names: Vec<String> = (0..3).map(|i| format!("t-{i}")).collect();
    let reply = follower.meta.propose(MetaCommand::EnsurePartitions { names: names.clone() }).await.unwrap();
    assert_eq!(reply, MetaReply::Applied);
    assert_eq!(follower.meta.state().partitions.len(), 3, "the proposing follower reads its own write");
    eventually("every node sees the partitions", || all.iter().all(|n| n.meta.state().partitions.len() == 3)).await;
    let before: Arc<ClusterState> = follower.meta.state();
    assert!(all.iter().all(|n| *n.meta.state() == *before), "every node applied the same state");
    let p0 = &before.partitions["t-0"];
    assert_eq!((p0.leader, p0.epoch, p0.isr.clone()), (Some(1), 1, vec![1, 2, 3]));
    // A stale compare-and-set is answered, not an error.
    let stale = MetaCommand::SetIsr { partition: "t-0".into(), leader: 2, epoch: 1, isr: vec![2] };
    assert!(matches!(follower.meta.propose(stale).await.unwrap(), MetaReply::Rejected(_)));

    // Stop the Raft leader's node; the others elect a new Raft leader, and its controller moves
    // leadership of the partitions the stopped node led.
    let led: Vec<String> =
        before.partitions.iter().filter(|(_, p)| p.leader == Some(leader)).map(|(n, _)| n.clone()).collect();
    assert!(!led.is_empty(), "round-robin gave the Raft leader's node a partition");
    let stopped = nodes[(leader - 1) as usize].take().unwrap();
    stopped.stop().await;
    let rest: Vec<&Node> = nodes.iter().flatten().collect();
    eventually("a new controller is elected", || controller_of(&rest).is_some_and(|c| c != leader)).await;
    eventually("leadership moved off the stopped node with a bumped epoch", || {
        rest.iter().all(|n| {
            let s = n.meta.state();
            led.iter().all(|name| {
                let (old, new) = (&before.partitions[name], &s.partitions[name]);
                new.leader.is_some_and(|l| l != leader) && new.epoch > old.epoch && !new.isr.contains(&leader)
            })
        })
    })
    .await;
    // The survivors still take proposals.
    let survivor = rest[0];
    let reply = survivor.meta.propose(MetaCommand::EnsurePartitions { names: vec!["u-0".into()] }).await.unwrap();
    assert_eq!(reply, MetaReply::Applied);

    // Compact the survivors' logs past everything the stopped node has, so that it can only
    // catch up from a snapshot (sent over the InstallSnapshot RPC).
    for n in &rest {
        let raft = n.meta.raft();
        raft.trigger().snapshot().await.unwrap();
        let applied = raft.metrics().borrow().last_applied.map(|l| l.index).unwrap();
        let mut m = raft.metrics();
        tokio::time::timeout(WAIT, m.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= applied)))
            .await
            .unwrap()
            .unwrap();
        raft.trigger().purge_log(applied).await.unwrap();
        tokio::time::timeout(WAIT, m.wait_for(|m| m.purged.is_some_and(|p| p.index >= applied)))
            .await
            .unwrap()
            .unwrap();
    }

    // The stopped node restarts from its raft directory, rejoins and catches up.
    let listener = bind_retrying(cluster.addrs[(leader - 1) as usize].1).await;
    let restarted = cluster.start(leader, listener).await;
    restarted.meta.wait_ready(WAIT).await.expect("restarted node becomes ready");
    eventually("the restarted node sees the current state", || {
        let current = survivor.meta.state();
        current.partitions.contains_key("u-0") && *restarted.meta.state() == *current
    })
    .await;
    assert!(restarted.meta.raft().metrics().borrow().snapshot.is_some(), "it caught up from a snapshot");
    nodes[(leader - 1) as usize] = Some(restarted);

    // A controlled shutdown hands every partition a node leads to another ISR member first.
    let all: Vec<&Node> = nodes.iter().flatten().collect();
    let leads = |n: &Node| -> Vec<String> {
        let s = n.meta.state();
        s.partitions.iter().filter(|(_, p)| p.leader == Some(n.meta.node_id())).map(|(k, _)| k.clone()).collect()
    };
    let leaving = *all.iter().find(|n| !leads(n).is_empty()).expect("some node leads a partition");
    let handed = leads(leaving);
    let epochs = leaving.meta.state();
    leaving.meta.controlled_shutdown().await.expect("every partition is handed over");
    let after = leaving.meta.state();
    assert!(leads(leaving).is_empty());
    for name in &handed {
        let p = &after.partitions[name];
        assert_eq!(p.epoch, epochs.partitions[name].epoch + 1, "{name}");
        assert!(!p.isr.contains(&leaving.meta.node_id()), "{name}: the leaving node left the ISR");
    }

    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

/// Binds `n` ephemeral listeners on 127.0.0.1: node `i + 1` gets the `i`-th.
async fn listeners(n: u64) -> (Vec<TcpListener>, Vec<(NodeId, SocketAddr)>) {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for id in 1..=n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push((id, l.local_addr().unwrap()));
        listeners.push(l);
    }
    (listeners, addrs)
}

fn led_by(state: &ClusterState, node: NodeId) -> Vec<String> {
    state.partitions.iter().filter(|(_, p)| p.leader == Some(node)).map(|(n, _)| n.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_outside_the_seeds_joins_once_and_members_are_removed() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let tmp = tempfile::tempdir().unwrap();
    let (mut ls, addrs) = listeners(5).await;
    let dirs = (1..=5).map(|id| tmp.path().join(format!("node{id}/raft"))).collect();
    let cluster = Cluster { addrs, seeds: 3, dirs, _tmp: tmp };
    let rogue_listener = ls.pop().unwrap();
    let fourth_listener = ls.pop().unwrap();
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for (i, l) in ls.into_iter().enumerate() {
        nodes.push(Some(cluster.start(i as u64 + 1, l).await));
    }
    for n in nodes.iter().flatten() {
        n.meta.wait_ready(WAIT).await.expect("seed becomes ready");
    }
    let names: Vec<String> = (0..3).map(|i| format!("t-{i}")).collect();
    let seed = nodes[0].as_ref().unwrap();
    assert_eq!(seed.meta.propose(MetaCommand::EnsurePartitions { names }).await.unwrap(), MetaReply::Applied);

    // Node 4 is not a seed: it joins, becomes a voter, registers and replicates every partition.
    let fourth = cluster.start(4, fourth_listener).await;
    fourth.meta.wait_ready(WAIT).await.expect("the joining node becomes ready");
    nodes.push(Some(fourth));
    let all: Vec<&Node> = nodes.iter().flatten().collect();
    eventually("every node sees four voters and no learner", || {
        all.iter().all(|n| n.meta.voters() == vec![1, 2, 3, 4] && n.meta.learners().is_empty())
    })
    .await;
    eventually("every node sees node 4 registered and a replica of every partition", || {
        all.iter().all(|n| {
            let s = n.meta.state();
            s.nodes.get(&4) == Some(&cluster.info(4)) && s.partitions.values().all(|p| p.replicas.contains(&4))
        })
    })
    .await;
    let membership_log_id = |n: &Node| n.meta.raft().metrics().borrow().membership_config.log_id().to_owned();
    let joined_at = membership_log_id(all[0]);

    // Restarted from its raft directory, node 4 is already a voter: no new membership entry.
    let fourth = nodes[3].take().unwrap();
    fourth.stop().await;
    let listener = bind_retrying(cluster.addrs[3].1).await;
    let fourth = cluster.start(4, listener).await;
    fourth.meta.wait_ready(WAIT).await.expect("the restarted node becomes ready");
    nodes[3] = Some(fourth);
    let all: Vec<&Node> = nodes.iter().flatten().collect();
    for n in &all {
        assert_eq!(n.meta.voters(), vec![1, 2, 3, 4], "node {}", n.meta.node_id());
        assert_eq!(membership_log_id(n), joined_at, "node {}: the restart changed the membership", n.meta.node_id());
        assert_eq!(n.meta.state().nodes.len(), 4);
    }

    // A second node claiming id 4 from another address is refused and changes nothing.
    let mut rogue_cfg = cluster.config(4);
    rogue_cfg.listen = cluster.addrs[4].1;
    rogue_cfg.raft_dir = cluster.dirs[4].clone();
    let mut rogue_info = cluster.info(4);
    rogue_info.cluster_addr = cluster.addrs[4].1.to_string();
    let rogue = start_with(rogue_cfg, rogue_info, rogue_listener).await;
    match rogue.meta.wait_ready(Duration::from_secs(15)).await {
        Err(ClusterError::JoinRefused(why)) => assert!(why.contains("already a member"), "{why}"),
        other => panic!("a second node with id 4 was not refused: {other:?}"),
    }
    rogue.stop().await;
    assert_eq!(all[0].meta.voters(), vec![1, 2, 3, 4]);
    assert_eq!(all[0].meta.state().nodes[&4], cluster.info(4));

    // remove_node(4) on a node that is not the Raft leader.
    let leader = controller_of(&all).expect("a Raft leader");
    let asker = all.iter().find(|n| ![leader, 4].contains(&n.meta.node_id())).unwrap();
    asker.meta.remove_node(4).await.expect("node 4 is removed");
    let rest: Vec<&Node> = all.iter().copied().filter(|n| n.meta.node_id() != 4).collect();
    eventually("node 4 is gone from the voters, the members and every replica set and ISR", || {
        rest.iter().all(|n| {
            let s = n.meta.state();
            n.meta.voters() == vec![1, 2, 3]
                && !s.nodes.contains_key(&4)
                && s.partitions.values().all(|p| !p.replicas.contains(&4) && !p.isr.contains(&4))
        })
    })
    .await;
    let removed = all[3];
    eventually("the removed node notices", || removed.meta.is_removed()).await;
    let refused = removed.meta.propose(MetaCommand::EnsurePartitions { names: vec!["x-0".into()] }).await;
    assert!(matches!(refused, Err(ClusterError::Removed)), "{refused:?}");
    assert!(matches!(asker.meta.remove_node(99).await, Err(ClusterError::NotMember { id: 99 })));

    // Removing a partition leader fences it; the controller elects another ISR member.
    let leader = controller_of(&rest).expect("a Raft leader");
    let before = rest[0].meta.state();
    let victim = (1..=3).find(|id| *id != leader && !led_by(&before, *id).is_empty()).unwrap();
    let led = led_by(&before, victim);
    let asker = rest.iter().find(|n| n.meta.node_id() != victim).unwrap();
    asker.meta.remove_node(victim).await.expect("the partition leader is removed");
    let left: Vec<&Node> = rest.iter().copied().filter(|n| n.meta.node_id() != victim).collect();
    eventually("the removed leader's partitions have another leader with a bumped epoch", || {
        left.iter().all(|n| {
            let s = n.meta.state();
            !n.meta.voters().contains(&victim)
                && led.iter().all(|name| {
                    let (old, new) = (&before.partitions[name], &s.partitions[name]);
                    new.leader.is_some_and(|l| l != victim) && new.epoch > old.epoch && !new.replicas.contains(&victim)
                })
        })
    })
    .await;

    // The Raft leader itself can be removed (asked on the other node): down to one voter,
    // which becomes the leader and cannot be removed.
    let leader = controller_of(&left).expect("a Raft leader");
    let last = *left.iter().find(|n| n.meta.node_id() != leader).unwrap();
    let survivor = last.meta.node_id();
    last.meta.remove_node(leader).await.expect("removing the Raft leader, down to one voter, is allowed");
    eventually("one voter is left and leads", || last.meta.voters() == vec![survivor] && last.meta.is_controller())
        .await;
    eventually("the survivor leads every partition", || {
        last.meta.state().partitions.values().all(|p| p.leader == Some(survivor) && p.replicas == vec![survivor])
    })
    .await;
    match last.meta.remove_node(survivor).await {
        Err(ClusterError::LastVoter { id }) => assert_eq!(id, survivor),
        other => panic!("removing the last voter was not refused: {other:?}"),
    }
    assert_eq!(last.meta.voters(), vec![survivor]);

    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}
