//! Rotation of the cluster CA (`cluster rotate-ca`): a new CA replaces the one whose key
//! every replica's data dir holds, so a stolen data dir or a departed replica's copy of the
//! old key stops minting certificates the cluster accepts.
//!
//! The rotation is replicated state (`raft_store::model::ClusterCaRotation`) that moves
//! through three phases; every replica follows it ([`CaFollower`]) and reports reaching each
//! phase through Raft, and the next phase is applied only once every member has:
//!
//! 1. `Prepared`: every replica trusts the new CA as well as the old one;
//! 2. `Active`: every replica presents (and issues) certificates from the new CA;
//! 3. `Retired`: every replica trusts the new CA only and deletes the old one's files, and
//!    the new key leaves the replicated state.
//!
//! So at no point does a replica present a certificate a peer does not trust. A member that
//! is down holds the rotation at its phase until it returns or is removed.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use identity::TrustDomain;
use raft_store::command::{AdvanceClusterCa, PrepareClusterCa, ReachClusterCaPhase};
use raft_store::model::{ClusterCaPhase, ClusterCaRotation, KeyMaterial};
use raft_store::node::Replica;
use raft_store::ApplyError;
use tokio::time::Instant;

use super::authority::ClusterAuthority;
use super::files;
use super::invite::sha256;
use super::renewal::Renewal;
use super::trust::{CaSet, ClusterTrust};
use super::ClusterSetupError;

/// How often a replica looks at the rotation when nothing was applied (to retry a report
/// that found no leader).
const RECHECK: Duration = Duration::from_secs(5);
/// The least time between two looks: under write load every apply changes the revision, and
/// a look is a read of the store; a rotation step waits this long at most.
const MIN_LOOK_GAP: Duration = Duration::from_millis(250);
/// How often `rotate` looks at the members' reports.
const POLL: Duration = Duration::from_millis(100);

fn replica_error(e: impl std::fmt::Display) -> ClusterSetupError {
    ClusterSetupError::Replica(e.to_string())
}

/// Where a rotation ended.
#[derive(Clone, Debug)]
pub struct Rotated {
    pub generation: u64,
    /// SHA-256 of the new CA certificate, hex.
    pub ca_sha256: String,
}

/// Rotates the cluster CA through `replica` (any member): starts a new rotation, or goes on
/// with the one under way, and returns once every member has retired the old CA. Fails, leaving the
/// rotation where it stands, when a member has not reached a phase within `within`; a later
/// call goes on from there.
pub async fn rotate(
    replica: &Replica,
    trust: &ClusterTrust,
    trust_domain: &TrustDomain,
    within: Duration,
) -> Result<Rotated, ClusterSetupError> {
    let deadline = Instant::now() + within;
    let mut started = false;
    loop {
        let reader = replica.linearizable_reader().await.map_err(replica_error)?;
        let rotation = reader.cluster_ca_rotation().await.map_err(replica_error)?;
        match rotation {
            Some(r) if r.phase == ClusterCaPhase::Retired && started => {
                // Every member has dropped the old CA when this returns.
                wait_for_members(replica, &r, deadline).await?;
                tracing::info!(generation = r.generation, "cluster CA rotated; the old CA is retired");
                return Ok(Rotated { generation: r.generation, ca_sha256: hex::encode(sha256(&r.cert_der)) });
            }
            Some(r) if r.phase != ClusterCaPhase::Retired => {
                started = true;
                wait_for_members(replica, &r, deadline).await?;
                let advance = AdvanceClusterCa { generation: r.generation, from: r.phase };
                match replica.write(advance).await.map_err(replica_error)? {
                    Ok(now) => tracing::info!(
                        generation = now.generation,
                        phase = now.phase.as_str(),
                        "cluster CA rotation advanced"
                    ),
                    // Another caller advanced it, or a member joined meanwhile: look again.
                    Err(ApplyError::FailedPrecondition(_)) => tokio::time::sleep(POLL).await,
                    Err(e) => return Err(replica_error(e)),
                }
            }
            last => {
                started = true;
                let (generation, previous_cert_der) = match &last {
                    Some(r) => (r.generation + 1, r.cert_der.clone()),
                    None => (1, trust.cas().issuing.cert_der.clone()),
                };
                let td = trust_domain.clone();
                let new = tokio::task::spawn_blocking(move || ClusterAuthority::create(&td))
                    .await
                    .map_err(replica_error)??;
                let prepare = PrepareClusterCa {
                    generation,
                    cert_der: new.cert_der.clone(),
                    key: KeyMaterial::new(new.key_pkcs8()?),
                    previous_cert_der,
                };
                match replica.write(prepare).await.map_err(replica_error)? {
                    Ok(_) => tracing::info!(generation, "cluster CA rotation prepared: a new cluster CA"),
                    // Someone else started one: go on with theirs.
                    Err(ApplyError::FailedPrecondition(_)) => {}
                    Err(e) => return Err(replica_error(e)),
                }
            }
        }
    }
}

/// Waits until every member has reached the phase `rotation` is in (or the rotation has
/// moved on).
async fn wait_for_members(
    replica: &Replica,
    rotation: &ClusterCaRotation,
    deadline: Instant,
) -> Result<(), ClusterSetupError> {
    loop {
        let now = replica.local_reader().cluster_ca_rotation().await.map_err(replica_error)?;
        let Some(now) = now.filter(|r| r.generation == rotation.generation && r.phase == rotation.phase) else {
            return Ok(());
        };
        let behind: Vec<u64> =
            replica.status().members.iter().map(|m| m.node_id).filter(|id| !now.reached.contains(id)).collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ClusterSetupError::Rotation(format!(
                "rotation {} of the cluster CA is {}, and members {behind:?} have not reached it yet. A member \
                 that is down holds the rotation: start it again, or remove it (`cluster remove`); then run \
                 `cluster rotate-ca` again to go on",
                rotation.generation,
                rotation.phase.as_str()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Keeps this replica's cluster CAs where the replicated rotation says, and reports each
/// phase it reaches.
pub struct CaFollower {
    pub trust: Arc<ClusterTrust>,
    pub renewal: Arc<Renewal>,
    pub trust_domain: TrustDomain,
    pub node_id: u64,
    pub data_dir: PathBuf,
}

/// What this replica is to trust and issue from in `rotation`: (issuing generation, the
/// other generation trusted).
fn wanted(rotation: &ClusterCaRotation) -> (u64, Option<u64>) {
    let g = rotation.generation;
    let previous = g.saturating_sub(1);
    match rotation.phase {
        ClusterCaPhase::Prepared => (previous, Some(g)),
        ClusterCaPhase::Active => (g, Some(previous)),
        ClusterCaPhase::Retired => (g, None),
    }
}

impl CaFollower {
    /// Brings this replica to the rotation's phase (files, trusted CAs, presented
    /// certificate, in that order) and reports it.
    pub async fn follow_once(&self, replica: &Replica) -> Result<(), ClusterSetupError> {
        metrics::gauge!("testudo_cluster_ca_generation").set(self.trust.cas().generation as f64);
        let Some(rotation) = replica.local_reader().cluster_ca_rotation().await.map_err(replica_error)? else {
            return Ok(());
        };
        let current = self.trust.cas();
        let (issuing_generation, also_generation) = wanted(&rotation);
        if current.generation > issuing_generation {
            return Ok(());
        }
        let also_trusted = also_generation.map(|g| {
            let der = if g == rotation.generation { &rotation.cert_der } else { &rotation.previous_cert_der };
            (g, der.clone())
        });
        let changed = current.generation != issuing_generation
            || current.also_trusted.as_ref().map(|(g, _)| *g) != also_generation;
        if changed {
            let issuing = if current.generation == issuing_generation {
                current.issuing.clone()
            } else {
                let key =
                    rotation.key.as_ref().filter(|_| issuing_generation == rotation.generation).ok_or_else(|| {
                        ClusterSetupError::Rotation(format!(
                            "this replica issues from cluster CA generation {} and missed rotation {}; remove it from \
                         the cluster and join it again with an empty data dir",
                            current.generation, rotation.generation
                        ))
                    })?;
                Arc::new(ClusterAuthority::from_parts(rotation.cert_der.clone(), key.pkcs8_der())?)
            };
            let (data_dir, authority, also) = (self.data_dir.clone(), issuing.clone(), also_trusted.clone());
            tokio::task::spawn_blocking(move || {
                let key = authority.key_pkcs8()?;
                files::set_cluster_cas(
                    &data_dir,
                    issuing_generation,
                    &authority.cert_der,
                    &key,
                    also.as_ref().map(|(g, der)| (*g, der.as_slice())),
                )
            })
            .await
            .map_err(replica_error)??;
            self.trust.set(CaSet { generation: issuing_generation, issuing, also_trusted })?;
            // A certificate from the CA now issuing, presented from the next handshake on.
            self.renewal.renew_running(replica, time::OffsetDateTime::now_utc()).await?;
            tracing::info!(
                generation = rotation.generation,
                phase = rotation.phase.as_str(),
                issuing = issuing_generation,
                also_trusted = ?also_generation,
                "cluster CA rotation: this replica moved to the phase"
            );
        }
        if !rotation.reached.contains(&self.node_id) {
            let report =
                ReachClusterCaPhase { generation: rotation.generation, phase: rotation.phase, node_id: self.node_id };
            match replica.write(report).await.map_err(replica_error)? {
                // A late report of a phase the rotation has left: nothing to do.
                Ok(_) | Err(ApplyError::FailedPrecondition(_)) => {}
                Err(e) => return Err(replica_error(e)),
            }
        }
        Ok(())
    }

    /// Follows the rotation while the replica runs: after applied changes (at most every
    /// [`MIN_LOOK_GAP`]), and every few seconds to retry a report that found no leader.
    pub fn spawn(self: Arc<Self>, replica: Weak<Replica>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut last_error = String::new();
            loop {
                let Some(running) = replica.upgrade() else { return };
                let mut revisions = running.applied().revision();
                match self.follow_once(&running).await {
                    Ok(()) => last_error.clear(),
                    Err(e) => {
                        let message = e.to_string();
                        if message != last_error {
                            tracing::warn!(error = %message, "cannot follow the cluster CA rotation yet; retrying");
                            last_error = message;
                        }
                    }
                }
                drop(running);
                tokio::time::sleep(MIN_LOOK_GAP).await;
                if tokio::time::timeout(RECHECK, revisions.changed()).await.is_ok_and(|r| r.is_err()) {
                    tokio::time::sleep(RECHECK).await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn each_phase_trusts_both_cas_until_retired_and_issues_from_the_new_one_once_active() {
        let rotation = |phase| ClusterCaRotation {
            generation: 3,
            cert_der: vec![],
            key: None,
            previous_cert_der: vec![],
            phase,
            reached: BTreeSet::new(),
        };
        assert_eq!(wanted(&rotation(ClusterCaPhase::Prepared)), (2, Some(3)));
        assert_eq!(wanted(&rotation(ClusterCaPhase::Active)), (3, Some(2)));
        assert_eq!(wanted(&rotation(ClusterCaPhase::Retired)), (3, None));
    }
}
