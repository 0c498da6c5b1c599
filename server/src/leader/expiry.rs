//! Removes join tokens and replica invites that expired: an expired one can never be used,
//! and keeping it only grows the state every replica holds and every snapshot carries. A
//! prune is proposed only when the earliest stored expiry has passed.

use std::time::Duration;

use raft_store::command::{PruneJoinTokens, PruneReplicaInvites};

use super::{DutyError, LeaderDuty};
use crate::cluster::runtime::Member;

/// How often the leader looks for expired tokens and invites.
pub const EVERY: Duration = Duration::from_secs(60);

pub struct ExpiredPruning {
    pub every: Duration,
}

#[async_trait::async_trait]
impl LeaderDuty for ExpiredPruning {
    fn name(&self) -> &'static str {
        "expired_pruning"
    }

    async fn run(&self, member: &Member) -> Result<Duration, DutyError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (replica, reader) = (&member.replica, member.replica.local_reader());
        let read = |e: raft_store::ReadError| DutyError(e.to_string());
        let write = |e: raft_store::node::ClusterError| DutyError(format!("prune not committed: {e}"));
        if reader.earliest_join_token_expiry().await.map_err(read)?.is_some_and(|at| at < now) {
            let pruned = replica.write(PruneJoinTokens { expired_before: now }).await.map_err(write)?;
            tracing::info!(pruned, "expired join tokens removed");
        }
        if reader.earliest_invite_expiry().await.map_err(read)?.is_some_and(|at| at < now) {
            let pruned = replica.write(PruneReplicaInvites { expired_before: now }).await.map_err(write)?;
            tracing::info!(pruned, "expired replica invites removed");
        }
        Ok(self.every)
    }
}
