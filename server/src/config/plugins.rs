//! The `plugins { … }` block: which key manager, node attestors and upstream authority run.
//! Each kind is a struct with one optional field per implementation, so an unknown name is
//! refused by name ("unknown field `tpm`, expected `join_token` or `x509pop`").

use std::path::PathBuf;

use kms::KeyManagerConfig;
use serde::Deserialize;

use crate::upstream::disk::DiskUpstreamConfig;
use crate::upstream::spire::SpireUpstreamConfig;
use crate::upstream::UpstreamConfig;

pub use hcl_config::plugins::{NoSettings, PluginBlock};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugins {
    #[serde(rename = "KeyManager", default)]
    pub key_manager: KeyManagers,
    #[serde(rename = "NodeAttestor", default)]
    pub node_attestor: NodeAttestors,
    #[serde(rename = "UpstreamAuthority", default)]
    pub upstream_authority: UpstreamAuthorities,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyManagers {
    pub memory: Option<PluginBlock<NoSettings>>,
    pub disk: Option<PluginBlock<DiskKeyManagerData>>,
    pub pkcs11: Option<PluginBlock<Pkcs11KeyManagerData>>,
    pub aws_kms: Option<PluginBlock<AwsKmsKeyManagerData>>,
}

/// The `aws_kms` key manager's settings. Credentials come the AWS way (environment,
/// profile, role), never from the config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsKeyManagerData {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    #[serde(default)]
    pub key_tags: std::collections::BTreeMap<String, String>,
    pub alias_prefix: Option<String>,
}

impl AwsKmsKeyManagerData {
    fn config(&self, trust_domain: &str) -> Result<kms::aws_kms::AwsKmsConfig, PluginProblem> {
        let at = |key: &'static str| vec!["plugins", "KeyManager", "aws_kms", "plugin_data", key];
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err((at("endpoint"), format!("{endpoint:?}: must be an http:// or https:// URL")));
            }
        }
        if self.region.as_deref().is_some_and(str::is_empty) {
            return Err((at("region"), "must not be empty".into()));
        }
        let alias_prefix = self
            .alias_prefix
            .clone()
            .unwrap_or_else(|| format!("alias/testudo/{}/", kms::aws_kms::alias_safe(trust_domain)));
        if !alias_prefix.starts_with("alias/")
            || !alias_prefix.ends_with('/')
            || alias_prefix.starts_with("alias/aws/")
            || kms::aws_kms::alias_safe(&alias_prefix) != alias_prefix
        {
            return Err((
                at("alias_prefix"),
                format!(
                    "{alias_prefix:?}: must start with \"alias/\" (not \
                \"alias/aws/\"), end with \"/\" and hold only letters, digits, '/', '_' and '-'"
                ),
            ));
        }
        if self.key_tags.keys().any(|k| k.starts_with("testudo-") || k.starts_with("aws:")) {
            return Err((at("key_tags"), "tag keys starting with \"testudo-\" or \"aws:\" are reserved".into()));
        }
        Ok(kms::aws_kms::AwsKmsConfig {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            key_tags: self.key_tags.clone(),
            alias_prefix,
            trust_domain: trust_domain.to_owned(),
        })
    }
}

/// The `pkcs11` key manager's settings. The PIN comes from a file or an environment
/// variable, never from the config text.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11KeyManagerData {
    pub module_path: Option<PathBuf>,
    pub token_label: Option<String>,
    pub slot_id: Option<u64>,
    pub user_pin_path: Option<PathBuf>,
    pub user_pin_env: Option<String>,
    pub key_label_prefix: Option<String>,
}

impl Pkcs11KeyManagerData {
    /// The checked settings; `trust_domain` makes the default label prefix.
    fn config(&self, trust_domain: &str) -> Result<kms::pkcs11::Pkcs11Config, PluginProblem> {
        let at = |key: &'static str| vec!["plugins", "KeyManager", "pkcs11", "plugin_data", key];
        let module_path = self
            .module_path
            .clone()
            .ok_or_else(|| (at("module_path"), "required: the PKCS#11 module (.so) to load".to_string()))?;
        if !module_path.is_file() {
            return Err((at("module_path"), format!("{}: no such file", module_path.display())));
        }
        let token = match (&self.token_label, self.slot_id) {
            (Some(label), None) if !label.is_empty() => kms::pkcs11::TokenSelector::Label(label.clone()),
            (None, Some(slot)) => kms::pkcs11::TokenSelector::Slot(slot),
            (None, None) => return Err((at("token_label"), "one of token_label or slot_id is required".into())),
            (Some(label), None) if label.is_empty() => return Err((at("token_label"), "must not be empty".into())),
            _ => return Err((at("slot_id"), "token_label and slot_id exclude each other".into())),
        };
        let user_pin = match (&self.user_pin_path, &self.user_pin_env) {
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| (at("user_pin_path"), format!("{}: {e}", path.display())))?;
                zeroize::Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, Some(name)) => zeroize::Zeroizing::new(
                std::env::var(name)
                    .map_err(|_| (at("user_pin_env"), format!("environment variable {name} is not set")))?,
            ),
            (None, None) => {
                return Err((
                    at("user_pin_path"),
                    "one of user_pin_path or user_pin_env is required (the PIN is never written in the config)".into(),
                ))
            }
            _ => return Err((at("user_pin_env"), "user_pin_path and user_pin_env exclude each other".into())),
        };
        if user_pin.is_empty() {
            return Err((at("user_pin_path"), "the user PIN is empty".into()));
        }
        let key_label_prefix = self.key_label_prefix.clone().unwrap_or_else(|| format!("testudo/{trust_domain}/"));
        Ok(kms::pkcs11::Pkcs11Config { module_path, token, user_pin, key_label_prefix })
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskKeyManagerData {
    pub keys_path: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestors {
    pub join_token: Option<PluginBlock<NoSettings>>,
    pub x509pop: Option<PluginBlock<X509PopData>>,
}

/// SPIRE's x509pop server settings: the CA bundle agents' certificates must chain to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509PopData {
    pub ca_bundle_path: Option<PathBuf>,
    #[serde(default)]
    pub ca_bundle_paths: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuthorities {
    pub disk: Option<PluginBlock<DiskUpstreamData>>,
    pub spire: Option<PluginBlock<SpireUpstreamData>>,
}

/// SPIRE's `spire` upstream authority settings: where the upstream cluster's replicas are
/// and the socket of the upstream agent that gives this server its SVID.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpireUpstreamData {
    /// A host, `host:port`, or a list of them (every upstream replica).
    pub server_address: Option<hcl_config::values::ServerAddresses>,
    /// The port of addresses written without one.
    #[serde(default = "default_upstream_port", deserialize_with = "hcl_config::values::port")]
    pub server_port: u16,
    pub workload_api_socket: Option<PathBuf>,
}

fn default_upstream_port() -> u16 {
    8081
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskUpstreamData {
    pub cert_file_path: Option<PathBuf>,
    pub key_file_path: Option<PathBuf>,
    pub bundle_file_path: Option<PathBuf>,
}

/// A cross-key problem in `plugins`, with the path of the key it concerns.
pub type PluginProblem = (Vec<&'static str>, String);

impl Plugins {
    /// The one enabled key manager; `trust_domain` names its keys by default.
    pub fn key_manager(&self, trust_domain: &str) -> Result<KeyManagerConfig, PluginProblem> {
        let mut chosen = Vec::new();
        if self.key_manager.memory.as_ref().is_some_and(|b| b.enabled) {
            chosen.push(("memory", KeyManagerConfig::Memory));
        }
        if let Some(block) = self.key_manager.disk.as_ref().filter(|b| b.enabled) {
            let keys_path = block.plugin_data.keys_path.clone().ok_or_else(|| {
                (vec!["plugins", "KeyManager", "disk", "plugin_data"], "missing field `keys_path`".to_string())
            })?;
            chosen.push(("disk", KeyManagerConfig::Disk { keys_path }));
        }
        if let Some(block) = self.key_manager.pkcs11.as_ref().filter(|b| b.enabled) {
            chosen.push(("pkcs11", KeyManagerConfig::Pkcs11(block.plugin_data.config(trust_domain)?)));
        }
        if let Some(block) = self.key_manager.aws_kms.as_ref().filter(|b| b.enabled) {
            chosen.push(("aws_kms", KeyManagerConfig::AwsKms(block.plugin_data.config(trust_domain)?)));
        }
        match chosen.len() {
            1 => Ok(chosen.remove(0).1),
            0 => Err((
                vec!["plugins"],
                "exactly one KeyManager is required (\"memory\", \"disk\", \"pkcs11\" or \"aws_kms\")".into(),
            )),
            _ => Err((vec!["plugins", "KeyManager"], "only one KeyManager may be enabled".into())),
        }
    }

    /// The enabled node attestors; at least one is required.
    pub fn node_attestors(&self) -> Result<NodeAttestorConfig, PluginProblem> {
        let join_token = self.node_attestor.join_token.as_ref().is_some_and(|b| b.enabled);
        let x509pop = match self.node_attestor.x509pop.as_ref().filter(|b| b.enabled) {
            None => None,
            Some(block) => {
                let mut paths = block.plugin_data.ca_bundle_paths.clone();
                paths.extend(block.plugin_data.ca_bundle_path.clone());
                if paths.is_empty() {
                    return Err((
                        vec!["plugins", "NodeAttestor", "x509pop", "plugin_data"],
                        "missing field `ca_bundle_path` (or `ca_bundle_paths`)".into(),
                    ));
                }
                Some(paths)
            }
        };
        if !join_token && x509pop.is_none() {
            return Err((
                vec!["plugins"],
                "at least one NodeAttestor is required (\"join_token\" or \"x509pop\")".into(),
            ));
        }
        Ok(NodeAttestorConfig { join_token, x509pop_ca_bundle_paths: x509pop })
    }

    /// The upstream authority, if one is enabled (at most one may be).
    pub fn upstream_authority(&self) -> Result<Option<UpstreamConfig>, PluginProblem> {
        let authorities = &self.upstream_authority;
        let disk = authorities.disk.as_ref().filter(|b| b.enabled);
        let spire = authorities.spire.as_ref().filter(|b| b.enabled);
        match (disk, spire) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => {
                Err((vec!["plugins", "UpstreamAuthority"], "only one UpstreamAuthority may be enabled".into()))
            }
            (Some(block), None) => {
                let path = vec!["plugins", "UpstreamAuthority", "disk", "plugin_data"];
                let data = &block.plugin_data;
                let cert_file_path = data
                    .cert_file_path
                    .clone()
                    .ok_or_else(|| (path.clone(), "missing field `cert_file_path`".to_string()))?;
                let key_file_path =
                    data.key_file_path.clone().ok_or_else(|| (path, "missing field `key_file_path`".to_string()))?;
                let bundle_file_path = data.bundle_file_path.clone();
                Ok(Some(UpstreamConfig::Disk(DiskUpstreamConfig { cert_file_path, key_file_path, bundle_file_path })))
            }
            (None, Some(block)) => {
                let path = vec!["plugins", "UpstreamAuthority", "spire", "plugin_data"];
                let data = &block.plugin_data;
                let addresses = data
                    .server_address
                    .as_ref()
                    .ok_or_else(|| (path.clone(), "missing field `server_address`".to_string()))?;
                let servers = hcl_config::values::server_addresses(addresses, data.server_port)
                    .map_err(|e| (path.clone(), format!("server_address: {e}")))?;
                let workload_api_socket = data
                    .workload_api_socket
                    .clone()
                    .ok_or_else(|| (path, "missing field `workload_api_socket`".to_string()))?;
                Ok(Some(UpstreamConfig::Spire(SpireUpstreamConfig { servers, workload_api_socket })))
            }
        }
    }
}

/// Which node attestors the server accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAttestorConfig {
    pub join_token: bool,
    /// x509pop is enabled when this is set: the CA bundles agents' certificates chain to.
    pub x509pop_ca_bundle_paths: Option<Vec<PathBuf>>,
}
