//! The agent: node attestation, the server pool with failover, entry sync, the SVID cache
//! and rotation, workload attestors, the Workload API and Envoy SDS on a Unix socket, and
//! the admin socket. Never links `raft-store`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod attest;
pub mod cache;
pub mod config;
pub mod entry_watch;
pub mod identity_store;
pub mod ops;
pub mod runtime;
pub mod status;
pub mod sync;
pub mod trust;
pub mod workload;
