//! The leader's side of the replica RPCs (`axle.cluster.v1.Replica`), and the client
//! connections a node keeps to its peers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axle_proto::cluster::v1::replica_client::ReplicaClient;
use axle_proto::cluster::v1::replica_server::Replica as ReplicaRpc;
use axle_proto::cluster::v1::*;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{Replicator, Role};
use crate::cluster::NodeId;
use crate::Message;

pub(crate) type Client = ReplicaClient<Channel>;

/// Largest wait a fetch may ask for (ms).
const MAX_FETCH_WAIT_MS: u32 = 5_000;
/// Largest batch bytes a fetch may ask for.
const MAX_FETCH_BYTES: u32 = 32 << 20;

/// Lazily connected clients, one per peer node.
#[derive(Default)]
pub(crate) struct Peers {
    clients: Mutex<HashMap<NodeId, (String, Client)>>,
}

impl Peers {
    /// A client for `node` at the address the metadata group has for it.
    pub(crate) fn client(&self, rep: &Replicator, node: NodeId) -> Option<Client> {
        let addr = rep.meta.state().nodes.get(&node)?.cluster_addr.clone();
        let mut clients = self.clients.lock();
        if let Some((a, c)) = clients.get(&node) {
            if *a == addr {
                return Some(c.clone());
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let client = ReplicaClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        clients.insert(node, (addr, client.clone()));
        Some(client)
    }
}

/// The tonic service.
pub struct ReplicaService {
    rep: Arc<Replicator>,
}

impl ReplicaService {
    pub(crate) fn new(rep: Arc<Replicator>) -> Self {
        ReplicaService { rep }
    }

    fn replica(&self, name: &str) -> Result<&Arc<super::Replica>, Status> {
        self.rep.replica(name).ok_or_else(|| Status::not_found(format!("no partition named {name:?} on this node")))
    }
}

fn not_leader(name: &str) -> Status {
    Status::failed_precondition(format!("not leader of {name}"))
}

#[tonic::async_trait]
impl ReplicaRpc for ReplicaService {
    async fn fetch(&self, req: Request<ReplicaFetchRequest>) -> Result<Response<ReplicaFetchResponse>, Status> {
        let req = req.into_inner();
        let r = self.replica(&req.partition)?.clone();
        let mut end_rx = r.end.subscribe();
        let hw = {
            let mut role = r.role.lock();
            let Role::Leader(l) = &mut *role else { return Err(not_leader(&r.name)) };
            if l.epoch() != req.leader_epoch {
                return Err(Status::failed_precondition(format!(
                    "fenced: {} is at leader epoch {}, the request has {}",
                    r.name,
                    l.epoch(),
                    req.leader_epoch
                )));
            }
            let end = r.log.log_end();
            if !l.on_fetch(req.replica_id, req.offset, end, self.rep.now_ms()) {
                return Err(Status::permission_denied(format!(
                    "node {} is not a replica of {}",
                    req.replica_id, r.name
                )));
            }
            l.advance(end)
        };
        r.log.set_high_watermark(hw);
        end_rx.borrow_and_update();
        if req.offset >= r.log.log_end() {
            // At the tail: wait for data, or for a new high watermark (the log's visible end)
            // to pass on.
            let visible = r.log.bounds().end;
            let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(MAX_FETCH_WAIT_MS)));
            let _ = tokio::time::timeout(wait, async {
                tokio::select! {
                    _ = r.log.wait_past(visible) => {}
                    _ = end_rx.changed() => {}
                }
            })
            .await;
        }
        let b = r.log.bounds();
        let end = r.log.log_end();
        if req.offset > end {
            return Err(Status::out_of_range(format!(
                "{}: offset {} is past the leader's log end {end}; truncate first",
                r.name, req.offset
            )));
        }
        let batches = if req.offset < end {
            let max = req.max_bytes.clamp(1, MAX_FETCH_BYTES) as usize;
            r.log.read_batches(req.offset, max).map_err(|e| Status::out_of_range(e.to_string()))?
        } else {
            Vec::new()
        };
        Ok(Response::new(ReplicaFetchResponse {
            batches,
            high_watermark: r.log.high_watermark(),
            log_end: end,
            log_start: b.log_start,
        }))
    }

    async fn epoch_end_offset(
        &self,
        req: Request<EpochEndOffsetRequest>,
    ) -> Result<Response<EpochEndOffsetResponse>, Status> {
        let req = req.into_inner();
        let r = self.replica(&req.partition)?;
        match &*r.role.lock() {
            Role::Leader(l) if l.epoch() == req.leader_epoch => {}
            Role::Leader(_) => return Err(Status::failed_precondition(format!("fenced: epoch of {}", r.name))),
            _ => return Err(not_leader(&r.name)),
        }
        let log_start = r.log.bounds().log_start;
        Ok(Response::new(match r.log.epoch_end_offset(req.epoch) {
            Some((epoch, end_offset)) => EpochEndOffsetResponse { found: true, epoch, end_offset, log_start },
            None => EpochEndOffsetResponse { found: false, epoch: 0, end_offset: 0, log_start },
        }))
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<ForwardResponse>, Status> {
        let req = req.into_inner();
        let r = self.replica(&req.partition)?.clone();
        if req.messages.is_empty() {
            return Err(Status::invalid_argument("a forward needs at least one message"));
        }
        let mut records = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            if m.raw != r.raw_records {
                return Err(Status::invalid_argument(format!(
                    "partition {} takes {} records",
                    r.name,
                    if r.raw_records { "raw" } else { "MQTT message" }
                )));
            }
            if m.raw {
                let mut rec = axle_log::Record::new(m.value.clone()).with_key(m.key.clone().into_bytes());
                if m.timestamp > 0 {
                    rec = rec.with_timestamp(m.timestamp);
                }
                records.push(rec);
                continue;
            }
            let msg = Message::decode_bytes(&m.message)
                .ok_or_else(|| Status::invalid_argument("a forwarded message is malformed"))?;
            records.push(msg.to_record(&m.key));
        }
        if !matches!(*r.role.lock(), Role::Leader(_)) {
            return Err(not_leader(&r.name));
        }
        let base_offset = self.rep.append_local(&r, &records).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ForwardResponse { base_offset }))
    }
}
