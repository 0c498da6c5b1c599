//! Renewal of this replica's cluster certificate. Replica certificates last a year and are
//! renewed for the same key once past half their life: when the replica starts, and by a
//! task that checks every hour while it runs, so a replica that is never restarted keeps a
//! valid certificate. A renewed certificate is written to the data dir and presented on the
//! cluster RPC from the next connection on.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use identity::TrustDomain;
use raft_store::node::Replica;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::files;
use super::trust::ClusterTrust;
use super::ClusterSetupError;

/// How often a running replica checks its certificate.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// What renewing this replica's certificate needs.
pub struct Renewal {
    trust: Arc<ClusterTrust>,
    trust_domain: TrustDomain,
    node_id: u64,
    data_dir: PathBuf,
    key_pkcs8: Zeroizing<Vec<u8>>,
    /// The certificate this replica presents now.
    current: Mutex<Vec<u8>>,
}

impl Renewal {
    pub fn new(
        trust: Arc<ClusterTrust>,
        trust_domain: TrustDomain,
        node_id: u64,
        data_dir: PathBuf,
        key_pkcs8: Zeroizing<Vec<u8>>,
        current: Vec<u8>,
    ) -> Self {
        Self { trust, trust_domain, node_id, data_dir, key_pkcs8, current: Mutex::new(current) }
    }

    /// The certificate to present: the current one, or (past half its life at `now`) a new
    /// one, already written to the data dir.
    pub async fn certificate_at(&self, now: OffsetDateTime) -> Result<Vec<u8>, ClusterSetupError> {
        self.renew_if_due(now).await?;
        Ok(self.current.lock().await.clone())
    }

    /// Renews if due at `now` (or if the issuing cluster CA changed) and makes `replica`
    /// present the result. True when it renewed.
    pub async fn renew_running(&self, replica: &Replica, now: OffsetDateTime) -> Result<bool, ClusterSetupError> {
        let Some(certificate) = self.renew_if_due(now).await? else { return Ok(false) };
        let ca_cert_der = self.trust.issuing().cert_der.clone();
        replica
            .replace_certificate(vec![certificate, ca_cert_der], self.key_pkcs8.clone())
            .map_err(|e| ClusterSetupError::Certificate(e.to_string()))?;
        Ok(true)
    }

    /// The new certificate, written to the data dir, if the current one is past half its
    /// life at `now`. Signing and a synced file write run off the reactor.
    async fn renew_if_due(&self, now: OffsetDateTime) -> Result<Option<Vec<u8>>, ClusterSetupError> {
        let mut current = self.current.lock().await;
        let (authority, trust_domain, data_dir, cert) =
            (self.trust.issuing(), self.trust_domain.clone(), self.data_dir.clone(), current.clone());
        let node_id = self.node_id;
        let renewed = tokio::task::spawn_blocking(move || {
            let renewed = authority.renew_replica_if_due(&trust_domain, node_id, &cert, now)?;
            if let Some(renewed) = &renewed {
                files::replace_replica_certificate(&data_dir, renewed)?;
            }
            Ok::<_, ClusterSetupError>(renewed)
        })
        .await
        .map_err(|e| ClusterSetupError::Files(e.to_string()))??;
        if let Some(renewed) = &renewed {
            tracing::info!(
                "replica certificate renewed (past half its life, not naming this node id, or from another cluster CA)"
            );
            current.clone_from(renewed);
        }
        if let Ok(facts) = identity::x509::certificate_facts(&current) {
            metrics::gauge!("testudo_cluster_certificate_expiry_seconds").set(facts.not_after.unix_timestamp() as f64);
        }
        Ok(renewed)
    }

    /// Checks every hour until the replica is gone or the handle is dropped. A failed
    /// check is logged and tried again at the next one: the certificate has half a year
    /// left when checks begin.
    pub fn spawn(self: Arc<Self>, replica: Weak<Replica>) -> Renewing {
        Renewing(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(CHECK_EVERY);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(replica) = replica.upgrade() else { return };
                if let Err(e) = self.renew_running(&replica, OffsetDateTime::now_utc()).await {
                    tracing::error!(error = %e, "could not renew this replica's cluster certificate; will try again \
                        in an hour");
                }
            }
        }))
    }
}

/// The running renewal task; dropping it stops the task.
pub struct Renewing(tokio::task::JoinHandle<()>);

impl Drop for Renewing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use identity::bundle::Bundle;
    use identity::crypto::{KeyType, LocalKey, Signer};
    use raft_store::network::tls::ClusterTls;
    use raft_store::node::ReplicaConfig;
    use raft_store::testing::{fast_timing, presented_leaf_certificate};

    use super::*;
    use crate::cluster::authority::{replicas_id, ClusterAuthority};
    use crate::cluster::files::ClusterMaterial;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_replica_renews_past_half_life_and_presents_the_new_certificate() {
        let td = TrustDomain::parse("example.org").unwrap();
        let authority = Arc::new(ClusterAuthority::create(&td).unwrap());
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        let cert = authority.issue_replica(&td, 1, key.public_key().clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let material = ClusterMaterial {
            cluster_id: "renewal-test".into(),
            ca_generation: 0,
            ca_cert_der: authority.cert_der.clone(),
            ca_key_pkcs8: authority.key_pkcs8().unwrap(),
            also_trusted: None,
            replica_cert_der: cert.clone(),
            replica_key_pkcs8: key.to_pkcs8_der().unwrap(),
        };
        files::store(dir.path(), &material).unwrap();
        let mut bundle = Bundle::new(td.clone());
        bundle.add_x509_authority(&authority.cert_der).unwrap();
        let replica = Replica::start(ReplicaConfig {
            node_id: 1,
            cluster_id: material.cluster_id.clone(),
            data_dir: dir.path().join("raft"),
            listen: "127.0.0.1:0".parse().unwrap(),
            api_address: "api".into(),
            tls: ClusterTls {
                chain: vec![cert.clone(), authority.cert_der.clone()],
                key_pkcs8: material.replica_key_pkcs8.clone(),
                bundle: Arc::new(RwLock::new(bundle)),
                replicas: replicas_id(&td).unwrap(),
            },
            timing: fast_timing(1000),
            join: None,
            advertise_address: None,
            source_address: None,
            clocks: Default::default(),
        })
        .await
        .unwrap();
        let address = replica.address().to_string();
        assert_eq!(presented_leaf_certificate(&address), cert);

        let trust = Arc::new(ClusterTrust::from_material(&td, &material).unwrap());
        let renewal = Renewal::new(
            trust,
            td.clone(),
            1,
            dir.path().to_path_buf(),
            material.replica_key_pkcs8.clone(),
            cert.clone(),
        );
        let now = OffsetDateTime::now_utc();
        assert!(!renewal.renew_running(&replica, now).await.unwrap(), "a fresh certificate is kept");
        assert!(
            renewal.renew_running(&replica, now + time::Duration::days(200)).await.unwrap(),
            "past half its life: renewed"
        );

        let stored = files::load(dir.path()).unwrap().unwrap().replica_cert_der;
        assert_ne!(stored, cert);
        assert_eq!(presented_leaf_certificate(&address), stored, "the replica presents what it stored");
        assert!(!renewal.renew_running(&replica, now).await.unwrap(), "the renewed one is fresh");
        replica.shutdown().await;
    }
}
