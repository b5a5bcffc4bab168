//! The versioned `.proto` definitions of Axle's gRPC consumer API (`axle/v1/consumer.proto`)
//! and the code tonic generates from them, client and server. It owns the wire contract
//! only: no server or client logic lives here, and it knows nothing of the log or MQTT.

/// `axle.v1`: see `proto/axle/v1/consumer.proto` for every field's meaning and units.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("axle.v1");
}

/// `axle.cluster.v1`: the cluster RPC between Axle nodes (Raft, proposal forwarding,
/// heartbeats, replication, publish forwarding); see `proto/axle/cluster/v1/`. Internal to a
/// cluster.
pub mod cluster {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("axle.cluster.v1");
    }
}

/// The `.proto` source, for clients that generate their own stubs (e.g. Python's grpcio-tools).
pub const CONSUMER_PROTO: &str = include_str!("../axle/v1/consumer.proto");
