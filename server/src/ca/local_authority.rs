//! SPIRE's LocalAuthority operations on the CA journal, for admins: prepare the next
//! authority now, activate a prepared one, taint an old one (what it signed must be
//! replaced), revoke a tainted one (it leaves the bundle). The journal enforces the order.

use raft_store::model::{
    Authority, JournalEvent, JwtKeyAuthority, SlotEvent, SlotId, SlotPair, SlotStatus, X509CaAuthority,
};

use super::manager::{CaError, CaManager, JournalSink};
use super::rotation::RotationStep;

/// Which authorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityKind {
    X509,
    Jwt,
}

/// A transition an admin asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Activate,
    Taint,
    Revoke,
}

/// An authority as LocalAuthority shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityState {
    /// X.509: the CA certificate's subject key id (hex); JWT: the key id.
    pub authority_id: String,
    pub expires_at: i64,
    /// X.509 signed by an upstream authority: the key id (hex) of the upstream certificate
    /// that signed it, as SPIRE reports it; empty when self-signed, and for JWT.
    pub upstream_authority_id: String,
}

/// The active, prepared and old authorities of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthorityStates {
    pub active: Option<AuthorityState>,
    pub prepared: Option<AuthorityState>,
    pub old: Option<AuthorityState>,
}

/// An X.509 CA's authority id: its subject key identifier, else the SHA-256 of the DER.
pub fn x509_authority_id(certificate: &[u8]) -> String {
    let ski = identity::x509::certificate_facts(certificate).ok().and_then(|f| f.subject_key_id);
    let bytes =
        ski.unwrap_or_else(|| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, certificate).as_ref().to_vec());
    hex::encode(bytes)
}

/// The key id of the upstream certificate that signed `authority` (its authority key
/// identifier), or empty when it is self-signed.
fn x509_upstream_id(authority: &X509CaAuthority) -> String {
    if authority.trust_anchors.contains(&authority.certificate) {
        return String::new();
    }
    identity::x509::certificate_facts(&authority.certificate)
        .ok()
        .and_then(|f| f.authority_key_id)
        .map(hex::encode)
        .unwrap_or_default()
}

fn x509_state(authority: &X509CaAuthority) -> AuthorityState {
    AuthorityState {
        authority_id: x509_authority_id(&authority.certificate),
        expires_at: authority.not_after.unix_timestamp(),
        upstream_authority_id: x509_upstream_id(authority),
    }
}

fn jwt_state(authority: &JwtKeyAuthority) -> AuthorityState {
    AuthorityState {
        authority_id: authority.kid.clone(),
        expires_at: authority.not_after.unix_timestamp(),
        upstream_authority_id: String::new(),
    }
}

fn states<T: Authority>(pair: &SlotPair<T>, state_of: impl Fn(&T) -> AuthorityState) -> AuthorityStates {
    let state = |status| pair.with_status(status).map(|s| state_of(&s.authority));
    AuthorityStates {
        active: state(SlotStatus::Active),
        prepared: state(SlotStatus::Prepared),
        old: state(SlotStatus::Old),
    }
}

impl CaManager {
    pub fn authority_states(&self, kind: AuthorityKind) -> AuthorityStates {
        match kind {
            AuthorityKind::X509 => states(&self.journal().x509, x509_state),
            AuthorityKind::Jwt => states(&self.journal().jwt, jwt_state),
        }
    }

    /// Prepares the next authority now, in the slot that is not active.
    pub async fn prepare_now(
        &mut self,
        kind: AuthorityKind,
        sink: &dyn JournalSink,
    ) -> Result<AuthorityState, CaError> {
        let now = self.clock.now();
        let events = match kind {
            AuthorityKind::X509 => {
                let slot = self.journal().x509.active().map_or(SlotId::A, |s| s.id.other());
                self.x509_step(RotationStep::Prepare { slot, activate: false }, now, sink).await?
            }
            AuthorityKind::Jwt => {
                let slot = self.journal().jwt.active().map_or(SlotId::A, |s| s.id.other());
                self.jwt_step(RotationStep::Prepare { slot, activate: false }, now, sink).await?
            }
        };
        for event in events {
            self.commit(event, sink).await?;
        }
        self.authority_states(kind).prepared.ok_or(CaError::NoActiveAuthority("prepared"))
    }

    /// Activates, taints or revokes the authority named `authority_id`. Returns its state
    /// before the change (a revoked authority has none after).
    pub async fn transition(
        &mut self,
        kind: AuthorityKind,
        authority_id: &str,
        transition: Transition,
        sink: &dyn JournalSink,
    ) -> Result<AuthorityState, CaError> {
        let (slot, state) = match kind {
            AuthorityKind::X509 => {
                let pair = &self.journal().x509;
                let slot = pair
                    .iter()
                    .find(|s| x509_authority_id(&s.authority.certificate) == authority_id)
                    .ok_or_else(|| CaError::UnknownAuthority(authority_id.to_owned()))?;
                (slot.id, x509_state(&slot.authority))
            }
            AuthorityKind::Jwt => {
                let pair = &self.journal().jwt;
                let slot = pair
                    .iter()
                    .find(|s| s.authority.kid == authority_id)
                    .ok_or_else(|| CaError::UnknownAuthority(authority_id.to_owned()))?;
                (slot.id, jwt_state(&slot.authority))
            }
        };
        let event = match (kind, transition) {
            (AuthorityKind::X509, Transition::Activate) => JournalEvent::X509(SlotEvent::Activated { slot }),
            (AuthorityKind::X509, Transition::Taint) => JournalEvent::X509(SlotEvent::Tainted { slot }),
            (AuthorityKind::X509, Transition::Revoke) => JournalEvent::X509(SlotEvent::Revoked { slot }),
            (AuthorityKind::Jwt, Transition::Activate) => JournalEvent::Jwt(SlotEvent::Activated { slot }),
            (AuthorityKind::Jwt, Transition::Taint) => JournalEvent::Jwt(SlotEvent::Tainted { slot }),
            (AuthorityKind::Jwt, Transition::Revoke) => JournalEvent::Jwt(SlotEvent::Revoked { slot }),
        };
        self.commit(event, sink).await?;
        Ok(state)
    }

    /// Checks the event against the journal first, so a refusal names the rule, then makes
    /// it durable and applies it.
    async fn commit(&mut self, event: JournalEvent, sink: &dyn JournalSink) -> Result<(), CaError> {
        self.journal().clone().apply(&event)?;
        self.commit_event(&event, sink).await?;
        self.apply(event).await
    }
}
