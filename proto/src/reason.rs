//! Machine-readable reasons on gRPC errors. A status whose cause the caller acts on (an
//! agent that was evicted attests again; a banned one stops asking) carries a
//! `google.rpc.ErrorInfo` detail with one of these reasons in the `testudo` domain, so no
//! caller decides anything from message text. Other gRPC clients still see an ordinary
//! code and message.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every reason here.
pub const DOMAIN: &str = "testudo";

/// Why a call was refused, where the caller acts on the cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The calling agent has no attested record (never attested, or evicted): it may
    /// attest again if its attestor can prove the node again.
    AgentNotAttested,
    /// The calling agent is banned: it must not attest again.
    AgentBanned,
    /// The agent presented an SVID the cluster no longer knows as its current one.
    AgentSvidSuperseded,
    /// The agent's attestor can prove the node again (x509pop): it must attest again
    /// instead of renewing, so a node whose proof lapsed loses its identity.
    ReattestRequired,
    /// This server belongs to no cluster yet (pristine, or joining one).
    NoCluster,
    /// The cluster could not commit or read right now (no leader, no quorum); a write was
    /// not applied. Retry, here or at another replica.
    ClusterUnavailable,
    /// A write reached a leader, but no answer came back in time: it may or may not have
    /// been applied. Sending it again with the same request id (`x-testudo-request-id`)
    /// applies it at most once and answers what happened.
    OutcomeUnknown,
    /// The CA's key manager (KMS, HSM) did not answer: retry later or elsewhere.
    SigningUnavailable,
    /// The caller sent too much, too often.
    RateLimited,
    /// The authorization table does not admit this kind of caller to this method.
    CallerNotAllowed,
}

impl Reason {
    /// The `ErrorInfo.reason` string: UPPER_SNAKE_CASE, as google.rpc asks.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentNotAttested => "AGENT_NOT_ATTESTED",
            Self::AgentBanned => "AGENT_BANNED",
            Self::AgentSvidSuperseded => "AGENT_SVID_SUPERSEDED",
            Self::ReattestRequired => "REATTEST_REQUIRED",
            Self::NoCluster => "NO_CLUSTER",
            Self::ClusterUnavailable => "CLUSTER_UNAVAILABLE",
            Self::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Self::SigningUnavailable => "SIGNING_UNAVAILABLE",
            Self::RateLimited => "RATE_LIMITED",
            Self::CallerNotAllowed => "CALLER_NOT_ALLOWED",
        }
    }

    fn from_str(reason: &str) -> Option<Self> {
        [
            Self::AgentNotAttested,
            Self::AgentBanned,
            Self::AgentSvidSuperseded,
            Self::ReattestRequired,
            Self::NoCluster,
            Self::ClusterUnavailable,
            Self::OutcomeUnknown,
            Self::SigningUnavailable,
            Self::RateLimited,
            Self::CallerNotAllowed,
        ]
        .into_iter()
        .find(|r| r.as_str() == reason)
    }

    /// A status with `code`, `message` and this reason as its ErrorInfo detail.
    pub fn status(self, code: Code, message: impl Into<String>) -> Status {
        let details = ErrorDetails::with_error_info(self.as_str(), DOMAIN, std::collections::HashMap::new());
        Status::with_error_details(code, message, details)
    }

    /// The reason a status carries, if it carries one of ours.
    pub fn of(status: &Status) -> Option<Self> {
        let details = status.get_error_details();
        let info = details.error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        Self::from_str(&info.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_survives_the_trip_through_status_details() {
        let status = Reason::AgentBanned.status(Code::PermissionDenied, "agent x is banned");
        // What a client decodes from the wire: the code, message and details bytes.
        let received = Status::with_details(status.code(), status.message(), status.details().to_vec().into());
        assert_eq!(Reason::of(&received), Some(Reason::AgentBanned));
        assert_eq!(received.code(), Code::PermissionDenied);
        assert_eq!(received.message(), "agent x is banned");
    }

    #[test]
    fn plain_statuses_and_other_domains_carry_no_reason() {
        assert_eq!(Reason::of(&Status::permission_denied("agent x is not attested")), None);
        let foreign = ErrorDetails::with_error_info("AGENT_BANNED", "example.com", std::collections::HashMap::new());
        assert_eq!(Reason::of(&Status::with_error_details(Code::PermissionDenied, "m", foreign)), None);
    }
}
