//! `spire.api.server.agent.v1.Agent`: join tokens and the admin view of attested agents.
//! Attestation and renewal (agent-facing) come with the agent listener.

use identity::{Selector, SpiffeId};
use proto::spire::api::server::agent::v1 as pb;
use proto::spire::api::server::agent::v1::agent_server::Agent;
use proto::spire::api::types;
use raft_store::command::{
    BanAgent, CreateAgent, CreateEntries, CreateJoinToken, DeleteAgent, SetAgentNewSerial, UpdateAgent,
};
use raft_store::model::{AttestedAgent, JoinToken};
use tonic::{Request, Response, Status};

use super::convert::{spiffe_id_from_pb, spiffe_id_to_pb};
use super::{apply_status, read_failed, ApiContext};
use crate::node_attestor::{Attested, Challenger};

pub struct AgentService {
    pub context: ApiContext,
}

const PAGE: usize = 1000;
/// How long an agent has to answer an attestation challenge.
const CHALLENGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long an attesting caller may take to send its params.
const FIRST_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Anyone can have an attestation refused: log refusals at most once per 10 s.
static REFUSALS_LOGGED: raft_store::network::LogBudget = raft_store::network::LogBudget::new();

fn agent_to_pb(agent: &AttestedAgent, mask: Option<&types::AgentMask>) -> types::Agent {
    let m = mask.cloned().unwrap_or(types::AgentMask {
        attestation_type: true,
        x509svid_serial_number: true,
        x509svid_expires_at: true,
        selectors: true,
        banned: true,
        can_reattest: true,
    });
    types::Agent {
        id: Some(spiffe_id_to_pb(&agent.spiffe_id)),
        attestation_type: if m.attestation_type { agent.attestation_type.clone() } else { String::new() },
        x509svid_serial_number: if m.x509svid_serial_number { agent.serial_number.clone() } else { String::new() },
        x509svid_expires_at: if m.x509svid_expires_at { agent.expires_at } else { 0 },
        selectors: if m.selectors {
            agent
                .selectors
                .iter()
                .map(|s| types::Selector { r#type: s.kind().to_owned(), value: s.value().to_owned() })
                .collect()
        } else {
            vec![]
        },
        banned: m.banned && agent.banned,
        can_reattest: m.can_reattest && agent.can_reattest,
    }
}

/// SPIRE's agent filters; every given one must hold.
struct AgentFilter {
    attestation_type: Option<String>,
    selectors: Option<(Vec<Selector>, i32)>,
    banned: Option<bool>,
    can_reattest: Option<bool>,
    expires_before: Option<i64>,
}

impl AgentFilter {
    fn from_pb(f: Option<pb::list_agents_request::Filter>) -> Result<Self, Status> {
        let Some(f) = f else {
            return Ok(Self {
                attestation_type: None,
                selectors: None,
                banned: None,
                can_reattest: None,
                expires_before: None,
            });
        };
        let selectors = match f.by_selector_match {
            None => None,
            Some(m) if m.selectors.is_empty() => {
                return Err(Status::invalid_argument("filter.by_selector_match: at least one selector is required"))
            }
            Some(m) => Some((
                m.selectors
                    .iter()
                    .map(|s| {
                        Selector::new(&s.r#type, &s.value)
                            .map_err(|e| Status::invalid_argument(format!("filter.by_selector_match: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                m.r#match,
            )),
        };
        let expires_before = match f.by_expires_before.as_str() {
            "" => None,
            text => Some(
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map(|t| t.unix_timestamp())
                    .or_else(|_| text.parse::<i64>())
                    .map_err(|_| {
                        Status::invalid_argument(format!(
                            "filter.by_expires_before: {text:?} is neither RFC 3339 nor Unix seconds"
                        ))
                    })?,
            ),
        };
        Ok(Self {
            attestation_type: Some(f.by_attestation_type).filter(|t| !t.is_empty()),
            selectors,
            banned: f.by_banned,
            can_reattest: f.by_can_reattest,
            expires_before,
        })
    }

    fn matches(&self, agent: &AttestedAgent) -> bool {
        self.attestation_type.as_ref().is_none_or(|t| *t == agent.attestation_type)
            && self.selectors.as_ref().is_none_or(|(want, how)| {
                let have = &agent.selectors;
                match how {
                    0 => have.len() == want.len() && want.iter().all(|s| have.contains(s)),
                    1 => have.iter().all(|s| want.contains(s)),
                    2 => want.iter().all(|s| have.contains(s)),
                    _ => want.iter().any(|s| have.contains(s)),
                }
            })
            && self.banned.is_none_or(|b| b == agent.banned)
            && self.can_reattest.is_none_or(|c| c == agent.can_reattest)
            && self.expires_before.is_none_or(|t| agent.expires_at < t)
    }
}

/// The agent's side of an attestation, over the AttestAgent stream: a challenge goes out,
/// its response is awaited for at most `CHALLENGE_TIMEOUT`.
struct AttestationStream<'a> {
    stream: &'a mut tonic::Streaming<pb::AttestAgentRequest>,
    tx: &'a tokio::sync::mpsc::Sender<Result<pb::AttestAgentResponse, Status>>,
}

#[async_trait::async_trait]
impl Challenger for AttestationStream<'_> {
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, Status> {
        let message = pb::AttestAgentResponse { step: Some(pb::attest_agent_response::Step::Challenge(challenge)) };
        self.tx.send(Ok(message)).await.map_err(|_| Status::cancelled("the agent went away"))?;
        let next = tokio::time::timeout(CHALLENGE_TIMEOUT, self.stream.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no challenge response in time"))??
            .ok_or_else(|| Status::invalid_argument("challenge_response: the stream ended before it"))?;
        let Some(pb::attest_agent_request::Step::ChallengeResponse(response)) = next.step else {
            return Err(Status::invalid_argument("challenge_response: expected after the challenge"));
        };
        Ok(response)
    }
}

impl AgentService {
    async fn attest(
        &self,
        mut stream: tonic::Streaming<pb::AttestAgentRequest>,
        tx: &tokio::sync::mpsc::Sender<Result<pb::AttestAgentResponse, Status>>,
    ) -> Result<pb::attest_agent_response::Result, Status> {
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, stream.message())
            .await
            .map_err(|_| Status::deadline_exceeded("params: no message within 10 s"))??
            .ok_or_else(|| Status::invalid_argument("params: the stream ended before any message"))?;
        let Some(pb::attest_agent_request::Step::Params(params)) = first.step else {
            return Err(Status::invalid_argument("params: the first message must carry params"));
        };
        let data = params.data.ok_or_else(|| Status::invalid_argument("params.data: required"))?;
        let csr = params
            .params
            .map(|p| p.csr)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Status::invalid_argument("params.params.csr: required"))?;
        let public_key = identity::x509::public_key_from_csr(&csr)
            .map_err(|e| Status::invalid_argument(format!("params.params.csr: {e}")))?;
        let attestor = self.context.node_attestors.get(&data.r#type)?;
        let mut agent_side = AttestationStream { stream: &mut stream, tx };
        let Attested { agent_id, selectors, can_reattest: reattestable } =
            attestor.attest(&data.payload, &mut agent_side, &self.context).await?;
        let replica = self.context.replica()?;
        let existing = replica
            .linearizable_reader()
            .await
            .map_err(read_failed)?
            .agent(&agent_id.to_string())
            .await
            .map_err(read_failed)?;
        if existing.as_ref().is_some_and(|a| a.banned) {
            return Err(Status::permission_denied(format!("agent {agent_id} is banned")));
        }
        let (svid, serial) = self.mint_agent_svid(&agent_id, public_key).await?;
        let agent = AttestedAgent {
            spiffe_id: agent_id.clone(),
            attestation_type: data.r#type.clone(),
            selectors,
            serial_number: serial,
            expires_at: svid.expires_at,
            new_serial_number: String::new(),
            new_expires_at: 0,
            banned: false,
            can_reattest: reattestable,
        };
        let written = if existing.is_some() {
            self.context.write(UpdateAgent(agent)).await?
        } else {
            self.context.write(CreateAgent(agent)).await?
        };
        written.map_err(|e| match e {
            // Banned between the read above and this write: the ban stands.
            raft_store::ApplyError::FailedPrecondition(_) => proto::reason::Reason::AgentBanned
                .status(tonic::Code::PermissionDenied, format!("agent {agent_id} is banned")),
            other => apply_status(&other),
        })?;
        tracing::info!(agent = %agent_id, attestor = %data.r#type, "agent attested");
        metrics::counter!("testudo_agent_attestations_total", "attestor" => data.r#type).increment(1);
        Ok(pb::attest_agent_response::Result { svid: Some(svid), reattestable })
    }

    /// An agent SVID for `public_key`, and its serial (hex).
    async fn mint_agent_svid(
        &self,
        id: &SpiffeId,
        public_key: identity::crypto::PublicKey,
    ) -> Result<(types::X509svid, String), Status> {
        let ca = self.context.signing().await?;
        let chain = ca
            .mint_x509_svid(id.clone(), public_key, self.context.agent_ttl, vec![])
            .await
            .map_err(|e| Status::unavailable(format!("cannot sign: {e}")))?;
        let facts = identity::x509::certificate_facts(&chain[0]).map_err(|e| Status::internal(e.to_string()))?;
        let serial = hex::encode(&facts.serial);
        let svid = types::X509svid {
            cert_chain: chain,
            id: Some(spiffe_id_to_pb(id)),
            expires_at: facts.not_after.unix_timestamp(),
            hint: String::new(),
        };
        Ok((svid, serial))
    }

    async fn all_matching(&self, filter: &AgentFilter) -> Result<Vec<AttestedAgent>, Status> {
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let (mut found, mut after) = (Vec::new(), None);
        loop {
            let page = reader.list_agents(after, PAGE).await.map_err(read_failed)?;
            found.extend(page.items.into_iter().filter(|a| filter.matches(a)));
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(found),
            }
        }
    }

    fn agent_id(&self, id: Option<&types::Spiffeid>) -> Result<SpiffeId, Status> {
        let id = spiffe_id_from_pb(id, "id")?;
        if id.trust_domain() != &self.context.ca.config.trust_domain {
            return Err(Status::invalid_argument(format!(
                "id: {id} is not in trust domain {}",
                self.context.ca.config.trust_domain.name()
            )));
        }
        Ok(id)
    }
}

/// A join token's value: printable ASCII, no '/', at most 255 bytes (it becomes a path
/// segment of the agent's SPIFFE ID).
#[tonic::async_trait]
impl Agent for AgentService {
    async fn count_agents(
        &self,
        request: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountAgentsResponse>, Status> {
        let filter = request.into_inner().filter.map(|f| pb::list_agents_request::Filter {
            by_attestation_type: f.by_attestation_type,
            by_selector_match: f.by_selector_match,
            by_banned: f.by_banned,
            by_can_reattest: f.by_can_reattest,
            by_expires_before: f.by_expires_before,
        });
        let agents = self.all_matching(&AgentFilter::from_pb(filter)?).await?;
        Ok(Response::new(pb::CountAgentsResponse { count: i32::try_from(agents.len()).unwrap_or(i32::MAX) }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let request = request.into_inner();
        if request.page_size < 0 {
            return Err(Status::invalid_argument("page_size: must not be negative"));
        }
        let mut agents = self.all_matching(&AgentFilter::from_pb(request.filter)?).await?;
        if !request.page_token.is_empty() {
            agents.retain(|a| a.spiffe_id.to_string() > request.page_token);
        }
        let limit = usize::try_from(request.page_size).unwrap_or(0);
        let more = limit > 0 && agents.len() > limit;
        if more {
            agents.truncate(limit);
        }
        let next_page_token =
            if more { agents.last().map(|a| a.spiffe_id.to_string()).unwrap_or_default() } else { String::new() };
        let mask = request.output_mask.as_ref();
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(|a| agent_to_pb(a, mask)).collect(),
            next_page_token,
        }))
    }

    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<types::Agent>, Status> {
        let request = request.into_inner();
        let id = self.agent_id(request.id.as_ref())?;
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let agent = reader
            .agent(&id.to_string())
            .await
            .map_err(read_failed)?
            .ok_or_else(|| Status::not_found(format!("id: no agent {id}")))?;
        Ok(Response::new(agent_to_pb(&agent, request.output_mask.as_ref())))
    }

    async fn delete_agent(&self, request: Request<pb::DeleteAgentRequest>) -> Result<Response<()>, Status> {
        let id = self.agent_id(request.get_ref().id.as_ref())?;
        self.context.write(DeleteAgent { spiffe_id: id.to_string() }).await?.map_err(|e| apply_status(&e))?;
        Ok(Response::new(()))
    }

    async fn ban_agent(&self, request: Request<pb::BanAgentRequest>) -> Result<Response<()>, Status> {
        let id = self.agent_id(request.get_ref().id.as_ref())?;
        self.context.write(BanAgent { spiffe_id: id.to_string() }).await?.map_err(|e| apply_status(&e))?;
        Ok(Response::new(()))
    }

    type AttestAgentStream = tokio_stream::wrappers::ReceiverStream<Result<pb::AttestAgentResponse, Status>>;

    /// Node attestation: params, then (x509pop) a challenge and its response, then the
    /// agent SVID. The exchange runs in its own task so the challenge can be sent before
    /// the response is read.
    async fn attest_agent(
        &self,
        request: Request<tonic::Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<Self::AttestAgentStream>, Status> {
        self.context.limits.attestation(&request).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let service = AgentService { context: self.context.clone() };
        let stream = request.into_inner();
        tokio::spawn(async move {
            let outcome = service.attest(stream, &tx).await;
            let message = outcome
                .map(|result| pb::AttestAgentResponse { step: Some(pb::attest_agent_response::Step::Result(result)) });
            if let Err(status) = &message {
                if let Some(skipped) = REFUSALS_LOGGED.allow() {
                    tracing::info!(code = ?status.code(), reason = %status.message(), skipped, "agent attestation refused");
                }
            }
            let _ = tx.send(message).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn renew_agent(
        &self,
        request: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let agent = super::agent_auth::require_agent(&request, &self.context).await?;
        if agent.can_reattest {
            // As SPIRE: a node that can prove itself again must, so one whose certificate
            // expired or whose CA left `ca_bundle_path` does not keep its identity forever.
            return Err(proto::reason::Reason::ReattestRequired
                .status(tonic::Code::PermissionDenied, "agent must reattest instead of renew"));
        }
        let csr = request
            .into_inner()
            .params
            .map(|p| p.csr)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Status::invalid_argument("params.csr: required"))?;
        let public_key = identity::x509::public_key_from_csr(&csr)
            .map_err(|e| Status::invalid_argument(format!("params.csr: {e}")))?;
        let (svid, serial) = self.mint_agent_svid(&agent.spiffe_id, public_key).await?;
        let command = SetAgentNewSerial {
            spiffe_id: agent.spiffe_id.to_string(),
            serial_number: serial,
            expires_at: svid.expires_at,
        };
        self.context.write(command).await?.map_err(|e| apply_status(&e))?;
        Ok(Response::new(pb::RenewAgentResponse { svid: Some(svid) }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<types::JoinToken>, Status> {
        let request = request.into_inner();
        if request.ttl <= 0 {
            return Err(Status::invalid_argument("ttl: required, in seconds, positive"));
        }
        let token = if request.token.is_empty() { super::entry::new_entry_id()? } else { request.token };
        crate::node_attestor::join_token::check_token(&token)?;
        let td = &self.context.ca.config.trust_domain;
        let agent_path_id = SpiffeId::parse(&format!("spiffe://{}/spire/agent/join_token/{token}", td.name()))
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        let alias = match request.agent_id.as_ref() {
            None => None,
            Some(id) => {
                // As SPIRE: the alias is a workload ID, never one under /spire/ (which would
                // let the token's agent pass as the server or as another agent).
                let id = spiffe_id_from_pb(Some(id), "agent_id")?;
                super::entry::check_workload_id(&id, td, "agent_id")?;
                Some(id)
            }
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expires_at = now + i64::from(request.ttl);
        let stored = JoinToken { token: token.clone(), expires_at, agent_id: alias.as_ref().map(ToString::to_string) };
        // The stored token answers: a call sent again gets the first try's expiry.
        let stored = self.context.write(CreateJoinToken(stored)).await?.map_err(|e| apply_status(&e))?;
        if let Some(alias) = alias {
            // As SPIRE does: an entry that makes the token's agent also `agent_id`, checked
            // as the Entry API checks every entry.
            let proposed = types::Entry {
                spiffe_id: Some(spiffe_id_to_pb(&alias)),
                parent_id: Some(spiffe_id_to_pb(&agent_path_id)),
                selectors: vec![types::Selector { r#type: "spiffe_id".into(), value: agent_path_id.to_string() }],
                ..Default::default()
            };
            let entry = super::entry::entry_from_pb(&proposed, td, super::entry::new_entry_id()?, now)?;
            if let Some(Err(e)) = self.context.write(CreateEntries(vec![entry])).await?.into_iter().next() {
                return Err(apply_status(&e));
            }
        }
        Ok(Response::new(types::JoinToken { value: stored.token, expires_at: stored.expires_at }))
    }

    /// An agent reports the bundle serial it holds; it is logged for operators (the bundle
    /// itself reaches agents through GetBundle and their sync).
    async fn post_status(
        &self,
        request: Request<pb::PostStatusRequest>,
    ) -> Result<Response<pb::PostStatusResponse>, Status> {
        let agent = super::agent_auth::require_agent(&request, &self.context).await?;
        tracing::debug!(agent = %agent.spiffe_id, bundle_serial = request.get_ref().current_bundle_serial, "agent status");
        Ok(Response::new(pb::PostStatusResponse {}))
    }
}
