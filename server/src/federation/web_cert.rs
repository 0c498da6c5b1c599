//! The web PKI certificate of the `https_web` profile, from `serving_cert_file`: read at
//! start (a file that cannot be used stops start-up), then re-read every
//! `file_sync_interval`, so a certificate renewed on disk (by certbot, cert-manager…) is
//! presented from the next handshake on. A file that cannot be used later is logged and the
//! certificate in use is kept.

use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::federation::ServingCertFile;

/// Certificate and key files larger than this are not certificates.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
pub struct WebCertificate {
    files: ServingCertFile,
    /// The files' contents and the key built from them.
    current: RwLock<(Vec<u8>, Vec<u8>, Arc<CertifiedKey>)>,
}

impl WebCertificate {
    pub fn load(files: ServingCertFile) -> Result<Self, String> {
        let (cert, key) = read(&files)?;
        let certified = certified_key(&cert, &key)?;
        Ok(Self { files, current: RwLock::new((cert, key, certified)) })
    }

    /// Reads the files again; true when they changed and the new pair is in use.
    pub fn reload(&self) -> Result<bool, String> {
        let (cert, key) = read(&self.files)?;
        {
            let current = self.current.read().map_err(|_| "lock poisoned")?;
            if current.0 == cert && current.1 == key {
                return Ok(false);
            }
        }
        let certified = certified_key(&cert, &key)?;
        *self.current.write().map_err(|_| "lock poisoned")? = (cert, key, certified);
        Ok(true)
    }

    /// Re-reads the files every `file_sync_interval` while the task runs.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.files.file_sync_interval);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let this = self.clone();
                match tokio::task::spawn_blocking(move || this.reload()).await {
                    Ok(Ok(true)) => tracing::info!(
                        cert = %self.files.cert_file_path.display(),
                        "bundle endpoint certificate reloaded"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "bundle endpoint certificate not reloaded; keeping the \
                        one in use"),
                    Err(e) => tracing::error!(error = %e, "bundle endpoint certificate reload failed"),
                }
            }
        })
    }
}

impl ResolvesServerCert for WebCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.2.clone())
    }
}

fn read(files: &ServingCertFile) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read_one = |path: &std::path::Path| -> Result<Vec<u8>, String> {
        let size = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        if size > MAX_FILE_BYTES {
            return Err(format!("{}: {size} bytes is not a certificate or key file", path.display()));
        }
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    Ok((read_one(&files.cert_file_path)?, read_one(&files.key_file_path)?))
}

/// The chain (leaf first) and key from PEM files; the key must match the leaf.
fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = pem::parse_many(cert_pem)
        .map_err(|e| format!("certificate file: {e}"))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if chain.is_empty() {
        return Err("certificate file: no CERTIFICATE block".into());
    }
    let key = pem::parse_many(key_pem)
        .map_err(|e| format!("key file: {e}"))?
        .into_iter()
        .find_map(|p| match p.tag() {
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.into_contents()))),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(p.into_contents()))),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(p.into_contents()))),
            _ => None,
        })
        .ok_or("key file: no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block")?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map(Arc::new).map_err(|e| format!("certificate and key: {e}"))
}
