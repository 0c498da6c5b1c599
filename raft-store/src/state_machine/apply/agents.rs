//! Attested agents, including the serial promotion agent renewal needs.

use crate::command::{ApplyError, Outcome, Table};
use crate::model::AttestedAgent;
use crate::schema::Cf;
use crate::state_machine::txn::{Txn, TxnError};

const WHAT: &str = "attested agent";

fn save(txn: &mut Txn<'_>, agent: &AttestedAgent) -> Result<Outcome, TxnError> {
    let id = agent.spiffe_id.to_string();
    txn.put(Cf::Agents, id.as_bytes(), WHAT, agent)?;
    txn.record(Table::Agent, &id, false);
    Ok(Outcome::Agent(Ok(agent.clone())))
}

/// Loads an agent or answers NotFound.
fn load(txn: &Txn<'_>, spiffe_id: &str) -> Result<Result<AttestedAgent, ApplyError>, TxnError> {
    Ok(txn
        .get::<AttestedAgent>(Cf::Agents, spiffe_id.as_bytes(), WHAT)?
        .ok_or_else(|| ApplyError::NotFound(format!("agent {spiffe_id:?}"))))
}

pub fn create(txn: &mut Txn<'_>, agent: &AttestedAgent) -> Result<Outcome, TxnError> {
    let id = agent.spiffe_id.to_string();
    if txn.exists(Cf::Agents, id.as_bytes())? {
        return Ok(Outcome::Agent(Err(ApplyError::AlreadyExists(format!("agent {id:?}")))));
    }
    save(txn, agent)
}

/// Replaces an agent's record (a re-attestation). A banned record is never replaced: a ban
/// applied between the attestation's read and this write would otherwise be undone. Only
/// deleting the agent lifts a ban, as in SPIRE.
pub fn update(txn: &mut Txn<'_>, agent: &AttestedAgent) -> Result<Outcome, TxnError> {
    match load(txn, &agent.spiffe_id.to_string())? {
        Ok(stored) if stored.banned => Ok(Outcome::Agent(Err(ApplyError::FailedPrecondition(format!(
            "agent {:?} is banned",
            agent.spiffe_id.to_string()
        ))))),
        Ok(_) => save(txn, agent),
        Err(e) => Ok(Outcome::Agent(Err(e))),
    }
}

pub fn set_new_serial(txn: &mut Txn<'_>, spiffe_id: &str, serial: &str, expires_at: i64) -> Result<Outcome, TxnError> {
    let mut agent = match load(txn, spiffe_id)? {
        Ok(a) => a,
        Err(e) => return Ok(Outcome::Agent(Err(e))),
    };
    if agent.banned {
        return Ok(Outcome::Agent(Err(ApplyError::FailedPrecondition(format!("agent {spiffe_id:?} is banned")))));
    }
    agent.new_serial_number = serial.to_owned();
    agent.new_expires_at = expires_at;
    save(txn, &agent)
}

/// The agent presented the SVID with `serial`: if it is the pending new one, it becomes
/// current; if it is already current nothing changes; anything else is refused.
pub fn promote_serial(txn: &mut Txn<'_>, spiffe_id: &str, serial: &str) -> Result<Outcome, TxnError> {
    let mut agent = match load(txn, spiffe_id)? {
        Ok(a) => a,
        Err(e) => return Ok(Outcome::Agent(Err(e))),
    };
    if agent.serial_number == serial && agent.new_serial_number.is_empty() {
        return Ok(Outcome::Agent(Ok(agent)));
    }
    if agent.new_serial_number.is_empty() || agent.new_serial_number != serial {
        return Ok(Outcome::Agent(Err(ApplyError::FailedPrecondition(format!(
            "serial {serial} is neither the current nor the pending SVID of agent {spiffe_id:?}"
        )))));
    }
    agent.serial_number = std::mem::take(&mut agent.new_serial_number);
    agent.expires_at = std::mem::take(&mut agent.new_expires_at);
    save(txn, &agent)
}

pub fn ban(txn: &mut Txn<'_>, spiffe_id: &str) -> Result<Outcome, TxnError> {
    let mut agent = match load(txn, spiffe_id)? {
        Ok(a) => a,
        Err(e) => return Ok(Outcome::Agent(Err(e))),
    };
    // SPIRE bans by clearing the serials: no SVID the agent holds is accepted again.
    agent.banned = true;
    agent.serial_number.clear();
    agent.new_serial_number.clear();
    save(txn, &agent)
}

/// Deletes the agent; for a join-token agent, also the alias entry its token made.
pub fn delete(txn: &mut Txn<'_>, spiffe_id: &str) -> Result<Outcome, TxnError> {
    let agent = match load(txn, spiffe_id)? {
        Ok(agent) => agent,
        Err(e) => return Ok(Outcome::Deleted(Err(e))),
    };
    if agent.attestation_type == "join_token" {
        super::entries::delete_join_token_aliases(txn, &agent.spiffe_id)?;
    }
    txn.delete(Cf::Agents, spiffe_id.as_bytes());
    txn.record(Table::Agent, spiffe_id, true);
    Ok(Outcome::Deleted(Ok(())))
}
