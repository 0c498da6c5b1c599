//! Membership changes as the leader carries them out, in short steps any replica can ask
//! for (over the Admin RPC) and repeat until done: adding a replica makes it a learner,
//! then — once it has caught up — a voter; removing demotes a voter and drops the node.

use std::collections::BTreeSet;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use crate::network::ForwardError;
use crate::types::{NodeId, Raft, ReplicaNode};

/// A learner within this many entries of the leader's log is promoted: close enough that
/// the joint configuration commits without waiting on a long catch-up.
const PROMOTE_WITHIN: u64 = 64;

/// What one step of adding a member achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AddProgress {
    /// The replica is a learner still catching up; ask again.
    CatchingUp { lag: Option<u64> },
    /// The replica is a voter.
    Voter,
}

fn refused(e: RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ForwardError::NotLeader { leader: f.leader_id.zip(f.leader_node) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_))) => {
            ForwardError::Unavailable("another membership change is in progress".into())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ForwardError::Refused(e.to_string()),
        RaftError::Fatal(e) => ForwardError::Unavailable(e.to_string()),
    }
}

fn not_leader(raft: &Raft) -> Option<ForwardError> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader == Some(m.id) {
        return None;
    }
    let leader =
        m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned().map(|node| (id, node)));
    Some(ForwardError::NotLeader { leader })
}

/// One step towards making `id` a voter in place of the members at its address: once it
/// votes, they are removed (a replica that came back at its address with an empty data dir
/// replaces the member it was). Leader only.
pub(crate) async fn replace_member_step(
    raft: &Raft,
    id: NodeId,
    node: ReplicaNode,
) -> Result<AddProgress, ForwardError> {
    let progress = add_member_step(raft, id, node.clone()).await?;
    if progress == AddProgress::Voter {
        let replaced: Vec<NodeId> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(other, at)| **other != id && at.raft_address == node.raft_address)
            .map(|(other, _)| *other)
            .collect();
        for old in replaced {
            remove_member(raft, old).await?;
            tracing::info!(replaced = old, by = id, address = %node.raft_address, "a replica took its place in the cluster");
        }
    }
    Ok(progress)
}

/// One step towards making `id` a voter. Leader only.
pub(crate) async fn add_member_step(raft: &Raft, id: NodeId, node: ReplicaNode) -> Result<AddProgress, ForwardError> {
    if let Some(e) = not_leader(raft) {
        return Err(e);
    }
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    match membership.get_node(&id) {
        Some(existing) if *existing != node => {
            return Err(ForwardError::Refused(format!(
                "replica {id} is already a member at {}; remove it first",
                existing.raft_address
            )));
        }
        Some(_) if membership.voter_ids().any(|v| v == id) => return Ok(AddProgress::Voter),
        Some(_) => {}
        None => {
            raft.add_learner(id, node, false).await.map_err(refused)?;
            return Ok(AddProgress::CatchingUp { lag: None });
        }
    }
    let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
    let lag = match (matched, m.last_log_index) {
        (Some(matched), Some(last)) => Some(last.saturating_sub(matched)),
        _ => None,
    };
    if lag.is_none_or(|lag| lag > PROMOTE_WITHIN) {
        return Ok(AddProgress::CatchingUp { lag });
    }
    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await.map_err(refused)?;
    Ok(AddProgress::Voter)
}

/// Removes `id` (voter or learner). Leader only; removing a non-member succeeds.
pub(crate) async fn remove_member(raft: &Raft, id: NodeId) -> Result<(), ForwardError> {
    if let Some(e) = not_leader(raft) {
        return Err(e);
    }
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    if membership.voter_ids().any(|v| v == id) {
        if membership.voter_ids().count() == 1 {
            return Err(ForwardError::Refused(format!("replica {id} is the last voter")));
        }
        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await.map_err(refused)?;
    }
    let still_member = raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
    if still_member {
        raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await.map_err(refused)?;
    }
    Ok(())
}
