//! Wire contracts as `.proto` files and their generated tonic/prost code: the internal
//! cluster RPC, the SPIFFE Workload API, the SPIRE-compatible server APIs, Envoy SDS v3 and
//! the etcd KV API the Raft benchmark compares against.
#![forbid(unsafe_code)]

pub mod reason;
pub mod unix_authority;
pub mod unix_socket;

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

/// Pushes from servers to agents (`testudo.agent.v1`): entry change notifications.
pub mod agent_push {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("testudo.agent.v1");
}

/// Administration of one server replica over its admin socket (`testudo.admin.v1`).
pub mod admin {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("testudo.admin.v1");
}

/// SPIRE's public API, wire-compatible: shared types, the server services and the agent's
/// debug API.
pub mod spire {
    /// The agent's debug API (package `spire.agent.debug.v1`, as SPIRE publishes it).
    pub mod agent {
        pub mod debug {
            pub mod v1 {
                #![allow(clippy::all, missing_docs)]
                tonic::include_proto!("spire.agent.debug.v1");
            }
        }
    }
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
            pub mod trustdomain {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    tonic::include_proto!("spire.api.server.trustdomain.v1");
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

/// Envoy's Secret Discovery Service v3 and the xDS types it uses; modules follow the proto
/// packages because the generated code refers across them by relative path.
pub mod envoy {
    #![allow(clippy::all, missing_docs)]
    pub mod service {
        pub mod secret {
            pub mod v3 {
                tonic::include_proto!("envoy.service.secret.v3");
            }
        }
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
    pub mod extensions {
        pub mod transport_sockets {
            pub mod tls {
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");
                }
            }
        }
    }
}

/// `google.rpc.Status`, as xDS clients report a rejected update.
pub mod google {
    #![allow(clippy::all, missing_docs)]
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}
