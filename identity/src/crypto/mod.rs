//! Keys, signatures and the `Signer` trait every key backend implements.

mod ecdsa;
mod key_type;
mod local_key;
mod public_key;
mod signer;
mod verify;

pub use ecdsa::{der_to_fixed, fixed_to_der, MalformedSignature};
pub use key_type::{KeyType, SignatureAlgorithm, UnknownKeyType};
pub use local_key::{LocalKey, LocalKeyError};
pub use public_key::{PublicKey, PublicKeyError, PublicKeyKind};
pub(crate) use signer::{RcgenPublicKey, RcgenSigner};
pub use signer::{SignError, Signer};
pub(crate) use verify::verify_jws_signature;
pub use verify::{verify_x509_signature, VerifyError};
