//! Deserializers for config values that need parsing: durations in Go's notation, trust
//! domains, SPIFFE IDs, key types, ports written as numbers or strings, and server
//! addresses (one or a list, with or without ports).

use std::time::Duration;

use identity::crypto::KeyType;
use identity::{SpiffeId, TrustDomain};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A duration as SPIRE writes it: `"24h"`, `"90m"`, `"1h30m"`, `"500ms"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(D::Error::custom)
}

/// Like [`duration`], for optional keys.
pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); write it like \"24h\", \"90m\" or \"1h30m\""))?;
    if parsed.is_zero() {
        return Err(format!("invalid duration {text:?}: must be positive"));
    }
    Ok(parsed)
}

pub fn trust_domain<'de, D: Deserializer<'de>>(d: D) -> Result<TrustDomain, D::Error> {
    let text = String::deserialize(d)?;
    TrustDomain::parse(&text).map_err(|e| D::Error::custom(format!("invalid trust domain {text:?}: {e}")))
}

pub fn spiffe_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SpiffeId>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| SpiffeId::parse(text).map_err(|e| D::Error::custom(format!("invalid SPIFFE ID {text:?}: {e}"))))
        .collect()
}

pub fn key_type<'de, D: Deserializer<'de>>(d: D) -> Result<KeyType, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<KeyType>().map_err(|e| D::Error::custom(format!("{e} (one of ec-p256, ec-p384, rsa-2048, rsa-4096)")))
}

/// SPIRE writes some ports as strings (`bind_port = "80"` in `health_checks`); accept both.
pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u64),
        Text(String),
    }
    let raw = match Port::deserialize(d)? {
        Port::Number(n) => n.to_string(),
        Port::Text(t) => t,
    };
    raw.trim()
        .parse::<u16>()
        .map_err(|_| D::Error::custom(format!("invalid port {raw:?}: must be a number from 0 to 65535")))
}

/// `server_address`: one address, or a list of them.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ServerAddresses {
    One(String),
    Many(Vec<String>),
}

/// `host:port` for every address; `port` where an address has none.
pub fn server_addresses(addresses: &ServerAddresses, port: u16) -> Result<Vec<String>, String> {
    let list = match addresses {
        ServerAddresses::One(one) => vec![one.clone()],
        ServerAddresses::Many(many) => many.clone(),
    };
    if list.is_empty() {
        return Err("at least one server address is required".into());
    }
    list.iter()
        .map(|address| {
            let address = address.trim();
            if address.is_empty() || address.contains('/') || address.contains(char::is_whitespace) {
                return Err(format!("{address:?} is not a host or host:port"));
            }
            match address.rsplit_once(':') {
                // An IPv6 literal without a port is written in brackets: [::1].
                Some((host, p))
                    if !host.is_empty()
                        && !host.ends_with(':')
                        && p.chars().all(|c| c.is_ascii_digit())
                        && !address.ends_with(']') =>
                {
                    p.parse::<u16>().map_err(|_| format!("{address:?}: port {p:?} is not a number from 0 to 65535"))?;
                    Ok(address.to_owned())
                }
                _ => Ok(format!("{address}:{port}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").unwrap_err().contains("positive"));
        assert!(parse_duration("tomorrow").unwrap_err().contains("invalid duration \"tomorrow\""));
        assert!(parse_duration("10").is_err(), "a bare number has no unit");
    }
}
