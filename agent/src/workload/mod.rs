//! Serving workloads: the Workload API ([`api`]) and Envoy SDS ([`sds`]) on one Unix
//! socket, the connection wrapper that lets gRPC C-core clients in ([`authority`]), and
//! who is calling ([`caller`], through the [`unix`] and [`systemd`] attestors).

pub mod api;
pub mod authority;
pub mod caller;
pub mod sds;
pub mod systemd;
pub mod unix;
