//! Join tokens: created, then consumed exactly once.

use crate::command::{ApplyError, Outcome, Table};
use crate::model::JoinToken;
use crate::schema::Cf;
use crate::state_machine::txn::{Txn, TxnError};

const WHAT: &str = "join token";

pub fn create(txn: &mut Txn<'_>, token: &JoinToken) -> Result<Outcome, TxnError> {
    if token.token.is_empty() {
        return Ok(Outcome::JoinToken(Err(ApplyError::InvalidArgument("token cannot be empty".into()))));
    }
    if txn.exists(Cf::JoinTokens, token.token.as_bytes())? {
        return Ok(Outcome::JoinToken(Err(ApplyError::AlreadyExists("join token".into()))));
    }
    txn.put(Cf::JoinTokens, token.token.as_bytes(), WHAT, token)?;
    txn.record(Table::JoinToken, &token.token, false);
    Ok(Outcome::JoinToken(Ok(token.clone())))
}

/// Deletes the token and returns it; a second consume finds nothing. An expired token is
/// deleted too, and refused.
pub fn consume(txn: &mut Txn<'_>, token: &str, now: i64) -> Result<Outcome, TxnError> {
    let Some(stored) = txn.get::<JoinToken>(Cf::JoinTokens, token.as_bytes(), WHAT)? else {
        return Ok(Outcome::JoinToken(Err(ApplyError::NotFound("join token".into()))));
    };
    txn.delete(Cf::JoinTokens, token.as_bytes());
    txn.record(Table::JoinToken, token, true);
    if stored.expires_at < now {
        return Ok(Outcome::JoinToken(Err(ApplyError::FailedPrecondition("join token expired".into()))));
    }
    Ok(Outcome::JoinToken(Ok(stored)))
}

pub fn prune(txn: &mut Txn<'_>, expired_before: i64) -> Result<Outcome, TxnError> {
    let mut pruned = 0;
    for (key, value) in txn.scan_prefix(Cf::JoinTokens, b"")? {
        let token: JoinToken = crate::codec::decode(WHAT, &value)?;
        if token.expires_at < expired_before {
            txn.delete(Cf::JoinTokens, &key);
            txn.record(Table::JoinToken, &token.token, true);
            pruned += 1;
        }
    }
    Ok(Outcome::Pruned(pruned))
}
