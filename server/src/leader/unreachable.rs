//! Members the leader has not heard from for `cluster.remove_unreachable_after` are removed,
//! one at a time, so that scaling a declared cluster down (a StatefulSet deleting its highest
//! ordinals with their volumes, a VM decommissioned) takes their members out of the quorum
//! without anyone typing `cluster remove`. Voters are removed only while more than
//! `bootstrap_expect` remain: a 3-replica cluster that loses one keeps it as a member, for it
//! to come back (in place, with or without its disk).
//!
//! "Heard from" is the leader's last reading of the member's clock (every replica reads every
//! member's clock every 2 s, `raft_store::peer_clocks`), or its own start if it never had one.

use std::sync::Arc;
use std::time::Duration;

use super::{DutyError, LeaderDuty};
use crate::cluster::runtime::Member;

/// How often the leader looks for unreachable members.
const EVERY: Duration = Duration::from_secs(5);

/// Removes members unreachable for `after` while more than `keep_voters` voters remain.
pub struct UnreachableRemoval {
    pub after: Duration,
    pub keep_voters: usize,
}

#[async_trait::async_trait]
impl LeaderDuty for UnreachableRemoval {
    fn name(&self) -> &'static str {
        "unreachable_removal"
    }

    async fn run(&self, member: &Arc<Member>) -> Result<Duration, DutyError> {
        let replica = &member.replica;
        let status = replica.status();
        let voters = status.members.iter().filter(|m| m.voter).count();
        let clocks = replica.clocks();
        let longest_silent = status
            .members
            .iter()
            .filter(|m| m.node_id != replica.id())
            .map(|m| (m, clocks.unheard_for(m.node_id)))
            .filter(|(m, silent)| *silent >= self.after && (!m.voter || voters > self.keep_voters))
            .max_by_key(|(_, silent)| *silent);
        let Some((gone, silent)) = longest_silent else {
            return Ok(EVERY);
        };
        tracing::warn!(
            node_id = gone.node_id,
            raft_address = %gone.node.raft_address,
            voter = gone.voter,
            silent_s = silent.as_secs(),
            "removing a member unreachable for longer than cluster.remove_unreachable_after"
        );
        replica.remove_member(gone.node_id).await.map_err(|e| DutyError(e.to_string()))?;
        metrics::counter!("testudo_cluster_unreachable_removed_total").increment(1);
        Ok(EVERY)
    }
}
