//! `server { federation { bundle_endpoint { … } federates_with "<td>" { … } } }`, in SPIRE's
//! shape: the SPIFFE bundle endpoint this server serves, on every replica, and the trust
//! domains whose bundles it fetches.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hcl_config::values;
use identity::{SpiffeId, TrustDomain};
use raft_store::model::{BundleEndpointProfile, FederationRelationship};
use serde::Deserialize;

/// Bounds SPIRE puts on the refresh hint it publishes (it warns outside them; here they
/// are refused, since a hint outside them makes partners refresh too often or too late).
pub const MIN_REFRESH_HINT: Duration = Duration::from_secs(60);
pub const MAX_REFRESH_HINT: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
/// SPIRE's default for re-reading a serving certificate.
const DEFAULT_FILE_SYNC_INTERVAL: Duration = Duration::from_secs(3600);

/// `federation { … }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    #[serde(default)]
    pub bundle_endpoint: Option<BundleEndpointSection>,
    /// `federates_with "<trust domain>" { … }`: HCL gives the label as a key.
    #[serde(default)]
    pub federates_with: BTreeMap<String, FederatesWithSection>,
}

/// `federates_with "<td>" { bundle_endpoint_url bundle_endpoint_profile "…" { … } }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatesWithSection {
    pub bundle_endpoint_url: String,
    pub bundle_endpoint_profile: Option<EndpointProfileBlocks>,
}

/// `bundle_endpoint_profile "https_web" {}` or `"https_spiffe" { endpoint_spiffe_id }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointProfileBlocks {
    #[serde(default)]
    pub https_web: Option<EmptyBlock>,
    #[serde(default)]
    pub https_spiffe: Option<SpiffeProfileSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiffeProfileSection {
    pub endpoint_spiffe_id: String,
}

/// `bundle_endpoint { address port refresh_hint profile "…" { … } }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointSection {
    #[serde(default = "default_address")]
    pub address: IpAddr,
    #[serde(default = "default_port", deserialize_with = "values::port")]
    pub port: u16,
    #[serde(default, deserialize_with = "values::optional_duration")]
    pub refresh_hint: Option<Duration>,
    #[serde(default)]
    pub profile: Option<ProfileBlocks>,
    /// SPIRE's older spelling of `profile "https_web" { acme { … } }`.
    #[serde(default)]
    pub acme: Option<serde::de::IgnoredAny>,
}

/// `profile "https_spiffe" {}` or `profile "https_web" { … }`: HCL gives the label as a key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileBlocks {
    #[serde(default)]
    pub https_spiffe: Option<EmptyBlock>,
    #[serde(default)]
    pub https_web: Option<WebProfileSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyBlock {}

/// `profile "https_web" { serving_cert_file { … } }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebProfileSection {
    #[serde(default)]
    pub serving_cert_file: Option<ServingCertFile>,
    #[serde(default)]
    pub acme: Option<serde::de::IgnoredAny>,
}

/// `serving_cert_file { cert_file_path key_file_path file_sync_interval }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingCertFile {
    pub cert_file_path: PathBuf,
    pub key_file_path: PathBuf,
    #[serde(default = "default_file_sync_interval", deserialize_with = "values::duration")]
    pub file_sync_interval: Duration,
}

/// What the bundle endpoint presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointProfile {
    /// This replica's server SVID (`spiffe://<td>/spire/server`).
    HttpsSpiffe,
    /// A web PKI certificate from files, re-read every `file_sync_interval`.
    HttpsWeb(ServingCertFile),
}

/// A checked `bundle_endpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleEndpoint {
    pub address: SocketAddr,
    pub refresh_hint: Duration,
    pub profile: EndpointProfile,
}

fn default_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn default_port() -> u16 {
    443
}

fn default_file_sync_interval() -> Duration {
    DEFAULT_FILE_SYNC_INTERVAL
}

type Problem = (Vec<&'static str>, String);

impl FederationSection {
    /// The relationships `federates_with` declares, checked.
    pub fn relationships(&self, own: &TrustDomain) -> Result<Vec<FederationRelationship>, Problem> {
        let mut relationships = Vec::new();
        for (name, section) in &self.federates_with {
            let at = || vec!["server", "federation", "federates_with"];
            let trust_domain = TrustDomain::parse(name).map_err(|e| (at(), format!("trust domain {name:?}: {e}")))?;
            if &trust_domain == own {
                return Err((at(), format!("{name} is this server's own trust domain")));
            }
            crate::federation::fetch::check_url(&section.bundle_endpoint_url)
                .map_err(|e| (at(), format!("{name}: bundle_endpoint_url: {e}")))?;
            let profile = match &section.bundle_endpoint_profile {
                Some(EndpointProfileBlocks { https_web: Some(_), https_spiffe: None }) => BundleEndpointProfile::HttpsWeb,
                Some(EndpointProfileBlocks { https_web: None, https_spiffe: Some(spiffe) }) => {
                    let id = SpiffeId::parse(&spiffe.endpoint_spiffe_id)
                        .map_err(|e| (at(), format!("{name}: endpoint_spiffe_id: {e}")))?;
                    BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id: id }
                }
                _ => {
                    return Err((
                        at(),
                        format!("{name}: needs one bundle_endpoint_profile, \"https_web\" {{}} or \"https_spiffe\" {{ endpoint_spiffe_id = … }}"),
                    ))
                }
            };
            relationships.push(FederationRelationship {
                trust_domain,
                bundle_endpoint_url: section.bundle_endpoint_url.clone(),
                profile,
            });
        }
        Ok(relationships)
    }

    /// The bundle endpoint to serve, if one is configured.
    pub fn bundle_endpoint(&self) -> Result<Option<BundleEndpoint>, Problem> {
        let Some(section) = &self.bundle_endpoint else { return Ok(None) };
        let at = |key: &'static str| vec!["server", "federation", "bundle_endpoint", key];
        let no_acme = "ACME is not supported (no ACME service is reachable from where Testudo is built and \
                       tested); use profile \"https_web\" { serving_cert_file { … } } with a certificate from \
                       your ACME client, or profile \"https_spiffe\" {}";
        if section.acme.is_some() {
            return Err((at("acme"), no_acme.into()));
        }
        let refresh_hint = section.refresh_hint.unwrap_or(DEFAULT_REFRESH_HINT);
        if !(MIN_REFRESH_HINT..=MAX_REFRESH_HINT).contains(&refresh_hint) {
            return Err((
                at("refresh_hint"),
                format!(
                    "{}s is outside [{}s, {}s]: partners would refresh too often or miss rotations",
                    refresh_hint.as_secs(),
                    MIN_REFRESH_HINT.as_secs(),
                    MAX_REFRESH_HINT.as_secs()
                ),
            ));
        }
        let profile = match &section.profile {
            None => {
                return Err((
                    at("profile"),
                    "a bundle endpoint needs profile \"https_spiffe\" {} or \"https_web\"".into(),
                ))
            }
            Some(ProfileBlocks { https_spiffe: Some(_), https_web: Some(_) }) => {
                return Err((at("profile"), "choose one profile, not both".into()))
            }
            Some(ProfileBlocks { https_spiffe: Some(_), https_web: None }) => EndpointProfile::HttpsSpiffe,
            Some(ProfileBlocks { https_web: Some(web), .. }) => {
                if web.acme.is_some() {
                    return Err((at("profile"), no_acme.into()));
                }
                let Some(files) = &web.serving_cert_file else {
                    return Err((
                        at("profile"),
                        "profile \"https_web\" needs serving_cert_file { cert_file_path \
                        key_file_path }"
                            .into(),
                    ));
                };
                if files.file_sync_interval < Duration::from_secs(1) {
                    return Err((at("profile"), "serving_cert_file.file_sync_interval must be at least 1s".into()));
                }
                EndpointProfile::HttpsWeb(files.clone())
            }
            Some(ProfileBlocks { https_spiffe: None, https_web: None }) => {
                return Err((at("profile"), "unknown profile: use \"https_spiffe\" or \"https_web\"".into()))
            }
        };
        Ok(Some(BundleEndpoint { address: SocketAddr::new(section.address, section.port), refresh_hint, profile }))
    }
}
