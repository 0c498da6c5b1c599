//! Keeps the Raft change log bounded: the leader prunes records older than the last `KEEP`
//! revisions, and only once the floor would move by a tenth of that, so an idle cluster
//! writes nothing. The floor is replicated state, so a new leader carries on from it.

use std::sync::Arc;
use std::time::Duration;

use raft_store::command::PruneChangeLog;
use raft_store::node::Replica;

use super::{DutyError, LeaderDuty};
use crate::cluster::runtime::Member;

/// Revisions of change log kept behind the newest.
pub const KEEP: u64 = 100_000;
/// How often the leader looks whether pruning is due.
pub const EVERY: Duration = Duration::from_secs(60);

pub struct ChangeLogPruning {
    pub keep: u64,
    pub every: Duration,
}

#[async_trait::async_trait]
impl LeaderDuty for ChangeLogPruning {
    fn name(&self) -> &'static str {
        "change_log_pruning"
    }

    async fn run(&self, member: &Arc<Member>) -> Result<Duration, DutyError> {
        prune_once(&member.replica, self.keep).await?;
        Ok(self.every)
    }
}

/// One pruning pass: prunes records older than `keep` revisions if that moves the
/// replicated floor by a tenth of `keep` or more. Returns the new floor if it pruned.
pub async fn prune_once(replica: &Replica, keep: u64) -> Result<Option<u64>, DutyError> {
    let revision = replica.applied().current_revision();
    let floor = replica.local_reader().change_log_floor().await.map_err(|e| DutyError(e.to_string()))?;
    let before = revision.saturating_sub(keep);
    if before < floor + (keep / 10).max(1) {
        return Ok(None);
    }
    let pruned = replica
        .write(PruneChangeLog { before_revision: before })
        .await
        .map_err(|e| DutyError(format!("change log prune not committed: {e}")))?;
    tracing::debug!(before, pruned, "change log pruned");
    Ok(Some(before))
}
