//! Keeps federated bundles fresh: the leader fetches each partner's bundle when its
//! replicated schedule says it is due, and records the outcome (and the bundle, when it
//! changed) through Raft in one command that applies only once per due time. A failing
//! endpoint keeps the last good bundle and is retried with backoff. The relationships of
//! the config's `federates_with` blocks are written to the replicated state first, so
//! every relationship is refreshed the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use identity::bundle::Bundle;
use identity::TrustDomain;
use raft_store::command::{CreateFederationRelationship, RecordFederationRefresh, UpdateFederationRelationship};
use raft_store::model::{BundleEndpointProfile, FederationRefresh, FederationRelationship, StoredBundle};
use raft_store::{ApplyError, BundleScope};
use rustls::RootCertStore;

use super::{DutyError, LeaderDuty};
use crate::cluster::runtime::Member;
use crate::federation::fetch::{fetch, EndpointAuth};

/// Bounds on how often a partner's bundle is fetched, whatever its refresh hint says.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The interval when a partner gives no refresh hint (SPIRE's default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// The first retry after a failure; it doubles with each failure, up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Partners fetched at once: a dead endpoint holds one slot for up to the fetch timeout,
/// and the others go on.
const PARALLEL_FETCHES: usize = 8;
/// How often the leader looks at the schedule when nothing is due sooner (a RefreshBundle
/// call makes a partner due at once): two local reads.
const LOOK_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct FederationRefreshing {
    /// This cluster's trust domain (a partner's endpoint may present one of our SVIDs).
    pub trust_domain: TrustDomain,
    /// Relationships declared in the config (`server.federation.federates_with`).
    pub configured: Vec<FederationRelationship>,
    /// Roots for `https_web` endpoints.
    pub web_roots: Arc<RootCertStore>,
    /// How long one fetch may take.
    pub timeout: Duration,
}

fn read_error(e: impl std::fmt::Display) -> DutyError {
    DutyError(e.to_string())
}

impl FederationRefreshing {
    /// Writes the config's relationships where the replicated state lacks or differs.
    async fn apply_configured(&self, member: &Member) -> Result<(), DutyError> {
        let reader = member.replica.local_reader();
        for wanted in &self.configured {
            let stored = reader.relationship(wanted.trust_domain.name()).await.map_err(read_error)?;
            let written = match stored {
                Some(stored) if &stored == wanted => continue,
                Some(_) => member.replica.write(UpdateFederationRelationship(wanted.clone())).await,
                None => member.replica.write(CreateFederationRelationship(wanted.clone())).await,
            };
            match written.map_err(|e| DutyError(format!("relationship not written: {e}")))? {
                Ok(_) => tracing::info!(trust_domain = %wanted.trust_domain, "federation relationship from the config"),
                Err(e) => tracing::warn!(trust_domain = %wanted.trust_domain, error = %e, "configured relationship"),
            }
        }
        Ok(())
    }

    /// How the endpoint of `relationship` must authenticate.
    async fn auth(&self, member: &Member, relationship: &FederationRelationship) -> Result<EndpointAuth, String> {
        let id = match &relationship.profile {
            BundleEndpointProfile::HttpsWeb => return Ok(EndpointAuth::Web(self.web_roots.clone())),
            BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => endpoint_spiffe_id.clone(),
        };
        let domain = id.trust_domain().clone();
        let bundle = if domain == self.trust_domain {
            let signing = member.views.signing().ok_or("this cluster has no CA yet")?;
            signing.bundle().map_err(|e| e.to_string())?
        } else {
            let stored = member
                .replica
                .local_reader()
                .bundle(BundleScope::Federated, domain.name())
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "no bundle of {} to check the endpoint's SVID with: set one first (`bundle set`, or \
                         trust_domain_bundle when creating the relationship)",
                        domain.name()
                    )
                })?;
            stored.to_bundle().map_err(|e| e.to_string())?
        };
        Ok(EndpointAuth::Spiffe { id, bundle })
    }

    /// Fetches one partner's bundle and records the outcome; a refresh another leader
    /// recorded meanwhile is left as it is.
    async fn refresh(
        &self,
        member: &Member,
        relationship: &FederationRelationship,
        previous: FederationRefresh,
        now: i64,
    ) -> Result<(), DutyError> {
        let td = relationship.trust_domain.name().to_owned();
        let stored = member.replica.local_reader().bundle(BundleScope::Federated, &td).await.map_err(read_error)?;
        let fetched = match self.auth(member, relationship).await {
            Ok(auth) => fetch(&relationship.trust_domain, &relationship.bundle_endpoint_url, &auth, self.timeout)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let (refresh, bundle, result) = match fetched {
            Ok(bundle) => {
                let interval = interval_of(&bundle);
                let fresh = StoredBundle::from_bundle(&bundle);
                let changed = stored.as_ref().is_none_or(|s| !same_content(s, &fresh));
                let refresh = FederationRefresh {
                    last_attempt: now,
                    last_success: now,
                    next_due: now + secs(interval),
                    last_error: String::new(),
                    failures: 0,
                    last_sequence: bundle.sequence_number,
                };
                (refresh, changed.then_some(fresh), if changed { "changed" } else { "unchanged" })
            }
            Err(error) => {
                let failures = previous.failures.saturating_add(1);
                tracing::warn!(trust_domain = %td, failures, error = %error, "federated bundle not refreshed; keeping \
                    the last good one");
                let refresh = FederationRefresh {
                    last_attempt: now,
                    next_due: now + secs(backoff(failures)),
                    last_error: error,
                    failures,
                    ..previous.clone()
                };
                (refresh, None, "error")
            }
        };
        let record = RecordFederationRefresh {
            trust_domain: td.clone(),
            expected_next_due: previous.next_due,
            refresh: refresh.clone(),
            bundle,
        };
        match member.replica.write(record).await.map_err(|e| DutyError(format!("refresh not recorded: {e}")))? {
            Ok(_) => {
                metrics::counter!("testudo_federation_refresh_total", "trust_domain" => td.clone(), "result" => result)
                    .increment(1);
                if refresh.last_success > 0 {
                    metrics::gauge!("testudo_federation_last_success_seconds", "trust_domain" => td.clone())
                        .set(refresh.last_success as f64);
                    metrics::gauge!("testudo_federation_bundle_sequence", "trust_domain" => td.clone())
                        .set(refresh.last_sequence as f64);
                }
                if result == "changed" {
                    tracing::info!(trust_domain = %td, sequence = refresh.last_sequence, "federated bundle updated");
                }
            }
            // Recorded already (a leader before this one), or the relationship was deleted.
            Err(ApplyError::FailedPrecondition(_) | ApplyError::NotFound(_)) => {}
            Err(e) => return Err(DutyError(format!("refresh of {td} refused: {e}"))),
        }
        Ok(())
    }
}

/// The partner's refresh hint, within [`MIN_INTERVAL`, `MAX_INTERVAL`].
fn interval_of(bundle: &Bundle) -> Duration {
    bundle.refresh_hint.map_or(DEFAULT_INTERVAL, Duration::from_secs).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// 5 s after the first failure, doubling, up to the default interval.
fn backoff(failures: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(DEFAULT_INTERVAL)
}

/// How long from `now` until the second `due` starts (due times are whole seconds, so a
/// refresh starts on the second it is due rather than up to a look later); at least 100 ms,
/// so a schedule that stays due costs at most ten looks a second.
fn until(due: i64, now: time::OffsetDateTime) -> Duration {
    let Ok(due) = time::OffsetDateTime::from_unix_timestamp(due) else {
        return Duration::MAX;
    };
    let wait = Duration::try_from(due - now).unwrap_or(Duration::ZERO);
    wait.max(Duration::from_millis(100))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Whether two bundles hold the same authorities and hint (sequence numbers aside).
fn same_content(a: &StoredBundle, b: &StoredBundle) -> bool {
    a.x509_authorities == b.x509_authorities
        && a.jwt_authorities == b.jwt_authorities
        && a.refresh_hint == b.refresh_hint
}

#[async_trait::async_trait]
impl LeaderDuty for FederationRefreshing {
    fn name(&self) -> &'static str {
        "federation_refresh"
    }

    async fn run(&self, member: &Arc<Member>) -> Result<Duration, DutyError> {
        self.apply_configured(member).await?;
        let reader = member.replica.local_reader();
        let relationships = reader.list_relationships().await.map_err(read_error)?;
        let schedule: BTreeMap<String, FederationRefresh> = reader.federation_refreshes().await.map_err(read_error)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut refreshing = tokio::task::JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL_FETCHES));
        for relationship in relationships {
            let previous = schedule.get(relationship.trust_domain.name()).cloned().unwrap_or_default();
            if previous.next_due <= now {
                let (this, member, slots) = (self.clone(), member.clone(), slots.clone());
                refreshing.spawn(async move {
                    let _slot = slots.acquire().await.map_err(|e| DutyError(e.to_string()))?;
                    this.refresh(&member, &relationship, previous, now).await
                });
            }
        }
        let mut failed = None;
        while let Some(done) = refreshing.join_next().await {
            if let Ok(Err(e)) = done {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let schedule = member.replica.local_reader().federation_refreshes().await.map_err(read_error)?;
        let soonest = schedule.values().map(|r| r.next_due).min();
        Ok(soonest.map_or(LOOK_EVERY, |due| until(due, time::OffsetDateTime::now_utc()).min(LOOK_EVERY)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_the_default_interval_and_hints_are_bounded() {
        let waits: Vec<u64> = (1..=8).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX), DEFAULT_INTERVAL);
        let mut bundle = Bundle::new(TrustDomain::parse("b.test").unwrap());
        assert_eq!(interval_of(&bundle), DEFAULT_INTERVAL);
        bundle.refresh_hint = Some(1);
        assert_eq!(interval_of(&bundle), MIN_INTERVAL);
        bundle.refresh_hint = Some(10 * 24 * 3600);
        assert_eq!(interval_of(&bundle), MAX_INTERVAL);
    }

    #[test]
    fn the_next_look_is_when_the_due_second_starts() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_000).unwrap() + Duration::from_millis(300);
        assert_eq!(until(1_001, now), Duration::from_millis(700));
        assert_eq!(until(1_000, now), Duration::from_millis(100), "already due: soon, not in a busy loop");
        assert_eq!(until(i64::MAX, now), Duration::MAX, "never");
    }
}
