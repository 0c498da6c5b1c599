//! For a nested (downstream) cluster: publishes this cluster's JWT keys in the upstream
//! cluster's bundle, and makes the local bundle a mirror of the upstream's (its roots and
//! every JWT key published there), so workloads anywhere in the tree validate each other's
//! JWT-SVIDs and a root the upstream taints or revokes is tainted or gone here too. The
//! leader alone calls the upstream, and writes through Raft only when the bundle changed.

use std::sync::Arc;
use std::time::Duration;

use identity::TrustDomain;
use raft_store::command::{MirrorUpstreamBundle, RecordUpstreamStatus};
use raft_store::model::{StoredJwtKey, UpstreamStatus};
use raft_store::BundleScope;

use super::{DutyError, LeaderDuty};
use crate::cluster::runtime::Member;
use crate::upstream::UpstreamAuthority;

/// How often the upstream bundle is read (SPIRE's upstream authority polls every 5 s).
pub const EVERY: Duration = Duration::from_secs(5);

/// A failure that goes on is recorded again at most this often (seconds), and a success
/// once calls work again, then at most hourly: a status write costs a Raft round.
const RECORD_ERROR_EVERY: i64 = 60;
const RECORD_SUCCESS_EVERY: i64 = 3600;

/// Records how a call to the upstream went in the replicated status (`localauthority x509
/// show` on any replica prints it), when that changes what it says.
pub async fn record(member: &Member, outcome: Result<(), String>) {
    let Ok(stored) = member.replica.local_reader().upstream_status().await else { return };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let next = match outcome {
        Ok(()) if stored.failing() || now - stored.last_success >= RECORD_SUCCESS_EVERY => {
            UpstreamStatus { last_success: now, ..stored }
        }
        Err(error) if !stored.failing() || now - stored.last_error_at >= RECORD_ERROR_EVERY => {
            UpstreamStatus { last_error_at: now, last_error: error, ..stored }
        }
        _ => return,
    };
    if let Err(e) = member.replica.write(RecordUpstreamStatus(next)).await {
        tracing::debug!(error = %e, "upstream status not recorded");
    }
}

pub struct UpstreamBundleFollowing {
    pub upstream: Arc<dyn UpstreamAuthority>,
    pub trust_domain: TrustDomain,
}

fn failed(what: &str, e: impl std::fmt::Display) -> DutyError {
    metrics::counter!("testudo_upstream_bundle_sync_total", "result" => "error").increment(1);
    DutyError(format!("{what}: {e}"))
}

#[async_trait::async_trait]
impl LeaderDuty for UpstreamBundleFollowing {
    fn name(&self) -> &'static str {
        "upstream_bundle"
    }

    async fn run(&self, member: &Arc<Member>) -> Result<Duration, DutyError> {
        let outcome = self.follow(member).await;
        record(member, outcome.as_ref().map(|_| ()).map_err(|e| e.0.clone())).await;
        outcome
    }
}

impl UpstreamBundleFollowing {
    async fn follow(&self, member: &Member) -> Result<Duration, DutyError> {
        let reader = member.replica.local_reader();
        let journal = reader.ca_journal().await.map_err(|e| failed("CA journal", e))?;
        let mut upstream = self.upstream.fetch_bundle().await.map_err(|e| failed("upstream bundle", e))?;
        // Our JWT keys the upstream does not list yet: published before they sign.
        for slot in journal.jwt.iter() {
            let authority = &slot.authority;
            if upstream.jwt.iter().any(|k| k.key_id == authority.kid) {
                continue;
            }
            let key = StoredJwtKey {
                key_id: authority.kid.clone(),
                public_key: authority.public_key.clone(),
                expires_at: authority.not_after.unix_timestamp(),
                tainted: false,
            };
            upstream.jwt = self.upstream.publish_jwt_key(&key).await.map_err(|e| failed("publishing a JWT key", e))?;
            tracing::info!(kid = %authority.kid, "published a JWT key in the upstream bundle");
        }
        let local = reader
            .bundle(BundleScope::Local, self.trust_domain.name())
            .await
            .map_err(|e| failed("local bundle", e))?
            .unwrap_or_else(|| raft_store::model::StoredBundle::new(self.trust_domain.clone()));
        let own: Vec<&str> = journal.jwt.iter().map(|s| s.authority.kid.as_str()).collect();
        if local.mirrored(&upstream.x509, &upstream.jwt, &own).is_none() {
            metrics::counter!("testudo_upstream_bundle_sync_total", "result" => "unchanged").increment(1);
            return Ok(EVERY);
        }
        let command = MirrorUpstreamBundle {
            trust_domain: self.trust_domain.name().to_owned(),
            x509: upstream.x509,
            jwt: upstream.jwt,
        };
        let written = member.replica.write(command).await.map_err(|e| failed("mirror not written", e))?;
        let bundle = written.map_err(|e| failed("mirror refused", e))?;
        metrics::counter!("testudo_upstream_bundle_sync_total", "result" => "changed").increment(1);
        tracing::info!(sequence = bundle.sequence_number, "the local bundle follows the upstream's");
        Ok(EVERY)
    }
}
