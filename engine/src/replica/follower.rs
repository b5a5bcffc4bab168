//! A follower's pull loop for one partition under one leader epoch. It first truncates a
//! divergent tail (the leader's end offset for the follower's latest epoch, Kafka's
//! OffsetsForLeaderEpoch), then fetches from its own log end, appends the leader's sealed
//! batches as they are, and takes the leader's high watermark (bounded by its own log end).
//! It exits as soon as the partition's role changes.

use std::sync::Arc;
use std::time::Duration;

use axle_proto::cluster::v1::{EpochEndOffsetRequest, ReplicaFetchRequest};

use super::{Leadership, Replica, Replicator};
use crate::cluster::NodeId;

/// Pause after an error before trying again.
const BACKOFF: Duration = Duration::from_millis(100);

pub(crate) async fn run(rep: Arc<Replicator>, r: Arc<Replica>, leader: NodeId, epoch: u32) {
    let mine = Leadership { leader: Some(leader), epoch };
    let current = || *r.leadership.borrow() == mine;
    let mut truncated = false;
    while current() {
        let Some(mut client) = rep.peers.client(&rep, leader) else {
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        if !truncated {
            match truncate_divergent(&mut client, &r, epoch).await {
                Ok(()) => truncated = true,
                Err(e) => {
                    tracing::debug!(partition = %r.name, leader, error = %e, "epoch check failed; retrying");
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            }
        }
        let req = ReplicaFetchRequest {
            partition: r.name.clone(),
            replica_id: rep.me,
            leader_epoch: epoch,
            offset: r.log.log_end(),
            max_bytes: rep.cfg.fetch_max_bytes,
            max_wait_ms: rep.cfg.fetch_wait_ms,
        };
        let resp = match client.fetch(req).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                if matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::NotFound) {
                    tracing::warn!(partition = %r.name, leader, %status, "the leader refuses this replica's fetch");
                } else {
                    tracing::debug!(partition = %r.name, leader, %status, "replica fetch failed");
                }
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        if !current() {
            return;
        }
        if !resp.batches.is_empty() {
            if let Err(e) = r.log.append_sealed(resp.batches).await {
                // Most likely a local append raced a leadership change: check the tail again.
                tracing::warn!(partition = %r.name, leader, error = %e, "replicated batches refused; re-checking the tail");
                truncated = false;
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        }
        r.log.set_high_watermark(resp.high_watermark.min(r.log.log_end()));
    }
}

/// Truncates the local tail that the leader does not have.
async fn truncate_divergent(
    client: &mut super::service::Client,
    r: &Replica,
    epoch: u32,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Some(mine) = r.log.latest_epoch() else {
        return Ok(());
    };
    let req = EpochEndOffsetRequest { partition: r.name.clone(), epoch: mine, leader_epoch: epoch };
    let resp = client.epoch_end_offset(req).await?.into_inner();
    let log_end = r.log.log_end();
    let to = if resp.found { resp.end_offset.min(log_end) } else { resp.log_start.max(r.log.bounds().log_start) };
    if to < log_end {
        tracing::warn!(partition = %r.name, from = to, to = log_end, "truncating a divergent tail");
        r.log.truncate(to).await?;
    }
    Ok(())
}
