//! The server's HCL config file, in SPIRE's shape plus a `cluster { … }` block, read with
//! `hcl_config` so every refusal names the file, line and key. docs/server-config.md lists
//! every key.

pub mod federation;
pub mod plugins;
pub mod sections;

use std::path::Path;
use std::time::Duration;

use kms::KeyManagerConfig;
use serde::Deserialize;

use crate::ca::config::{CaConfig, CaConfigError};
pub use hcl_config::{values, ConfigError, InvalidKey};
use identity::x509::Subject;
use plugins::{NodeAttestorConfig, Plugins};
use sections::{ClusterSection, HealthChecks, ServerSection, Telemetry};

/// The least `cluster.remove_unreachable_after` may be: longer than a replica takes to
/// restart, so a restart never costs a member.
pub const MIN_REMOVE_UNREACHABLE_AFTER: Duration = Duration::from_secs(10);

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server: ServerSection,
    #[serde(default)]
    plugins: Plugins,
    cluster: ClusterSection,
    #[serde(default)]
    health_checks: HealthChecks,
    #[serde(default)]
    telemetry: Telemetry,
}

/// A checked server config.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub server: ServerSection,
    pub cluster: ClusterSection,
    pub health_checks: HealthChecks,
    pub telemetry: Telemetry,
    pub key_manager: KeyManagerConfig,
    pub node_attestors: NodeAttestorConfig,
    pub upstream_authority: Option<crate::upstream::UpstreamConfig>,
    /// `server.federation.bundle_endpoint`, checked.
    pub bundle_endpoint: Option<federation::BundleEndpoint>,
    /// `server.federation.federates_with`, checked.
    pub federates_with: Vec<raft_store::model::FederationRelationship>,
    /// Settings that work but probably not as meant; logged at start-up.
    pub warnings: Vec<String>,
}

impl ServerConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, false)
    }

    /// As [`Self::load`]; with `expand_env`, environment variables in the text are
    /// expanded first (`hcl_config::load_with`).
    pub fn load_with(path: &Path, expand_env: bool) -> Result<Self, ConfigError> {
        Self::check_parsed(hcl_config::load_with(path, expand_env)?)
    }

    /// Checks config text; `file` names it in errors.
    pub fn parse(source: &str, file: &str) -> Result<Self, ConfigError> {
        Self::check_parsed(hcl_config::parse(source.to_owned(), file)?)
    }

    fn check_parsed(file: hcl_config::Parsed<File>) -> Result<Self, ConfigError> {
        let invalid = |path: Vec<String>, message: String| file.invalid(&path, message);
        let parsed = &file.value;
        let problem =
            |(path, message): plugins::PluginProblem| invalid(path.into_iter().map(String::from).collect(), message);
        let key_manager = parsed.plugins.key_manager(parsed.server.trust_domain.name()).map_err(problem)?;
        let node_attestors = parsed.plugins.node_attestors().map_err(problem)?;
        let upstream_authority = parsed.plugins.upstream_authority().map_err(problem)?;
        let bundle_endpoint = parsed
            .server
            .federation
            .bundle_endpoint()
            .map_err(|(path, message)| invalid(path.iter().map(|s| s.to_string()).collect(), message))?;
        let federates_with = parsed
            .server
            .federation
            .relationships(&parsed.server.trust_domain)
            .map_err(|(path, message)| invalid(path.iter().map(|s| s.to_string()).collect(), message))?;

        let config = Self {
            server: parsed.server.clone(),
            cluster: parsed.cluster.clone(),
            health_checks: parsed.health_checks.clone(),
            telemetry: parsed.telemetry.clone(),
            key_manager,
            node_attestors,
            upstream_authority,
            bundle_endpoint,
            federates_with,
            warnings: Vec::new(),
        };
        let warnings =
            config.check().map_err(|(path, message)| invalid(path.iter().map(|s| s.to_string()).collect(), message))?;
        Ok(Self { warnings, ..config })
    }

    /// The CA settings this config asks for.
    pub fn ca_config(&self) -> CaConfig {
        let mut ca = CaConfig::new(self.server.trust_domain.clone());
        ca.ca_ttl = self.server.ca_ttl;
        ca.key_sweep_grace = self.server.ca_key_sweep_grace;
        ca.x509_svid_ttl = self.server.default_x509_svid_ttl;
        ca.jwt_svid_ttl = self.server.default_jwt_svid_ttl;
        ca.ca_key_type = self.server.ca_key_type;
        ca.jwt_key_type = self.server.jwt_key_type;
        if let Some(subject) = &self.server.ca_subject {
            ca.ca_subject = Subject {
                country: subject.country.first().cloned(),
                organization: subject.organization.first().cloned(),
                common_name: Some(subject.common_name.clone()).filter(|c| !c.is_empty()),
            };
        }
        ca
    }

    /// Cross-key checks; returns warnings, or the path and reason of the first refusal.
    /// The invite flow takes a `node_id`; declarative formation takes `peers` and the CA
    /// files instead, and no `node_id`.
    fn check_formation(&self) -> Result<(), (Vec<&'static str>, String)> {
        let c = &self.cluster;
        if c.peers.is_empty() {
            for (key, set) in [
                ("bootstrap_expect", c.bootstrap_expect.is_some()),
                ("ca_cert_file", c.ca_cert_file.is_some()),
                ("ca_key_file", c.ca_key_file.is_some()),
                ("remove_unreachable_after", c.remove_unreachable_after.is_some()),
            ] {
                if set {
                    return Err((vec!["cluster", key], "only with `peers` (declarative formation)".into()));
                }
            }
            if c.node_id == 0 {
                return Err((vec!["cluster", "node_id"], "must be a positive integer".into()));
            }
            return Ok(());
        }
        if c.node_id != 0 {
            return Err((
                vec!["cluster", "node_id"],
                "not with `peers`: the replica at peers[i] forms the cluster as node i + 1, others get an id when they join"
                    .into(),
            ));
        }
        for (key, file) in [("ca_cert_file", &c.ca_cert_file), ("ca_key_file", &c.ca_key_file)] {
            if file.is_none() {
                return Err((vec!["cluster", key], "required with `peers`: the cluster CA provisioned ahead".into()));
            }
        }
        for (i, peer) in c.peers.iter().enumerate() {
            let valid = peer
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                return Err((vec!["cluster", "peers"], format!("{peer:?} is not host:port")));
            }
            if c.peers[..i].contains(peer) {
                return Err((vec!["cluster", "peers"], format!("{peer:?} is listed twice")));
            }
        }
        if c.remove_unreachable_after.is_some_and(|after| after < MIN_REMOVE_UNREACHABLE_AFTER) {
            return Err((
                vec!["cluster", "remove_unreachable_after"],
                format!(
                    "must be at least {} s: a replica restarting or briefly cut off must not be removed",
                    MIN_REMOVE_UNREACHABLE_AFTER.as_secs()
                ),
            ));
        }
        if let Some(expect) = c.bootstrap_expect {
            if expect == 0 || expect > c.peers.len() {
                return Err((
                    vec!["cluster", "bootstrap_expect"],
                    format!("must be between 1 and the number of peers ({})", c.peers.len()),
                ));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<Vec<String>, (Vec<&'static str>, String)> {
        let warnings = self.ca_config().validate().map_err(|e| {
            let key = match e {
                CaConfigError::ZeroTtl(name) => name,
                CaConfigError::CaTtlTooShort => "ca_ttl",
                CaConfigError::SweepGraceTooShort => "ca_key_sweep_grace",
            };
            (vec!["server", key], e.to_string())
        })?;
        if let Some(issuer) = &self.server.jwt_issuer {
            if !(issuer.starts_with("https://") || issuer.starts_with("http://"))
                || issuer.contains(char::is_whitespace)
            {
                return Err((
                    vec!["server", "jwt_issuer"],
                    format!("invalid issuer {issuer:?}: must be an http(s) URL"),
                ));
            }
        }
        self.check_formation()?;
        if self.cluster.election_timeout < self.cluster.heartbeat_interval * 3 {
            return Err((
                vec!["cluster", "election_timeout"],
                "must be at least three heartbeat intervals, or followers start elections while the leader is healthy"
                    .into(),
            ));
        }
        if self.cluster.max_clock_skew < Duration::from_millis(100) {
            return Err((
                vec!["cluster", "max_clock_skew"],
                "must be at least 100ms: a tighter bound mistakes network delay for a clock that is off".into(),
            ));
        }
        if self.cluster.snapshot_every == 0 {
            return Err((vec!["cluster", "snapshot_every"], "must be positive".into()));
        }
        for (key, path) in
            [("live_path", &self.health_checks.live_path), ("ready_path", &self.health_checks.ready_path)]
        {
            if !path.starts_with('/') {
                return Err((vec!["health_checks", key], format!("{path:?} must start with '/'")));
            }
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests;
