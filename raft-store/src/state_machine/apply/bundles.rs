//! The local and federated bundles. Every change raises the sequence number.

use crate::command::{ApplyError, BundleScope, Outcome, Table};
use crate::model::{CaJournal, StoredBundle, StoredJwtKey, StoredX509Authority};
use crate::schema::{ca_key, Cf};
use crate::state_machine::txn::{Txn, TxnError};

const WHAT: &str = "bundle";

fn table(scope: BundleScope) -> (Cf, Table) {
    match scope {
        BundleScope::Local => (Cf::LocalBundle, Table::LocalBundle),
        BundleScope::Federated => (Cf::FederatedBundles, Table::FederatedBundle),
    }
}

fn save(txn: &mut Txn<'_>, scope: BundleScope, bundle: &StoredBundle) -> Result<Outcome, TxnError> {
    let (cf, t) = table(scope);
    let key = bundle.trust_domain.to_string();
    txn.put(cf, key.as_bytes(), WHAT, bundle)?;
    txn.record(t, &key, false);
    Ok(Outcome::Bundle(Ok(bundle.clone())))
}

fn load(txn: &Txn<'_>, scope: BundleScope, trust_domain: &str) -> Result<Option<StoredBundle>, TxnError> {
    txn.get(table(scope).0, trust_domain.as_bytes(), WHAT)
}

/// The stored bundle of `trust_domain`, or a new empty one; a name that is no trust domain
/// is refused.
fn load_or_new(
    txn: &Txn<'_>,
    scope: BundleScope,
    trust_domain: &str,
) -> Result<Result<StoredBundle, ApplyError>, TxnError> {
    Ok(match load(txn, scope, trust_domain)? {
        Some(bundle) => Ok(bundle),
        None => identity::TrustDomain::parse(trust_domain)
            .map(StoredBundle::new)
            .map_err(|e| ApplyError::InvalidArgument(format!("trust domain {trust_domain:?}: {e}"))),
    })
}

pub fn set(txn: &mut Txn<'_>, scope: BundleScope, bundle: &StoredBundle) -> Result<Outcome, TxnError> {
    let previous = load(txn, scope, bundle.trust_domain.name())?.map_or(0, |b| b.sequence_number);
    let mut bundle = bundle.clone();
    bundle.sequence_number = previous + 1;
    save(txn, scope, &bundle)
}

pub fn append(
    txn: &mut Txn<'_>,
    scope: BundleScope,
    trust_domain: &str,
    x509: &[StoredX509Authority],
    jwt: &[StoredJwtKey],
) -> Result<Outcome, TxnError> {
    let mut bundle = match load_or_new(txn, scope, trust_domain)? {
        Ok(b) => b,
        Err(refused) => return Ok(Outcome::Bundle(Err(refused))),
    };
    if !bundle.append(x509, jwt) {
        return Ok(Outcome::Bundle(Ok(bundle)));
    }
    bundle.sequence_number += 1;
    save(txn, scope, &bundle)
}

pub fn mirror_upstream(
    txn: &mut Txn<'_>,
    trust_domain: &str,
    x509: &[StoredX509Authority],
    jwt: &[StoredJwtKey],
) -> Result<Outcome, TxnError> {
    if x509.is_empty() {
        return Ok(Outcome::Bundle(Err(ApplyError::InvalidArgument(
            "the upstream bundle has no X.509 authority".into(),
        ))));
    }
    let bundle = match load_or_new(txn, BundleScope::Local, trust_domain)? {
        Ok(b) => b,
        Err(refused) => return Ok(Outcome::Bundle(Err(refused))),
    };
    let journal: CaJournal = txn.get(Cf::CaJournal, ca_key::JOURNAL, "CA journal")?.unwrap_or_default();
    let own: Vec<&str> = journal.jwt.iter().map(|s| s.authority.kid.as_str()).collect();
    match bundle.mirrored(x509, jwt, &own) {
        Some(mirrored) => save(txn, BundleScope::Local, &mirrored),
        None => Ok(Outcome::Bundle(Ok(bundle))),
    }
}

pub fn prune(
    txn: &mut Txn<'_>,
    scope: BundleScope,
    trust_domain: &str,
    expired_before: i64,
    expired_x509: &[Vec<u8>],
) -> Result<Outcome, TxnError> {
    let Some(mut bundle) = load(txn, scope, trust_domain)? else {
        return Ok(Outcome::Bundle(Err(ApplyError::NotFound(format!("bundle of {trust_domain:?}")))));
    };
    if !bundle.prune(expired_before, expired_x509) {
        return Ok(Outcome::Bundle(Ok(bundle)));
    }
    if bundle.x509_authorities.is_empty() && scope == BundleScope::Local {
        return Ok(Outcome::Bundle(Err(ApplyError::FailedPrecondition(
            "pruning would leave the local bundle without X.509 authorities".into(),
        ))));
    }
    bundle.sequence_number += 1;
    save(txn, scope, &bundle)
}

pub fn delete(txn: &mut Txn<'_>, scope: BundleScope, trust_domain: &str) -> Result<Outcome, TxnError> {
    let (cf, t) = table(scope);
    if !txn.exists(cf, trust_domain.as_bytes())? {
        return Ok(Outcome::Deleted(Err(ApplyError::NotFound(format!("bundle of {trust_domain:?}")))));
    }
    txn.delete(cf, trust_domain.as_bytes());
    txn.record(t, trust_domain, true);
    Ok(Outcome::Deleted(Ok(())))
}

/// The local bundle of `trust_domain` and the index of the X.509 authority `der` in it.
fn local_x509(
    txn: &Txn<'_>,
    trust_domain: &str,
    der: &[u8],
) -> Result<Result<(StoredBundle, usize), ApplyError>, TxnError> {
    let Some(bundle) = load(txn, BundleScope::Local, trust_domain)? else {
        return Ok(Err(ApplyError::NotFound(format!("bundle of {trust_domain:?}"))));
    };
    Ok(match bundle.x509_authorities.iter().position(|a| a.der == der) {
        Some(index) => Ok((bundle, index)),
        None => Err(ApplyError::NotFound("no X.509 authority of the local bundle has that certificate".into())),
    })
}

pub fn taint_x509(txn: &mut Txn<'_>, trust_domain: &str, der: &[u8]) -> Result<Outcome, TxnError> {
    let (mut bundle, index) = match local_x509(txn, trust_domain, der)? {
        Ok(found) => found,
        Err(refused) => return Ok(Outcome::Bundle(Err(refused))),
    };
    if bundle.x509_authorities[index].tainted {
        return Ok(Outcome::Bundle(Err(ApplyError::FailedPrecondition(
            "the X.509 authority is already tainted".into(),
        ))));
    }
    bundle.x509_authorities[index].tainted = true;
    bundle.sequence_number += 1;
    save(txn, BundleScope::Local, &bundle)
}

pub fn revoke_x509(txn: &mut Txn<'_>, trust_domain: &str, der: &[u8]) -> Result<Outcome, TxnError> {
    let (mut bundle, index) = match local_x509(txn, trust_domain, der)? {
        Ok(found) => found,
        Err(refused) => return Ok(Outcome::Bundle(Err(refused))),
    };
    if !bundle.x509_authorities[index].tainted {
        return Ok(Outcome::Bundle(Err(ApplyError::FailedPrecondition(
            "only a tainted X.509 authority can be revoked".into(),
        ))));
    }
    if bundle.x509_authorities.len() == 1 {
        return Ok(Outcome::Bundle(Err(ApplyError::FailedPrecondition(
            "revoking would leave the local bundle without X.509 authorities".into(),
        ))));
    }
    bundle.x509_authorities.remove(index);
    bundle.sequence_number += 1;
    save(txn, BundleScope::Local, &bundle)
}
