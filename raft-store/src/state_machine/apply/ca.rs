//! CA journal transitions and what they publish, in one command; and the key ids reserved
//! for keys being made in a key manager (`model::KeyIntents`).

use crate::command::{ApplyError, Outcome, ReserveCaKey, Table};
use crate::model::{publish, CaJournal, JournalEvent, KeyIntents, StoredBundle};
use crate::schema::{ca_key, Cf};
use crate::state_machine::txn::{Txn, TxnError};

pub fn apply(txn: &mut Txn<'_>, trust_domain: &str, event: &JournalEvent) -> Result<Outcome, TxnError> {
    let td = match identity::TrustDomain::parse(trust_domain) {
        Ok(td) => td,
        Err(e) => {
            return Ok(Outcome::CaJournal(Err(ApplyError::InvalidArgument(format!(
                "trust domain {trust_domain:?}: {e}"
            )))))
        }
    };
    let before: CaJournal = txn.get(Cf::CaJournal, ca_key::JOURNAL, "CA journal")?.unwrap_or_default();
    let mut journal = before.clone();
    if let Err(e) = journal.apply(event) {
        return Ok(Outcome::CaJournal(Err(ApplyError::FailedPrecondition(e.to_string()))));
    }
    // Once ids are reserved, an authority whose key a key manager holds must name a pending
    // id, which it takes: a released id's key is being deleted by the sweep.
    if let Some(key_id) = event.prepared_managed_key() {
        if let Some(mut intents) = key_intents(txn)? {
            if intents.pending.remove(key_id).is_none() {
                return Ok(Outcome::CaJournal(Err(ApplyError::FailedPrecondition(format!(
                    "key {key_id} was not reserved, or was released as abandoned"
                )))));
            }
            txn.put(Cf::CaJournal, ca_key::KEY_INTENTS, "key intents", &intents)?;
        }
    }
    txn.put(Cf::CaJournal, ca_key::JOURNAL, "CA journal", &journal)?;
    txn.record(Table::CaJournal, "journal", false);
    let mut bundle: StoredBundle =
        txn.get(Cf::LocalBundle, td.name().as_bytes(), "bundle")?.unwrap_or_else(|| StoredBundle::new(td.clone()));
    if publish(&mut bundle, &before, event) {
        txn.put(Cf::LocalBundle, td.name().as_bytes(), "bundle", &bundle)?;
        txn.record(Table::LocalBundle, td.name(), false);
    }
    Ok(Outcome::CaJournal(Ok(Box::new(journal))))
}

fn key_intents(txn: &mut Txn<'_>) -> Result<Option<KeyIntents>, TxnError> {
    txn.get(Cf::CaJournal, ca_key::KEY_INTENTS, "key intents")
}

pub fn reserve_key(txn: &mut Txn<'_>, command: &ReserveCaKey) -> Result<Outcome, TxnError> {
    let journal: CaJournal = txn.get(Cf::CaJournal, ca_key::JOURNAL, "CA journal")?.unwrap_or_default();
    let mut intents = key_intents(txn)?.unwrap_or_default();
    let Some(key_id) = intents.reserve(command.kind, command.slot, journal.prepared_count, command.now) else {
        return Ok(Outcome::KeyReserved(Err(ApplyError::FailedPrecondition(format!(
            "{} key ids already wait to be recorded; the leader's sweep releases abandoned ones",
            intents.pending.len()
        )))));
    };
    txn.put(Cf::CaJournal, ca_key::KEY_INTENTS, "key intents", &intents)?;
    Ok(Outcome::KeyReserved(Ok(key_id)))
}

pub fn release_keys(txn: &mut Txn<'_>, key_ids: &[String]) -> Result<Outcome, TxnError> {
    let Some(mut intents) = key_intents(txn)? else { return Ok(Outcome::Pruned(0)) };
    let released = key_ids.iter().filter(|id| intents.pending.remove(id.as_str()).is_some()).count();
    if released > 0 {
        txn.put(Cf::CaJournal, ca_key::KEY_INTENTS, "key intents", &intents)?;
    }
    Ok(Outcome::Pruned(released as u64))
}
