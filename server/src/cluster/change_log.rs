//! Keeps the Raft change log bounded: the leader prunes records older than the last
//! `KEEP` revisions. Readers further behind (an entry cache idle for long) reload instead.

use std::sync::Arc;
use std::time::Duration;

use raft_store::command::PruneChangeLog;
use raft_store::node::Replica;

use super::runtime::ClusterRuntime;

/// Revisions of change log kept behind the newest.
pub const KEEP: u64 = 100_000;

/// Prunes whenever this replica leads, every `every`, until the task is dropped. Proposes
/// only when the floor would move by a tenth of `keep` or more, so an idle cluster writes
/// nothing.
pub async fn prune_while_leading(runtime: Arc<ClusterRuntime>, keep: u64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut floor = 0;
    loop {
        tick.tick().await;
        let Some(replica) = runtime.replica() else { continue };
        if let Some(pruned) = prune_once(&replica, keep, floor).await {
            floor = pruned;
        }
    }
}

/// One pruning pass: on the leader, prunes records older than `keep` revisions if that
/// moves the floor past `floor` by a tenth of `keep`. Returns the new floor if it pruned.
pub async fn prune_once(replica: &Replica, keep: u64, floor: u64) -> Option<u64> {
    if !replica.is_leader() {
        return None;
    }
    let revision = match replica.local_reader().revision().await {
        Ok(revision) => revision,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the revision to prune the change log");
            return None;
        }
    };
    let before = revision.saturating_sub(keep);
    if before < floor + (keep / 10).max(1) {
        return None;
    }
    match replica.write(PruneChangeLog { before_revision: before }).await {
        Ok(_) => {
            tracing::debug!(before, "change log pruned");
            Some(before)
        }
        Err(e) => {
            tracing::warn!(error = %e, "change log prune not committed; retrying later");
            None
        }
    }
}
