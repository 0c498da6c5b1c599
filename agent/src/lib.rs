//! The agent: node attestation, the server pool with failover, entry sync, the SVID cache
//! and rotation, workload attestors, and the Workload API and SDS on a Unix socket. Filled
//! by the agent issue; never links `raft-store`.
#![forbid(unsafe_code)]
