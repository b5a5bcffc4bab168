//! Starting this process as one node of a cluster (`[cluster] enabled = true`): the
//! metadata group, the replication data path, and the cluster RPC listener serving both.
//! See docs/replication.md.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axle_broker::config::Config;
use axle_engine::cluster::{ClusterConfig, Metadata, NodeInfo};
use axle_engine::journal::{Journal, JOURNAL_PARTITION};
use axle_engine::replica::{Acks, ReplicaConfig, Replicator};
use axle_engine::Engine;

/// The running cluster parts of this node.
pub struct ClusterNode {
    pub meta: Arc<Metadata>,
    server: tokio::task::JoinHandle<()>,
}

/// Joins the cluster: must run before anything reads the log (dispatchers, exporters), since
/// it puts every partition under its high watermark.
pub async fn start(cfg: &Config, engine: &Arc<Engine>) -> anyhow::Result<ClusterNode> {
    let c = &cfg.cluster;
    let cluster_cfg = ClusterConfig {
        node_id: c.node_id,
        listen: c.listen,
        advertise: c.advertise.clone(),
        seeds: c.parsed_seeds()?,
        heartbeat_ms: c.heartbeat_ms,
        node_timeout_ms: c.node_timeout_ms,
        raft_dir: cfg.data_dir.join("raft"),
    };
    let me = NodeInfo {
        id: c.node_id,
        cluster_addr: cluster_cfg.advertised(),
        mqtt_addr: cfg.listeners.tcp.to_string(),
        grpc_addr: cfg.listeners.grpc.to_string(),
    };
    let seeds = cluster_cfg.seeds.clone();
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .with_context(|| format!("binding the cluster RPC on {} (cluster.listen)", c.listen))?;
    let meta = Metadata::start(cluster_cfg, me).await.context("starting the cluster metadata group")?;
    let streams = engine.streams().streams();
    let mut partitions: Vec<_> = engine.partitions().iter().map(|p| (p.log.clone(), streams[p.stream].acks)).collect();
    // The session journal rides the same data path as a partition of its own, after the
    // streams' (docs/replication.md, "Sessions across nodes").
    let journal_log = engine.log().partition(JOURNAL_PARTITION).context("opening the session journal partition")?;
    let journal_pid = partitions.len();
    partitions.push((journal_log.clone(), Acks::Quorum));
    let replica_cfg = ReplicaConfig {
        lag_max_ms: c.replica_lag_max_ms,
        ack_timeout_ms: c.ack_timeout_ms,
        ..ReplicaConfig::default()
    };
    let rep = Replicator::start(meta.clone(), engine.meta().clone(), partitions, replica_cfg);
    engine.set_replicator(rep.clone());
    let journal = Journal::start(
        rep.clone(),
        journal_pid,
        journal_log,
        engine.meta().clone(),
        Duration::from_millis(c.ack_timeout_ms),
        engine.log().config().retention_age,
    );
    engine.set_journal(journal);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(meta.raft_service())
        .add_service(rep.service());
    let server = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "the cluster RPC listener stopped");
        }
    });
    tracing::info!(node_id = c.node_id, listen = %c.listen, "cluster RPC listening");
    let (meta2, rep2) = (meta.clone(), rep.clone());
    tokio::spawn(async move { announce_ready(meta2, rep2, seeds).await });
    Ok(ClusterNode { meta, server })
}

/// Waits for a Raft leader, registers the partitions, and logs `cluster ready` once every
/// local partition has a leader.
async fn announce_ready(meta: Arc<Metadata>, rep: Arc<Replicator>, seeds: Vec<(u64, String)>) {
    loop {
        match meta.wait_ready(Duration::from_secs(5)).await {
            Ok(()) => break,
            Err(e) => tracing::info!(error = %e, "waiting for the cluster metadata group"),
        }
    }
    // Partitions created once every seed registered get their leaders spread over all of
    // them. A seed still away after 10 s is a replica all the same, but leads nothing until a
    // failover moves leadership to it (the controller does not rebalance leaders).
    let seeds = seeds.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    let mut rx = meta.watch();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if seeds.iter().all(|id| rx.borrow_and_update().nodes.contains_key(id)) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    loop {
        match rep.register_partitions().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "registering partitions; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    loop {
        let ready = {
            let state = rx.borrow_and_update();
            rep.partition_names().iter().all(|n| state.partitions.get(n).is_some_and(|p| p.leader.is_some()))
        };
        if ready {
            tracing::info!(node_id = rep.node_id(), "cluster ready");
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl ClusterNode {
    /// Moves leadership of this node's partitions to other in-sync replicas (so that a
    /// rolling restart loses no acknowledged write and stalls publishers briefly), then
    /// leaves the metadata group running until [`ClusterNode::stop`].
    pub async fn hand_over(&self) {
        match tokio::time::timeout(Duration::from_secs(10), self.meta.controlled_shutdown()).await {
            Ok(Ok(())) => tracing::info!("partition leadership handed over"),
            Ok(Err(e)) => tracing::warn!(error = %e, "handing over partition leadership failed"),
            Err(_) => tracing::warn!("handing over partition leadership timed out"),
        }
    }

    pub async fn stop(self) {
        self.meta.shutdown().await;
        self.server.abort();
    }
}
