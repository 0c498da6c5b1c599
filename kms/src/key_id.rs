//! Key ids: the names the CA journal uses for keys.

use crate::KeyManagerError;

/// Longest key id accepted; KMS aliases allow 256 bytes in all.
pub const MAX_KEY_ID_BYTES: usize = 128;

/// A key id is 1–128 bytes of letters, digits, `.`, `_`, `-`, `:` and `/`, so every backend
/// can store it (as a map key, a KMS alias suffix or a PKCS#11 label).
pub fn validate_key_id(id: &str) -> Result<(), KeyManagerError> {
    let invalid = |reason| KeyManagerError::InvalidKeyId { id: id.to_owned(), reason };
    if id.is_empty() {
        return Err(invalid("cannot be empty"));
    }
    if id.len() > MAX_KEY_ID_BYTES {
        return Err(invalid("longer than 128 bytes"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b)) {
        return Err(invalid("only letters, digits, '.', '_', '-', ':' and '/' are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids() {
        assert!(validate_key_id("x509-CA-A").is_ok());
        assert!(validate_key_id("example.org/jwt:1").is_ok());
        assert!(validate_key_id("").is_err());
        assert!(validate_key_id("has space").is_err());
        assert!(validate_key_id(&"a".repeat(129)).is_err());
    }
}
