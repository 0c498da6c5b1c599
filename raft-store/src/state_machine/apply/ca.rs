//! CA journal transitions and what they publish, in one command.

use crate::command::{ApplyError, Outcome, Table};
use crate::model::{publish, CaJournal, JournalEvent, StoredBundle};
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
