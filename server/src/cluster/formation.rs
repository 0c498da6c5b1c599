//! Declarative formation: replicas started with `cluster { bootstrap_expect peers
//! ca_cert_file ca_key_file }` form or join their cluster by themselves, for orchestrators
//! that start every replica with the same config and type nothing.
//!
//! The replica at `peers[i]` (i < `bootstrap_expect`) is node `i + 1`. A pristine replica
//! serves only the formation probe on its cluster port, and asks every peer whether a
//! cluster has formed (a leader committed an entry):
//!
//! - if one has, it joins it under a new node id, in place of the members at its address
//!   (its data dir was lost, or it is a replica the cluster has not seen yet);
//! - if none has, and it is one of the first `bootstrap_expect` peers and a majority of those
//!   answered "not formed", it initialises the cluster with those peers as voters. Each that
//!   does so writes the same first membership, so one cluster forms however many start at
//!   once;
//! - otherwise it waits and asks again.
//!
//! A replica whose data dir belongs to the cluster restarts as any other does. docs/cluster.md
//! ("Declarative formation") gives the threat model: whoever holds the cluster CA key can add
//! replicas.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use identity::TrustDomain;
use raft_store::network::tls::ClusterTls;
use raft_store::network::{ClusterClient, Faults, FormationState, FormingServer};
use raft_store::types::{NodeId, ReplicaNode};
use zeroize::Zeroizing;

use super::authority::{replicas_id, ClusterAuthority};
use super::files::ClusterMaterial;
use super::trust::ClusterTrust;
use super::ClusterSetupError;

/// How often a forming replica asks its peers again: often, so that a founder seldom finds
/// the others already formed (an election takes a few hundred milliseconds) and has to join
/// under a new id instead of founding with them.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long founders wait for all of them before a majority forms the cluster without the
/// rest: founders that all answer form it together, so none has to join it later under a
/// new id.
const ALL_FOUNDERS_WAIT: Duration = Duration::from_secs(10);
/// Node ids drawn for joiners start here, clear of the ids peers' positions give.
const FIRST_DRAWN_ID: u64 = 1 << 20;
/// ... and stay below this, so they survive JSON readers that hold numbers as doubles.
const DRAWN_ID_LIMIT: u64 = 1 << 53;

/// A declared cluster: its CA (provisioned ahead) and where its replicas are.
#[derive(Clone)]
pub struct Declared {
    /// How many of `peers`, from the first, form the cluster.
    pub bootstrap_expect: usize,
    /// The cluster RPC addresses of the replicas, `peers[i]` being node `i + 1`.
    pub peers: Vec<String>,
    pub ca_cert_der: Vec<u8>,
    pub ca_key_pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Declared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Declared")
            .field("bootstrap_expect", &self.bootstrap_expect)
            .field("peers", &self.peers)
            .finish()
    }
}

impl Declared {
    /// Reads the CA files: a PEM certificate and its PEM PKCS#8 key, which must match.
    pub fn load(
        bootstrap_expect: usize,
        peers: Vec<String>,
        ca_cert_file: &Path,
        ca_key_file: &Path,
    ) -> Result<Self, ClusterSetupError> {
        let read = |path: &Path, tag: &str| -> Result<Zeroizing<Vec<u8>>, ClusterSetupError> {
            let text = Zeroizing::new(
                std::fs::read(path).map_err(|e| ClusterSetupError::Files(format!("{}: {e}", path.display())))?,
            );
            let block = pem::parse(text.as_slice())
                .map_err(|e| ClusterSetupError::Files(format!("{}: not PEM: {e}", path.display())))?;
            if block.tag() != tag {
                return Err(ClusterSetupError::Files(format!(
                    "{}: holds a {:?} block; expected {tag:?}",
                    path.display(),
                    block.tag()
                )));
            }
            Ok(Zeroizing::new(block.into_contents()))
        };
        let ca_cert_der = read(ca_cert_file, "CERTIFICATE")?.to_vec();
        let ca_key_pkcs8 = read(ca_key_file, "PRIVATE KEY")?;
        ClusterAuthority::from_parts(ca_cert_der.clone(), &ca_key_pkcs8)?;
        Ok(Self { bootstrap_expect, peers, ca_cert_der, ca_key_pkcs8 })
    }

    /// The cluster id every replica of this CA derives alike.
    pub fn cluster_id(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.ca_cert_der);
        hex::encode(&digest.as_ref()[..16])
    }

    /// The node id this replica forms the cluster as, if `address` is one of the first
    /// `bootstrap_expect` peers.
    pub fn bootstrap_id(&self, address: &str) -> Option<NodeId> {
        self.founders().position(|peer| peer == address).map(|i| i as NodeId + 1)
    }

    fn founders(&self) -> impl Iterator<Item = &String> {
        self.peers.iter().take(self.bootstrap_expect)
    }

    /// The first membership: the same on every replica that forms the cluster. Members'
    /// API addresses are not known to each other yet, so none is named.
    pub fn first_members(&self) -> BTreeMap<NodeId, ReplicaNode> {
        self.founders()
            .enumerate()
            .map(|(i, peer)| (i as NodeId + 1, ReplicaNode { raft_address: peer.clone(), api_address: String::new() }))
            .collect()
    }

    /// This replica's files for node `node_id`: a new key and a certificate from the CA.
    pub fn material(&self, trust_domain: &TrustDomain, node_id: NodeId) -> Result<ClusterMaterial, ClusterSetupError> {
        ClusterAuthority::from_parts(self.ca_cert_der.clone(), &self.ca_key_pkcs8)?.material_for(
            trust_domain,
            node_id,
            self.cluster_id(),
        )
    }
}

/// A node id for a replica that joins: random, clear of the founders' ids.
pub fn drawn_node_id() -> Result<NodeId, ClusterSetupError> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| ClusterSetupError::Certificate("no randomness available".into()))?;
    Ok(FIRST_DRAWN_ID + u64::from_be_bytes(bytes) % (DRAWN_ID_LIMIT - FIRST_DRAWN_ID))
}

/// What the peers said, and what to do about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Join the formed cluster through these members.
    Join(Vec<String>),
    /// Form the cluster: a majority of the founders has not.
    Form,
    /// Ask again; why not yet.
    Wait(String),
}

/// Decides from the peers' answers (`None`: no answer) whether this replica forms, joins or
/// waits. A majority of the founders forms the cluster only once `waited_long`; before,
/// all of them must have answered.
pub fn decide(
    declared: &Declared,
    me: &str,
    answers: &[(String, Option<FormationState>)],
    waited_long: bool,
) -> Decision {
    let mut members: Vec<String> = Vec::new();
    for (_, state) in answers {
        if let Some(state) = state.as_ref().filter(|s| s.formed) {
            for (_, node) in &state.members {
                if node.raft_address != me && !members.contains(&node.raft_address) {
                    members.push(node.raft_address.clone());
                }
            }
        }
    }
    if !members.is_empty() {
        return Decision::Join(members);
    }
    if declared.bootstrap_id(me).is_none() {
        return Decision::Wait(format!(
            "{me} is not one of the first {} peers, so it only joins a formed cluster, and no peer belongs to one yet",
            declared.bootstrap_expect
        ));
    }
    let not_formed = 1 + answers
        .iter()
        .filter(|(peer, state)| declared.bootstrap_id(peer).is_some() && state.as_ref().is_some_and(|s| !s.formed))
        .count();
    let majority = declared.bootstrap_expect / 2 + 1;
    if not_formed == declared.bootstrap_expect || (waited_long && not_formed >= majority) {
        Decision::Form
    } else {
        let silent: Vec<&str> =
            answers.iter().filter(|(_, state)| state.is_none()).map(|(peer, _)| peer.as_str()).collect();
        let needed = if waited_long { majority } else { declared.bootstrap_expect };
        Decision::Wait(format!(
            "{not_formed} of {} founders answered that no cluster formed, {needed} needed; no answer from {}",
            declared.bootstrap_expect,
            silent.join(", ")
        ))
    }
}

/// Serves the formation probe at `listen` and asks the peers until this replica may form
/// the cluster or must join it. `material` is this replica's provisional identity (its
/// founder id, or a drawn one).
pub async fn probe_until_decided(
    declared: &Declared,
    trust_domain: &TrustDomain,
    me: &str,
    listen: std::net::SocketAddr,
    material: &ClusterMaterial,
) -> Result<Decision, ClusterSetupError> {
    let trust = ClusterTrust::from_material(trust_domain, material)?;
    let tls = ClusterTls {
        chain: vec![material.replica_cert_der.clone(), material.ca_cert_der.clone()],
        key_pkcs8: material.replica_key_pkcs8.clone(),
        bundle: trust.bundle(),
        replicas: replicas_id(trust_domain)?,
    };
    let server = FormingServer::start(&tls, listen).await.map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
    let client = ClusterClient::new(tls, PROBE_TIMEOUT, Faults::default());
    let mut last_logged: Option<tokio::time::Instant> = None;
    let started = tokio::time::Instant::now();
    let decision = loop {
        // All at once: a peer that does not answer costs one timeout, not one per peer.
        let mut asked = tokio::task::JoinSet::new();
        for peer in declared.peers.iter().filter(|peer| *peer != me) {
            let (client, peer) = (client.clone(), peer.clone());
            asked.spawn(async move {
                let answer = client.formation(&peer).await.ok();
                (peer, answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(answered) = asked.join_next().await {
            answers.extend(answered.ok());
        }
        // In the peers' order, so the members to join through come in a stable order.
        answers.sort_by_key(|(peer, _)| declared.peers.iter().position(|p| p == peer));
        match decide(declared, me, &answers, started.elapsed() >= ALL_FOUNDERS_WAIT) {
            Decision::Wait(why) => {
                if last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::info!(%why, "waiting for the cluster's peers before forming or joining it");
                    last_logged = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
            decided => break decided,
        }
    };
    server.stop().await;
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(expect: usize, peers: &[&str]) -> Declared {
        let td = TrustDomain::parse("example.org").unwrap();
        let authority = ClusterAuthority::create(&td).unwrap();
        Declared {
            bootstrap_expect: expect,
            peers: peers.iter().map(|p| p.to_string()).collect(),
            ca_cert_der: authority.cert_der.clone(),
            ca_key_pkcs8: authority.key_pkcs8().unwrap(),
        }
    }

    fn not_formed() -> Option<FormationState> {
        Some(FormationState { formed: false, members: Vec::new() })
    }

    fn formed(members: &[(NodeId, &str)]) -> Option<FormationState> {
        let members = members
            .iter()
            .map(|(id, at)| (*id, ReplicaNode { raft_address: at.to_string(), api_address: String::new() }))
            .collect();
        Some(FormationState { formed: true, members })
    }

    #[test]
    fn founders_form_once_a_majority_has_not_and_everyone_joins_a_formed_cluster() {
        let d = declared(3, &["a:1", "b:1", "c:1", "d:1"]);
        assert_eq!(d.bootstrap_id("b:1"), Some(2));
        assert_eq!(d.bootstrap_id("d:1"), None, "past bootstrap_expect: joins");
        assert_eq!(d.first_members().keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);

        let ask_after = |waited_long: bool, me: &str, answers: &[(&str, Option<FormationState>)]| {
            let answers: Vec<_> = answers.iter().map(|(p, s)| (p.to_string(), s.clone())).collect();
            decide(&d, me, &answers, waited_long)
        };
        let ask = |me: &str, answers: &[(&str, Option<FormationState>)]| ask_after(true, me, answers);
        // Alone: one founder of three is no majority.
        assert!(matches!(ask("a:1", &[("b:1", None), ("c:1", None), ("d:1", None)]), Decision::Wait(_)));
        // All three founders up, none formed: they form at once.
        let all = [("b:1", not_formed()), ("c:1", not_formed()), ("d:1", None)];
        assert_eq!(ask_after(false, "a:1", &all), Decision::Form);
        // Two of three: only once the third has had its time.
        let two = [("b:1", not_formed()), ("c:1", None), ("d:1", None)];
        assert!(matches!(ask_after(false, "a:1", &two), Decision::Wait(_)));
        assert_eq!(ask("a:1", &two), Decision::Form);
        // A non-founder never forms.
        assert!(matches!(
            ask("d:1", &[("a:1", not_formed()), ("b:1", not_formed()), ("c:1", not_formed())]),
            Decision::Wait(_)
        ));
        // Any formed answer means join, through the members it names (not through itself).
        let members = formed(&[(1, "a:1"), (2, "b:1"), (3, "c:1")]);
        assert_eq!(
            ask("c:1", &[("a:1", members.clone()), ("b:1", not_formed()), ("d:1", None)]),
            Decision::Join(vec!["a:1".into(), "b:1".into()])
        );
    }

    #[test]
    fn drawn_ids_are_clear_of_founders_and_differ() {
        let (a, b) = (drawn_node_id().unwrap(), drawn_node_id().unwrap());
        assert!((FIRST_DRAWN_ID..DRAWN_ID_LIMIT).contains(&a));
        assert_ne!(a, b);
    }
}
