//! The failure-drill harness: starts real server and agent processes, injects faults,
//! checks histories for lost writes and linearizability, and drives the benchmarks. Filled
//! by the chaos-tests issue.
#![forbid(unsafe_code)]
