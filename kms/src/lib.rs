//! Key managers: where signing keys live. A key is named by an id; its private half is
//! reachable only through `sign`.
//!
//! Backends (one module each, built by name from config): `memory` and `disk` (software
//! keys, for development), `pkcs11` (keys generated and kept on an HSM token) and
//! `aws_kms` (keys in AWS KMS). [`KeySigner`] adapts any backend's
//! key to [`identity::crypto::Signer`], so certificate and JWT code never knows where a
//! key lives.
#![forbid(unsafe_code)]

pub mod aws_kms;
mod config;
pub mod disk;
mod error;
mod key_id;
mod key_signer;
mod keyring;
mod manager;
pub mod memory;
pub mod pkcs11;

pub use config::KeyManagerConfig;
pub use error::KeyManagerError;
pub use key_id::validate_key_id;
pub use key_signer::KeySigner;
pub use manager::{KeyInfo, KeyManager, KeyOwner, OwnedKey};

pub use identity::crypto::{KeyType, SignatureAlgorithm};
