//! Replicated state: the openraft type config, the RocksDB log store and state machine,
//! snapshots, the replicated data model and its commands, and the Raft network over tonic
//! with mTLS. Filled by the raft-store issue; knows nothing of attestation.
#![forbid(unsafe_code)]
