//! Payload encoding for the cluster RPC.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::types::{NodeId, ReplicaNode};

/// Why a forwarded write or read-index request was not served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("replica is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, ReplicaNode)> },
    #[error("the cluster cannot serve this now: {0}")]
    Unavailable(String),
    #[error("refused: {0}")]
    Refused(String),
}

/// Steps of a leader transfer that one replica asks of another. The variants' order is the
/// wire format (bincode sends the index): new ones go at the end, so replicas of different
/// builds still read each other during a rolling upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Stops (false) or restarts (true) this replica's election timer: what builds before
    /// `PauseElection` send. A stop this way lasts at most the longest pause.
    AllowElection(bool),
    /// Starts an election now.
    StartElection,
    /// Asks the leader to hand leadership to this replica.
    TransferLeadership { to: NodeId },
    /// Asks the leader to add a replica as a learner, wait until it has caught up, and
    /// make it a voter.
    AddMember { id: NodeId, node: ReplicaNode },
    /// Asks the leader to remove a member.
    RemoveMember { id: NodeId },
    /// Stops this replica's election timer for at most `millis` (a leader transfer in
    /// progress); it restarts by itself then, so a transfer whose leader dies or whose
    /// resume is lost never leaves the replica unable to stand.
    PauseElection { millis: u64 },
    /// Restarts this replica's election timer (the transfer ended).
    ResumeElection,
    /// As `AddMember`, and once the replica votes, removes the other members at its
    /// cluster address: it took their place (declarative formation, docs/cluster.md).
    ReplaceMember { id: NodeId, node: ReplicaNode },
}

/// What a replica answers a formation probe with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormationState {
    /// Whether this replica belongs to a cluster whose leader has committed an entry: a
    /// replica that only initialised (or is waiting to) has not.
    pub formed: bool,
    /// The members it knows, when formed: where a joiner asks to be added.
    pub members: Vec<(NodeId, ReplicaNode)>,
}

pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<proto::cluster::Payload, tonic::Status> {
    let data = codec::encode(what, value).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(proto::cluster::Payload { data })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, payload: &proto::cluster::Payload) -> Result<T, tonic::Status> {
    codec::decode(what, &payload.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("cannot decode {what} payload: {}", e.reason)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_requests_keep_their_wire_indexes() {
        let index = |request: &AdminRequest| codec::encode("admin request", request).expect("encodes")[0];
        assert_eq!(index(&AdminRequest::AllowElection(false)), 0);
        assert_eq!(index(&AdminRequest::StartElection), 1);
        assert_eq!(index(&AdminRequest::TransferLeadership { to: 2 }), 2);
        assert_eq!(index(&AdminRequest::RemoveMember { id: 2 }), 4);
        assert_eq!(index(&AdminRequest::PauseElection { millis: 1 }), 5);
        assert_eq!(index(&AdminRequest::ResumeElection), 6);
        let node = ReplicaNode { raft_address: String::new(), api_address: String::new() };
        assert_eq!(index(&AdminRequest::ReplaceMember { id: 2, node }), 7);
    }
}
