//! Agent callers: who they are, whether their SVID is still the one the cluster knows,
//! and which entries they may mint for.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use identity::SpiffeId;
use raft_store::model::{AttestedAgent, RegistrationEntry};
use raft_store::node::Replica;
use raft_store::{Command, Outcome, StoreReader};
use tonic::{Request, Status};

use super::caller::{caller_of, Caller};
use super::read_failed;

/// How many entries an agent's authorization may span (a bound on a runaway walk).
const MAX_AUTHORIZED: usize = 100_000;

/// The calling agent, after checking it is attested, not banned, and presenting its
/// current SVID — or its new one, which this call then promotes (a Raft write).
pub async fn require_agent<T>(request: &Request<T>, replica: &Replica) -> Result<AttestedAgent, Status> {
    let Caller::Peer { id, serial } = caller_of(request) else {
        return Err(Status::permission_denied("this call needs an agent SVID"));
    };
    if !id.path().starts_with("/spire/agent/") {
        return Err(Status::permission_denied(format!("{id} is not an agent")));
    }
    let agent = replica.local_reader().agent(&id.to_string()).await.map_err(read_failed)?;
    let agent = agent.ok_or_else(|| Status::permission_denied(format!("agent {id} is not attested (evicted?)")))?;
    if agent.banned {
        return Err(Status::permission_denied(format!("agent {id} is banned")));
    }
    if agent.serial_number == serial {
        return Ok(agent);
    }
    if !agent.new_serial_number.is_empty() && agent.new_serial_number == serial {
        let promote = Command::PromoteAgentSerial { spiffe_id: id.to_string(), serial_number: serial };
        return match replica.write(promote).await.map_err(|e| Status::unavailable(e.to_string()))?.outcome {
            Outcome::Agent(Ok(agent)) => Ok(agent),
            Outcome::Agent(Err(e)) => Err(Status::permission_denied(e.to_string())),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        };
    }
    Err(Status::permission_denied(format!("agent {id} presented an SVID that is no longer active")))
}

/// Every entry `agent` may mint for: those parented to it, to a node alias it holds, and
/// their descendants, keyed by entry id.
pub async fn authorized_entries(reader: &StoreReader, agent: &AttestedAgent, server_id: &SpiffeId) -> Result<BTreeMap<String, RegistrationEntry>, Status> {
    let mut parents: VecDeque<String> = VecDeque::from([agent.spiffe_id.to_string()]);
    // Node aliases: entries parented to the server whose selectors the agent has.
    let agent_selectors: BTreeSet<_> = agent.selectors.iter().collect();
    for alias in reader.entries_by_parent(&server_id.to_string()).await.map_err(read_failed)? {
        if !alias.selectors.is_empty() && alias.selectors.iter().all(|s| agent_selectors.contains(s)) {
            parents.push_back(alias.spiffe_id.to_string());
        }
    }
    let mut seen: BTreeSet<String> = parents.iter().cloned().collect();
    let mut authorized = BTreeMap::new();
    while let Some(parent) = parents.pop_front() {
        for entry in reader.entries_by_parent(&parent).await.map_err(read_failed)? {
            let child = entry.spiffe_id.to_string();
            if seen.insert(child.clone()) {
                parents.push_back(child);
            }
            authorized.insert(entry.id.clone(), entry);
            if authorized.len() > MAX_AUTHORIZED {
                return Err(Status::resource_exhausted(format!("agent is authorized for more than {MAX_AUTHORIZED} entries")));
            }
        }
    }
    Ok(authorized)
}
