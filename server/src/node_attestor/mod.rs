//! Node attestors: how an agent proves which node it runs on. One trait, one module per
//! implementation, and one registry that builds the attestors the HCL `plugins` block
//! enables, by name (`NodeAttestor "join_token"`, `NodeAttestor "x509pop"`). Adding an
//! attestor is a module and a line in [`REGISTRY`].

pub mod join_token;
pub mod x509pop;

use std::collections::BTreeMap;
use std::sync::Arc;

use identity::{Selector, SpiffeId};
use tonic::Status;

use crate::api::ApiContext;
use crate::config::plugins::NodeAttestorConfig;

/// Who the agent proved to be.
#[derive(Clone, Debug)]
pub struct Attested {
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// Whether the agent may attest again with the same proof (SPIRE's `CanReattest`).
    pub can_reattest: bool,
}

/// The agent's side of an attestation exchange: a challenge out, its response back.
#[async_trait::async_trait]
pub trait Challenger: Send {
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, Status>;
}

/// A way for agents to prove which node they run on.
#[async_trait::async_trait]
pub trait NodeAttestor: Send + Sync {
    /// The name in config and on the wire (`AttestationData.type`).
    fn name(&self) -> &'static str;

    /// Checks the agent's attestation `payload` (asking `agent` for challenge responses if
    /// the method needs them) and says who the agent is, or refuses with a status that
    /// names what was wrong.
    async fn attest(
        &self,
        payload: &[u8],
        agent: &mut dyn Challenger,
        context: &ApiContext,
    ) -> Result<Attested, Status>;
}

/// Why an enabled attestor could not be built.
#[derive(Debug, thiserror::Error)]
#[error("NodeAttestor {name:?}: {reason}")]
pub struct BuildError {
    pub name: &'static str,
    pub reason: String,
}

/// Builds an attestor from the config, or `None` when the config does not enable it.
type Build = fn(&NodeAttestorConfig) -> Result<Option<Arc<dyn NodeAttestor>>, BuildError>;

/// Every node attestor this server knows, by name.
const REGISTRY: &[(&str, Build)] = &[(join_token::NAME, join_token::build), (x509pop::NAME, x509pop::build)];

/// The node attestors this server accepts, by name.
#[derive(Clone, Default)]
pub struct NodeAttestors {
    enabled: BTreeMap<&'static str, Arc<dyn NodeAttestor>>,
}

impl NodeAttestors {
    /// The attestors `config` enables.
    pub fn build(config: &NodeAttestorConfig) -> Result<Self, BuildError> {
        let mut enabled = BTreeMap::new();
        for (name, build) in REGISTRY {
            if let Some(attestor) = build(config)? {
                enabled.insert(*name, attestor);
            }
        }
        Ok(Self { enabled })
    }

    /// The attestor agents name `name`, or why there is none.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn NodeAttestor>, Status> {
        match self.enabled.get(name) {
            Some(attestor) => Ok(attestor),
            None if REGISTRY.iter().any(|(known, _)| *known == name) => Err(Status::invalid_argument(format!(
                "params.data.type: node attestor {name:?} is not enabled on this server"
            ))),
            None => Err(Status::invalid_argument(format!("params.data.type: unknown node attestor {name:?}"))),
        }
    }

    /// The names of the enabled attestors.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.enabled.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_builds_what_the_config_enables_and_names_what_it_refuses() {
        let config = NodeAttestorConfig { join_token: true, x509pop_ca_bundle_paths: None };
        let attestors = NodeAttestors::build(&config).unwrap();
        assert_eq!(attestors.names().collect::<Vec<_>>(), vec!["join_token"]);
        assert_eq!(attestors.get("join_token").unwrap().name(), "join_token");
        let off = attestors.get("x509pop").err().unwrap();
        assert!(off.message().contains("\"x509pop\" is not enabled"), "{off:?}");
        let unknown = attestors.get("tpm_devid").err().unwrap();
        assert!(unknown.message().contains("unknown node attestor \"tpm_devid\""), "{unknown:?}");
    }

    #[test]
    fn an_attestor_that_cannot_load_its_config_is_named() {
        let config =
            NodeAttestorConfig { join_token: false, x509pop_ca_bundle_paths: Some(vec!["/nonexistent/ca.pem".into()]) };
        let err = NodeAttestors::build(&config).err().unwrap();
        assert_eq!(err.name, "x509pop");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
