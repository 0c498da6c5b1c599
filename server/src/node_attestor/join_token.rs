//! SPIRE's `join_token` node attestor: the agent presents a one-time token an admin
//! created; consuming it is a Raft write, so a token attests exactly one agent, cluster-wide.
//! The agent is named `spiffe://<td>/spire/agent/join_token/<token>`, as in SPIRE.

use std::sync::Arc;

use identity::SpiffeId;
use raft_store::command::ConsumeJoinToken;
use raft_store::ApplyError;
use tonic::Status;

use super::{Attested, BuildError, Challenger, NodeAttestor};
use crate::api::ApiContext;
use crate::config::plugins::NodeAttestorConfig;

/// The attestor's name in config and on the wire.
pub const NAME: &str = "join_token";
/// Longest join token a caller may choose.
const MAX_TOKEN_LEN: usize = 255;
const UNKNOWN: &str = "join token does not exist or has already been used";
const EXPIRED: &str = "join token expired";

pub struct JoinToken;

pub fn build(config: &NodeAttestorConfig) -> Result<Option<Arc<dyn NodeAttestor>>, BuildError> {
    Ok(config.join_token.then(|| Arc::new(JoinToken) as Arc<dyn NodeAttestor>))
}

/// Whether `token` may be a join token: 1 to 255 bytes of letters, digits and `-_.~`.
pub fn check_token(token: &str) -> Result<(), Status> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Status::invalid_argument(format!("token: must be 1 to {MAX_TOKEN_LEN} bytes")));
    }
    if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
        return Err(Status::invalid_argument("token: may contain only letters, digits, '-', '_', '.' and '~'"));
    }
    Ok(())
}

#[async_trait::async_trait]
impl NodeAttestor for JoinToken {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Consumes the token (once, cluster-wide) and names the agent after it.
    async fn attest(&self, payload: &[u8], _: &mut dyn Challenger, context: &ApiContext) -> Result<Attested, Status> {
        let token = std::str::from_utf8(payload)
            .map_err(|_| Status::invalid_argument("params.data.payload: the join token is not UTF-8"))?;
        check_token(token).map_err(|e| Status::invalid_argument(format!("params.data.payload: {}", e.message())))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Anyone may present a token: turn away unknown and expired ones with a read, so
        // only a token an admin made costs a replicated write.
        let key = token.to_owned();
        let stored = context
            .replica()?
            .read_or_confirm_absent(move |reader| {
                let key = key.clone();
                async move { reader.join_token(&key).await }
            })
            .await
            .map_err(crate::api::read_failed)?;
        match stored {
            None => return Err(Status::permission_denied(UNKNOWN)),
            Some(stored) if stored.expires_at < now => return Err(Status::permission_denied(EXPIRED)),
            Some(_) => {}
        }
        match context.write(ConsumeJoinToken { token: token.to_owned(), now }).await? {
            Ok(_) => {}
            Err(ApplyError::FailedPrecondition(_)) => return Err(Status::permission_denied(EXPIRED)),
            Err(_) => return Err(Status::permission_denied(UNKNOWN)),
        }
        let td = context.ca.config.trust_domain.name();
        let agent_id = SpiffeId::parse(&format!("spiffe://{td}/spire/agent/join_token/{token}"))
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Attested { agent_id, selectors: Vec::new(), can_reattest: false })
    }
}
