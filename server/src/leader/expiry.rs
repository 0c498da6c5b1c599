//! Removes join tokens, replica invites and registration entries that expired: an expired
//! one is never used or served again, and keeping it only grows the state every replica
//! holds and every snapshot carries. A prune is proposed only when something has expired.

use std::sync::Arc;
use std::time::Duration;

use raft_store::command::{PruneEntries, PruneJoinTokens, PruneReplicaInvites};

use super::{DutyError, LeaderDuty};
use crate::cluster::runtime::Member;

/// How often the leader looks for expired tokens, invites and entries.
pub const EVERY: Duration = Duration::from_secs(60);

pub struct ExpiredPruning {
    pub every: Duration,
}

#[async_trait::async_trait]
impl LeaderDuty for ExpiredPruning {
    fn name(&self) -> &'static str {
        "expired_pruning"
    }

    async fn run(&self, member: &Arc<Member>) -> Result<Duration, DutyError> {
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
        // Expired entries are already neither served nor minted (`views::entries`); this
        // removes them, as SPIRE's pruning does.
        if member.views.entries().any_expired(now) {
            let pruned = replica.write(PruneEntries { expired_before: now }).await.map_err(write)?;
            tracing::info!(pruned, "expired registration entries removed");
        }
        Ok(self.every)
    }
}
