//! A cluster of real replicas in one process, for tests and benchmarks: each replica with
//! its own data dir, loopback port and certificate, talking gRPC over mutual TLS.
//! Built with the `testing` feature.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::network::tls::ClusterTls;
use crate::node::{Replica, ReplicaConfig, Timing};
use crate::{NodeId, StoreReader};
use identity::bundle::Bundle;
use identity::crypto::{KeyType, LocalKey, Signer};
use identity::x509::{mint_ca, mint_x509_svid, CaTemplate, Issuer, Subject, SvidTemplate};
use identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

/// The ID every test replica's ID sits under: replica 2 is `…/spire/replica/2`.
pub const REPLICAS: &str = "spiffe://cluster.test/spire/replica";

/// A CA that issues replica certificates.
pub struct TestCa {
    key: LocalKey,
    pub cert: Vec<u8>,
    pub bundle: Arc<RwLock<Bundle>>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        let td = TrustDomain::parse("cluster.test").unwrap();
        let template = CaTemplate {
            trust_domain: td.clone(),
            public_key: key.public_key().clone(),
            ttl: Duration::from_secs(86400),
            subject: Subject::ca_default(),
            serial: None,
        };
        let cert = mint_ca(&template, None, Some(&key), OffsetDateTime::now_utc()).unwrap().der;
        let mut bundle = Bundle::new(td);
        bundle.add_x509_authority(&cert).unwrap();
        Self { key, cert, bundle: Arc::new(RwLock::new(bundle)) }
    }

    /// A TLS identity with `spiffe_id`, trusting this CA's bundle.
    pub fn tls(&self, spiffe_id: &str) -> ClusterTls {
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        let template = SvidTemplate {
            spiffe_id: SpiffeId::parse(spiffe_id).unwrap(),
            public_key: key.public_key().clone(),
            ttl: Duration::from_secs(3600),
            dns_names: vec![],
            subject: Subject::svid_default(),
            serial: None,
        };
        let issuer = Issuer::new(&self.cert, &self.key).unwrap();
        let leaf = mint_x509_svid(&template, &issuer, OffsetDateTime::now_utc()).unwrap();
        ClusterTls {
            chain: vec![leaf.der, self.cert.clone()],
            key_pkcs8: key.to_pkcs8_der().unwrap(),
            bundle: self.bundle.clone(),
            replicas: SpiffeId::parse(REPLICAS).unwrap(),
        }
    }

    /// The TLS identity of replica `id`.
    pub fn replica_tls(&self, id: NodeId) -> ClusterTls {
        self.tls(&format!("{REPLICAS}/{id}"))
    }
}

pub fn fast_timing(snapshot_every: u64) -> Timing {
    Timing {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        rpc_timeout: Duration::from_secs(1),
        snapshot_every,
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub replicas: BTreeMap<NodeId, Replica>,
    /// Where each replica listened, so a restart keeps its address in the membership.
    addresses: BTreeMap<NodeId, std::net::SocketAddr>,
    timing: Timing,
}

impl TestCluster {
    /// Starts `n` replicas: the first initialises, the others join as learners and are
    /// promoted to voters.
    pub async fn start(n: u64, snapshot_every: u64) -> Self {
        Self::start_with(n, fast_timing(snapshot_every)).await
    }

    /// Like `start`, with the given Raft timing.
    pub async fn start_with(n: u64, timing: Timing) -> Self {
        let mut cluster = Self {
            dir: tempfile::tempdir().unwrap(),
            ca: TestCa::new(),
            replicas: BTreeMap::new(),
            addresses: BTreeMap::new(),
            timing,
        };
        cluster.start_replica(1).await;
        cluster.replicas[&1].initialize().await.unwrap();
        cluster.wait_for_leader().await;
        for id in 2..=n {
            cluster.join(id).await;
        }
        cluster
    }

    pub fn config(&self, id: NodeId) -> ReplicaConfig {
        ReplicaConfig {
            node_id: id,
            cluster_id: "test-cluster".into(),
            data_dir: self.dir.path().join(format!("node-{id}")),
            listen: self.addresses.get(&id).copied().unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
            api_address: format!("api-of-{id}"),
            tls: self.ca.replica_tls(id),
            timing: self.timing.clone(),
            join: None,
            advertise_address: None,
            source_address: None,
            clocks: Default::default(),
        }
    }

    pub async fn start_replica(&mut self, id: NodeId) {
        let replica = Replica::start(self.config(id)).await.unwrap();
        self.addresses.insert(id, replica.address());
        self.replicas.insert(id, replica);
    }

    /// Starts replica `id` and makes it a voter through the current leader.
    pub async fn join(&mut self, id: NodeId) {
        let leader = self.wait_for_leader().await;
        self.start_replica(id).await;
        let node = self.replicas[&id].node().clone();
        self.replicas[&leader].add_learner(id, node).await.unwrap();
        self.replicas[&leader].promote(id).await.unwrap();
    }

    /// The leader every live replica agrees on, waiting up to 10 s for one.
    pub async fn wait_for_leader(&self) -> NodeId {
        eventually(Duration::from_secs(10), || {
            let leaders: Vec<Option<NodeId>> = self.replicas.values().map(|r| r.status().leader).collect();
            let first = leaders.first().copied().flatten()?;
            (leaders.iter().all(|l| *l == Some(first))
                && self.replicas.contains_key(&first)
                && self.replicas[&first].is_leader())
            .then_some(first)
        })
        .await
        .expect("a leader is elected")
    }

    pub fn follower(&self, leader: NodeId) -> NodeId {
        *self.replicas.keys().find(|id| **id != leader).expect("a follower")
    }

    /// Stops a replica (its data dir stays).
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(replica) = self.replicas.remove(&id) {
            replica.shutdown().await;
        }
    }

    /// Deletes a stopped replica's data dir.
    pub fn wipe(&self, id: NodeId) {
        std::fs::remove_dir_all(self.dir.path().join(format!("node-{id}"))).unwrap();
    }

    pub fn reader(&self, id: NodeId) -> &StoreReader {
        self.replicas[&id].local_reader()
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        for (other, replica) in &self.replicas {
            if *other == id {
                replica.faults().block_all();
            } else {
                replica.faults().block(id);
            }
        }
    }

    pub fn heal(&self) {
        for replica in self.replicas.values() {
            replica.faults().heal();
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.replicas.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// The leaf certificate (DER) a cluster RPC server at `address` presents, fetched by
/// `openssl s_client` (a TLS client of its own, without a certificate).
pub fn presented_leaf_certificate(address: &str) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", address, "-tls1_3", "-alpn", "h2"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    pem::parse(text.as_bytes()).unwrap_or_else(|e| panic!("no certificate from {address}: {e}\n{text}")).into_contents()
}

/// Polls `check` until it returns `Some`, or gives up after `within`.
pub async fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
