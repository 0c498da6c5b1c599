//! Federation relationships.

use std::collections::BTreeMap;

use crate::command::{ApplyError, BundleScope, Outcome, RecordFederationRefresh, Table};
use crate::model::{FederationRefresh, FederationRelationship};
use crate::schema::{sm_key, Cf};
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
    let mut schedule = refreshes(txn)?;
    if schedule.remove(trust_domain).is_some() {
        txn.put(Cf::SmMeta, sm_key::FEDERATION_REFRESH, REFRESH, &schedule)?;
    }
    Ok(Outcome::Deleted(Ok(())))
}

const REFRESH: &str = "federation refresh schedule";

fn refreshes(txn: &Txn<'_>) -> Result<BTreeMap<String, FederationRefresh>, TxnError> {
    Ok(txn.get(Cf::SmMeta, sm_key::FEDERATION_REFRESH, REFRESH)?.unwrap_or_default())
}

pub fn record_refresh(txn: &mut Txn<'_>, c: &RecordFederationRefresh) -> Result<Outcome, TxnError> {
    let refused = |e| Ok(Outcome::FederationRefresh(Err(e)));
    if !txn.exists(Cf::FederationRelationships, c.trust_domain.as_bytes())? {
        return refused(ApplyError::NotFound(format!("federation relationship with {:?}", c.trust_domain)));
    }
    let mut schedule = refreshes(txn)?;
    let stored_due = schedule.get(&c.trust_domain).map_or(0, |r| r.next_due);
    if stored_due != c.expected_next_due {
        return refused(ApplyError::FailedPrecondition(format!(
            "the refresh of {} due at {} was recorded already (next due {stored_due})",
            c.trust_domain, c.expected_next_due
        )));
    }
    if let Some(bundle) = &c.bundle {
        if bundle.trust_domain.name() != c.trust_domain {
            return refused(ApplyError::InvalidArgument(format!(
                "a bundle of {} recorded for {}",
                bundle.trust_domain, c.trust_domain
            )));
        }
        super::bundles::set(txn, BundleScope::Federated, bundle)?;
    }
    schedule.insert(c.trust_domain.clone(), c.refresh.clone());
    txn.put(Cf::SmMeta, sm_key::FEDERATION_REFRESH, REFRESH, &schedule)?;
    Ok(Outcome::FederationRefresh(Ok(c.refresh.clone())))
}
