//! CA rotation: prepare the next authorities before the active ones reach their
//! preparation threshold, activate them at their activation threshold, and prune expired
//! authorities from the bundle. Whether a step is due is read from this replica's views
//! (no storage read, no Raft round); the step itself reads the journal linearizably and
//! commits each event through Raft, whose apply refuses an event the journal forbids.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_store::model::JournalEvent;

use super::{DutyError, LeaderDuty};
use crate::ca::replicated::ClusterCa;
use crate::ca::{activation_threshold, next_step, prune_expired, tainted_upstream_step, CaError};
use crate::cluster::runtime::Member;

/// How often the leader looks whether a step is due: short, so a new cluster has a CA
/// within a second of electing a leader. Each look reads memory only.
const EVERY: Duration = Duration::from_secs(1);

/// After a failed step (an upstream or key manager away), the first retry; it doubles with
/// each failure up to [`MAX_RETRY`], so a long upstream outage costs one call a minute.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The longest wait between key sweeps; shorter when the sweep's grace is.
const MAX_SWEEP_EVERY: Duration = Duration::from_secs(300);

pub struct CaRotation {
    ca: ClusterCa,
    /// Failed steps in a row (this leader's; a new leader starts at once).
    failures: AtomicU32,
    /// When this replica last swept the key manager for abandoned keys.
    last_sweep: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long to wait after `failures` failed steps in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_RETRY)
}

impl CaRotation {
    pub fn new(ca: ClusterCa) -> Self {
        Self { ca, failures: AtomicU32::new(0), last_sweep: std::sync::Mutex::new(None) }
    }

    /// Sweeps the key manager for keys nothing records, every half grace period at most.
    /// Run between rotation steps, so this leader's own key creation is never under way.
    async fn sweep_if_due(&self, member: &Member) {
        let every = (self.ca.config.key_sweep_grace / 2).clamp(Duration::from_secs(1), MAX_SWEEP_EVERY);
        {
            let Ok(mut last) = self.last_sweep.lock() else { return };
            if last.is_some_and(|at| at.elapsed() < every) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        match self.ca.sweep_keys(&member.replica).await {
            Ok(sweep) => {
                metrics::counter!("testudo_ca_key_ids_released_total").increment(sweep.released);
                metrics::counter!("testudo_ca_keys_swept_total").increment(sweep.deleted);
            }
            Err(e) => {
                metrics::counter!("testudo_leader_duty_errors_total", "duty" => "ca_key_sweep").increment(1);
                tracing::warn!(error = %e, "the CA key sweep failed; trying again later");
            }
        }
    }

    /// Logs a failed step: an error once the active X.509 CA has entered the last sixth of
    /// its life (the prepared CA should be active by then), a warning before.
    fn report(&self, member: &Member, e: &CaError, failures: u32, retry: Duration) {
        metrics::counter!("testudo_ca_rotation_errors_total").increment(1);
        metrics::counter!("testudo_leader_duty_errors_total", "duty" => "ca_rotation").increment(1);
        if matches!(e, CaError::Upstream(_)) {
            metrics::counter!("testudo_upstream_errors_total").increment(1);
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            metrics::gauge!("testudo_upstream_last_error_seconds").set(now as f64);
        }
        let expiry = member.views.signing().and_then(|s| s.journal().x509.active().map(|a| a.authority.clone()));
        let urgent = expiry.as_ref().is_some_and(|a| self.ca.clock.now() >= activation_threshold(a));
        let expires = expiry.map(|a| a.not_after.to_string()).unwrap_or_else(|| "-".into());
        if urgent {
            tracing::error!(error = %e, failures, active_ca_expires = %expires, retry_in = ?retry,
                "CA rotation failed and the active CA nears its expiry: workloads lose their identities when it expires");
        } else {
            tracing::warn!(error = %e, failures, active_ca_expires = %expires, retry_in = ?retry,
                "CA rotation failed; signing with the active CA and trying again");
        }
    }

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
        let next = if self.due(member) { self.rotate(member).await } else { EVERY };
        self.sweep_if_due(member).await;
        Ok(next)
    }
}

impl CaRotation {
    /// Carries out the steps due; answers when to look again.
    async fn rotate(&self, member: &Member) -> Duration {
        match self.ca.rotate(&member.replica).await {
            Ok(events) => {
                self.failures.store(0, Ordering::Relaxed);
                for event in &events {
                    metrics::counter!("testudo_ca_rotation_events_total", "event" => event_name(event)).increment(1);
                }
                EVERY
            }
            Err(e) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                let retry = backoff(failures);
                self.report(member, &e, failures, retry);
                if matches!(e, CaError::Upstream(_)) {
                    super::upstream_bundle::record(member, Err(e.to_string())).await;
                }
                retry
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_steps_back_off_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }
}
