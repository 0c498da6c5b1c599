//! The CA of a cluster: the leader drives rotation, each step a Raft command (so a leader
//! change mid-rotation resumes from the replicated journal), and every replica signs with
//! the active slot of the journal it has applied.

use std::sync::Arc;

use identity::TrustDomain;
use raft_store::command::{PruneBundle, RecordCaEvent};
use raft_store::model::{JournalEvent, StoredBundle};
use raft_store::node::Replica;
use raft_store::BundleScope;
use time::OffsetDateTime;

use super::config::CaConfig;
use super::keys::CaKeys;
use super::manager::{CaError, CaManager, JournalSink};
use super::signing::Signing;
use crate::clock::Clock;
use crate::upstream::UpstreamAuthority;

/// Makes CA changes durable by committing them through Raft.
struct RaftJournal<'a> {
    replica: &'a Replica,
}

fn replication(e: impl std::fmt::Display) -> CaError {
    CaError::Replication(e.to_string())
}

#[async_trait::async_trait]
impl JournalSink for RaftJournal<'_> {
    async fn commit(&self, trust_domain: &TrustDomain, event: &JournalEvent) -> Result<(), CaError> {
        let command = RecordCaEvent { trust_domain: trust_domain.name().to_owned(), event: event.clone() };
        let recorded = self.replica.write(command).await.map_err(replication)?;
        recorded.map(|_| ()).map_err(|refused| replication(format!("journal refused the change: {refused}")))
    }

    async fn prune(
        &self,
        trust_domain: &TrustDomain,
        now: OffsetDateTime,
        expired_x509: Vec<Vec<u8>>,
    ) -> Result<(), CaError> {
        let command = PruneBundle {
            scope: BundleScope::Local,
            trust_domain: trust_domain.name().to_owned(),
            expired_before: now.unix_timestamp(),
            expired_x509,
        };
        let pruned = self.replica.write(command).await.map_err(replication)?;
        pruned.map(|_| ()).map_err(|refused| replication(format!("bundle prune refused: {refused}")))
    }
}

/// What every replica needs to rotate (when it leads) and to sign.
#[derive(Clone)]
pub struct ClusterCa {
    pub config: CaConfig,
    pub keys: CaKeys,
    pub upstream: Option<Arc<dyn UpstreamAuthority>>,
    pub clock: Arc<dyn Clock>,
}

impl ClusterCa {
    /// One rotation pass. Only the leader rotates; elsewhere this does nothing. Reads the
    /// journal linearizably, so a new leader carries on exactly where the last one stopped.
    pub async fn rotate(&self, replica: &Replica) -> Result<Vec<JournalEvent>, CaError> {
        if !replica.is_leader() {
            return Ok(Vec::new());
        }
        let reader = replica.linearizable_reader().await.map_err(replication)?;
        let (journal, bundle) = self.read(reader).await?;
        let mut manager = CaManager::resume(
            self.config.clone(),
            self.keys.clone(),
            self.upstream.clone(),
            self.clock.clone(),
            journal,
            bundle,
        )?;
        manager.rotate_with(&RaftJournal { replica }).await
    }

    /// An admin's LocalAuthority change, from any replica: the journal is read linearizably
    /// and the change committed through Raft (the journal's rules refuse a conflicting one).
    pub async fn prepare_now(
        &self,
        replica: &Replica,
        kind: super::local_authority::AuthorityKind,
    ) -> Result<super::local_authority::AuthorityState, CaError> {
        let mut manager = self.linearizable(replica).await?;
        manager.prepare_now(kind, &RaftJournal { replica }).await
    }

    pub async fn transition(
        &self,
        replica: &Replica,
        kind: super::local_authority::AuthorityKind,
        authority_id: &str,
        transition: super::local_authority::Transition,
    ) -> Result<super::local_authority::AuthorityState, CaError> {
        let mut manager = self.linearizable(replica).await?;
        manager.transition(kind, authority_id, transition, &RaftJournal { replica }).await
    }

    /// The CA as the cluster has committed it.
    pub async fn linearizable(&self, replica: &Replica) -> Result<CaManager, CaError> {
        let reader = replica.linearizable_reader().await.map_err(replication)?;
        let (journal, bundle) = self.read(reader).await?;
        CaManager::resume(
            self.config.clone(),
            self.keys.clone(),
            self.upstream.clone(),
            self.clock.clone(),
            journal,
            bundle,
        )
    }

    /// The active authorities as this replica has applied them, ready to sign.
    pub async fn signing(&self, replica: &Replica) -> Result<Signing, CaError> {
        let (journal, bundle) = self.read(replica.local_reader()).await?;
        Signing::build(self.config.clone(), &self.keys, self.clock.clone(), journal, bundle, None)
    }

    async fn read(
        &self,
        reader: &raft_store::StoreReader,
    ) -> Result<(raft_store::model::CaJournal, StoredBundle), CaError> {
        let journal = reader.ca_journal().await.map_err(replication)?;
        let bundle = reader
            .bundle(BundleScope::Local, self.config.trust_domain.name())
            .await
            .map_err(replication)?
            .unwrap_or_else(|| StoredBundle::new(self.config.trust_domain.clone()));
        Ok((journal, bundle))
    }
}
