//! The gRPC consumer API (`axle.v1.Consumer`, defined in `proto/axle/v1/consumer.proto`):
//! stream metadata, `Fetch` by partition and offset, offsets by time, consumer groups, and
//! `Publish` into the MQTT topic space. A thin shell: reads go to the log through the engine,
//! group logic lives in `axle_engine::groups`, and a gRPC publish takes the same path as an
//! MQTT PUBLISH (append, then live dispatch from the log).

mod fetch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axle_engine::groups::{GroupError, GroupStoreError, Strategy};
use axle_engine::{Engine, Message};
use axle_proto::v1::consumer_server::{Consumer, ConsumerServer};
use axle_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::hub::Hub;

/// Largest request message accepted (bytes): a Publish payload plus properties.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The service.
pub struct ConsumerService {
    hub: Arc<Hub>,
}

impl ConsumerService {
    pub fn new(hub: Arc<Hub>) -> Self {
        ConsumerService { hub }
    }

    fn engine(&self) -> &Arc<Engine> {
        &self.hub.engine
    }

    /// The id of `(stream, partition)` in the engine's partition list.
    fn partition_id(&self, stream: &str, partition: u32) -> Result<usize, Status> {
        let engine = self.engine();
        let s = engine
            .streams()
            .streams()
            .iter()
            .find(|s| s.name == stream)
            .ok_or_else(|| Status::not_found(format!("no stream named {stream:?}; ListStreams lists them")))?;
        if partition >= s.partitions {
            return Err(Status::not_found(format!(
                "stream {stream:?} has {} partitions (0..{}); partition {partition} does not exist",
                s.partitions, s.partitions
            )));
        }
        let name = s.partition_name(partition);
        engine
            .partition_by_name(&name)
            .map(|p| p.id)
            .ok_or_else(|| Status::internal(format!("partition {name} is configured but not open")))
    }

    fn stream_info(&self, name: &str) -> Result<StreamInfo, Status> {
        let engine = self.engine();
        let s = engine
            .streams()
            .streams()
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Status::not_found(format!("no stream named {name:?}; ListStreams lists them")))?;
        let mut partitions = Vec::new();
        for n in 0..s.partitions {
            let id = self.partition_id(&s.name, n)?;
            let log = &engine.partitions()[id].log;
            let b = log.bounds();
            partitions.push(PartitionInfo {
                partition: n,
                log_start_offset: b.log_start,
                high_watermark: b.end,
                size_bytes: log.size_bytes(),
                leader: match engine.replicator() {
                    Some(r) => r.leadership(id).leader.map(|l| l.to_string()).unwrap_or_default(),
                    None => self.hub.config.node_id.clone(),
                },
                leader_epoch: engine.replicator().map_or(0, |r| r.leadership(id).epoch),
                log_end: engine.replicator().map_or(b.end, |_| log.log_end()),
            });
        }
        Ok(StreamInfo {
            name: s.name.clone(),
            filters: s.filters.clone(),
            partition_key: s.key.to_string(),
            partitions,
        })
    }

    fn stream_partitions(&self, stream: &str) -> Result<u32, Status> {
        self.engine()
            .streams()
            .streams()
            .iter()
            .find(|s| s.name == stream)
            .map(|s| s.partitions)
            .ok_or_else(|| Status::not_found(format!("no stream named {stream:?}; ListStreams lists them")))
    }
}

fn group_status(e: GroupStoreError) -> Status {
    match e {
        GroupStoreError::Group(g) => match g {
            GroupError::UnknownMember { .. } => Status::not_found(g.to_string()),
            GroupError::StaleGeneration { .. } | GroupError::NotOwner { .. } | GroupError::Active { .. } => {
                Status::failed_precondition(g.to_string())
            }
            GroupError::StreamMismatch { .. } | GroupError::StrategyMismatch { .. } | GroupError::BadTimeout(_) => {
                Status::invalid_argument(g.to_string())
            }
        },
        GroupStoreError::Meta(m) => Status::internal(format!("metadata store: {m}")),
    }
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

#[tonic::async_trait]
impl Consumer for ConsumerService {
    async fn list_streams(&self, _: Request<ListStreamsRequest>) -> Result<Response<ListStreamsResponse>, Status> {
        let names: Vec<String> = self.engine().streams().streams().iter().map(|s| s.name.clone()).collect();
        let streams = names.iter().map(|n| self.stream_info(n)).collect::<Result<_, _>>()?;
        Ok(Response::new(ListStreamsResponse { streams }))
    }

    async fn describe_stream(&self, req: Request<DescribeStreamRequest>) -> Result<Response<StreamInfo>, Status> {
        let req = req.into_inner();
        require("stream", &req.stream)?;
        Ok(Response::new(self.stream_info(&req.stream)?))
    }

    type FetchStream = fetch::FetchStream;

    async fn fetch(&self, req: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let req = req.into_inner();
        require("stream", &req.stream)?;
        let id = self.partition_id(&req.stream, req.partition)?;
        let part = self.engine().partitions()[id].log.clone();
        Ok(Response::new(fetch::start(part, &req)?))
    }

    type FetchBatchesStream = fetch::FetchBatchesStream;

    async fn fetch_batches(&self, req: Request<FetchRequest>) -> Result<Response<Self::FetchBatchesStream>, Status> {
        let req = req.into_inner();
        require("stream", &req.stream)?;
        let id = self.partition_id(&req.stream, req.partition)?;
        let part = self.engine().partitions()[id].log.clone();
        Ok(Response::new(fetch::start_batches(part, &req)?))
    }

    async fn list_offsets(&self, req: Request<ListOffsetsRequest>) -> Result<Response<ListOffsetsResponse>, Status> {
        let req = req.into_inner();
        require("stream", &req.stream)?;
        let count = self.stream_partitions(&req.stream)?;
        let wanted: Vec<u32> = if req.partitions.is_empty() { (0..count).collect() } else { req.partitions.clone() };
        let spec = req.spec.ok_or_else(|| Status::invalid_argument("set one of earliest, latest or timestamp_ms"))?;
        let mut offsets = Vec::with_capacity(wanted.len());
        for p in wanted {
            let id = self.partition_id(&req.stream, p)?;
            let log = &self.engine().partitions()[id].log;
            let b = log.bounds();
            let offset = match spec {
                list_offsets_request::Spec::Earliest(_) => b.log_start,
                list_offsets_request::Spec::Latest(_) => b.end,
                list_offsets_request::Spec::TimestampMs(ts) => log
                    .offset_for_timestamp(ts)
                    .map_err(|e| Status::internal(format!("partition {p}: {e}")))?
                    .unwrap_or(b.end),
            };
            offsets.push(PartitionOffset { partition: p, offset });
        }
        Ok(Response::new(ListOffsetsResponse { offsets }))
    }

    async fn join_group(&self, req: Request<JoinGroupRequest>) -> Result<Response<JoinGroupResponse>, Status> {
        let req = req.into_inner();
        require("group", &req.group)?;
        require("stream", &req.stream)?;
        let partitions = self.stream_partitions(&req.stream)?;
        let strategy = match AssignmentStrategy::try_from(req.strategy) {
            Ok(AssignmentStrategy::Unspecified) => None,
            Ok(AssignmentStrategy::Range) => Some(Strategy::Range),
            Ok(AssignmentStrategy::RoundRobin) => Some(Strategy::RoundRobin),
            Err(_) => return Err(Status::invalid_argument(format!("unknown assignment strategy {}", req.strategy))),
        };
        let j = self
            .engine()
            .groups()
            .join(
                &req.group,
                &req.stream,
                partitions,
                &req.member_id,
                req.session_timeout_ms,
                strategy,
                axle_engine::log::now_ms(),
            )
            .map_err(group_status)?;
        tracing::info!(group = %req.group, member = %j.member_id, generation = j.generation, partitions = ?j.partitions, "consumer joined");
        Ok(Response::new(JoinGroupResponse {
            member_id: j.member_id,
            generation: j.generation,
            partitions: j.partitions,
            members: j.members,
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let req = req.into_inner();
        require("group", &req.group)?;
        require("member_id", &req.member_id)?;
        let (rebalance_needed, generation) = self
            .engine()
            .groups()
            .heartbeat(&req.group, &req.member_id, req.generation, axle_engine::log::now_ms())
            .map_err(group_status)?;
        Ok(Response::new(HeartbeatResponse { rebalance_needed, generation }))
    }

    async fn leave_group(&self, req: Request<LeaveGroupRequest>) -> Result<Response<LeaveGroupResponse>, Status> {
        let req = req.into_inner();
        require("group", &req.group)?;
        require("member_id", &req.member_id)?;
        self.engine().groups().leave(&req.group, &req.member_id, axle_engine::log::now_ms()).map_err(group_status)?;
        Ok(Response::new(LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        req: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let req = req.into_inner();
        require("group", &req.group)?;
        require("member_id", &req.member_id)?;
        let offsets: Vec<(u32, u64)> = req.offsets.iter().map(|o| (o.partition, o.offset)).collect();
        let groups = self.engine().groups();
        let engine = self.engine().clone();
        if let Some(stream) = groups.stream_of(&req.group) {
            for (p, o) in &offsets {
                let id = self.partition_id(&stream, *p)?;
                let end = engine.partitions()[id].log.bounds().end;
                if *o > end {
                    return Err(Status::out_of_range(format!(
                        "offset {o} for partition {p} is past the high watermark {end}"
                    )));
                }
            }
        }
        groups
            .commit(&req.group, &req.member_id, req.generation, &offsets, axle_engine::log::now_ms())
            .map_err(group_status)?;
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_committed(
        &self,
        req: Request<FetchCommittedRequest>,
    ) -> Result<Response<FetchCommittedResponse>, Status> {
        let req = req.into_inner();
        require("group", &req.group)?;
        let offsets = self
            .engine()
            .groups()
            .committed(&req.group, &req.partitions)
            .map_err(group_status)?
            .into_iter()
            .map(|(partition, offset)| PartitionOffset { partition, offset })
            .collect();
        Ok(Response::new(FetchCommittedResponse { offsets }))
    }

    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let req = req.into_inner();
        if let Err(e) = crate::codec::validate_topic_name(&req.topic) {
            return Err(Status::invalid_argument(format!("topic {:?}: {e}", req.topic)));
        }
        if req.topic.starts_with('$') {
            return Err(Status::invalid_argument("topics starting with `$` belong to the broker"));
        }
        if req.qos > 2 {
            return Err(Status::invalid_argument(format!("qos must be 0, 1 or 2, not {}", req.qos)));
        }
        let now = axle_engine::log::now_ms();
        let msg = Message {
            topic: req.topic,
            payload: req.payload,
            qos: req.qos as u8,
            retain: req.retain,
            publisher: if req.publisher.is_empty() { "grpc".into() } else { req.publisher },
            payload_format_utf8: req.payload_utf8.then_some(true),
            expires_at: req.message_expiry_interval.map(|s| now + i64::from(s) * 1000),
            content_type: req.content_type,
            response_topic: req.response_topic,
            correlation_data: req.correlation_data,
            user_properties: req.user_properties.into_iter().map(|p| (p.key, p.value)).collect(),
            timestamp: now,
        };
        self.hub.retain_on_publish(&msg);
        let (pid, offset) = self.engine().publish(&msg).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let h = &self.engine().partitions()[pid];
        let stream = self.engine().streams().streams()[h.stream].name.clone();
        let partition = h.name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok(Response::new(PublishResponse { stream, partition, offset }))
    }
}

/// Serves the API on `addr` until the returned task is aborted. Returns the bound address.
pub async fn serve(hub: Arc<Hub>, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    // Members that stop heartbeating are removed even when nobody calls the API.
    let expiry_hub = hub.clone();
    let service = ConsumerServer::new(ConsumerService::new(hub))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(fetch::MAX_FETCH_BYTES as usize + (1 << 20));
    let task = tokio::spawn(async move {
        let expiry = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if let Err(e) = expiry_hub.engine.groups().expire(axle_engine::log::now_ms()) {
                    tracing::warn!(error = %e, "consumer group expiry failed");
                }
            }
        });
        // Windows large enough for bulk Publish streams; Fetch throughput is bounded by the
        // client's windows, which bulk consumers should set as large.
        let result = tonic::transport::Server::builder()
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(8 << 20)
            .tcp_nodelay(true)
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
        expiry.abort();
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    Ok((local, task))
}
