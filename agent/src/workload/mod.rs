//! Serving workloads: the Workload API ([`api`]) and Envoy SDS ([`sds`]) on one Unix
//! socket (accepted through `proto::unix_authority`, which lets gRPC C-core clients in), and
//! who is calling ([`caller`], through the [`attestor`]s: [`unix`] and [`systemd`], on the
//! process pinned when it connected: [`peer_process`]).

pub mod api;
pub mod attestor;
pub mod caller;
pub mod peer_process;
pub mod sds;
pub mod systemd;
pub mod unix;
