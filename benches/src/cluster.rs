//! Starting Axle as a replicated cluster (docs/replication.md) or as one node with the
//! cluster disabled, for the `cluster-load` benchmark: node `i` (1-based) on 127.0.0.i, a fresh
//! data directory each, the same `[[streams]]` on every node, output kept under the log
//! directory. Processes die with the tool (`PR_SET_PDEATHSIG`) and are killed on drop.
//!
//! Depends on the `[cluster]` keys `enabled`, `node_id`, `listen`, `seeds`, the stream key
//! `acks`, and the info log line `cluster ready`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::mqtt::brokers::{cpu_secs, free_port, spawn_tied};

/// How the nodes are run.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub axle_bin: PathBuf,
    /// `--fsync` of every node (`always`, `5ms`, `never`, ...).
    pub fsync: String,
    /// Parent of the data directories (a real disk, not tmpfs).
    pub data_root: PathBuf,
    /// Where each node's output is kept.
    pub log_dir: PathBuf,
    /// `RUST_LOG` of the nodes; must let `cluster ready` (info) through.
    pub rust_log: String,
    /// `[[streams]]` tables for every node's configuration.
    pub streams: String,
}

/// One running `axle serve`.
pub struct Node {
    pub id: u32,
    pub mqtt: (String, u16),
    child: Child,
    log_path: PathBuf,
}

/// Running nodes; killed on drop.
pub struct Nodes {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

/// The first 3 and last `n` lines of a node's output (a start-up error is on the first line,
/// a backtrace may follow it).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n + 3 {
        return lines.join("\n");
    }
    format!("{}\n...\n{}", lines[..3].join("\n"), lines[lines.len() - n..].join("\n"))
}

/// `[[streams]]` with one stream `telemetry` on `v/+/telemetry`, keyed `levels:2`;
/// `acks` (`quorum` or `leader`) only when given (a single node takes no `acks`).
pub fn telemetry_stream(partitions: u32, acks: Option<&str>) -> String {
    let acks = acks.map_or(String::new(), |a| format!("acks = \"{a}\"\n"));
    format!(
        "[[streams]]\nname = \"telemetry\"\nfilters = [\"v/+/telemetry\"]\npartitions = {partitions}\n\
         key = \"levels:2\"\n{acks}"
    )
}

impl Nodes {
    /// Starts `n` nodes: with `n > 1` a cluster (seeds = all nodes, one shared cluster port),
    /// with `n == 1` a plain single broker. Waits until every node accepts MQTT connections and,
    /// in a cluster, logged `cluster ready`.
    pub fn start(spec: &NodeSpec, n: u32, tag: &str) -> anyhow::Result<Nodes> {
        std::fs::create_dir_all(&spec.data_root)
            .with_context(|| format!("creating the data root {}", spec.data_root.display()))?;
        std::fs::create_dir_all(&spec.log_dir)
            .with_context(|| format!("creating the log directory {}", spec.log_dir.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("cluster-load-")
            .tempdir_in(&spec.data_root)
            .with_context(|| format!("creating a data directory under {}", spec.data_root.display()))?;
        if !spec.axle_bin.is_file() {
            bail!("{} not found; build it: cargo build --release -p axle-broker", spec.axle_bin.display());
        }
        let cluster_port = free_port()?;
        let seeds: Vec<String> = (1..=n).map(|i| format!("\"{i}@127.0.0.{i}:{cluster_port}\"")).collect();
        let mut nodes = Nodes { nodes: Vec::new(), _dir: dir };
        for id in 1..=n {
            let ip = format!("127.0.0.{id}");
            let node_dir = nodes._dir.path().join(format!("node{id}"));
            std::fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
            let cluster = if n > 1 {
                format!(
                    "[cluster]\nenabled = true\nnode_id = {id}\nlisten = \"{ip}:{cluster_port}\"\nseeds = [{}]\n\n",
                    seeds.join(", ")
                )
            } else {
                String::new()
            };
            let config = node_dir.join("axle.toml");
            std::fs::write(&config, format!("{cluster}{}", spec.streams))
                .with_context(|| format!("writing {}", config.display()))?;
            let port = free_port()?;
            let log_path = spec.log_dir.join(format!("axle-{tag}-node{id}.log"));
            let out = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let err = out.try_clone().context("duplicating the log file handle")?;
            let mut cmd = Command::new(&spec.axle_bin);
            cmd.arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(node_dir.join("data"))
                .args(["--fsync", &spec.fsync])
                .args(["--mqtt-tcp", &format!("{ip}:{port}")])
                .args(["--grpc", &format!("{ip}:0"), "--http", &format!("{ip}:0")])
                .env("RUST_LOG", &spec.rust_log)
                .env("NO_COLOR", "1");
            let child =
                spawn_tied(&mut cmd, out, err).with_context(|| format!("starting {}", spec.axle_bin.display()))?;
            nodes.nodes.push(Node { id, mqtt: (ip, port), child, log_path });
        }
        // All are started before waiting: a node may be ready only once a quorum is up.
        let clustered = n > 1;
        for node in &mut nodes.nodes {
            node.wait_ready(clustered, Duration::from_secs(120))?;
        }
        Ok(nodes)
    }

    /// Every node's MQTT address.
    pub fn mqtt_addrs(&self) -> Vec<(String, u16)> {
        self.nodes.iter().map(|n| n.mqtt.clone()).collect()
    }

    /// CPU seconds used so far by all nodes together.
    pub fn cpu_secs(&self) -> f64 {
        self.nodes.iter().map(|n| cpu_secs(n.child.id())).sum()
    }

    /// An error naming the node, its exit status and last output if one has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if let Some(status) = n.child.try_wait().context("waiting on a node")? {
                bail!(
                    "node {} exited ({status}); last output ({}):\n{}",
                    n.id,
                    n.log_path.display(),
                    tail(&n.log_path, 15)
                );
            }
        }
        Ok(())
    }

    /// The last `lines` lines of every node's output.
    pub fn output_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ({}) ---\n{}", n.id, n.log_path.display(), tail(&n.log_path, lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Node {
    fn wait_ready(&mut self, clustered: bool, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().context("waiting on a node")? {
                bail!(
                    "node {} did not start ({status}); last output ({}):\n{}",
                    self.id,
                    self.log_path.display(),
                    tail(&self.log_path, 15)
                );
            }
            let listening = std::net::TcpStream::connect((self.mqtt.0.as_str(), self.mqtt.1)).is_ok();
            let ready =
                !clustered || std::fs::read_to_string(&self.log_path).is_ok_and(|t| t.contains("cluster ready"));
            if listening && ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "node {} not ready within {limit:?} (MQTT on {}:{}{}); last output ({}):\n{}",
            self.id,
            self.mqtt.0,
            self.mqtt.1,
            if clustered { ", `cluster ready` logged" } else { "" },
            self.log_path.display(),
            tail(&self.log_path, 15)
        )
    }
}
