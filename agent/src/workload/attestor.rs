//! Workload attestors: what the agent learns of the process calling its socket, as
//! selectors. One trait, one module per implementation (`unix`, `systemd`), and one
//! registry that builds the attestors the HCL `plugins` block enables, by name
//! (`WorkloadAttestor "unix"`). Adding an attestor is a module and a line in [`REGISTRY`].

use std::sync::Arc;

use identity::SelectorSet;

use super::unix::{AttestError, PeerCredentials};
use crate::config::plugins::WorkloadAttestorConfig;

/// A way to describe a calling process by selectors.
pub trait WorkloadAttestor: Send + Sync {
    /// The name in config and the selectors' type.
    fn name(&self) -> &'static str;

    /// The selectors of the process `peer` names. Blocking (it reads `/proc`): called on a
    /// blocking thread, inside the guard that checks the process did not change meanwhile.
    fn attest(&self, peer: PeerCredentials) -> Result<SelectorSet, AttestError>;
}

/// Builds an attestor from the config, or `None` when the config does not enable it.
type Build = fn(&WorkloadAttestorConfig) -> Option<Arc<dyn WorkloadAttestor>>;

/// Every workload attestor this agent knows, by name.
const REGISTRY: &[(&str, Build)] =
    &[(super::unix::NAME, super::unix::build), (super::systemd::NAME, super::systemd::build)];

/// The workload attestors that run for every call, in registry order. Cheap to clone.
#[derive(Clone, Default)]
pub struct WorkloadAttestors {
    enabled: Arc<[Arc<dyn WorkloadAttestor>]>,
}

impl WorkloadAttestors {
    /// The attestors `config` enables.
    pub fn build(config: &WorkloadAttestorConfig) -> Self {
        Self { enabled: REGISTRY.iter().filter_map(|(_, build)| build(config)).collect() }
    }

    /// The names of the enabled attestors.
    pub fn names(&self) -> Vec<&'static str> {
        self.enabled.iter().map(|a| a.name()).collect()
    }

    /// Every enabled attestor's selectors for `peer`, together. Blocking.
    pub fn attest(&self, peer: PeerCredentials) -> Result<SelectorSet, AttestError> {
        let mut selectors = SelectorSet::new();
        for attestor in self.enabled.iter() {
            selectors.extend(attestor.attest(peer)?);
        }
        Ok(selectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::plugins::UnixData;

    #[test]
    fn the_registry_builds_what_the_config_enables_in_order() {
        let both = WorkloadAttestorConfig { unix: Some(UnixData::default()), systemd: true };
        assert_eq!(WorkloadAttestors::build(&both).names(), vec!["unix", "systemd"]);
        let systemd = WorkloadAttestorConfig { unix: None, systemd: true };
        assert_eq!(WorkloadAttestors::build(&systemd).names(), vec!["systemd"]);
    }

    #[test]
    fn every_enabled_attestor_describes_this_process() {
        let me = PeerCredentials {
            pid: i32::try_from(std::process::id()).unwrap(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        let unix =
            WorkloadAttestors::build(&WorkloadAttestorConfig { unix: Some(UnixData::default()), systemd: false });
        let selectors = unix.attest(me).unwrap();
        assert!(selectors.iter().any(|s| s.to_string() == format!("unix:uid:{}", me.uid)), "{selectors:?}");
    }
}
