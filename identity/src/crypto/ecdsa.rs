//! Conversions between the two ECDSA signature encodings: DER (`SEQUENCE { r, s }`, used by
//! X.509 and returned by KMS) and fixed-width `r || s` (used by JWS and PKCS#11).

/// A signature that is not a well-formed ECDSA signature for the curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed ECDSA signature")]
pub struct MalformedSignature;

/// Converts a DER signature to `r || s`, each left-padded to `scalar_len` bytes.
pub fn der_to_fixed(der: &[u8], scalar_len: usize) -> Result<Vec<u8>, MalformedSignature> {
    let (body, rest) = read_tlv(der, 0x30)?;
    if !rest.is_empty() {
        return Err(MalformedSignature);
    }
    let (r, body) = read_tlv(body, 0x02)?;
    let (s, body) = read_tlv(body, 0x02)?;
    if !body.is_empty() {
        return Err(MalformedSignature);
    }
    let mut out = vec![0u8; 2 * scalar_len];
    put_scalar(r, &mut out[..scalar_len])?;
    put_scalar(s, &mut out[scalar_len..])?;
    Ok(out)
}

/// Converts `r || s` (two equal halves) to a DER signature.
pub fn fixed_to_der(fixed: &[u8]) -> Result<Vec<u8>, MalformedSignature> {
    if fixed.is_empty() || !fixed.len().is_multiple_of(2) {
        return Err(MalformedSignature);
    }
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let mut body = Vec::with_capacity(fixed.len() + 8);
    write_integer(r, &mut body);
    write_integer(s, &mut body);
    let mut out = Vec::with_capacity(body.len() + 3);
    out.push(0x30);
    write_len(body.len(), &mut out);
    out.extend_from_slice(&body);
    Ok(out)
}

fn read_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), MalformedSignature> {
    let (&t, input) = input.split_first().ok_or(MalformedSignature)?;
    if t != tag {
        return Err(MalformedSignature);
    }
    let (&first, input) = input.split_first().ok_or(MalformedSignature)?;
    let (len, input) = match first {
        0..=0x7f => (usize::from(first), input),
        0x81 => {
            let (&len, input) = input.split_first().ok_or(MalformedSignature)?;
            if len < 0x80 {
                return Err(MalformedSignature);
            }
            (usize::from(len), input)
        }
        _ => return Err(MalformedSignature),
    };
    if input.len() < len {
        return Err(MalformedSignature);
    }
    Ok(input.split_at(len))
}

fn put_scalar(integer: &[u8], out: &mut [u8]) -> Result<(), MalformedSignature> {
    // A DER INTEGER is signed: a leading 0x00 keeps a high bit from meaning "negative".
    if integer.is_empty() || integer[0] & 0x80 != 0 {
        return Err(MalformedSignature);
    }
    let trimmed = match integer.iter().position(|&b| b != 0) {
        Some(i) => &integer[i..],
        None => return Err(MalformedSignature),
    };
    if trimmed.len() > out.len() {
        return Err(MalformedSignature);
    }
    let start = out.len() - trimmed.len();
    out[start..].copy_from_slice(trimmed);
    Ok(())
}

fn write_integer(scalar: &[u8], out: &mut Vec<u8>) {
    let start = scalar.iter().position(|&b| b != 0).unwrap_or(scalar.len().saturating_sub(1));
    let trimmed = &scalar[start..];
    let pad = trimmed.first().is_some_and(|b| b & 0x80 != 0);
    out.push(0x02);
    write_len(trimmed.len() + usize::from(pad), out);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

fn write_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.push(0x81);
        out.push(len as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_with_high_bits_and_leading_zeros() {
        let mut fixed = vec![0u8; 64];
        fixed[0] = 0x80; // r needs a 0x00 pad in DER
        fixed[40] = 0x01; // s has leading zeros
        let der = fixed_to_der(&fixed).unwrap();
        assert_eq!(der_to_fixed(&der, 32).unwrap(), fixed);
    }

    #[test]
    fn rejects_garbage() {
        assert!(der_to_fixed(&[], 32).is_err());
        assert!(der_to_fixed(&[0x30, 0x02, 0x02, 0x00], 32).is_err());
        assert!(der_to_fixed(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x81], 32).is_err());
        assert!(fixed_to_der(&[1, 2, 3]).is_err());
        let too_big = fixed_to_der(&[0x7f; 66]).unwrap();
        assert!(der_to_fixed(&too_big, 32).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = der_to_fixed(&bytes, 32);
            let _ = der_to_fixed(&bytes, 48);
        }

        #[test]
        fn fixed_round_trips(r in proptest::collection::vec(any::<u8>(), 48), s in proptest::collection::vec(any::<u8>(), 48)) {
            prop_assume!(r.iter().any(|&b| b != 0) && s.iter().any(|&b| b != 0));
            let fixed: Vec<u8> = r.iter().chain(s.iter()).copied().collect();
            let der = fixed_to_der(&fixed).unwrap();
            prop_assert_eq!(der_to_fixed(&der, 48).unwrap(), fixed);
        }
    }
}
