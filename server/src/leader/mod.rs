//! What only the leader does, in one place: CA rotation steps ([`ca_rotation`]), pruning of
//! the change log ([`change_log`]), of expired join tokens and replica invites
//! ([`expiry`]), refreshing federated bundles ([`federation_refresh`]) and, in a nested
//! cluster, following the upstream cluster's bundle ([`upstream_bundle`]); in a declared
//! cluster that asks for it, removing members unreachable for long ([`unreachable`]); and, if this
//! replica's clock is off from the cluster's, handing leadership on ([`clock_check`]) while
//! every other duty waits, since each decides by the clock what is due. Each duty is
//! "when the replicated state says it is due, do it and record the outcome through Raft":
//! the runner starts every duty when this replica is elected
//! (after a read barrier, so its state holds everything committed before its term) and
//! stops them all when it loses leadership or stops. A duty keeps no state of its own
//! between runs, so a new leader resumes it where the old one stopped, neither skipping
//! nor doubling it.

pub mod ca_rotation;
pub mod change_log;
pub mod clock_check;
pub mod expiry;
pub mod federation_refresh;
pub mod unreachable;
pub mod upstream_bundle;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::cluster::runtime::{ClusterRuntime, Member};

/// One duty of the leader.
#[async_trait::async_trait]
pub trait LeaderDuty: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Carries out the duty if it is due now; answers how long until it should look again.
    async fn run(&self, member: &Arc<Member>) -> Result<Duration, DutyError>;

    /// Whether it runs while this replica's clock is off from the cluster's. Most duties
    /// decide by the clock what is due, and wait.
    fn runs_with_clock_off(&self) -> bool {
        false
    }
}

/// A duty that failed this time; it is tried again after a pause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DutyError(pub String);

/// How long a failed duty waits before it tries again.
const RETRY: Duration = Duration::from_secs(1);

/// The duties a server replica carries out while it leads.
pub fn server_duties(
    ca: crate::ca::replicated::ClusterCa,
    federation: federation_refresh::FederationRefreshing,
    unreachable: Option<unreachable::UnreachableRemoval>,
) -> Vec<Arc<dyn LeaderDuty>> {
    let upstream = ca.upstream.clone().filter(|u| u.is_upstream_cluster());
    let trust_domain = ca.config.trust_domain.clone();
    let mut duties: Vec<Arc<dyn LeaderDuty>> = vec![
        Arc::new(clock_check::ClockCheck),
        Arc::new(ca_rotation::CaRotation::new(ca)),
        Arc::new(change_log::ChangeLogPruning { keep: change_log::KEEP, every: change_log::EVERY }),
        Arc::new(expiry::ExpiredPruning { every: expiry::EVERY }),
        Arc::new(federation),
    ];
    if let Some(upstream) = upstream {
        duties.push(Arc::new(upstream_bundle::UpstreamBundleFollowing { upstream, trust_domain }));
    }
    if let Some(removal) = unreachable {
        duties.push(Arc::new(removal));
    }
    duties
}

/// Runs `duties` whenever this replica leads, for as long as the runtime lives.
pub async fn run(runtime: Arc<ClusterRuntime>, duties: Vec<Arc<dyn LeaderDuty>>) {
    runtime
        .for_each_member(|member| {
            let duties = duties.clone();
            async move { lead_while_elected(&member, &duties).await }
        })
        .await;
}

/// Waits for this replica to lead, runs the duties until it no longer does, and again.
async fn lead_while_elected(member: &Arc<Member>, duties: &[Arc<dyn LeaderDuty>]) {
    loop {
        member.replica.wait_until_leading(true).await;
        // Everything committed before this term is applied here once the barrier passes;
        // a leader that cannot confirm its lead does no duty.
        if let Err(e) = member.replica.linearizable_reader().await {
            tracing::debug!(error = %e, "elected, but the read barrier failed; trying again");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        tracing::info!(duties = duties.len(), "leading: starting the leader's duties");
        metrics::gauge!("testudo_leader_duties_running").set(duties.len() as f64);
        let mut running = JoinSet::new();
        for duty in duties {
            running.spawn(run_duty(duty.clone(), member.clone()));
        }
        member.replica.wait_until_leading(false).await;
        running.abort_all();
        metrics::gauge!("testudo_leader_duties_running").set(0.0);
        tracing::info!("no longer leading: the leader's duties stopped");
    }
}

async fn run_duty(duty: Arc<dyn LeaderDuty>, member: Arc<Member>) {
    loop {
        if !duty.runs_with_clock_off() && member.replica.clocks().check().is_err() {
            // `clock_check` says why, once per probe.
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let next = match duty.run(&member).await {
            Ok(next) => next,
            Err(e) => {
                metrics::counter!("testudo_leader_duty_errors_total", "duty" => duty.name()).increment(1);
                tracing::warn!(duty = duty.name(), error = %e, "leader duty failed; trying again");
                RETRY
            }
        };
        tokio::time::sleep(next).await;
    }
}
