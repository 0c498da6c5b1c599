//! The `disk` key manager: keys in one JSON file, written atomically with mode 0600, that
//! survives restarts. A file readable by group or others is refused.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use identity::crypto::{KeyType, LocalKey, SignatureAlgorithm};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keyring::Keyring;
use crate::{validate_key_id, KeyInfo, KeyManager, KeyManagerError, KeyOwner};

/// The config name.
pub const NAME: &str = "disk";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct KeysFile {
    version: u32,
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: String,
    key_type: KeyType,
    /// PKCS#8 DER, standard base64.
    pkcs8: String,
}

/// Keys persisted in a file at `keys_path`.
pub struct DiskKeyManager {
    path: PathBuf,
    keys: Keyring,
    /// Serialises changes so each write carries every earlier change.
    write_lock: tokio::sync::Mutex<()>,
}

fn storage(reason: String) -> KeyManagerError {
    KeyManagerError::Storage { backend: NAME, reason }
}

impl DiskKeyManager {
    /// Opens (or, on first use, will create) the keys file at `path`.
    pub async fn open(path: PathBuf) -> Result<Self, KeyManagerError> {
        let load_path = path.clone();
        let keys =
            tokio::task::spawn_blocking(move || load(&load_path)).await.map_err(|e| storage(e.to_string()))??;
        Ok(Self { path, keys: Keyring::new(NAME, keys), write_lock: tokio::sync::Mutex::new(()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn persist(&self) -> Result<(), KeyManagerError> {
        let snapshot = self.keys.snapshot()?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut stored = Vec::with_capacity(snapshot.len());
            for (id, key) in &snapshot {
                let der = key.to_pkcs8_der().map_err(|e| storage(e.to_string()))?;
                stored.push(StoredKey {
                    id: id.clone(),
                    key_type: key.key_type(),
                    pkcs8: STANDARD.encode(der.as_slice()),
                });
            }
            let file = KeysFile { version: FORMAT_VERSION, keys: stored };
            let bytes = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| storage(e.to_string()))?);
            // Wipe the base64 copies of the keys too, not only the serialised document.
            file.keys.into_iter().for_each(|key| drop(Zeroizing::new(key.pkcs8)));
            write_atomic(&path, &bytes)
        })
        .await
        .map_err(|e| storage(e.to_string()))?
    }
}

fn load(path: &Path) -> Result<BTreeMap<String, Arc<LocalKey>>, KeyManagerError> {
    let metadata = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(storage(format!("cannot read keys file {}: {e}", path.display()))),
    };
    if !metadata.is_file() {
        return Err(storage(format!("keys file {} is not a regular file", path.display())));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(storage(format!(
            "keys file {} has mode {mode:04o}; it must not be accessible by group or others (chmod 600)",
            path.display()
        )));
    }
    let bytes =
        Zeroizing::new(fs::read(path).map_err(|e| storage(format!("cannot read keys file {}: {e}", path.display())))?);
    let file: KeysFile =
        serde_json::from_slice(&bytes).map_err(|e| storage(format!("keys file {} is corrupt: {e}", path.display())))?;
    if file.version != FORMAT_VERSION {
        return Err(storage(format!(
            "keys file {} has format version {}, this build reads version {FORMAT_VERSION}",
            path.display(),
            file.version
        )));
    }
    let mut keys = BTreeMap::new();
    for stored in file.keys {
        validate_key_id(&stored.id)?;
        let der = Zeroizing::new(
            STANDARD
                .decode(&stored.pkcs8)
                .map_err(|_| storage(format!("keys file {}: key {:?} is not base64", path.display(), stored.id)))?,
        );
        drop(Zeroizing::new(stored.pkcs8));
        let key = LocalKey::from_pkcs8_der(stored.key_type, &der)
            .map_err(|e| storage(format!("keys file {}: key {:?}: {e}", path.display(), stored.id)))?;
        if keys.insert(stored.id.clone(), Arc::new(key)).is_some() {
            return Err(storage(format!("keys file {}: key {:?} appears twice", path.display(), stored.id)));
        }
    }
    Ok(keys)
}

/// Writes to a temporary file beside `path` (mode 0600), syncs it, renames it over `path`
/// and syncs the directory, so a crash leaves either the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyManagerError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| storage(format!("cannot create {}: {e}", dir.display())))?;
    let file_name = path.file_name().ok_or_else(|| storage(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    let io = |what: &str, e: std::io::Error| storage(format!("{what} {}: {e}", tmp.display()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("cannot create", e))?;
    // A leftover temporary file from a crash keeps its old mode; make sure it is 0600.
    file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(|e| io("cannot chmod", e))?;
    file.write_all(bytes).map_err(|e| io("cannot write", e))?;
    file.sync_all().map_err(|e| io("cannot sync", e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| storage(format!("cannot replace {}: {e}", path.display())))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage(format!("cannot sync directory {}: {e}", dir.display())))?;
    Ok(())
}

#[async_trait]
impl KeyManager for DiskKeyManager {
    fn backend(&self) -> &'static str {
        NAME
    }

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
        _owner: Option<&KeyOwner>,
    ) -> Result<KeyInfo, KeyManagerError> {
        let key = Keyring::generate(NAME, id, key_type).await?;
        let info = Keyring::info(id, &key);
        let _guard = self.write_lock.lock().await;
        let previous = self.keys.insert(id, key)?;
        if let Err(e) = self.persist().await {
            self.keys.restore(id, previous)?;
            return Err(e);
        }
        Ok(info)
    }

    async fn get_public_key(&self, id: &str) -> Result<KeyInfo, KeyManagerError> {
        Ok(Keyring::info(id, &*self.keys.get(id)?))
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, KeyManagerError> {
        self.keys.list()
    }

    async fn sign(&self, id: &str, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        self.keys.sign(id, algorithm, message)
    }

    async fn delete_key(&self, id: &str) -> Result<(), KeyManagerError> {
        let _guard = self.write_lock.lock().await;
        let Some(previous) = self.keys.remove(id)? else { return Ok(()) };
        if let Err(e) = self.persist().await {
            self.keys.restore(id, Some(previous))?;
            return Err(e);
        }
        Ok(())
    }
}
