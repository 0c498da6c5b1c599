//! Generates the gRPC code with a vendored protoc, so a fresh machine needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    // The well-known types (google/protobuf/wrappers.proto) come with the vendored protoc.
    let well_known = protoc_bin_vendored::include_path()?;
    let well_known = well_known.to_str().ok_or("the vendored protoc include path is not UTF-8")?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_protos(
        &[
            "proto/testudo/cluster/v1/cluster.proto",
            "proto/testudo/admin/v1/cluster_admin.proto",
            "proto/testudo/admin/v1/federation_status.proto",
            "proto/testudo/admin/v1/upstream_status.proto",
            "proto/testudo/agent/v1/entry_notifications.proto",
            "proto/spire/api/server/svid/v1/svid.proto",
            "proto/spire/api/server/bundle/v1/bundle.proto",
            "proto/spire/api/server/debug/v1/debug.proto",
            "proto/spire/api/agent/debug/v1/debug.proto",
            "proto/spire/api/server/entry/v1/entry.proto",
            "proto/spire/api/server/agent/v1/agent.proto",
            "proto/spire/api/server/localauthority/v1/localauthority.proto",
            "proto/spire/api/server/trustdomain/v1/trustdomain.proto",
            "proto/grpc/health/v1/health.proto",
            "proto/etcd/kv.proto",
            "proto/workload/workload.proto",
            "proto/envoy/service/secret/v3/sds.proto",
            "proto/envoy/extensions/transport_sockets/tls/v3/secret.proto",
        ],
        &["proto", well_known],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
