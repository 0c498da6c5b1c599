//! Typed reads of the replicated state. `StoreReader` reads this replica's applied state;
//! the node decides whether a read first waits for the read index (linearizable) or not.

mod rows;

pub use rows::{ChangedKeys, Rows};

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, DB};
use serde::de::DeserializeOwned;

use crate::codec::{self, pair_prefix, u64_key, CodecError};
use crate::command::{BundleScope, ChangeSet, Table};
use crate::db::cf;
use crate::model::{
    AttestedAgent, CaJournal, FederationRelationship, JoinToken, KeyIntents, RegistrationEntry, ReplicaInvite,
    StoredBundle,
};
use crate::schema::{ca_key, sm_key, Cf};

/// A read that failed in the store itself.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("read task failed: {0}")]
    Task(String),
}

/// Registration entries changed since a revision (see `StoreReader::entry_changes_since`).
#[derive(Debug)]
pub struct EntryChanges {
    /// The revision this answer brings the reader to.
    pub revision: u64,
    /// Each changed entry id, with the entry as it is now (`None`: deleted).
    pub changed: Vec<(String, Option<RegistrationEntry>)>,
}

/// Reads this replica's state. Cheap to clone; every call runs on a blocking thread.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<DB>,
}

impl StoreReader {
    /// The whole applied state as backup-file bytes, from one consistent view.
    pub async fn backup(&self) -> Result<Vec<u8>, crate::backup::BackupError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || crate::backup::export(&db))
            .await
            .map_err(|e| crate::backup::BackupError::Storage(e.to_string()))?
    }
}

/// One page of a listing, and where the next one starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back to get the next page; `None` when this was the last.
    pub next: Option<String>,
}

impl StoreReader {
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DB) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|e| ReadError::Task(e.to_string()))?
    }

    /// The revision of the last applied command.
    pub async fn revision(&self) -> Result<u64, ReadError> {
        self.run(|db| get::<u64>(db, Cf::SmMeta, sm_key::REVISION, "revision").map(Option::unwrap_or_default)).await
    }

    pub async fn entry(&self, id: &str) -> Result<Option<RegistrationEntry>, ReadError> {
        let id = id.to_owned();
        self.run(move |db| get(db, Cf::Entries, id.as_bytes(), "registration entry")).await
    }

    /// Entries in id order, starting after `after` (a page token), at most `limit`.
    pub async fn list_entries(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page<RegistrationEntry>, ReadError> {
        self.run(move |db| page(db, Cf::Entries, after.as_deref(), limit, "registration entry")).await
    }

    /// Entries whose parent is `parent_id`.
    pub async fn entries_by_parent(&self, parent_id: &str) -> Result<Vec<RegistrationEntry>, ReadError> {
        self.by_index(Cf::EntriesByParent, parent_id.to_owned()).await
    }

    pub async fn entries_by_spiffe_id(&self, spiffe_id: &str) -> Result<Vec<RegistrationEntry>, ReadError> {
        self.by_index(Cf::EntriesBySpiffeId, spiffe_id.to_owned()).await
    }

    /// Entries that have `selector` (`type:value`) among theirs.
    pub async fn entries_by_selector(&self, selector: &str) -> Result<Vec<RegistrationEntry>, ReadError> {
        self.by_index(Cf::EntriesBySelector, selector.to_owned()).await
    }

    async fn by_index(&self, index: Cf, value: String) -> Result<Vec<RegistrationEntry>, ReadError> {
        self.run(move |db| {
            let prefix = pair_prefix(&value);
            let mut out = Vec::new();
            for item in db.iterator_cf(cf(db, index), IteratorMode::From(&prefix, Direction::Forward)) {
                let (key, _) = item?;
                let Some(id) = key.strip_prefix(prefix.as_slice()) else { break };
                if let Some(entry) = get(db, Cf::Entries, id, "registration entry")? {
                    out.push(entry);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn agent(&self, spiffe_id: &str) -> Result<Option<AttestedAgent>, ReadError> {
        let id = spiffe_id.to_owned();
        self.run(move |db| get(db, Cf::Agents, id.as_bytes(), "attested agent")).await
    }

    pub async fn list_agents(&self, after: Option<String>, limit: usize) -> Result<Page<AttestedAgent>, ReadError> {
        self.run(move |db| page(db, Cf::Agents, after.as_deref(), limit, "attested agent")).await
    }

    pub async fn join_token(&self, token: &str) -> Result<Option<JoinToken>, ReadError> {
        let token = token.to_owned();
        self.run(move |db| get(db, Cf::JoinTokens, token.as_bytes(), "join token")).await
    }

    /// Node ids that were members and were removed.
    pub async fn removed_replicas(&self) -> Result<std::collections::BTreeSet<crate::types::NodeId>, ReadError> {
        self.run(|db| {
            get::<std::collections::BTreeSet<crate::types::NodeId>>(
                db,
                Cf::SmMeta,
                crate::schema::sm_key::REMOVED_REPLICAS,
                "removed replicas",
            )
            .map(Option::unwrap_or_default)
        })
        .await
    }

    /// The refresh schedule of every federated trust domain that has one.
    pub async fn federation_refreshes(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::model::FederationRefresh>, ReadError> {
        self.run(|db| {
            get(db, Cf::SmMeta, crate::schema::sm_key::FEDERATION_REFRESH, "federation refresh schedule")
                .map(Option::unwrap_or_default)
        })
        .await
    }

    /// How a nested cluster's calls to its upstream are going (default when none recorded).
    pub async fn upstream_status(&self) -> Result<crate::model::UpstreamStatus, ReadError> {
        self.run(|db| {
            get(db, Cf::SmMeta, crate::schema::sm_key::UPSTREAM_STATUS, "upstream status")
                .map(Option::unwrap_or_default)
        })
        .await
    }

    /// The latest rotation of the cluster CA, if there was one.
    pub async fn cluster_ca_rotation(&self) -> Result<Option<crate::model::ClusterCaRotation>, ReadError> {
        self.run(|db| get(db, Cf::SmMeta, crate::schema::sm_key::CLUSTER_CA, "cluster CA rotation")).await
    }

    /// The replica invite whose secret hashes to `secret_sha256` (hex).
    pub async fn replica_invite(&self, secret_sha256: &str) -> Result<Option<ReplicaInvite>, ReadError> {
        let key = secret_sha256.to_owned();
        self.run(move |db| get(db, Cf::ReplicaInvites, key.as_bytes(), "replica invite")).await
    }

    pub async fn bundle(&self, scope: BundleScope, trust_domain: &str) -> Result<Option<StoredBundle>, ReadError> {
        let td = trust_domain.to_owned();
        self.run(move |db| get(db, scope_cf(scope), td.as_bytes(), "bundle")).await
    }

    pub async fn list_bundles(&self, scope: BundleScope) -> Result<Vec<StoredBundle>, ReadError> {
        self.run(move |db| page(db, scope_cf(scope), None, usize::MAX, "bundle").map(|p| p.items)).await
    }

    pub async fn relationship(&self, trust_domain: &str) -> Result<Option<FederationRelationship>, ReadError> {
        let td = trust_domain.to_owned();
        self.run(move |db| get(db, Cf::FederationRelationships, td.as_bytes(), "federation relationship")).await
    }

    pub async fn list_relationships(&self) -> Result<Vec<FederationRelationship>, ReadError> {
        self.run(|db| {
            page(db, Cf::FederationRelationships, None, usize::MAX, "federation relationship").map(|p| p.items)
        })
        .await
    }

    /// The earliest expiry of a join token, if any is stored.
    pub async fn earliest_join_token_expiry(&self) -> Result<Option<i64>, ReadError> {
        self.run(|db| earliest_expiry::<JoinToken>(db, Cf::JoinTokens, "join token", |t| t.expires_at)).await
    }

    /// The earliest expiry of a replica invite, if any is stored.
    pub async fn earliest_invite_expiry(&self) -> Result<Option<i64>, ReadError> {
        self.run(|db| earliest_expiry::<ReplicaInvite>(db, Cf::ReplicaInvites, "replica invite", |i| i.expires_at))
            .await
    }

    /// The revision before which the change log was pruned (0: never).
    pub async fn change_log_floor(&self) -> Result<u64, ReadError> {
        self.run(|db| {
            get::<u64>(db, Cf::SmMeta, sm_key::CHANGE_LOG_FLOOR, "change log floor").map(Option::unwrap_or_default)
        })
        .await
    }

    /// The CA journal (empty before the first CA is prepared).
    pub async fn ca_journal(&self) -> Result<CaJournal, ReadError> {
        self.run(|db| get(db, Cf::CaJournal, ca_key::JOURNAL, "CA journal").map(Option::unwrap_or_default)).await
    }

    /// The key ids reserved and not yet recorded in the journal.
    pub async fn key_intents(&self) -> Result<KeyIntents, ReadError> {
        self.run(|db| get(db, Cf::CaJournal, ca_key::KEY_INTENTS, "key intents").map(Option::unwrap_or_default)).await
    }

    /// Every registration entry and the revision they reflect, from one consistent view.
    pub async fn entries_at_revision(&self) -> Result<(u64, Vec<RegistrationEntry>), ReadError> {
        self.run(|db| {
            let view = db.snapshot();
            let revision = view
                .get_cf(cf(db, Cf::SmMeta), sm_key::REVISION)?
                .map(|b| codec::decode::<u64>("revision", &b))
                .transpose()?
                .unwrap_or(0);
            let mut entries = Vec::new();
            for item in view.iterator_cf(cf(db, Cf::Entries), IteratorMode::Start) {
                let (_, value) = item?;
                entries.push(codec::decode("registration entry", &value)?);
            }
            Ok((revision, entries))
        })
        .await
    }

    /// The registration entries changed after revision `since`, from one consistent view:
    /// each changed id with its current entry (`None` when deleted), and the revision the
    /// answer brings a reader to. At most `limit` revisions are read; call again from the
    /// returned revision for the rest. `None` when the change log no longer reaches back to
    /// `since` (pruned): the reader must reload with `entries_at_revision`.
    pub async fn entry_changes_since(&self, since: u64, limit: usize) -> Result<Option<EntryChanges>, ReadError> {
        self.run(move |db| {
            let view = db.snapshot();
            let meta = |key: &[u8], what: &'static str| -> Result<u64, ReadError> {
                Ok(view
                    .get_cf(cf(db, Cf::SmMeta), key)?
                    .map(|b| codec::decode::<u64>(what, &b))
                    .transpose()?
                    .unwrap_or(0))
            };
            if meta(sm_key::CHANGE_LOG_FLOOR, "change log floor")? > since.saturating_add(1) {
                return Ok(None);
            }
            let mut revision = meta(sm_key::REVISION, "revision")?;
            let mut ids = std::collections::BTreeSet::new();
            let start = u64_key(since.saturating_add(1));
            for (read, item) in
                view.iterator_cf(cf(db, Cf::ChangeLog), IteratorMode::From(&start, Direction::Forward)).enumerate()
            {
                let (_, value) = item?;
                let set: ChangeSet = codec::decode("change set", &value)?;
                if read == limit {
                    // Stop before this set: the caller resumes from the last one read.
                    revision = set.revision.saturating_sub(1);
                    break;
                }
                ids.extend(set.changes.into_iter().filter(|c| c.table == Table::Entry).map(|c| c.key));
            }
            let mut changed = Vec::with_capacity(ids.len());
            for id in ids {
                let entry = view
                    .get_cf(cf(db, Cf::Entries), id.as_bytes())?
                    .map(|b| codec::decode("registration entry", &b))
                    .transpose()?;
                changed.push((id, entry));
            }
            Ok(Some(EntryChanges { revision, changed }))
        })
        .await
    }

    /// What changed after revision `since`, oldest first, at most `limit` revisions.
    pub async fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<ChangeSet>, ReadError> {
        self.run(move |db| {
            let start = u64_key(since.saturating_add(1));
            let mut out = Vec::new();
            for item in
                db.iterator_cf(cf(db, Cf::ChangeLog), IteratorMode::From(&start, Direction::Forward)).take(limit)
            {
                let (_, value) = item?;
                out.push(codec::decode("change set", &value)?);
            }
            Ok(out)
        })
        .await
    }
}

fn scope_cf(scope: BundleScope) -> Cf {
    match scope {
        BundleScope::Local => Cf::LocalBundle,
        BundleScope::Federated => Cf::FederatedBundles,
    }
}

fn earliest_expiry<T: DeserializeOwned>(
    db: &DB,
    table: Cf,
    what: &'static str,
    expiry: impl Fn(&T) -> i64,
) -> Result<Option<i64>, ReadError> {
    let mut earliest = None;
    for item in db.iterator_cf(cf(db, table), IteratorMode::Start) {
        let (_, value) = item?;
        let at = expiry(&codec::decode(what, &value)?);
        earliest = Some(earliest.map_or(at, |e: i64| e.min(at)));
    }
    Ok(earliest)
}

fn get<T: DeserializeOwned>(db: &DB, table: Cf, key: &[u8], what: &'static str) -> Result<Option<T>, ReadError> {
    Ok(db.get_cf(cf(db, table), key)?.map(|b| codec::decode(what, &b)).transpose()?)
}

fn page<T: DeserializeOwned>(
    db: &DB,
    table: Cf,
    after: Option<&str>,
    limit: usize,
    what: &'static str,
) -> Result<Page<T>, ReadError> {
    let mut items = Vec::new();
    let mode = match after {
        Some(after) => IteratorMode::From(after.as_bytes(), Direction::Forward),
        None => IteratorMode::Start,
    };
    let mut last_key = None;
    for item in db.iterator_cf(cf(db, table), mode) {
        let (key, value) = item?;
        if after.is_some_and(|a| a.as_bytes() == &*key) {
            continue;
        }
        if items.len() == limit {
            return Ok(Page { items, next: last_key });
        }
        items.push(codec::decode(what, &value)?);
        last_key = Some(String::from_utf8_lossy(&key).into_owned());
    }
    Ok(Page { items, next: None })
}
