//! Failure drills and benchmarks with real processes. [`harness`] starts and stops
//! `testudo-server` replicas, `testudo-agent`s, a local KMS and fault proxies;
//! [`linearizability`] checks recorded histories (every acknowledged write kept, single-key
//! histories linearizable); [`drills`] break clusters the ways production breaks them and
//! report what they found.
#![forbid(unsafe_code)]

pub mod drills;
pub mod harness;
pub mod linearizability;
