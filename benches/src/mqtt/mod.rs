//! The `mqtt-load` tool's parts: starting the brokers, the clients (rumqttc, and the lean
//! [`wire`] client) and one module per workload.

pub mod brokers;
pub mod client;
pub mod fan_in;
pub mod offline;
pub mod sampler;
pub mod slow;
pub mod wire;
