//! Carries out the rotation schedule: generates keys, mints CA certificates (self-signed or
//! upstream), records each change as a journal event and publishes it in the bundle; and
//! signs SVIDs with the active authorities.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use identity::bundle::Bundle;
use identity::crypto::{KeyType, PublicKey, Signer};
use identity::jwt::JwtError;
use identity::x509::{mint_ca, CaTemplate, MintError};
use identity::TrustDomain;
use kms::{KeyManagerError, KeyOwner};
use time::OffsetDateTime;

use raft_store::model::{
    publish, CaJournal, CaKeyKind, JournalError, JournalEvent, JwtKeyAuthority, KeyMaterial, SlotEvent, SlotId,
    StoredBundle, X509CaAuthority,
};

use super::config::{CaConfig, CaConfigError};
use super::keys::CaKeys;
use super::prune::{expired_x509, prune_expired};
use super::rotation::{chains_to_tainted, next_step, tainted_upstream_step, RotationStep};
use super::signing::Signing;
use crate::clock::Clock;
use crate::upstream::{UpstreamAuthority, UpstreamError};

/// Why the CA could not rotate or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Config(#[from] CaConfigError),
    #[error(transparent)]
    KeyManager(#[from] KeyManagerError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("CA journal refused a change: {0}")]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Bundle(#[from] raft_store::model::BundleConversionError),
    #[error("no active {0} authority")]
    NoActiveAuthority(&'static str),
    #[error("CA task failed: {0}")]
    Task(String),
    #[error("the cluster did not record a CA change: {0}")]
    Replication(String),
    #[error("no authority with id {0:?}")]
    UnknownAuthority(String),
    #[error(transparent)]
    ClockSkewed(#[from] crate::clock::ClockSkewed),
}

impl CaError {
    /// Whether this replica cannot sign now (its key manager, KMS or HSM, is unreachable, or
    /// its clock is off): callers should retry another replica, or later, not give up.
    pub fn signing_unavailable(&self) -> bool {
        use identity::crypto::SignError;
        matches!(
            self,
            Self::ClockSkewed(_)
                | Self::KeyManager(KeyManagerError::Unavailable { .. })
                | Self::Mint(MintError::Sign(SignError::Unavailable { .. }))
                | Self::Jwt(JwtError::Signer(SignError::Unavailable { .. }))
        )
    }
}

/// The CA of one trust domain.
pub struct CaManager {
    config: CaConfig,
    keys: CaKeys,
    upstream: Option<Arc<dyn UpstreamAuthority>>,
    pub(super) clock: Arc<dyn Clock>,
    journal: CaJournal,
    bundle: StoredBundle,
}

/// Where the CA's journal events and bundle prunes are made durable before the manager
/// applies them: nowhere for a lone CA, the Raft log in a cluster.
#[async_trait::async_trait]
pub trait JournalSink: Send + Sync {
    async fn commit(&self, trust_domain: &TrustDomain, event: &JournalEvent) -> Result<(), CaError>;
    async fn prune(
        &self,
        trust_domain: &TrustDomain,
        now: OffsetDateTime,
        expired_x509: Vec<Vec<u8>>,
    ) -> Result<(), CaError>;

    /// A fresh id for a key a key manager is about to make in `slot`, reserved before the
    /// key exists (through Raft in a cluster, see `KeyIntents`), and the owner to tag the
    /// key with. `unreserved` is the id a lone CA uses: numbered after the journal's count.
    async fn reserve_key(
        &self,
        kind: CaKeyKind,
        slot: SlotId,
        unreserved: String,
        now: OffsetDateTime,
    ) -> Result<(String, Option<KeyOwner>), CaError>;

    /// Gives up a reserved id whose authority will not be recorded. Answers whether it was
    /// still pending: then nothing can record it any more and its key may be deleted;
    /// otherwise the journal may already name it.
    async fn release_key(&self, key_id: &str) -> Result<bool, CaError>;
}

/// Keeps nothing: the manager's own journal is the only copy.
struct InMemory;

#[async_trait::async_trait]
impl JournalSink for InMemory {
    async fn commit(&self, _: &TrustDomain, _: &JournalEvent) -> Result<(), CaError> {
        Ok(())
    }
    async fn prune(&self, _: &TrustDomain, _: OffsetDateTime, _: Vec<Vec<u8>>) -> Result<(), CaError> {
        Ok(())
    }
    async fn reserve_key(
        &self,
        _: CaKeyKind,
        _: SlotId,
        unreserved: String,
        _: OffsetDateTime,
    ) -> Result<(String, Option<KeyOwner>), CaError> {
        Ok((unreserved, None))
    }
    async fn release_key(&self, _: &str) -> Result<bool, CaError> {
        // A lone CA's next attempt reuses the id, replacing the key.
        Ok(false)
    }
}

/// A new key for an authority: its id, public half, and private half when the journal
/// carries it.
pub(super) struct NewKey {
    pub id: String,
    pub public_key: PublicKey,
    pub private_key: Option<KeyMaterial>,
}

/// A safety bound on steps per `rotate` call; a fresh CA needs four (two per kind).
const MAX_STEPS_PER_ROTATION: usize = 8;

impl CaManager {
    /// A CA with an empty journal and bundle; the first `rotate` creates its authorities.
    pub fn new(
        config: CaConfig,
        keys: CaKeys,
        upstream: Option<Arc<dyn UpstreamAuthority>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CaError> {
        let bundle = StoredBundle::new(config.trust_domain.clone());
        Self::resume(config, keys, upstream, clock, CaJournal::default(), bundle)
    }

    /// A CA that carries on from a journal and bundle, e.g. on a new leader.
    pub fn resume(
        config: CaConfig,
        keys: CaKeys,
        upstream: Option<Arc<dyn UpstreamAuthority>>,
        clock: Arc<dyn Clock>,
        journal: CaJournal,
        bundle: StoredBundle,
    ) -> Result<Self, CaError> {
        // Warnings are the config loader's to log, once; a CA is resumed for every signing.
        config.validate()?;
        Ok(Self { config, keys, upstream, clock, journal, bundle })
    }

    pub fn journal(&self) -> &CaJournal {
        &self.journal
    }

    /// The local bundle as replicated state stores it.
    pub fn stored_bundle(&self) -> &StoredBundle {
        &self.bundle
    }

    /// The local bundle, for verifying what this CA signed.
    pub fn bundle(&self) -> Result<Bundle, CaError> {
        Ok(self.bundle.to_bundle()?)
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Carries out every rotation step due now and prunes expired authorities from the
    /// bundle, keeping the journal in memory only. Returns the journal events it applied.
    pub async fn rotate(&mut self) -> Result<Vec<JournalEvent>, CaError> {
        self.rotate_with(&InMemory).await
    }

    /// As [`rotate`](Self::rotate), making each event and prune durable through `sink`
    /// first: an event the sink refuses is not applied here either.
    pub async fn rotate_with(&mut self, sink: &dyn JournalSink) -> Result<Vec<JournalEvent>, CaError> {
        let mut applied = Vec::new();
        for _ in 0..MAX_STEPS_PER_ROTATION {
            let now = self.clock.now();
            let td = self.config.trust_domain.clone();
            let events = if let Some(step) = tainted_upstream_step(&self.journal.x509, &self.bundle, &td, now) {
                tracing::warn!(?step, "the upstream root this CA chains to was tainted: rotating now");
                let events = self.x509_step(step, now, sink).await?;
                let still_tainted = events.iter().any(|e| {
                    matches!(e, JournalEvent::X509(SlotEvent::Prepared { authority, .. })
                        if chains_to_tainted(authority, &self.bundle, &td, now))
                });
                if still_tainted {
                    for key in events.iter().filter_map(JournalEvent::prepared_managed_key) {
                        self.abandon_key(sink, key).await;
                    }
                    return Err(CaError::Upstream(UpstreamError::Refused {
                        name: self.upstream.as_ref().map_or("upstream", |u| u.name()),
                        reason: "the upstream still signs with an authority it tainted".into(),
                    }));
                }
                events
            } else if let Some(step) = next_step(&self.journal.x509, now) {
                self.x509_step(step, now, sink).await?
            } else if let Some(step) = next_step(&self.journal.jwt, now) {
                self.jwt_step(step, now, sink).await?
            } else {
                break;
            };
            for event in events {
                self.commit_event(&event, sink).await?;
                self.apply(event.clone()).await?;
                applied.push(event);
            }
        }
        let now = self.clock.now();
        let mut pruned = self.bundle.clone();
        if prune_expired(&mut pruned, now) {
            sink.prune(&self.config.trust_domain, now, expired_x509(&self.bundle, now)).await?;
            self.bundle = pruned;
        }
        Ok(applied)
    }

    /// Applies an event: journal first (which may refuse it), then the bundle, then retires
    /// the key of an authority the event replaced.
    pub async fn apply(&mut self, event: JournalEvent) -> Result<(), CaError> {
        let before = self.journal.clone();
        self.journal.apply(&event)?;
        publish(&mut self.bundle, &before, &event);
        let replaced_key = match &event {
            JournalEvent::X509(SlotEvent::Prepared { slot, authority }) => {
                before.x509.get(*slot).map(|s| s.authority.key_id.clone()).filter(|k| *k != authority.key_id)
            }
            JournalEvent::Jwt(SlotEvent::Prepared { slot, authority }) => {
                before.jwt.get(*slot).map(|s| s.authority.key_id.clone()).filter(|k| *k != authority.key_id)
            }
            _ => None,
        };
        if let Some(key_id) = replaced_key {
            // The replaced authority has left signing for good; its key is no longer needed.
            self.keys.retire(&key_id).await;
        }
        match &event {
            JournalEvent::X509(SlotEvent::Activated { slot }) => tracing::info!(%slot, "X.509 CA activated"),
            JournalEvent::Jwt(SlotEvent::Activated { slot }) => tracing::info!(%slot, "JWT key activated"),
            JournalEvent::X509(SlotEvent::Prepared { slot, .. }) => tracing::info!(%slot, "X.509 CA prepared"),
            JournalEvent::Jwt(SlotEvent::Prepared { slot, .. }) => tracing::info!(%slot, "JWT key prepared"),
            _ => {}
        }
        Ok(())
    }

    /// Makes an event durable through `sink`; when that fails for a Prepared naming a
    /// managed key, gives the key up so it is not left behind.
    pub(super) async fn commit_event(&self, event: &JournalEvent, sink: &dyn JournalSink) -> Result<(), CaError> {
        let committed = sink.commit(&self.config.trust_domain, event).await;
        if committed.is_err() {
            if let Some(key) = event.prepared_managed_key() {
                self.abandon_key(sink, key).await;
            }
        }
        committed
    }

    /// A new key for `slot`. A managed key's id is reserved first, so a crash from here on
    /// leaves a trace the leader's key sweep follows.
    async fn new_key(
        &self,
        sink: &dyn JournalSink,
        kind: CaKeyKind,
        slot: SlotId,
        key_type: KeyType,
        now: OffsetDateTime,
    ) -> Result<NewKey, CaError> {
        let unreserved = format!("{}-{slot}-{}", kind.key_id_prefix(), self.journal.prepared_count + 1);
        if !self.keys.is_managed() {
            let (public_key, private_key) = self.keys.generate(&unreserved, key_type, None).await?;
            return Ok(NewKey { id: unreserved, public_key, private_key });
        }
        let (id, owner) = sink.reserve_key(kind, slot, unreserved, now).await?;
        match self.keys.generate(&id, key_type, owner.as_ref()).await {
            Ok((public_key, private_key)) => Ok(NewKey { id, public_key, private_key }),
            Err(e) => {
                self.abandon_key(sink, &id).await;
                Err(e)
            }
        }
    }

    /// Gives up a managed key whose authority will not be recorded: releases its id and,
    /// when the release shows nothing recorded it, deletes the key. What fails here is left
    /// to the leader's key sweep.
    pub(super) async fn abandon_key(&self, sink: &dyn JournalSink, key_id: &str) {
        match sink.release_key(key_id).await {
            Ok(true) => self.keys.retire(key_id).await,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(key_id, error = %e, "could not release an abandoned CA key; the key sweep will")
            }
        }
    }

    /// The events one X.509 step produces; a prepare that must activate at once yields both.
    pub(super) async fn x509_step(
        &mut self,
        step: RotationStep,
        now: OffsetDateTime,
        sink: &dyn JournalSink,
    ) -> Result<Vec<JournalEvent>, CaError> {
        let (slot, activate) = match step {
            RotationStep::Activate { slot } => return Ok(vec![JournalEvent::X509(SlotEvent::Activated { slot })]),
            RotationStep::Prepare { slot, activate } => (slot, activate),
        };
        let key = self.new_key(sink, CaKeyKind::X509, slot, self.config.ca_key_type, now).await?;
        let key_id = key.id.clone();
        let authority = match self.x509_authority(key, now).await {
            Ok(authority) => authority,
            Err(e) => {
                self.abandon_key(sink, &key_id).await;
                return Err(e);
            }
        };
        let mut events = vec![JournalEvent::X509(SlotEvent::Prepared { slot, authority })];
        if activate {
            events.push(JournalEvent::X509(SlotEvent::Activated { slot }));
        }
        Ok(events)
    }

    /// An X.509 CA for a new key: signed by the upstream authority, else self-signed.
    async fn x509_authority(&self, key: NewKey, now: OffsetDateTime) -> Result<X509CaAuthority, CaError> {
        let NewKey { id: key_id, public_key, private_key } = key;
        let signer: Arc<dyn Signer> = Arc::new(self.keys.signer(&key_id, public_key, private_key.as_ref())?);
        Ok(match &self.upstream {
            Some(upstream) => {
                let signed = upstream
                    .mint_x509_ca(
                        &self.config.trust_domain,
                        signer.clone(),
                        &self.config.ca_subject,
                        self.config.ca_ttl,
                        now,
                    )
                    .await?;
                let facts =
                    identity::x509::certificate_facts(&signed.certificate).map_err(|e| CaError::Task(e.to_string()))?;
                X509CaAuthority {
                    key_id,
                    certificate: signed.certificate,
                    upstream_chain: signed.chain,
                    trust_anchors: signed.roots,
                    not_before: facts.not_before,
                    not_after: facts.not_after,
                    private_key,
                }
            }
            None => {
                let template = CaTemplate {
                    trust_domain: self.config.trust_domain.clone(),
                    public_key: signer.public_key().clone(),
                    ttl: self.config.ca_ttl,
                    subject: self.config.ca_subject.clone(),
                    serial: None,
                };
                let minted = tokio::task::spawn_blocking(move || mint_ca(&template, None, Some(signer.as_ref()), now))
                    .await
                    .map_err(|e| CaError::Task(e.to_string()))??;
                X509CaAuthority {
                    key_id,
                    certificate: minted.der.clone(),
                    upstream_chain: vec![],
                    trust_anchors: vec![minted.der],
                    not_before: minted.not_before,
                    not_after: minted.not_after,
                    private_key,
                }
            }
        })
    }

    /// The events one JWT step produces; a prepare that must activate at once yields both.
    pub(super) async fn jwt_step(
        &mut self,
        step: RotationStep,
        now: OffsetDateTime,
        sink: &dyn JournalSink,
    ) -> Result<Vec<JournalEvent>, CaError> {
        let (slot, activate) = match step {
            RotationStep::Activate { slot } => return Ok(vec![JournalEvent::Jwt(SlotEvent::Activated { slot })]),
            RotationStep::Prepare { slot, activate } => (slot, activate),
        };
        // Checked before a key exists, so a refusal leaves nothing behind.
        let ttl = time::Duration::try_from(self.config.ca_ttl).map_err(|e| CaError::Task(e.to_string()))?;
        let kid = random_kid()?;
        let key = self.new_key(sink, CaKeyKind::Jwt, slot, self.config.jwt_key_type, now).await?;
        let authority = JwtKeyAuthority {
            key_id: key.id,
            kid,
            public_key: key.public_key.spki_der().to_vec(),
            not_before: now,
            not_after: now + ttl,
            private_key: key.private_key,
        };
        let mut events = vec![JournalEvent::Jwt(SlotEvent::Prepared { slot, authority })];
        if activate {
            events.push(JournalEvent::Jwt(SlotEvent::Activated { slot }));
        }
        Ok(events)
    }

    /// The active authorities, ready to sign.
    pub fn signing(&self) -> Result<Signing, CaError> {
        Signing::build(
            self.config.clone(),
            &self.keys,
            self.clock.clone(),
            self.journal.clone(),
            self.bundle.clone(),
            None,
        )
    }
}

/// A random 32-character key id, as SPIRE's JWT key ids are.
fn random_kid() -> Result<String, CaError> {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Task("random number generator failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}
