//! The openraft type configuration, declared once.

use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
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

/// A command as the Raft log carries it: the command and its encoding, made once (by the
/// proposer on the leader, from the wire on a follower) and shared. The log's cache,
/// replication and apply hand it on without copying; writing it to disk or the wire copies
/// the encoded bytes instead of encoding the command again for each. Its serialized form is
/// those bytes (a length-prefixed byte string holding the encoded command).
#[derive(Clone, Debug)]
pub struct LoggedCommand(Arc<Logged>);

#[derive(Debug)]
struct Logged {
    command: Command,
    encoded: Vec<u8>,
}

impl LoggedCommand {
    /// Encodes `command` for the log.
    pub fn new(command: Command) -> Result<Self, CodecError> {
        let encoded = codec::encode("command", &command)?;
        Ok(Self(Arc::new(Logged { command, encoded })))
    }

    pub fn command(&self) -> &Command {
        &self.0.command
    }

    /// The size of the encoded command.
    pub fn encoded_len(&self) -> usize {
        self.0.encoded.len()
    }
}

impl PartialEq for LoggedCommand {
    fn eq(&self, other: &Self) -> bool {
        self.0.command == other.0.command
    }
}

impl Serialize for LoggedCommand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encoded)
    }
}

impl<'de> Deserialize<'de> for LoggedCommand {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an encoded command")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        let encoded = deserializer.deserialize_byte_buf(Bytes)?;
        let command = codec::decode("command", &encoded).map_err(serde::de::Error::custom)?;
        Ok(Self(Arc::new(Logged { command, encoded })))
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
