//! Failure drills and benchmarks with real processes. [`harness`] starts and stops
//! `testudo-server` replicas, `testudo-agent`s, a local KMS and fault proxies;
//! [`linearizability`] checks recorded histories (every acknowledged write kept, single-key
//! histories linearizable). The drills themselves arrive with the chaos issue.
#![forbid(unsafe_code)]

pub mod harness;
pub mod linearizability;
