//! The agent's HCL config file, in SPIRE's shape (plus `sync_interval`), read with
//! `hcl_config` so every refusal names the file, line and key. docs/agent-config.md lists
//! every key.

pub mod plugins;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hcl_config::sections::{HealthChecks, Telemetry};
use hcl_config::values::{self, server_addresses, ServerAddresses};
use hcl_config::{ConfigError, Parsed};
use identity::TrustDomain;
use serde::Deserialize;

use plugins::{KeyStorage, NodeAttestor, Plugins, WorkloadAttestorConfig};

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    agent: AgentSection,
    #[serde(default)]
    plugins: Plugins,
    #[serde(default)]
    health_checks: HealthChecks,
    #[serde(default)]
    telemetry: Telemetry,
}

/// `agent { … }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub data_dir: PathBuf,
    pub server_address: ServerAddresses,
    /// The port of addresses written without one.
    #[serde(default = "default_server_port", deserialize_with = "values::port")]
    pub server_port: u16,
    #[serde(deserialize_with = "values::trust_domain")]
    pub trust_domain: TrustDomain,
    pub trust_bundle_path: Option<PathBuf>,
    pub trust_bundle_url: Option<String>,
    #[serde(default = "default_bundle_format")]
    pub trust_bundle_format: String,
    #[serde(default)]
    pub insecure_bootstrap: bool,
    #[serde(default = "default_socket_path")]
    pub socket_path: PathBuf,
    pub admin_socket_path: Option<PathBuf>,
    pub join_token: Option<String>,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// How often entries, bundles and SVIDs are synced with the servers.
    #[serde(default = "default_sync_interval", deserialize_with = "values::duration")]
    pub sync_interval: Duration,
    /// Envoy SDS resource names.
    #[serde(default)]
    pub sds: SdsSection,
}

/// `agent { sds { … } }`: the resource names Envoy uses for the defaults, as in SPIRE.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SdsSection {
    /// The TLS certificate name for the caller's default (first) X.509-SVID.
    pub default_svid_name: String,
    /// The validation context name for our trust domain's bundle.
    pub default_bundle_name: String,
    /// The validation context name for our bundle and every federated one.
    pub default_all_bundles_name: String,
    /// Send plain CA certificates instead of Envoy's SPIFFE certificate validator config.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsSection {
    fn default() -> Self {
        Self {
            default_svid_name: "default".into(),
            default_bundle_name: "ROOTCA".into(),
            default_all_bundles_name: "ALL".into(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// How the agent first learns whom to trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustSource {
    /// PEM certificates, or a SPIFFE bundle document (`trust_bundle_format = "spiffe"`).
    File { path: PathBuf, spiffe_format: bool },
    /// The same, downloaded over HTTPS checked with the system's web roots.
    Url { url: String, spiffe_format: bool },
    /// Trust the first server reached, once, to fetch the bundle (development only).
    InsecureBootstrap,
}

/// A checked agent config.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub agent: AgentSection,
    /// `host:port` of every server to use, in the order given.
    pub servers: Vec<String>,
    pub trust: TrustSource,
    pub node_attestor: NodeAttestor,
    pub key_storage: KeyStorage,
    pub workload_attestors: WorkloadAttestorConfig,
    pub health_checks: HealthChecks,
    pub telemetry: Telemetry,
}

impl AgentConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, false)
    }

    /// As [`Self::load`]; with `expand_env`, environment variables in the text are
    /// expanded first (`hcl_config::load_with`).
    pub fn load_with(path: &Path, expand_env: bool) -> Result<Self, ConfigError> {
        Self::check(hcl_config::load_with(path, expand_env)?)
    }

    /// Checks config text; `file` names it in errors.
    pub fn parse(source: &str, file: &str) -> Result<Self, ConfigError> {
        Self::check(hcl_config::parse(source.to_owned(), file)?)
    }

    fn check(file: Parsed<File>) -> Result<Self, ConfigError> {
        let parsed = &file.value;
        let agent = &parsed.agent;
        let servers = server_addresses(&agent.server_address, agent.server_port)
            .map_err(|e| file.invalid(&["agent", "server_address"], e))?;
        let spiffe_format =
            || match agent.trust_bundle_format.as_str() {
                "pem" => Ok(false),
                "spiffe" => Ok(true),
                other => Err(file
                    .invalid(&["agent", "trust_bundle_format"], format!("{other:?}: must be \"pem\" or \"spiffe\""))),
            };
        let trust = match (&agent.trust_bundle_path, &agent.trust_bundle_url, agent.insecure_bootstrap) {
            (Some(path), None, false) => TrustSource::File { path: path.clone(), spiffe_format: spiffe_format()? },
            (None, Some(url), false) => {
                check_bundle_url(url).map_err(|e| file.invalid(&["agent", "trust_bundle_url"], e))?;
                TrustSource::Url { url: url.clone(), spiffe_format: spiffe_format()? }
            }
            (None, None, true) => TrustSource::InsecureBootstrap,
            (None, None, false) => {
                return Err(file.invalid(
                    &["agent"],
                    "one of trust_bundle_path, trust_bundle_url or insecure_bootstrap = true is required",
                ));
            }
            _ => {
                return Err(file.invalid(
                    &["agent", "insecure_bootstrap"],
                    "trust_bundle_path, trust_bundle_url and insecure_bootstrap exclude each other",
                ))
            }
        };
        if !matches!(agent.log_level.to_ascii_uppercase().as_str(), "DEBUG" | "INFO" | "WARN" | "ERROR") {
            return Err(file.invalid(
                &["agent", "log_level"],
                format!("{:?}: must be DEBUG, INFO, WARN or ERROR", agent.log_level),
            ));
        }
        if !matches!(agent.log_format.as_str(), "text" | "json") {
            return Err(file.invalid(&["agent", "log_format"], format!("{:?}: must be text or json", agent.log_format)));
        }
        if let Some(admin) = &agent.admin_socket_path {
            check_admin_socket(admin, &agent.socket_path)
                .map_err(|e| file.invalid(&["agent", "admin_socket_path"], e))?;
        }
        check_sds_names(&agent.sds).map_err(|(key, message)| file.invalid(&["agent", "sds", key], message))?;
        let problem = |(path, message): plugins::PluginProblem| file.invalid(&path, message);
        let node_attestor = parsed.plugins.node_attestor().map_err(problem)?;
        if node_attestor == NodeAttestor::JoinToken && agent.join_token.as_deref().is_some_and(str::is_empty) {
            return Err(file.invalid(&["agent", "join_token"], "must not be empty"));
        }
        let key_storage = parsed.plugins.key_storage(&agent.data_dir).map_err(problem)?;
        let workload_attestors = parsed.plugins.workload_attestors().map_err(problem)?;
        Ok(Self {
            agent: agent.clone(),
            servers,
            trust,
            node_attestor,
            key_storage,
            workload_attestors,
            health_checks: parsed.health_checks.clone(),
            telemetry: parsed.telemetry.clone(),
        })
    }
}

/// As SPIRE requires: the admin socket must not sit in the Workload API socket's directory
/// or below it, where workloads, which can reach that directory, could reach it too.
fn check_admin_socket(admin: &Path, workload: &Path) -> Result<(), String> {
    if !admin.is_absolute() {
        return Err(format!("{}: must be an absolute path", admin.display()));
    }
    let workload_dir = workload.parent().unwrap_or(workload);
    if admin.parent().is_some_and(|dir| dir.starts_with(workload_dir)) {
        return Err(format!(
            "{}: must not be in the directory of socket_path ({}) or below it",
            admin.display(),
            workload_dir.display()
        ));
    }
    Ok(())
}

/// `trust_bundle_url` must be an https URL with a host: the bundle decides whom the agent
/// trusts, so it must not travel in plain text.
fn check_bundle_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("{url:?}: must be an https:// URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: has no host"));
    }
    Ok(())
}

/// The three default names must be distinct, non-empty and not SPIFFE IDs (which name
/// SVIDs and bundles themselves).
fn check_sds_names(sds: &SdsSection) -> Result<(), (&'static str, String)> {
    let names = [
        ("default_svid_name", &sds.default_svid_name),
        ("default_bundle_name", &sds.default_bundle_name),
        ("default_all_bundles_name", &sds.default_all_bundles_name),
    ];
    for (i, (key, name)) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err((key, "must not be empty".into()));
        }
        if name.starts_with("spiffe://") {
            return Err((key, format!("{name:?}: SPIFFE IDs already name SVIDs and bundles; choose another name")));
        }
        if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
            return Err((key, format!("{name:?} is already the {other}")));
        }
    }
    Ok(())
}

fn default_server_port() -> u16 {
    8081
}
fn default_bundle_format() -> String {
    "pem".into()
}
fn default_socket_path() -> PathBuf {
    PathBuf::from("/tmp/spire-agent/public/api.sock")
}
fn default_log_level() -> String {
    "INFO".into()
}
fn default_log_format() -> String {
    "text".into()
}
fn default_sync_interval() -> Duration {
    Duration::from_secs(5)
}

#[cfg(test)]
mod tests;
