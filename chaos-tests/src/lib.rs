//! Failure drills and benchmarks with real processes, started through the `testkit` crate;
//! [`linearizability`] checks recorded histories (every acknowledged write kept, single-key
//! histories linearizable); [`drills`] break clusters the ways production breaks them and
//! report what they found.
#![forbid(unsafe_code)]

pub mod drills;
pub mod linearizability;
