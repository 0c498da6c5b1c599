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
    AwsKms(crate::aws_kms::AwsKmsConfig),
}

impl KeyManagerConfig {
    /// The config names of the key managers this build knows.
    pub const NAMES: [&'static str; 4] =
        [crate::memory::NAME, crate::disk::NAME, crate::pkcs11::NAME, crate::aws_kms::NAME];

    pub async fn build(&self) -> Result<Arc<dyn KeyManager>, KeyManagerError> {
        Ok(match self {
            Self::Memory => Arc::new(MemoryKeyManager::new()),
            Self::Disk { keys_path } => Arc::new(DiskKeyManager::open(keys_path.clone()).await?),
            Self::Pkcs11(config) => Arc::new(crate::pkcs11::Pkcs11KeyManager::open(config.clone()).await?),
            Self::AwsKms(config) => Arc::new(crate::aws_kms::AwsKmsKeyManager::open(config.clone()).await?),
        })
    }
}
