//! raft-store tests: openraft's storage conformance suite, the apply rules, snapshots,
//! and data-dir checks.

mod apply_rules;
mod cluster;
mod cluster_support;
mod cluster_tls;
mod crash;
mod data_dir;
mod durable_formats;
mod requests;
mod snapshots;
mod storage_suite;
mod support;
