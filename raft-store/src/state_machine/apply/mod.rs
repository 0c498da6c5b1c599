//! Applying commands: a pure function of (stored state, command) → (writes, outcome).
//! Nothing here reads a clock, draws randomness or touches keys.

mod agents;
mod bundles;
mod ca;
mod cluster_ca;
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
        Command::CreateEntries(c) => entries::create(txn, &c.0, revision)?,
        Command::UpdateEntries(c) => entries::update(txn, &c.0, revision)?,
        Command::DeleteEntries(c) => entries::delete(txn, &c.0)?,
        Command::CreateAgent(c) => agents::create(txn, &c.0)?,
        Command::UpdateAgent(c) => agents::update(txn, &c.0)?,
        Command::SetAgentNewSerial(c) => agents::set_new_serial(txn, &c.spiffe_id, &c.serial_number, c.expires_at)?,
        Command::PromoteAgentSerial(c) => agents::promote_serial(txn, &c.spiffe_id, &c.serial_number)?,
        Command::BanAgent(c) => agents::ban(txn, &c.spiffe_id)?,
        Command::DeleteAgent(c) => agents::delete(txn, &c.spiffe_id)?,
        Command::CreateJoinToken(c) => tokens::create(txn, &c.0)?,
        Command::ConsumeJoinToken(c) => tokens::consume(txn, &c.token, c.now)?,
        Command::PruneJoinTokens(c) => tokens::prune(txn, c.expired_before)?,
        Command::SetBundle(c) => bundles::set(txn, c.scope, &c.bundle)?,
        Command::AppendBundle(c) => bundles::append(txn, c.scope, &c.trust_domain, &c.x509, &c.jwt)?,
        Command::PruneBundle(c) => bundles::prune(txn, c.scope, &c.trust_domain, c.expired_before, &c.expired_x509)?,
        Command::DeleteBundle(c) => bundles::delete(txn, c.scope, &c.trust_domain)?,
        Command::TaintLocalX509Authority(c) => bundles::taint_x509(txn, &c.trust_domain, &c.der)?,
        Command::RevokeLocalX509Authority(c) => bundles::revoke_x509(txn, &c.trust_domain, &c.der)?,
        Command::CaJournal(c) => ca::apply(txn, &c.trust_domain, &c.event)?,
        Command::ReserveCaKey(c) => ca::reserve_key(txn, c)?,
        Command::ReleaseCaKeys(c) => ca::release_keys(txn, &c.key_ids)?,
        Command::CreateFederationRelationship(c) => federation::create(txn, &c.0)?,
        Command::UpdateFederationRelationship(c) => federation::update(txn, &c.0)?,
        Command::DeleteFederationRelationship(c) => federation::delete(txn, &c.trust_domain)?,
        Command::PruneChangeLog(c) => prune_change_log(txn, c.before_revision)?,
        Command::CreateReplicaInvite(c) => invites::create(txn, &c.0)?,
        Command::ConsumeReplicaInvite(c) => invites::consume(txn, &c.secret_sha256, c.now)?,
        Command::PruneReplicaInvites(c) => invites::prune(txn, c.expired_before)?,
        Command::PruneEntries(c) => entries::prune(txn, c.expired_before)?,
        Command::PrepareClusterCa(c) => cluster_ca::prepare(txn, c)?,
        Command::AdvanceClusterCa(c) => cluster_ca::advance(txn, c)?,
        Command::ReachClusterCaPhase(c) => cluster_ca::reach(txn, c)?,
        Command::RecordFederationRefresh(c) => federation::record_refresh(txn, c)?,
        Command::MirrorUpstreamBundle(c) => bundles::mirror_upstream(txn, &c.trust_domain, &c.x509, &c.jwt)?,
        Command::RecordUpstreamStatus(c) => {
            use crate::schema::{sm_key, Cf};
            txn.put(Cf::SmMeta, sm_key::UPSTREAM_STATUS, "upstream status", &c.0)?;
            Outcome::UpstreamStatus(c.0.clone())
        }
        // The state machine applies a batch's commands one by one, each with its own
        // revision, and an idempotent command once per request id.
        Command::Batch(_) | Command::Idempotent(_) => Outcome::None,
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
