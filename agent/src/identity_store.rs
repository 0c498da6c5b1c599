//! The agent's own identity between runs: its SVID chain, key and the last trust bundle, in
//! the key storage directory. Files are replaced atomically (a temp file renamed over the
//! old one, synced first) and created mode 0600, so a crash leaves the old or the new
//! identity, never half of one. Every call runs on a blocking thread, off the reactor.

use std::io::Write;
use std::path::{Path, PathBuf};

use identity::bundle::Bundle;
use identity::x509::split_der_certificates;
use identity::TrustDomain;
use zeroize::Zeroizing;

const SVID_FILE: &str = "agent_svid.der";
const KEY_FILE: &str = "agent_key.pk8";
const BUNDLE_FILE: &str = "bundle.json";

/// A stored file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: not a valid {what}: {reason}")]
    Corrupt { path: PathBuf, what: &'static str, reason: String },
}

/// The agent's SVID chain (leaf first, DER) and its PKCS#8 key.
#[derive(Clone)]
pub struct StoredIdentity {
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Zeroizing<Vec<u8>>,
}

/// Files in one directory.
#[derive(Clone, Debug)]
pub struct IdentityStore {
    dir: PathBuf,
}

impl IdentityStore {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// Runs `f` on this store on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Io { path: self.dir.clone(), reason: e.to_string() })?
    }

    /// The stored identity, if both files are there.
    pub async fn load_identity(&self) -> Result<Option<StoredIdentity>, StoreError> {
        self.blocking(|store| {
            let (Some(chain), Some(key)) = (store.read(SVID_FILE)?, store.read(KEY_FILE)?) else { return Ok(None) };
            let chain = split_der_certificates(&chain).map_err(|reason| StoreError::Corrupt {
                path: store.dir.join(SVID_FILE),
                what: "certificate chain",
                reason,
            })?;
            Ok(Some(StoredIdentity { chain, key_pkcs8: Zeroizing::new(key) }))
        })
        .await
    }

    pub async fn save_identity(&self, identity: &StoredIdentity) -> Result<(), StoreError> {
        let identity = identity.clone();
        self.blocking(move |store| {
            store.write(KEY_FILE, &identity.key_pkcs8)?;
            store.write(SVID_FILE, &identity.chain.concat())
        })
        .await
    }

    /// The last bundle received from the servers.
    pub async fn load_bundle(&self, trust_domain: &TrustDomain) -> Result<Option<Bundle>, StoreError> {
        let trust_domain = trust_domain.clone();
        self.blocking(move |store| {
            let Some(json) = store.read(BUNDLE_FILE)? else { return Ok(None) };
            Bundle::from_spiffe_json(trust_domain, &json).map(Some).map_err(|e| StoreError::Corrupt {
                path: store.dir.join(BUNDLE_FILE),
                what: "SPIFFE bundle",
                reason: e.to_string(),
            })
        })
        .await
    }

    pub async fn save_bundle(&self, bundle: &Bundle) -> Result<(), StoreError> {
        let json = bundle.to_spiffe_json();
        self.blocking(move |store| store.write(BUNDLE_FILE, json.as_bytes())).await
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path, reason: e.to_string() }),
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let io = |e: std::io::Error| StoreError::Io { path: path.clone(), reason: e.to_string() };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        // tempfile creates the file 0600; persist() renames it over the old one.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }
}
