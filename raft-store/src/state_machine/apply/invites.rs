//! Replica invitations: created, then consumed exactly once.

use crate::command::{ApplyError, Outcome, Table};
use crate::model::ReplicaInvite;
use crate::schema::Cf;
use crate::state_machine::txn::{Txn, TxnError};

const WHAT: &str = "replica invite";

pub fn create(txn: &mut Txn<'_>, invite: &ReplicaInvite) -> Result<Outcome, TxnError> {
    let hash = &invite.secret_sha256;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Outcome::ReplicaInvite(Err(ApplyError::InvalidArgument(
            "invite hash must be 64 hex digits".into(),
        ))));
    }
    if txn.exists(Cf::ReplicaInvites, hash.as_bytes())? {
        return Ok(Outcome::ReplicaInvite(Err(ApplyError::AlreadyExists(WHAT.into()))));
    }
    txn.put(Cf::ReplicaInvites, hash.as_bytes(), WHAT, invite)?;
    txn.record(Table::ReplicaInvite, hash, false);
    Ok(Outcome::ReplicaInvite(Ok(invite.clone())))
}

/// Deletes the invite and returns it; a second consume finds nothing. An expired invite is
/// deleted too, and refused.
pub fn consume(txn: &mut Txn<'_>, secret_sha256: &str, now: i64) -> Result<Outcome, TxnError> {
    let Some(stored) = txn.get::<ReplicaInvite>(Cf::ReplicaInvites, secret_sha256.as_bytes(), WHAT)? else {
        return Ok(Outcome::ReplicaInvite(Err(ApplyError::NotFound(WHAT.into()))));
    };
    txn.delete(Cf::ReplicaInvites, secret_sha256.as_bytes());
    txn.record(Table::ReplicaInvite, secret_sha256, true);
    if stored.expires_at < now {
        return Ok(Outcome::ReplicaInvite(Err(ApplyError::FailedPrecondition("replica invite expired".into()))));
    }
    Ok(Outcome::ReplicaInvite(Ok(stored)))
}

pub fn prune(txn: &mut Txn<'_>, expired_before: i64) -> Result<Outcome, TxnError> {
    let mut pruned = 0;
    for (key, value) in txn.scan_prefix(Cf::ReplicaInvites, b"")? {
        let invite: ReplicaInvite = crate::codec::decode(WHAT, &value)?;
        if invite.expires_at < expired_before {
            txn.delete(Cf::ReplicaInvites, &key);
            txn.record(Table::ReplicaInvite, &invite.secret_sha256, true);
            pruned += 1;
        }
    }
    Ok(Outcome::Pruned(pruned))
}
