//! A leader whose clock is off from the cluster's hands leadership to a replica whose
//! clock is in step. Until it has, the other duties wait (see `run_duty`): each decides by
//! the time what is due — a CA to rotate, entries and tokens to prune — and a clock minutes
//! ahead would prune what has not expired.

use std::sync::Arc;
use std::time::Duration;

use raft_store::peer_clocks::PROBE_EVERY;

use super::{DutyError, LeaderDuty};
use crate::cluster::runtime::Member;

/// Hands leadership on while this replica's clock is off.
pub struct ClockCheck;

#[async_trait::async_trait]
impl LeaderDuty for ClockCheck {
    fn name(&self) -> &'static str {
        "clock_check"
    }

    fn runs_with_clock_off(&self) -> bool {
        true
    }

    async fn run(&self, member: &Arc<Member>) -> Result<Duration, DutyError> {
        let replica = &member.replica;
        let Err(skewed) = replica.clocks().check() else {
            return Ok(PROBE_EVERY);
        };
        let voters = replica.status().members.into_iter().filter(|m| m.voter && m.node_id != replica.id());
        let Some(to) = replica.clocks().in_step(voters.map(|m| m.node_id)).into_iter().next() else {
            return Err(DutyError(format!("{skewed}; no voter with a clock in step to hand leadership to")));
        };
        tracing::warn!(to, offset_ms = skewed.offset_ms(), "{skewed}; handing leadership on");
        metrics::counter!("testudo_clock_skew_handovers_total").increment(1);
        replica.transfer_leadership(to).await.map_err(|e| DutyError(e.to_string()))?;
        Ok(PROBE_EVERY)
    }
}
