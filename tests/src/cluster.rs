//! A cluster of `axle serve` processes on loopback for the replication tests
//! (docs/replication.md): node `i` (1-based) listens on 127.0.0.i (Linux loopback takes all
//! of 127/8), every node on the same cluster port, MQTT/gRPC/HTTP on ephemeral ports read from
//! its "axle serving" line. Nodes can be killed, stopped, paused and restarted on the same data
//! directory and configuration. Queries go through the gRPC consumer API.
//!
//! Depends on: the `[cluster]` keys `enabled`, `node_id`, `listen`, `seeds`, `heartbeat_ms`,
//! `node_timeout_ms`, `replica_lag_max_ms`; the info log line `cluster ready`; and
//! `DescribeStream` reporting per partition `leader` (node id, decimal) and `high_watermark`.
//!
//! Every wait is bounded, and every failure message carries the tail of each node's stderr.
//! When a test panics, the cluster's directory (all logs of all runs) is kept and its path
//! printed.

pub mod check;
pub mod load;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axle_proto::v1::consumer_client::ConsumerClient;
use axle_proto::v1::{DescribeStreamRequest, FetchRequest, StreamInfo};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::server::Server;
use check::PartitionLog;
use load::Directory;

/// Bound for a node to start serving and report `cluster ready`.
pub const START_WAIT: Duration = Duration::from_secs(90);
/// Bound for a partition to have a leader that a majority agrees on.
pub const LEADER_WAIT: Duration = Duration::from_secs(60);
/// Bound for replicas to catch up or the high watermark to settle.
pub const SETTLE_WAIT: Duration = Duration::from_secs(90);
/// Bound for one gRPC call.
const RPC_WAIT: Duration = Duration::from_secs(10);

/// Cluster timings of the tests: heartbeats every 200 ms, a node presumed dead after 1.5 s.
pub const CLUSTER_TIMINGS: &str = "heartbeat_ms = 200\nnode_timeout_ms = 1500\nreplica_lag_max_ms = 1500\n";

/// What a node is doing, as far as the harness made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Running,
    /// SIGSTOPped: the process holds its sockets but does nothing.
    Paused,
    /// Killed or stopped; `restart` brings it back.
    Down,
}

/// One node of the cluster.
pub struct Node {
    pub id: u32,
    pub state: NodeState,
    server: Option<Server>,
    data_dir: PathBuf,
    config: PathBuf,
    /// Runs started so far (1 after the first start).
    runs: u32,
    mqtt: Option<u16>,
    grpc: Option<u16>,
}

impl Node {
    /// The node's loopback address, 127.0.0.id.
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, self.id as u8)
    }

    /// The MQTT listener of the current run.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt.map(|p| SocketAddr::V4(SocketAddrV4::new(self.ip(), p)))
    }

    /// The gRPC endpoint of the current run.
    pub fn grpc_url(&self) -> Option<String> {
        self.grpc.map(|p| format!("http://{}:{p}", self.ip()))
    }

    /// The admin API of the current run: its base URL and bearer token.
    pub fn admin_api(&self) -> Option<(String, String)> {
        let server = self.server.as_ref()?;
        let port = server.wait_http_port(Duration::from_secs(10))?;
        Some((format!("http://{}:{port}", self.ip()), server.admin_token().ok()?))
    }

    /// The pid of the current run, if one is running or paused.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.child.id())
    }

    fn log_of_run(&self, run: u32) -> PathBuf {
        self.data_dir.with_extension(format!("run{run}.log"))
    }
}

/// A cluster of `n` nodes.
pub struct Cluster {
    nodes: Vec<Node>,
    /// The cluster RPC port, the same on every node's address.
    pub cluster_port: u16,
    /// Every node's MQTT port (on its own 127.0.0.i), the same across restarts, so that a
    /// client reconnects to a restarted node at the address it knew.
    pub mqtt_port: u16,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    directory: Directory,
}

/// A port free on 127.0.0.1 a moment ago; used on 127.0.0.1..=n.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The configuration of node `id` of `n` with cluster port `port`: fsync never (a process
/// crash keeps the page cache; the test is about replication), the cluster section, `streams`.
pub fn node_config(id: u32, n: u32, port: u16, streams: &str) -> String {
    let seeds: Vec<String> = (1..=n).map(|i| format!("\"{i}@127.0.0.{i}:{port}\"")).collect();
    format!(
        "[log]\nfsync = \"never\"\n\n[cluster]\nenabled = true\nnode_id = {id}\nlisten = \"127.0.0.{id}:{port}\"\n\
         seeds = [{}]\n{CLUSTER_TIMINGS}\n{streams}\n",
        seeds.join(", ")
    )
}

/// The port of `field=ADDR` in an "axle serving" line.
fn serving_port(line: &str, field: &str) -> Option<u16> {
    let needle = format!(" {field}=");
    let at = line.find(&needle)? + needle.len();
    let addr: String = line[at..].chars().take_while(|c| !c.is_whitespace()).collect();
    addr.rsplit(':').next()?.parse().ok()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Cluster {
    /// Starts `n` nodes (at most 9) with `streams` (`[[streams]]` tables) appended to each
    /// node's configuration, and waits until every node serves and logged `cluster ready`.
    /// Panics, with the logs, if that does not happen within [`START_WAIT`].
    pub async fn start(n: u32, streams: &str) -> Cluster {
        assert!((1..=9).contains(&n), "1 to 9 nodes");
        let dir = tempfile::Builder::new().prefix("axle-cluster-").tempdir().expect("a temporary directory");
        let root = dir.path().to_path_buf();
        let cluster_port = free_port().expect("a free port");
        let mqtt_port = loop {
            let p = free_port().expect("a free port");
            if p != cluster_port {
                break p;
            }
        };
        let mut nodes = Vec::new();
        for id in 1..=n {
            let node_dir = root.join(format!("node{id}"));
            std::fs::create_dir_all(&node_dir).expect("creating the node directory");
            let config = node_dir.join("axle.toml");
            std::fs::write(&config, node_config(id, n, cluster_port, streams)).expect("writing the node config");
            nodes.push(Node {
                id,
                state: NodeState::Down,
                server: None,
                data_dir: node_dir.join("data"),
                config,
                runs: 0,
                mqtt: None,
                grpc: None,
            });
        }
        let mut c =
            Cluster { nodes, cluster_port, mqtt_port, dir: Some(dir), root, directory: Directory::new(n as usize) };
        // Start all before waiting: a node may report ready only once a quorum is up.
        for id in 1..=n {
            c.spawn(id);
        }
        for id in 1..=n {
            c.wait_ready(id).await;
        }
        c
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: u32) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// Node ids 1..=n.
    pub fn ids(&self) -> Vec<u32> {
        (1..=self.nodes.len() as u32).collect()
    }

    /// Ids of the nodes in `Running` state.
    pub fn running(&self) -> Vec<u32> {
        self.nodes.iter().filter(|n| n.state == NodeState::Running).map(|n| n.id).collect()
    }

    /// Where each node's MQTT listener is now, for load tasks.
    pub fn directory(&self) -> Directory {
        self.directory.clone()
    }

    fn spawn(&mut self, id: u32) {
        let mqtt_port = self.mqtt_port;
        let node = self.node_mut(id);
        assert!(node.server.is_none(), "node {id} is already running");
        let ip = node.ip();
        let (mqtt, grpc, http) = (format!("{ip}:{mqtt_port}"), format!("{ip}:0"), format!("{ip}:0"));
        let config = node.config.to_str().expect("a UTF-8 temporary path").to_string();
        let args = ["--config", &config, "--mqtt-tcp", &mqtt, "--grpc", &grpc, "--http", &http];
        let server = Server::start(&node.data_dir, &args).unwrap_or_else(|e| panic!("starting node {id}: {e:#}"));
        node.server = Some(server);
        node.runs += 1;
        node.state = NodeState::Running;
    }

    /// Waits until node `id` logged "axle serving" (its ports) and `cluster ready`.
    async fn wait_ready(&mut self, id: u32) {
        let deadline = Instant::now() + START_WAIT;
        let mut ports = None;
        loop {
            let node = self.node_mut(id);
            let server = node.server.as_mut().expect("a spawned node");
            if let Ok(Some(status)) = server.child.try_wait() {
                let logs = self.logs();
                panic!("node {id} exited while starting ({status}):\n{logs}");
            }
            if ports.is_none() {
                let out = server.output();
                if let Some(line) = out.lines().rev().find(|l| l.contains("axle serving")) {
                    ports = serving_port(line, "mqtt_tcp").zip(serving_port(line, "grpc"));
                }
            }
            if let Some((m, g)) = ports {
                if server.output().contains("cluster ready") {
                    node.mqtt = Some(m);
                    node.grpc = Some(g);
                    let addr = node.mqtt_addr();
                    self.directory.set(id, addr);
                    return;
                }
            }
            if Instant::now() > deadline {
                let logs = self.logs();
                let what = if ports.is_some() { "`cluster ready`" } else { "\"axle serving\" with its ports" };
                panic!("node {id} did not log {what} within {START_WAIT:?}:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn mark_down(&mut self, id: u32) {
        self.directory.set(id, None);
        let node = self.node_mut(id);
        if let Some(server) = node.server.take() {
            // Keep this run's log: the next run's Server truncates its own file.
            let _ = std::fs::write(node.log_of_run(node.runs), server.output());
        }
        node.state = NodeState::Down;
        node.mqtt = None;
        node.grpc = None;
    }

    async fn wait_exit(&mut self, id: u32, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let server = self.node_mut(id).server.as_mut().expect("a started node");
            if let Ok(Some(status)) = server.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let logs = self.logs();
                panic!("node {id} did not exit within 60 s of {what}:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (a crash) of node `id`, reaped.
    pub async fn kill9(&mut self, id: u32) {
        self.directory.set(id, None);
        self.node(id).server.as_ref().expect("a running node").signal(libc::SIGKILL);
        self.wait_exit(id, "SIGKILL").await;
        self.mark_down(id);
    }

    /// SIGTERM (a controlled shutdown: leadership moves away first) of node `id`; panics
    /// unless it exits successfully within 60 s.
    pub async fn stop(&mut self, id: u32) {
        self.directory.set(id, None);
        self.node(id).server.as_ref().expect("a running node").signal(libc::SIGTERM);
        let status = self.wait_exit(id, "SIGTERM").await;
        if !status.success() {
            let logs = self.logs();
            panic!("node {id} exited with {status} after SIGTERM:\n{logs}");
        }
        self.mark_down(id);
    }

    /// SIGSTOP of node `id`: it keeps its sockets open and answers nothing (a network cut
    /// as its peers see it). Load tasks stop picking it.
    pub fn sigstop(&mut self, id: u32) {
        self.directory.set(id, None);
        let node = self.node_mut(id);
        node.server.as_ref().expect("a running node").signal(libc::SIGSTOP);
        node.state = NodeState::Paused;
    }

    /// SIGCONT of a paused node `id`.
    pub fn sigcont(&mut self, id: u32) {
        let node = self.node_mut(id);
        assert_eq!(node.state, NodeState::Paused, "node {id} is not paused");
        node.server.as_ref().expect("a paused node").signal(libc::SIGCONT);
        node.state = NodeState::Running;
        let addr = node.mqtt_addr();
        self.directory.set(id, addr);
    }

    /// Starts a down node again on the same data directory and configuration and waits for
    /// `cluster ready`.
    pub async fn restart(&mut self, id: u32) {
        assert_eq!(self.node(id).state, NodeState::Down, "node {id} must be down to restart");
        self.spawn(id);
        self.wait_ready(id).await;
    }

    async fn client(&self, id: u32) -> anyhow::Result<ConsumerClient<Channel>> {
        let url = self.node(id).grpc_url().with_context(|| format!("node {id} is not serving"))?;
        let ch = Endpoint::from_shared(url.clone())?
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .with_context(|| format!("connecting to node {id}'s gRPC at {url}"))?;
        Ok(ConsumerClient::new(ch).max_decoding_message_size(64 << 20))
    }

    /// `DescribeStream` on node `id`.
    pub async fn describe(&self, id: u32, stream: &str) -> anyhow::Result<StreamInfo> {
        let mut c = self.client(id).await?;
        let req = DescribeStreamRequest { stream: stream.into() };
        let r = tokio::time::timeout(RPC_WAIT, c.describe_stream(req))
            .await
            .with_context(|| format!("DescribeStream on node {id} took over {RPC_WAIT:?}"))?
            .with_context(|| format!("DescribeStream on node {id}"))?;
        Ok(r.into_inner())
    }

    /// Node `id`'s view of `(leader, high watermark)` of each partition of `stream`.
    pub async fn partitions(&self, id: u32, stream: &str) -> anyhow::Result<BTreeMap<u32, (Option<u32>, u64)>> {
        let info = self.describe(id, stream).await?;
        Ok(info.partitions.iter().map(|p| (p.partition, (p.leader.trim().parse().ok(), p.high_watermark))).collect())
    }

    /// The leader of `partition`, once a majority of all nodes, the leader among them, name
    /// the same running node (so a paused or deposed node's stale view does not count).
    /// Panics with every node's view and the logs after [`LEADER_WAIT`].
    pub async fn leader_of(&self, stream: &str, partition: u32) -> u32 {
        let majority = self.nodes.len() / 2 + 1;
        let deadline = Instant::now() + LEADER_WAIT;
        let mut views = Vec::new();
        loop {
            views.clear();
            let mut votes: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for id in self.running() {
                match self.partitions(id, stream).await {
                    Ok(ps) => match ps.get(&partition) {
                        Some((Some(l), _)) => {
                            votes.entry(*l).or_default().push(id);
                            views.push(format!("node {id} says {l}"));
                        }
                        Some((None, _)) => views.push(format!("node {id} knows no leader")),
                        None => views.push(format!("node {id} has no partition {partition}")),
                    },
                    Err(e) => views.push(format!("node {id}: {e:#}")),
                }
            }
            let running = self.running();
            if let Some((l, _)) =
                votes.iter().find(|(l, voters)| voters.len() >= majority && voters.contains(l) && running.contains(l))
            {
                return *l;
            }
            if Instant::now() > deadline {
                panic!(
                    "no agreed, running leader of {stream}/{partition} within {LEADER_WAIT:?}; last views: {}\n{}",
                    views.join("; "),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads `partition` of `stream` on node `id` from offset 0 up to that node's high
    /// watermark (committed records only, per the design).
    pub async fn fetch_all(&self, id: u32, stream: &str, partition: u32) -> anyhow::Result<PartitionLog> {
        let hw = self.partitions(id, stream).await?.get(&partition).map(|p| p.1).context("no such partition")?;
        let mut c = self.client(id).await?;
        let req = FetchRequest {
            stream: stream.into(),
            partition,
            offset: 0,
            max_records: 5000,
            max_wait_ms: 200,
            ..Default::default()
        };
        let mut s = c.fetch(req).await.with_context(|| format!("Fetch on node {id}"))?.into_inner();
        let mut log = PartitionLog { partition, records: Vec::with_capacity(hw as usize) };
        let mut next = 0;
        while next < hw {
            let resp = tokio::time::timeout(RPC_WAIT, s.message())
                .await
                .with_context(|| format!("Fetch on node {id} stalled at offset {next} of {hw}"))?
                .with_context(|| format!("Fetch on node {id} at offset {next}"))?
                .with_context(|| format!("Fetch on node {id} ended at offset {next} of {hw}"))?;
            log.records.extend(resp.records.into_iter().map(|r| (r.offset, r.payload.to_vec())));
            next = resp.next_offset;
        }
        log.records.truncate(hw as usize);
        Ok(log)
    }

    /// Every partition (`0..partitions`) of `stream` from node `id`; panics with the logs.
    pub async fn fetch_stream(&self, id: u32, stream: &str, partitions: u32) -> Vec<PartitionLog> {
        let mut out = Vec::new();
        for p in 0..partitions {
            match self.fetch_all(id, stream, p).await {
                Ok(l) => out.push(l),
                Err(e) => panic!("reading {stream}/{p} from node {id}: {e:#}\n{}", self.logs()),
            }
        }
        out
    }

    /// Waits until node `id`'s high watermark of every partition reaches what the leaders
    /// report now (it has caught up with what was committed while it was away).
    pub async fn wait_caught_up(&self, id: u32, stream: &str, partitions: u32) {
        let mut target = Vec::new();
        for p in 0..partitions {
            let leader = self.leader_of(stream, p).await;
            let hw = self.partitions(leader, stream).await.ok().and_then(|m| m.get(&p).map(|v| v.1)).unwrap_or(0);
            target.push(hw);
        }
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let now = self.partitions(id, stream).await;
            if let Ok(m) = &now {
                if (0..partitions).all(|p| m.get(&p).is_some_and(|v| v.1 >= target[p as usize])) {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "node {id} did not catch up to high watermarks {target:?} within {SETTLE_WAIT:?}; it reports \
                     {now:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node reports the same high watermark for each partition and
    /// it has not moved for `quiet`; returns the high watermarks.
    pub async fn wait_converged(&self, stream: &str, partitions: u32, quiet: Duration) -> Vec<u64> {
        let deadline = Instant::now() + SETTLE_WAIT;
        let mut stable: Option<(Vec<u64>, Instant)> = None;
        let mut last = String::new();
        loop {
            let mut views = Vec::new();
            for id in self.running() {
                match self.partitions(id, stream).await {
                    Ok(m) => views.push((id, (0..partitions).map(|p| m.get(&p).map_or(u64::MAX, |v| v.1)).collect())),
                    Err(e) => {
                        last = format!("node {id}: {e:#}");
                        views.push((id, vec![u64::MAX; partitions as usize]));
                    }
                }
            }
            let first: Option<&Vec<u64>> = views.first().map(|v| &v.1);
            let agreed = first.filter(|f| !f.contains(&u64::MAX) && views.iter().all(|v| &v.1 == *f)).cloned();
            match (agreed, &stable) {
                (Some(hw), Some((prev, since))) if *prev == hw => {
                    if since.elapsed() >= quiet {
                        return hw;
                    }
                }
                (Some(hw), _) => stable = Some((hw, Instant::now())),
                (None, _) => stable = None,
            }
            if Instant::now() > deadline {
                panic!(
                    "high watermarks of {stream} did not converge and settle within {SETTLE_WAIT:?}: {views:?} {last}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// For failure messages: each node's state and the tail of its current and previous run's
    /// stderr, and where the full logs are (kept if the test panics).
    pub fn logs(&self) -> String {
        let mut out = format!("cluster directory (kept on failure): {}\n", self.root.display());
        for n in &self.nodes {
            out.push_str(&format!("=== node {} ({:?}, run {}, pid {:?}) ===\n", n.id, n.state, n.runs, n.pid()));
            let current = n.server.as_ref().map(Server::output);
            let prev_run = if current.is_some() { n.runs.saturating_sub(1) } else { n.runs };
            if prev_run > 0 {
                let prev = std::fs::read_to_string(n.log_of_run(prev_run)).unwrap_or_default();
                out.push_str(&format!("--- run {prev_run} (ended), last lines ---\n{}\n", tail(&prev, 30)));
            }
            if let Some(cur) = current {
                out.push_str(&format!("--- run {} (current), last lines ---\n{}\n", n.runs, tail(&cur, 60)));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(s) = n.server.as_mut() {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("cluster logs kept in {}", kept.display());
            }
        }
    }
}

/// Fails with `what`, the error and the cluster's logs.
pub fn must<T>(c: &Cluster, r: anyhow::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:#}\n{}", c.logs()),
    }
}
