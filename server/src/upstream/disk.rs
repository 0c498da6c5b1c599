//! The `disk` upstream authority: a CA certificate (`cert_file_path`, optionally followed
//! by its own intermediates), its private key (`key_file_path`), and, when that CA is not
//! itself a root, the roots it chains to (`bundle_file_path`). The files are read on every
//! signing, so an operator can replace them without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use identity::bundle::parse_pem_certificates;
use identity::crypto::{LocalKey, Signer};
use identity::x509::{mint_ca, CaTemplate, Issuer, Subject};
use identity::TrustDomain;
use time::OffsetDateTime;

use super::{check_chains_to_roots, UpstreamAuthority, UpstreamError, UpstreamSigned};

/// The config name.
pub const NAME: &str = "disk";

/// Where the upstream CA's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskUpstreamConfig {
    pub cert_file_path: PathBuf,
    pub key_file_path: PathBuf,
    pub bundle_file_path: Option<PathBuf>,
}

/// An upstream CA read from files.
pub struct DiskUpstreamAuthority {
    config: DiskUpstreamConfig,
}

struct Loaded {
    key: LocalKey,
    /// The upstream CA certificate first, then its intermediates.
    chain: Vec<Vec<u8>>,
    roots: Vec<Vec<u8>>,
}

fn config_error(reason: String) -> UpstreamError {
    UpstreamError::Config { name: NAME, reason }
}

fn read(path: &Path, what: &str) -> Result<String, UpstreamError> {
    std::fs::read_to_string(path).map_err(|e| config_error(format!("cannot read {what} {}: {e}", path.display())))
}

impl DiskUpstreamAuthority {
    /// Checks the files once at start-up, so a bad configuration stops the server early.
    pub async fn new(config: DiskUpstreamConfig) -> Result<Self, UpstreamError> {
        let authority = Self { config };
        authority.load().await?;
        Ok(authority)
    }

    async fn load(&self) -> Result<Loaded, UpstreamError> {
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || load(&config))
            .await
            .map_err(|e| UpstreamError::Unavailable { name: NAME, reason: e.to_string() })?
    }
}

fn load(config: &DiskUpstreamConfig) -> Result<Loaded, UpstreamError> {
    let cert_path = &config.cert_file_path;
    let chain = parse_pem_certificates(&read(cert_path, "cert_file_path")?)
        .map_err(|e| config_error(format!("cert_file_path {}: {e}", cert_path.display())))?;
    let key_text = zeroize::Zeroizing::new(read(&config.key_file_path, "key_file_path")?);
    let key = LocalKey::from_pem(&key_text)
        .map_err(|e| config_error(format!("key_file_path {}: {e}", config.key_file_path.display())))?;
    let roots = match &config.bundle_file_path {
        Some(path) => parse_pem_certificates(&read(path, "bundle_file_path")?)
            .map_err(|e| config_error(format!("bundle_file_path {}: {e}", path.display())))?,
        None => vec![chain[0].clone()],
    };
    // Issuer::new checks the certificate is a CA whose key is the one we loaded.
    Issuer::new(&chain[0], &key).map_err(|e| config_error(format!("cert_file_path {}: {e}", cert_path.display())))?;
    Ok(Loaded { key, chain, roots })
}

#[async_trait]
impl UpstreamAuthority for DiskUpstreamAuthority {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn mint_x509_ca(
        &self,
        trust_domain: &TrustDomain,
        signer: Arc<dyn Signer>,
        subject: &Subject,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<UpstreamSigned, UpstreamError> {
        let loaded = self.load().await?;
        let template = CaTemplate {
            trust_domain: trust_domain.clone(),
            public_key: signer.public_key().clone(),
            ttl,
            subject: subject.clone(),
            serial: None,
        };
        let td = trust_domain.clone();
        tokio::task::spawn_blocking(move || {
            let issuer = Issuer::new(&loaded.chain[0], &loaded.key).map_err(|e| config_error(e.to_string()))?;
            let minted = mint_ca(&template, Some(&issuer), None, now)
                .map_err(|e| UpstreamError::Refused { name: NAME, reason: e.to_string() })?;
            // Everything below the roots is presented after our CA in SVID chains.
            let chain: Vec<Vec<u8>> = loaded.chain.into_iter().filter(|c| !loaded.roots.contains(c)).collect();
            check_chains_to_roots(NAME, &td, &minted.der, &chain, &loaded.roots, now)?;
            Ok(UpstreamSigned { certificate: minted.der, chain, roots: loaded.roots })
        })
        .await
        .map_err(|e| UpstreamError::Unavailable { name: NAME, reason: e.to_string() })?
    }
}
