//! The CA of a cluster: the leader drives rotation, each step a Raft command (so a leader
//! change mid-rotation resumes from the replicated journal), and every replica signs with
//! the active slot of the journal it has applied.

use std::collections::BTreeSet;
use std::sync::Arc;

use identity::TrustDomain;
use kms::{KeyOwner, OwnedKey};
use raft_store::command::{PruneBundle, RecordCaEvent, ReleaseCaKeys, ReserveCaKey};
use raft_store::model::{CaKeyKind, JournalEvent, SlotId, StoredBundle};
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

    async fn reserve_key(
        &self,
        kind: CaKeyKind,
        slot: SlotId,
        _unreserved: String,
        now: OffsetDateTime,
    ) -> Result<(String, Option<KeyOwner>), CaError> {
        let command = ReserveCaKey { kind, slot, now: now.unix_timestamp() };
        let reserved = self.replica.write(command).await.map_err(replication)?;
        let key_id = reserved.map_err(|refused| replication(format!("no key id reserved: {refused}")))?;
        let owner = KeyOwner { cluster: self.replica.cluster_id(), slot: format!("{}/{slot}", kind.name()) };
        Ok((key_id, Some(owner)))
    }

    async fn release_key(&self, key_id: &str) -> Result<bool, CaError> {
        let released = self.replica.write(ReleaseCaKeys { key_ids: vec![key_id.to_owned()] }).await;
        Ok(released.map_err(replication)? > 0)
    }
}

/// What one key sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySweep {
    /// Reserved ids given up as abandoned.
    pub released: u64,
    /// Keys deleted (scheduled for deletion on KMS).
    pub deleted: u64,
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

    /// Deletes the keys this cluster made in its key manager that no journal slot names,
    /// unless their id was reserved less than `key_sweep_grace` ago (the creation may still
    /// be under way); reserved ids older than that are released first, so nothing can
    /// record them while their keys go. Run by the leader, between rotation steps.
    pub async fn sweep_keys(&self, replica: &Replica) -> Result<KeySweep, CaError> {
        let CaKeys::Managed(manager) = &self.keys else { return Ok(KeySweep::default()) };
        // Listed before the state is read: a key is made after its id is reserved, so the
        // read sees the id of every key listed pending, recorded, or released.
        let found = manager.list_owned(&replica.cluster_id()).await?;
        let reader = replica.linearizable_reader().await.map_err(replication)?;
        let journal = reader.ca_journal().await.map_err(replication)?;
        let intents = reader.key_intents().await.map_err(replication)?;
        let now = self.clock.now().unix_timestamp();
        let grace = i64::try_from(self.config.key_sweep_grace.as_secs()).unwrap_or(i64::MAX);
        let stale: BTreeSet<&str> = intents
            .pending
            .iter()
            .filter(|(_, reserved_at)| now.saturating_sub(**reserved_at) > grace)
            .map(|(id, _)| id.as_str())
            .collect();
        let recorded: BTreeSet<&str> = journal
            .x509
            .iter()
            .map(|s| s.authority.key_id.as_str())
            .chain(journal.jwt.iter().map(|s| s.authority.key_id.as_str()))
            .collect();
        let has_current: BTreeSet<&str> = found.iter().filter(|k| k.current).map(|k| k.id.as_str()).collect();
        let orphans: Vec<&OwnedKey> = found
            .iter()
            .filter(|key| {
                let id = key.id.as_str();
                // A recorded key stays, even without its alias, unless it is a leftover
                // beside the object its id names.
                let in_use = recorded.contains(id) && (key.current || !has_current.contains(id));
                let being_made = intents.pending.contains_key(id) && !stale.contains(id);
                !in_use && !being_made
            })
            .collect();
        let mut sweep = KeySweep::default();
        if !stale.is_empty() {
            let key_ids = stale.iter().map(|id| (*id).to_owned()).collect();
            sweep.released = replica.write(ReleaseCaKeys { key_ids }).await.map_err(replication)?;
            tracing::warn!(released = sweep.released, "released CA key ids whose creation was abandoned");
        }
        for key in orphans {
            manager.delete_owned(key).await?;
            sweep.deleted += 1;
            tracing::warn!(key_id = %key.id, object = %key.object,
                "deleted a CA key that nothing records: the replica making it stopped before recording it");
        }
        Ok(sweep)
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
