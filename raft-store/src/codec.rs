//! Encoding of stored values (bincode, via serde) and of ordered keys.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    // bincode's serde encoder grows its Vec from empty; most stored values are a few
    // hundred bytes, so start there.
    let mut bytes = Vec::with_capacity(256);
    bincode::serde::encode_into_std_write(value, &mut bytes, config())
        .map_err(|e| CodecError { what, reason: e.to_string() })?;
    Ok(bytes)
}

/// Decodes a value, refusing trailing bytes so a truncated or padded record is caught.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError { what, reason: e.to_string() })?;
    if read != bytes.len() {
        return Err(CodecError { what, reason: format!("{} trailing bytes", bytes.len() - read) });
    }
    Ok(value)
}

/// A stored row: key and value bytes.
pub type Row = (Vec<u8>, Vec<u8>);

/// Big-endian, so keys sort in numeric order.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn key_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// `a \0 b`: index keys whose first part is a prefix scan target.
pub fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(0);
    key.extend_from_slice(b.as_bytes());
    key
}

/// The prefix of every `pair_key(a, _)`.
pub fn pair_prefix(a: &str) -> Vec<u8> {
    let mut key = a.as_bytes().to_vec();
    key.push(0);
    key
}
