//! The Raft network: openraft's RPCs, forwarded writes and read-index requests over gRPC
//! with mutual TLS, plus a fault switchboard tests use to cut links.

mod accept;
mod client;
mod faults;
mod forming;
mod server;
pub mod tls;
mod wire;

pub use accept::{accept_tls, source_of, Accepted, ConnectionLimits, Incoming, LogBudget};
pub use client::{CallError, ClusterClient, NetworkFactory, PeerNetwork};
pub use faults::Faults;
pub use forming::FormingServer;
pub use server::{serve, ClusterService, JoinHandler, TransferHandler, MAX_MESSAGE_BYTES};
pub use wire::{AdminRequest, FormationState, ForwardError};
