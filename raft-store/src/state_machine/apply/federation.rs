//! Federation relationships.

use crate::command::{ApplyError, Outcome, Table};
use crate::model::FederationRelationship;
use crate::schema::Cf;
use crate::state_machine::txn::{Txn, TxnError};

const WHAT: &str = "federation relationship";

fn save(txn: &mut Txn<'_>, r: &FederationRelationship) -> Result<Outcome, TxnError> {
    let key = r.trust_domain.to_string();
    txn.put(Cf::FederationRelationships, key.as_bytes(), WHAT, r)?;
    txn.record(Table::FederationRelationship, &key, false);
    Ok(Outcome::Relationship(Ok(r.clone())))
}

pub fn create(txn: &mut Txn<'_>, r: &FederationRelationship) -> Result<Outcome, TxnError> {
    if txn.exists(Cf::FederationRelationships, r.trust_domain.name().as_bytes())? {
        return Ok(Outcome::Relationship(Err(ApplyError::AlreadyExists(format!(
            "federation relationship with {}",
            r.trust_domain
        )))));
    }
    save(txn, r)
}

pub fn update(txn: &mut Txn<'_>, r: &FederationRelationship) -> Result<Outcome, TxnError> {
    if !txn.exists(Cf::FederationRelationships, r.trust_domain.name().as_bytes())? {
        return Ok(Outcome::Relationship(Err(ApplyError::NotFound(format!(
            "federation relationship with {}",
            r.trust_domain
        )))));
    }
    save(txn, r)
}

pub fn delete(txn: &mut Txn<'_>, trust_domain: &str) -> Result<Outcome, TxnError> {
    if !txn.exists(Cf::FederationRelationships, trust_domain.as_bytes())? {
        return Ok(Outcome::Deleted(Err(ApplyError::NotFound(format!(
            "federation relationship with {trust_domain:?}"
        )))));
    }
    txn.delete(Cf::FederationRelationships, trust_domain.as_bytes());
    txn.record(Table::FederationRelationship, trust_domain, true);
    Ok(Outcome::Deleted(Ok(())))
}
