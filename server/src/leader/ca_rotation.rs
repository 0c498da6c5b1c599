//! CA rotation: prepare the next authorities before the active ones reach their
//! preparation threshold, activate them at their activation threshold, and prune expired
//! authorities from the bundle. Whether a step is due is read from this replica's views
//! (no storage read, no Raft round); the step itself reads the journal linearizably and
//! commits each event through Raft, whose apply refuses an event the journal forbids.

use std::sync::Arc;
use std::time::Duration;

use raft_store::model::JournalEvent;

use super::{DutyError, LeaderDuty};
use crate::ca::replicated::ClusterCa;
use crate::ca::{next_step, prune_expired, tainted_upstream_step};
use crate::cluster::runtime::Member;

/// How often the leader looks whether a step is due: short, so a new cluster has a CA
/// within a second of electing a leader. Each look reads memory only.
const EVERY: Duration = Duration::from_secs(1);

pub struct CaRotation {
    pub ca: ClusterCa,
}

impl CaRotation {
    /// Whether the views say a rotation step or a prune is due now.
    fn due(&self, member: &Member) -> bool {
        let Some(signing) = member.views.signing() else { return true };
        let now = self.ca.clock.now();
        let journal = signing.journal();
        let mut bundle = signing.stored_bundle().clone();
        next_step(&journal.x509, now).is_some()
            || next_step(&journal.jwt, now).is_some()
            || tainted_upstream_step(&journal.x509, &bundle, &self.ca.config.trust_domain, now).is_some()
            || prune_expired(&mut bundle, now)
    }
}

#[async_trait::async_trait]
impl LeaderDuty for CaRotation {
    fn name(&self) -> &'static str {
        "ca_rotation"
    }

    async fn run(&self, member: &Arc<Member>) -> Result<Duration, DutyError> {
        if !self.due(member) {
            return Ok(EVERY);
        }
        match self.ca.rotate(&member.replica).await {
            Ok(events) => {
                for event in &events {
                    metrics::counter!("testudo_ca_rotation_events_total", "event" => event_name(event)).increment(1);
                }
                Ok(EVERY)
            }
            Err(e) => {
                metrics::counter!("testudo_ca_rotation_errors_total").increment(1);
                Err(DutyError(format!("CA rotation: {e}")))
            }
        }
    }
}

fn event_name(event: &JournalEvent) -> &'static str {
    use raft_store::model::SlotEvent;
    match event {
        JournalEvent::X509(SlotEvent::Prepared { .. }) => "x509_prepared",
        JournalEvent::X509(SlotEvent::Activated { .. }) => "x509_activated",
        JournalEvent::Jwt(SlotEvent::Prepared { .. }) => "jwt_prepared",
        JournalEvent::Jwt(SlotEvent::Activated { .. }) => "jwt_activated",
        JournalEvent::X509(_) => "x509_other",
        JournalEvent::Jwt(_) => "jwt_other",
    }
}
