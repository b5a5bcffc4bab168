//! The MQTT front end of Axle and the `axle` binary. It owns the MQTT 3.1.1/5.0 codec and
//! session state machines, the topic tree, authentication and ACLs, the listeners (TCP, TLS,
//! WebSocket, QUIC, PROXY v2), the gRPC and REST servers, and configuration. It reaches the
//! log only through `axle-engine`'s streams and must not know about segment files, batches or
//! fsync policies beyond passing configuration through.

pub mod acl;
pub mod auth;
pub mod cli;
pub mod codec;
pub mod config;
pub mod connection;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod retained;
pub mod session;
pub mod shared;
pub mod sys;
pub mod topic_tree;
pub mod will;
