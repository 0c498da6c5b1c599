//! Registration entries and their indexes (parent ID, SPIFFE ID, selector, identity).

use std::borrow::Cow;

use crate::command::{ApplyError, Outcome, Table};
use crate::model::entry::StoredEntry;
use crate::model::{EntryWritten, RegistrationEntry};
use crate::schema::Cf;
use crate::state_machine::txn::{Txn, TxnError};

const WHAT: &str = "registration entry";

/// `text` then a 0 byte then the entry id: the key of an index row.
fn index_key(text: impl FnOnce(&mut Vec<u8>), entry_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(96 + entry_id.len());
    text(&mut key);
    key.push(0);
    key.extend_from_slice(entry_id.as_bytes());
    key
}

/// The entry's index rows; `identity` is its `identity_key`, which callers have at hand.
fn index_keys(entry: &RegistrationEntry, identity: Vec<u8>) -> Vec<(Cf, Vec<u8>)> {
    let mut keys = Vec::with_capacity(3 + entry.selectors.len());
    keys.push((Cf::EntriesByParent, index_key(|k| entry.parent_id.append_to(k), &entry.id)));
    keys.push((Cf::EntriesBySpiffeId, index_key(|k| entry.spiffe_id.append_to(k), &entry.id)));
    keys.push((Cf::EntriesByIdentity, identity));
    for selector in &entry.selectors {
        keys.push((Cf::EntriesBySelector, index_key(|k| selector.append_to(k), &entry.id)));
    }
    keys
}

fn write(
    txn: &mut Txn<'_>,
    entry: &RegistrationEntry,
    written: EntryWritten,
    identity: Vec<u8>,
) -> Result<(), TxnError> {
    txn.put(Cf::Entries, entry.id.as_bytes(), WHAT, &StoredEntry::new(entry, written))?;
    for (cf, key) in index_keys(entry, identity) {
        let value = if cf == Cf::EntriesByIdentity { entry.id.as_bytes().to_vec() } else { Vec::new() };
        txn.put_raw(cf, key, value);
    }
    txn.record(Table::Entry, &entry.id, false);
    Ok(())
}

/// Removes the entry's row and index rows (an update rewrites them right after).
fn erase(txn: &mut Txn<'_>, entry: &RegistrationEntry) {
    txn.delete(Cf::Entries, entry.id.as_bytes());
    for (cf, key) in index_keys(entry, entry.identity_key()) {
        txn.delete(cf, &key);
    }
}

/// The canonical form of an incoming entry (itself, when the proposer normalised it), or
/// why it cannot be stored.
fn prepare(entry: &RegistrationEntry) -> Result<Cow<'_, RegistrationEntry>, ApplyError> {
    if entry.id.is_empty() {
        return Err(ApplyError::InvalidArgument("entry id cannot be empty".into()));
    }
    if entry.selectors.is_empty() {
        return Err(ApplyError::InvalidArgument("entry must have at least one selector".into()));
    }
    if entry.is_normalized() {
        return Ok(Cow::Borrowed(entry));
    }
    let mut entry = entry.clone();
    entry.normalize();
    Ok(Cow::Owned(entry))
}

fn revision_number(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

/// The id of another entry with the same SPIFFE ID, parent ID and selectors, if any.
fn similar(txn: &Txn<'_>, entry: &RegistrationEntry, identity: &[u8]) -> Result<Option<String>, TxnError> {
    let existing = txn.get_raw(Cf::EntriesByIdentity, identity)?;
    Ok(existing.map(|id| String::from_utf8_lossy(&id).into_owned()).filter(|id| *id != entry.id))
}

pub fn create(txn: &mut Txn<'_>, entries: &[RegistrationEntry], revision: u64) -> Result<Outcome, TxnError> {
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        let entry = match prepare(entry) {
            Ok(entry) => entry,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        if txn.exists(Cf::Entries, entry.id.as_bytes())? {
            results.push(Err(ApplyError::AlreadyExists(format!("entry id {:?}", entry.id))));
            continue;
        }
        let identity = entry.identity_key();
        if let Some(other) = similar(txn, &entry, &identity)? {
            results.push(Err(ApplyError::AlreadyExists(format!(
                "similar entry {other:?} has the same SPIFFE ID, parent ID and selectors"
            ))));
            continue;
        }
        let written = EntryWritten { revision_number: revision_number(revision), created_at: entry.created_at };
        write(txn, &entry, written, identity)?;
        results.push(Ok(written));
    }
    Ok(Outcome::Entries(results))
}

pub fn update(txn: &mut Txn<'_>, entries: &[RegistrationEntry], revision: u64) -> Result<Outcome, TxnError> {
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        let entry = match prepare(entry) {
            Ok(entry) => entry,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        let Some(old) = txn.get::<RegistrationEntry>(Cf::Entries, entry.id.as_bytes(), WHAT)? else {
            results.push(Err(ApplyError::NotFound(format!("entry id {:?}", entry.id))));
            continue;
        };
        let identity = entry.identity_key();
        if let Some(other) = similar(txn, &entry, &identity)? {
            results.push(Err(ApplyError::AlreadyExists(format!(
                "similar entry {other:?} has the same SPIFFE ID, parent ID and selectors"
            ))));
            continue;
        }
        let written = EntryWritten { revision_number: revision_number(revision), created_at: old.created_at };
        erase(txn, &old);
        write(txn, &entry, written, identity)?;
        results.push(Ok(written));
    }
    Ok(Outcome::Entries(results))
}

/// Deletes the alias entry a join token with an agent ID made for agent `agent_id`
/// (`CreateJoinToken`): parented to the agent, with the one selector `spiffe_id:<agent_id>`.
/// Other entries under the agent are the operator's and stay, as in SPIRE.
pub fn delete_join_token_aliases(txn: &mut Txn<'_>, agent_id: &identity::SpiffeId) -> Result<usize, TxnError> {
    let mut prefix = Vec::new();
    agent_id.append_to(&mut prefix);
    prefix.push(0);
    let agent = agent_id.to_string();
    let mut deleted = 0;
    for (key, _) in txn.scan_prefix(Cf::EntriesByParent, &prefix)? {
        let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        let Some(entry) = txn.get::<RegistrationEntry>(Cf::Entries, id.as_bytes(), WHAT)? else { continue };
        let alias = matches!(entry.selectors.as_slice(), [only] if only.kind() == "spiffe_id" && only.value() == agent);
        if alias {
            erase(txn, &entry);
            txn.record(Table::Entry, &entry.id, true);
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes every entry whose `expires_at` is set and before `expired_before`; answers how
/// many. Entries without an expiry (0) never expire.
pub fn prune(txn: &mut Txn<'_>, expired_before: i64) -> Result<Outcome, TxnError> {
    let mut pruned = 0;
    for (_, value) in txn.scan_prefix(Cf::Entries, b"")? {
        let entry: RegistrationEntry = crate::codec::decode(WHAT, &value)?;
        if entry.expires_at > 0 && entry.expires_at < expired_before {
            erase(txn, &entry);
            txn.record(Table::Entry, &entry.id, true);
            pruned += 1;
        }
    }
    Ok(Outcome::Pruned(pruned))
}

pub fn delete(txn: &mut Txn<'_>, ids: &[String]) -> Result<Outcome, TxnError> {
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        match txn.get::<RegistrationEntry>(Cf::Entries, id.as_bytes(), WHAT)? {
            Some(entry) => {
                erase(txn, &entry);
                txn.record(Table::Entry, &entry.id, true);
                results.push(Ok(id.clone()));
            }
            None => results.push(Err(ApplyError::NotFound(format!("entry id {id:?}")))),
        }
    }
    Ok(Outcome::DeletedEntries(results))
}
