//! The openraft type configuration, declared once.

use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};

/// A replica's id in the cluster.
pub type NodeId = u64;

/// Where a replica can be reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaNode {
    /// `host:port` of the replica's Raft (cluster RPC) endpoint.
    pub raft_address: String,
    /// `host:port` of the replica's public API, for callers redirected to it.
    pub api_address: String,
}

impl std::fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.raft_address)
    }
}

/// A command as the Raft log carries it. Shared, so that the log's cache of recent
/// entries, replication and apply hand it on without copying it; on disk and on the wire
/// it is the command itself.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedCommand(pub Arc<Command>);

impl From<Command> for LoggedCommand {
    fn from(command: Command) -> Self {
        Self(Arc::new(command))
    }
}

impl Serialize for LoggedCommand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LoggedCommand {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Command::deserialize(deserializer).map(Self::from)
    }
}

openraft::declare_raft_types!(
    /// Testudo's Raft types: commands in, responses out, snapshots as byte buffers that
    /// openraft streams to lagging replicas in chunks.
    pub TypeConfig:
        D = LoggedCommand,
        R = Response,
        NodeId = NodeId,
        Node = ReplicaNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, ReplicaNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ReplicaNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
