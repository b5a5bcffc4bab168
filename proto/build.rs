//! Generates the gRPC code from `axle/v1/consumer.proto` (the consumer API) and
//! `axle/cluster/v1/raft.proto` (the cluster RPC) with the vendored `protoc`, so that building
//! needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script is single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=axle/v1/consumer.proto");
    println!("cargo:rerun-if-changed=axle/cluster/v1/raft.proto");
    println!("cargo:rerun-if-changed=axle/cluster/v1/replica.proto");
    // `bytes` fields as `bytes::Bytes`: record keys and payloads go from the log read buffer
    // to the wire without a copy.
    tonic_prost_build::configure().bytes(".").compile_protos(
        &["axle/v1/consumer.proto", "axle/cluster/v1/raft.proto", "axle/cluster/v1/replica.proto"],
        &["."],
    )?;
    Ok(())
}
