//! Agent callers: who they are, and whether their SVID is still the one the cluster knows.
//! Which entries they may mint for is the entry view's answer (`views::entries`).

use std::sync::Arc;

use identity::SpiffeId;
use proto::reason::Reason;
use raft_store::command::PromoteAgentSerial;
use raft_store::model::AttestedAgent;
use raft_store::ApplyError;
use tonic::{Code, Request, Status};

use super::authorize::AuthorizedAgent;
use super::caller::{caller_of, Caller};
use super::{write_failed, ApiContext};
use crate::views::Views;

/// Agent `id` as this replica's views hold it, if it is attested and not banned; otherwise
/// the refusal, with the reason the agent acts on.
pub fn attested_agent(views: &Views, id: &str) -> Result<Arc<AttestedAgent>, Status> {
    let agent = views.agents().get(id).ok_or_else(|| {
        Reason::AgentNotAttested.status(Code::PermissionDenied, format!("agent {id} is not attested (evicted?)"))
    })?;
    if agent.banned {
        return Err(Reason::AgentBanned.status(Code::PermissionDenied, format!("agent {id} is banned")));
    }
    Ok(agent)
}

/// The calling agent: as the authorization layer found it, or checked here.
pub async fn require_agent<T>(request: &Request<T>, context: &ApiContext) -> Result<AttestedAgent, Status> {
    if let Some(AuthorizedAgent(agent)) = request.extensions().get::<AuthorizedAgent>() {
        return Ok(AttestedAgent::clone(agent));
    }
    let Caller::Peer { id, serial } = caller_of(request) else {
        return Err(Status::permission_denied("this call needs an agent SVID"));
    };
    check_agent(context, &id, &serial).await.map(|agent| AttestedAgent::clone(&agent))
}

/// Agent `id` presenting the SVID with `serial`, after checking it is attested, not banned,
/// and presenting its current SVID — or its new one, which this call then promotes (a Raft
/// write).
pub async fn check_agent(context: &ApiContext, id: &SpiffeId, serial: &str) -> Result<Arc<AttestedAgent>, Status> {
    if !id.path().starts_with("/spire/agent/") {
        return Err(Status::permission_denied(format!("{id} is not an agent")));
    }
    let member = context.current().await?;
    let mut agent = attested_agent(&member.views, &id.to_string())?;
    if agent.serial_number != serial && agent.new_serial_number != serial {
        // This replica's views may not have applied the renewal that issued this SVID yet
        // (another replica answered it a moment ago): before refusing, read the record as
        // the leader has it. Only an SVID this replica does not know costs the read.
        let reader = member.replica.linearizable_reader().await.map_err(super::read_failed)?;
        if let Some(current) = reader.agent(&id.to_string()).await.map_err(super::read_failed)? {
            agent = Arc::new(current);
        }
        if agent.banned {
            return Err(Reason::AgentBanned.status(Code::PermissionDenied, format!("agent {id} is banned")));
        }
    }
    if agent.serial_number == serial {
        return Ok(agent);
    }
    if !agent.new_serial_number.is_empty() && agent.new_serial_number == serial {
        let promote = PromoteAgentSerial { spiffe_id: id.to_string(), serial_number: serial.to_owned() };
        return member.replica.write(promote).await.map_err(write_failed)?.map(Arc::new).map_err(|e| {
            let reason = if matches!(e, ApplyError::NotFound(_)) {
                Reason::AgentNotAttested
            } else {
                Reason::AgentSvidSuperseded
            };
            reason.status(Code::PermissionDenied, format!("agent {id}: {e}"))
        });
    }
    Err(Reason::AgentSvidSuperseded
        .status(Code::PermissionDenied, format!("agent {id} presented an SVID that is no longer active")))
}
