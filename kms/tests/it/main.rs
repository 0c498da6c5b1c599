//! Key manager behaviour every backend must share, the disk backend's durability rules,
//! and signing certificates and JWTs through `KeySigner`.

mod conformance;
mod disk;
mod key_signer;
