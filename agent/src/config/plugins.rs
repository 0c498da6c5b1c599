//! The agent's `plugins { … }` block: its node attestor, where its keys live, and which
//! workload attestors run. Unknown plugin names are refused by name.

use std::path::{Path, PathBuf};

use hcl_config::plugins::{NoSettings, PluginBlock};
use serde::Deserialize;

/// The key path of a refused setting and why.
pub type PluginProblem = (Vec<&'static str>, String);

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugins {
    #[serde(rename = "NodeAttestor", default)]
    pub node_attestor: NodeAttestors,
    #[serde(rename = "KeyManager", default)]
    pub key_manager: KeyManagers,
    #[serde(rename = "WorkloadAttestor", default)]
    pub workload_attestor: WorkloadAttestorBlocks,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestors {
    pub join_token: Option<PluginBlock<NoSettings>>,
    pub x509pop: Option<PluginBlock<X509PopData>>,
}

/// SPIRE's x509pop agent settings: the certificate and key proving the node's identity.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509PopData {
    pub private_key_path: Option<PathBuf>,
    pub certificate_path: Option<PathBuf>,
    pub intermediates_path: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyManagers {
    pub memory: Option<PluginBlock<NoSettings>>,
    pub disk: Option<PluginBlock<DiskData>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskData {
    pub directory: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadAttestorBlocks {
    pub unix: Option<PluginBlock<UnixData>>,
    pub systemd: Option<PluginBlock<NoSettings>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnixData {
    /// Also attest the workload's binary: `unix:path` and `unix:sha256`.
    #[serde(default)]
    pub discover_workload_path: bool,
    /// Largest binary hashed for `unix:sha256`, in bytes; 0: no limit.
    #[serde(default)]
    pub workload_size_limit: u64,
}

/// How the agent proves its node to the servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAttestor {
    /// A one-time token an admin generated (`agent.join_token`).
    JoinToken,
    /// Possession of a key whose certificate chains to a CA the servers trust.
    X509Pop { private_key_path: PathBuf, certificate_path: PathBuf, intermediates_path: Option<PathBuf> },
}

/// Where the agent keeps its own key and SVID between runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStorage {
    /// Nothing kept: every start attests again.
    Memory,
    /// Kept in this directory (mode 0600 files): a restart resumes without attesting.
    Disk(PathBuf),
}

/// Which workload attestors the config enables, with their `plugin_data`
/// (`workload::attestor::WorkloadAttestors` builds them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadAttestorConfig {
    pub unix: Option<UnixData>,
    pub systemd: bool,
}

fn enabled<T>(block: &Option<PluginBlock<T>>) -> Option<&T> {
    block.as_ref().filter(|b| b.enabled).map(|b| &b.plugin_data)
}

impl Plugins {
    pub fn node_attestor(&self) -> Result<NodeAttestor, PluginProblem> {
        let at = |name: &'static str| vec!["plugins", "NodeAttestor", name];
        match (enabled(&self.node_attestor.join_token), enabled(&self.node_attestor.x509pop)) {
            (Some(_), None) => Ok(NodeAttestor::JoinToken),
            (None, Some(data)) => {
                let private_key_path = data
                    .private_key_path
                    .clone()
                    .ok_or_else(|| (at("x509pop"), "plugin_data.private_key_path is required".to_string()))?;
                let certificate_path = data
                    .certificate_path
                    .clone()
                    .ok_or_else(|| (at("x509pop"), "plugin_data.certificate_path is required".to_string()))?;
                Ok(NodeAttestor::X509Pop {
                    private_key_path,
                    certificate_path,
                    intermediates_path: data.intermediates_path.clone(),
                })
            }
            (None, None) => Err((vec!["plugins"], "a NodeAttestor (join_token or x509pop) is required".into())),
            (Some(_), Some(_)) => {
                Err((at("x509pop"), "an agent uses one NodeAttestor; remove join_token or x509pop".into()))
            }
        }
    }

    pub fn key_storage(&self, data_dir: &Path) -> Result<KeyStorage, PluginProblem> {
        match (enabled(&self.key_manager.memory), enabled(&self.key_manager.disk)) {
            (Some(_), None) => Ok(KeyStorage::Memory),
            (None, Some(data)) => {
                Ok(KeyStorage::Disk(data.directory.clone().unwrap_or_else(|| data_dir.to_path_buf())))
            }
            (None, None) => Err((vec!["plugins"], "a KeyManager (memory or disk) is required".into())),
            (Some(_), Some(_)) => Err((
                vec!["plugins", "KeyManager", "disk"],
                "an agent uses one KeyManager; remove memory or disk".into(),
            )),
        }
    }

    pub fn workload_attestors(&self) -> Result<WorkloadAttestorConfig, PluginProblem> {
        let attestors = WorkloadAttestorConfig {
            unix: enabled(&self.workload_attestor.unix).cloned(),
            systemd: enabled(&self.workload_attestor.systemd).is_some(),
        };
        if attestors.unix.is_none() && !attestors.systemd {
            return Err((vec!["plugins"], "at least one WorkloadAttestor (unix or systemd) is required".into()));
        }
        Ok(attestors)
    }
}
