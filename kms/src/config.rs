//! Building a key manager from its config, by name.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{disk::DiskKeyManager, memory::MemoryKeyManager, KeyManager, KeyManagerError};

/// Which key manager to run and its settings; the server and agent configs name it as
/// SPIRE does (`KeyManager "memory" {}`, `KeyManager "disk" { keys_path = "…" }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyManagerConfig {
    Memory,
    Disk { keys_path: PathBuf },
    Pkcs11(crate::pkcs11::Pkcs11Config),
}

impl KeyManagerConfig {
    /// The config names of the key managers this build knows.
    pub const NAMES: [&'static str; 3] = [crate::memory::NAME, crate::disk::NAME, crate::pkcs11::NAME];

    pub async fn build(&self) -> Result<Arc<dyn KeyManager>, KeyManagerError> {
        Ok(match self {
            Self::Memory => Arc::new(MemoryKeyManager::new()),
            Self::Disk { keys_path } => Arc::new(DiskKeyManager::open(keys_path.clone()).await?),
            Self::Pkcs11(config) => Arc::new(crate::pkcs11::Pkcs11KeyManager::open(config.clone()).await?),
        })
    }
}
