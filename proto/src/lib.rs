//! Wire contracts as `.proto` files and their generated tonic/prost code: the internal
//! cluster RPC today; the SPIFFE Workload API, the SPIRE-compatible server APIs and Envoy
//! SDS come with the server and agent issues.
#![forbid(unsafe_code)]

/// The SPIFFE Workload API (no package: service `SpiffeWorkloadAPI`).
pub mod workload {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("_");
}

/// The internal cluster RPC between server replicas (`testudo.cluster.v1`).
pub mod cluster {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("testudo.cluster.v1");
}

/// Administration of one server replica over its admin socket (`testudo.admin.v1`).
pub mod admin {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("testudo.admin.v1");
}

/// SPIRE's public API, wire-compatible: shared types and the server services built so far.
pub mod spire {
    pub mod api {
        pub mod types {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("spire.api.types");
        }
        pub mod server {
            pub mod svid {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.server.svid.v1");
                }
            }
            pub mod bundle {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.server.bundle.v1");
                }
            }
            pub mod localauthority {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.server.localauthority.v1");
                }
            }
            pub mod agent {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.server.agent.v1");
                }
            }
            pub mod entry {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.server.entry.v1");
                }
            }
            pub mod debug {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.server.debug.v1");
                }
            }
        }
    }
}

/// The gRPC health checking protocol (`grpc.health.v1`).
pub mod health {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("grpc.health.v1");
}

/// The subset of etcd's KV API the Raft benchmark drives etcd with (`etcdserverpb`).
pub mod etcd {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("etcdserverpb");
}
