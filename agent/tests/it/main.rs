//! The agent as real processes against real server replicas (one cluster, or two federated
//! ones), called by Workload API clients that others wrote (the `spiffe` crate) and by our
//! own CLI.

mod entry_push;
mod failover;
mod federation;
mod hostile_workloads;
mod nested;
mod ops;
mod rotation;
mod sds;
mod trust_url;
mod workload_api;
mod x509pop;
