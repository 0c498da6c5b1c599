//! Reads for in-memory views that follow apply: the rows a set of announced changes names,
//! or every row the views hold, each from one consistent view with its revision.

use std::collections::BTreeSet;

use rocksdb::{IteratorMode, DB};

use super::{ReadError, StoreReader};
use crate::codec;
use crate::command::{ChangeSet, Table};
use crate::db::cf;
use crate::model::{AttestedAgent, CaJournal, RegistrationEntry, StoredBundle};
use crate::schema::{ca_key, sm_key, Cf};

/// Which rows changed, by table, gathered from announced change sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangedKeys {
    pub entries: BTreeSet<String>,
    pub agents: BTreeSet<String>,
    /// The CA journal or a local bundle changed.
    pub ca: bool,
}

impl ChangedKeys {
    /// Adds the rows `sets` name.
    pub fn add(&mut self, sets: &[ChangeSet]) {
        for change in sets.iter().flat_map(|s| &s.changes) {
            match change.table {
                Table::Entry => {
                    self.entries.insert(change.key.clone());
                }
                Table::Agent => {
                    self.agents.insert(change.key.clone());
                }
                Table::CaJournal | Table::LocalBundle => self.ca = true,
                _ => {}
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.agents.is_empty() && !self.ca
    }
}

/// Rows as they stand at `revision`: each named key with its row (`None`: deleted).
#[derive(Debug, Default)]
pub struct Rows {
    pub revision: u64,
    pub entries: Vec<(String, Option<RegistrationEntry>)>,
    pub agents: Vec<(String, Option<AttestedAgent>)>,
    /// The CA journal and the local bundle of the trust domain asked for, when asked.
    pub ca: Option<(CaJournal, Option<StoredBundle>)>,
}

impl StoreReader {
    /// The rows `keys` names, and the CA journal and local bundle of `trust_domain` if
    /// `keys.ca`, from one consistent view.
    pub async fn rows(&self, keys: ChangedKeys, trust_domain: String) -> Result<Rows, ReadError> {
        self.run(move |db| {
            let view = db.snapshot();
            let get = |table: Cf, key: &[u8]| view.get_cf(cf(db, table), key);
            let mut rows = Rows { revision: revision(db, &view)?, ..Rows::default() };
            for id in keys.entries {
                let entry = get(Cf::Entries, id.as_bytes())?.map(|b| codec::decode(ENTRY, &b)).transpose()?;
                rows.entries.push((id, entry));
            }
            for id in keys.agents {
                let agent = get(Cf::Agents, id.as_bytes())?.map(|b| codec::decode(AGENT, &b)).transpose()?;
                rows.agents.push((id, agent));
            }
            if keys.ca {
                rows.ca = Some(ca_rows(db, &view, &trust_domain)?);
            }
            Ok(rows)
        })
        .await
    }

    /// Every registration entry and attested agent, the CA journal and the local bundle of
    /// `trust_domain`, from one consistent view.
    pub async fn all_rows(&self, trust_domain: String) -> Result<Rows, ReadError> {
        self.run(move |db| {
            let view = db.snapshot();
            let mut rows = Rows { revision: revision(db, &view)?, ..Rows::default() };
            for item in view.iterator_cf(cf(db, Cf::Entries), IteratorMode::Start) {
                let (key, value) = item?;
                rows.entries.push((String::from_utf8_lossy(&key).into_owned(), Some(codec::decode(ENTRY, &value)?)));
            }
            for item in view.iterator_cf(cf(db, Cf::Agents), IteratorMode::Start) {
                let (key, value) = item?;
                rows.agents.push((String::from_utf8_lossy(&key).into_owned(), Some(codec::decode(AGENT, &value)?)));
            }
            rows.ca = Some(ca_rows(db, &view, &trust_domain)?);
            Ok(rows)
        })
        .await
    }
}

const ENTRY: &str = "registration entry";
const AGENT: &str = "attested agent";
const JOURNAL: &str = "CA journal";
const BUNDLE: &str = "bundle";

/// The CA journal and the local bundle of `trust_domain`, as `view` sees them.
fn ca_rows(
    db: &DB,
    view: &rocksdb::Snapshot<'_>,
    trust_domain: &str,
) -> Result<(CaJournal, Option<StoredBundle>), ReadError> {
    let get = |table: Cf, key: &[u8]| view.get_cf(cf(db, table), key);
    let journal = get(Cf::CaJournal, ca_key::JOURNAL)?.map(|b| codec::decode(JOURNAL, &b)).transpose()?;
    let bundle = get(Cf::LocalBundle, trust_domain.as_bytes())?.map(|b| codec::decode(BUNDLE, &b)).transpose()?;
    Ok((journal.unwrap_or_default(), bundle))
}

fn revision(db: &DB, view: &rocksdb::Snapshot<'_>) -> Result<u64, ReadError> {
    Ok(view
        .get_cf(cf(db, Cf::SmMeta), sm_key::REVISION)?
        .map(|b| codec::decode::<u64>("revision", &b))
        .transpose()?
        .unwrap_or(0))
}
