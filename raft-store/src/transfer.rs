//! Leader transfer. openraft 0.9 has no transfer call (0.10 adds one), so it is built from
//! what 0.9 offers: the leader stops proposing writes, checks the target is caught up,
//! pauses the election timers of the other voters and its own heartbeats, waits out the
//! leader lease (followers refuse votes while it holds), and asks the target to start an
//! election, which it wins because its log is complete and no one else competes. Timers,
//! heartbeats and writes are restored however it ends: the transfer runs in a task of its
//! own, so a caller that gives up does not cut it short, and the other voters restart
//! their timers by themselves after a bounded pause if the leader dies first.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::network::{AdminRequest, ClusterClient, ForwardError, TransferHandler};
use crate::proposer::Proposer;
use crate::types::{NodeId, Raft};

#[derive(Clone)]
pub(crate) struct LeaderTransfer {
    pub id: NodeId,
    pub raft: Raft,
    pub client: ClusterClient,
    /// Paused during a transfer, so the log stands still while the target catches up.
    pub proposer: Proposer,
    /// openraft's leader lease: the election timeout's maximum.
    pub lease: Duration,
}

const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
const ELECTION_WAIT: Duration = Duration::from_secs(5);
/// How long a replica waits for the leader to answer a forwarded transfer: both waits, the
/// leader lease (a few seconds at most) and some margin.
pub(crate) const TRANSFER_CALL_LIMIT: Duration = Duration::from_secs(20);

impl LeaderTransfer {
    async fn admin(&self, to: NodeId, request: AdminRequest) -> Result<(), ForwardError> {
        let node = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics.membership_config.membership().get_node(&to).cloned()
        };
        let node = node.ok_or_else(|| ForwardError::Unavailable(format!("replica {to} is not a member")))?;
        match self.client.admin(to, &node.raft_address, &request).await {
            Ok(result) => result.map(|_| ()),
            Err(e) => Err(ForwardError::Unavailable(e.to_string())),
        }
    }

    /// Runs on the leader.
    async fn lead_transfer(&self, to: NodeId) -> Result<(), ForwardError> {
        let metrics = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        if !voters.contains(&to) {
            return Err(ForwardError::Unavailable(format!("replica {to} is not a voter")));
        }
        if to == self.id {
            return Ok(());
        }
        // No new entries until the transfer ends (writes wait, then go to the new leader):
        // the target must hold every entry when it stands, or the other voters refuse it,
        // and its failed campaign would only raise the term.
        let _paused =
            tokio::time::timeout(CATCH_UP_WAIT, self.proposer.pause()).await.ok().flatten().ok_or_else(|| {
                ForwardError::Unavailable(format!("writes in flight were not committed within {CATCH_UP_WAIT:?}"))
            })?;
        let caught_up = async {
            loop {
                let m = self.raft.metrics().borrow().clone();
                let matched = m.replication.as_ref().and_then(|r| r.get(&to).copied().flatten()).map(|l| l.index);
                if matched.is_some() && matched == m.last_log_index {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(CATCH_UP_WAIT, caught_up).await.map_err(|_| {
            ForwardError::Unavailable(format!("replica {to} did not catch up within {CATCH_UP_WAIT:?}"))
        })?;

        let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != to && *v != self.id).collect();
        // Longer than the transfer can take (lease, election wait, the calls), so a pause
        // ends early only if this leader died or could not resume it.
        let pause = self.lease + ELECTION_WAIT + Duration::from_secs(5);
        let millis = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        for v in &others {
            if let Err(e) = self.admin(*v, AdminRequest::PauseElection { millis }).await {
                tracing::warn!(replica = v, error = %e, "could not pause an election timer for a leader transfer");
            }
        }
        self.raft.runtime_config().elect(false);
        self.raft.runtime_config().heartbeat(false);
        let result = async {
            tokio::time::sleep(self.lease + Duration::from_millis(50)).await;
            self.admin(to, AdminRequest::StartElection).await?;
            let elected = async {
                loop {
                    if self.raft.metrics().borrow().current_leader == Some(to) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(ELECTION_WAIT, elected).await.map_err(|_| {
                ForwardError::Unavailable(format!("replica {to} was not elected within {ELECTION_WAIT:?}"))
            })
        }
        .await;
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(true);
        for v in &others {
            if let Err(e) = self.admin(*v, AdminRequest::ResumeElection).await {
                tracing::warn!(replica = v, error = %e, "could not resume an election timer after a leader transfer; \
                    it resumes by itself");
            }
        }
        result
    }
}

#[tonic::async_trait]
impl TransferHandler for LeaderTransfer {
    async fn transfer_leadership(&self, to: NodeId) -> Result<(), ForwardError> {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(leader) if leader == self.id => {
                // In a task of its own: dropping this call (a caller's deadline) must not
                // leave heartbeats and elections switched off.
                let transfer = self.clone();
                tokio::spawn(async move { transfer.lead_transfer(to).await })
                    .await
                    .unwrap_or_else(|e| Err(ForwardError::Unavailable(format!("the leader transfer task failed: {e}"))))
            }
            Some(leader) => self.admin(leader, AdminRequest::TransferLeadership { to }).await,
            None => Err(ForwardError::NotLeader { leader: None }),
        }
    }
}
