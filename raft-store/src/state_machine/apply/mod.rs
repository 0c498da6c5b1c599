//! Applying commands: a pure function of (stored state, command) → (writes, outcome).
//! Nothing here reads a clock, draws randomness or touches keys.

mod agents;
mod bundles;
mod ca;
mod entries;
mod federation;
mod invites;
mod tokens;

use super::txn::{Txn, TxnError};
use crate::command::{Command, Outcome};

/// Applies one command inside `txn`. Refusals are part of the outcome; only store
/// failures are errors.
pub fn apply_command(txn: &mut Txn<'_>, command: &Command, revision: u64) -> Result<Outcome, TxnError> {
    Ok(match command {
        Command::CreateEntries(entries) => entries::create(txn, entries, revision)?,
        Command::UpdateEntries(entries) => entries::update(txn, entries, revision)?,
        Command::DeleteEntries(ids) => entries::delete(txn, ids)?,
        Command::CreateAgent(agent) => agents::create(txn, agent)?,
        Command::UpdateAgent(agent) => agents::update(txn, agent)?,
        Command::SetAgentNewSerial { spiffe_id, serial_number, expires_at } => {
            agents::set_new_serial(txn, spiffe_id, serial_number, *expires_at)?
        }
        Command::PromoteAgentSerial { spiffe_id, serial_number } => {
            agents::promote_serial(txn, spiffe_id, serial_number)?
        }
        Command::BanAgent { spiffe_id } => agents::ban(txn, spiffe_id)?,
        Command::DeleteAgent { spiffe_id } => agents::delete(txn, spiffe_id)?,
        Command::CreateJoinToken(token) => tokens::create(txn, token)?,
        Command::ConsumeJoinToken { token, now } => tokens::consume(txn, token, *now)?,
        Command::PruneJoinTokens { expired_before } => tokens::prune(txn, *expired_before)?,
        Command::SetBundle { scope, bundle } => bundles::set(txn, *scope, bundle)?,
        Command::AppendBundle { scope, trust_domain, x509, jwt } => {
            bundles::append(txn, *scope, trust_domain, x509, jwt)?
        }
        Command::PruneBundle { scope, trust_domain, expired_before, expired_x509 } => {
            bundles::prune(txn, *scope, trust_domain, *expired_before, expired_x509)?
        }
        Command::DeleteBundle { scope, trust_domain } => bundles::delete(txn, *scope, trust_domain)?,
        Command::TaintLocalX509Authority { trust_domain, der } => bundles::taint_x509(txn, trust_domain, der)?,
        Command::RevokeLocalX509Authority { trust_domain, der } => bundles::revoke_x509(txn, trust_domain, der)?,
        Command::CaJournal { trust_domain, event } => ca::apply(txn, trust_domain, event)?,
        Command::CreateFederationRelationship(r) => federation::create(txn, r)?,
        Command::PruneChangeLog { before_revision } => prune_change_log(txn, *before_revision)?,
        Command::UpdateFederationRelationship(r) => federation::update(txn, r)?,
        Command::DeleteFederationRelationship { trust_domain } => federation::delete(txn, trust_domain)?,
        Command::CreateReplicaInvite(invite) => invites::create(txn, invite)?,
        Command::ConsumeReplicaInvite { secret_sha256, now } => invites::consume(txn, secret_sha256, *now)?,
        // The state machine applies a batch's commands one by one, each with its own revision.
        Command::Batch(_) => Outcome::None,
    })
}

fn prune_change_log(txn: &mut Txn<'_>, before_revision: u64) -> Result<Outcome, TxnError> {
    use crate::schema::{sm_key, Cf};
    // Readers behind the floor know to reload instead of trusting a delta with a hole.
    let floor: u64 = txn.get(Cf::SmMeta, sm_key::CHANGE_LOG_FLOOR, "change log floor")?.unwrap_or(0);
    if before_revision > floor {
        txn.put(Cf::SmMeta, sm_key::CHANGE_LOG_FLOOR, "change log floor", &before_revision)?;
    }
    let mut pruned = 0;
    for (key, _) in txn.scan_prefix(crate::schema::Cf::ChangeLog, b"")? {
        match crate::codec::key_u64(&key) {
            Some(revision) if revision < before_revision => {
                txn.delete(crate::schema::Cf::ChangeLog, &key);
                pruned += 1;
            }
            _ => break,
        }
    }
    Ok(Outcome::Pruned(pruned))
}
