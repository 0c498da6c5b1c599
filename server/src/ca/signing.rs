//! The active authorities, ready to sign. A `Signing` is built once per change of the CA
//! journal: its signers (a key imported from the journal, or a handle on a KMS or HSM key)
//! are made when an authority becomes active and reused for every SVID after that, and a
//! rebuild that finds the same authorities keeps the signers it had.

use std::sync::Arc;
use std::time::Duration;

use identity::crypto::PublicKey;
use identity::jwt::{sign_jwt_svid, JwtSvidParams};
use identity::x509::{mint_ca, mint_x509_svid, CaTemplate, Issuer, Subject, SvidTemplate};
use identity::SpiffeId;
use raft_store::model::{CaJournal, JwtKeyAuthority, StoredBundle, X509CaAuthority};

use super::config::CaConfig;
use super::keys::{CaKeys, CaSigner};
use super::manager::CaError;
use crate::clock::Clock;

/// The active X.509 CA: its certificate, the chain presented after it, and its signer.
struct X509Signer {
    authority: X509CaAuthority,
    signer: Arc<CaSigner>,
}

/// The active JWT key and its signer.
struct JwtSigner {
    authority: JwtKeyAuthority,
    signer: Arc<CaSigner>,
}

/// One X.509-SVID a batch asks for; the CSR proves the requester holds the key.
pub struct SvidRequest {
    pub spiffe_id: SpiffeId,
    pub csr: Vec<u8>,
    pub ttl: Option<Duration>,
    pub dns_names: Vec<String>,
}

/// A minted X.509-SVID: the chain to present (leaf first) and the leaf's expiry.
#[derive(Debug)]
pub struct MintedSvid {
    pub chain: Vec<Vec<u8>>,
    pub expires_at: i64,
}

/// Why one item of a batch was not minted.
#[derive(Debug, thiserror::Error)]
pub enum MintRefusal {
    /// The caller's CSR is malformed or its signature does not verify.
    #[error("csr: {0}")]
    Csr(String),
    /// The CA could not sign (its key manager failed).
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// What this replica signs with now.
pub struct Signing {
    config: CaConfig,
    clock: Arc<dyn Clock>,
    x509: Option<X509Signer>,
    jwt: Option<JwtSigner>,
    journal: CaJournal,
    bundle: StoredBundle,
}

impl Signing {
    /// The signers of `journal`'s active authorities. Signers of `previous` whose authority
    /// is still the active one are kept, so a key is imported once per activation.
    pub fn build(
        config: CaConfig,
        keys: &CaKeys,
        clock: Arc<dyn Clock>,
        journal: CaJournal,
        bundle: StoredBundle,
        previous: Option<&Signing>,
    ) -> Result<Self, CaError> {
        let x509 = match journal.x509.active() {
            None => None,
            Some(slot) => {
                let authority = slot.authority.clone();
                let kept = previous.and_then(|p| p.x509.as_ref()).filter(|p| p.authority == authority);
                let signer = match kept {
                    Some(kept) => kept.signer.clone(),
                    None => {
                        let ca_key = identity::x509::certificate_facts(&authority.certificate)
                            .map_err(|e| CaError::Task(e.to_string()))?
                            .public_key;
                        Arc::new(keys.signer(&authority.key_id, ca_key, authority.private_key.as_ref())?)
                    }
                };
                Some(X509Signer { authority, signer })
            }
        };
        let jwt = match journal.jwt.active() {
            None => None,
            Some(slot) => {
                let authority = slot.authority.clone();
                let kept = previous.and_then(|p| p.jwt.as_ref()).filter(|p| p.authority == authority);
                let signer = match kept {
                    Some(kept) => kept.signer.clone(),
                    None => {
                        let key = authority.public_key().map_err(|e| CaError::Task(e.to_string()))?;
                        Arc::new(keys.signer(&authority.key_id, key, authority.private_key.as_ref())?)
                    }
                };
                Some(JwtSigner { authority, signer })
            }
        };
        Ok(Self { config, clock, x509, jwt, journal, bundle })
    }

    /// Whether both an X.509 CA and a JWT key are active.
    pub fn is_ready(&self) -> bool {
        self.x509.is_some() && self.jwt.is_some()
    }

    /// The journal these signers were built from.
    pub fn journal(&self) -> &CaJournal {
        &self.journal
    }

    /// The local bundle as of the same revision.
    pub fn stored_bundle(&self) -> &StoredBundle {
        &self.bundle
    }

    /// The local bundle, for verifying what this CA signed.
    pub fn bundle(&self) -> Result<identity::bundle::Bundle, CaError> {
        Ok(self.bundle.to_bundle()?)
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    fn active_x509(&self) -> Result<&X509Signer, CaError> {
        self.x509.as_ref().ok_or(CaError::NoActiveAuthority("X.509"))
    }

    /// The certificates presented after a leaf: our CA, then any upstream intermediates.
    fn chain_tail(authority: &X509CaAuthority) -> impl Iterator<Item = Vec<u8>> + '_ {
        std::iter::once(authority.certificate.clone()).chain(authority.upstream_chain.iter().cloned())
    }

    /// Mints an X.509-SVID with the active CA and returns the chain to present: the SVID,
    /// our CA certificate, then any upstream intermediates.
    pub async fn mint_x509_svid(
        &self,
        spiffe_id: SpiffeId,
        public_key: PublicKey,
        ttl: Option<Duration>,
        dns_names: Vec<String>,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        let active = self.active_x509()?;
        let template = SvidTemplate {
            spiffe_id,
            public_key,
            ttl: ttl.unwrap_or(self.config.x509_svid_ttl),
            dns_names,
            subject: Subject::svid_default(),
            serial: None,
        };
        let now = self.clock.trusted_now()?;
        let (certificate, signer) = (active.authority.certificate.clone(), active.signer.clone());
        let leaf = tokio::task::spawn_blocking(move || {
            let issuer = Issuer::new(&certificate, signer.as_ref())?;
            mint_x509_svid(&template, &issuer, now)
        })
        .await
        .map_err(|e| CaError::Task(e.to_string()))??;
        Ok(std::iter::once(leaf.der).chain(Self::chain_tail(&active.authority)).collect())
    }

    /// Mints a batch of X.509-SVIDs in one blocking task, with the issuer prepared once:
    /// each item's CSR is verified, then signed. Items fail on their own.
    pub async fn mint_x509_svids(
        &self,
        requests: Vec<SvidRequest>,
    ) -> Result<Vec<Result<MintedSvid, MintRefusal>>, CaError> {
        let active = self.active_x509()?;
        let (certificate, signer) = (active.authority.certificate.clone(), active.signer.clone());
        let tail: Vec<Vec<u8>> = Self::chain_tail(&active.authority).collect();
        let default_ttl = self.config.x509_svid_ttl;
        let now = self.clock.trusted_now()?;
        tokio::task::spawn_blocking(move || {
            let issuer = Issuer::new(&certificate, signer.as_ref())?;
            Ok(requests
                .into_iter()
                .map(|request| {
                    let public_key = identity::x509::public_key_from_csr(&request.csr)
                        .map_err(|e| MintRefusal::Csr(e.to_string()))?;
                    let template = SvidTemplate {
                        spiffe_id: request.spiffe_id,
                        public_key,
                        ttl: request.ttl.unwrap_or(default_ttl),
                        dns_names: request.dns_names,
                        subject: Subject::svid_default(),
                        serial: None,
                    };
                    let leaf =
                        mint_x509_svid(&template, &issuer, now).map_err(|e| MintRefusal::Signing(e.to_string()))?;
                    let expires_at = leaf.not_after.unix_timestamp();
                    let chain = std::iter::once(leaf.der).chain(tail.iter().cloned()).collect();
                    Ok(MintedSvid { chain, expires_at })
                })
                .collect())
        })
        .await
        .map_err(|e| CaError::Task(e.to_string()))?
    }

    /// Signs an intermediate CA for a downstream server of this trust domain (nested
    /// clusters) with the active CA, and returns the chain to present: the new CA, our CA
    /// certificate, then any upstream intermediates. `ttl` defaults to `ca_ttl`; the new
    /// CA never outlives ours.
    pub async fn mint_downstream_ca(
        &self,
        public_key: PublicKey,
        ttl: Option<Duration>,
    ) -> Result<Vec<Vec<u8>>, CaError> {
        let active = self.active_x509()?;
        let template = CaTemplate {
            trust_domain: self.config.trust_domain.clone(),
            public_key,
            ttl: ttl.unwrap_or(self.config.ca_ttl),
            subject: self.config.ca_subject.clone(),
            serial: None,
        };
        let now = self.clock.trusted_now()?;
        let (certificate, signer) = (active.authority.certificate.clone(), active.signer.clone());
        let minted = tokio::task::spawn_blocking(move || {
            let issuer = Issuer::new(&certificate, signer.as_ref())?;
            mint_ca(&template, Some(&issuer), None, now)
        })
        .await
        .map_err(|e| CaError::Task(e.to_string()))??;
        // As SPIRE: the new CA, then the certificates between it and the roots. A root of
        // ours is in every bundle already, so it is not sent.
        let authority = &active.authority;
        let self_signed = authority.trust_anchors.contains(&authority.certificate);
        let tail: Vec<Vec<u8>> = if self_signed { Vec::new() } else { Self::chain_tail(authority).collect() };
        Ok(std::iter::once(minted.der).chain(tail).collect())
    }

    /// Signs a JWT-SVID with the active JWT key; its expiry is capped at the key's.
    pub async fn mint_jwt_svid(
        &self,
        spiffe_id: SpiffeId,
        audience: Vec<String>,
        ttl: Option<Duration>,
    ) -> Result<String, CaError> {
        let active = self.jwt.as_ref().ok_or(CaError::NoActiveAuthority("JWT"))?;
        let ttl = ttl.unwrap_or(self.config.jwt_svid_ttl);
        let now = self.clock.trusted_now()?;
        let (kid, not_after, signer) =
            (active.authority.kid.clone(), active.authority.not_after, active.signer.clone());
        tokio::task::spawn_blocking(move || {
            let params = JwtSvidParams {
                spiffe_id: &spiffe_id,
                audience: &audience,
                ttl,
                key_id: &kid,
                algorithm: None,
                not_after: Some(not_after),
            };
            sign_jwt_svid(&params, signer.as_ref(), now)
        })
        .await
        .map_err(|e| CaError::Task(e.to_string()))?
        .map_err(CaError::from)
    }
}
