//! One CA for a 3-replica cluster: the leader rotates through Raft, every replica signs with
//! the replicated active slot, and a new leader carries a half-done rotation through.

use std::process::Command as Process;
use std::sync::Arc;
use std::time::Duration;

use identity::crypto::{KeyType, LocalKey, Signer};
use identity::x509::verify_x509_svid;
use identity::{SpiffeId, TrustDomain};
use raft_store::testing::{eventually, TestCluster};
use server::ca::replicated::ClusterCa;
use server::ca::{CaConfig, CaKeys, JournalEvent, SlotEvent};
use server::clock::{Clock, ManualClock};

fn openssl_verify(bundle_pem: &str, chain: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let bundle = write("bundle.pem", bundle_pem);
    let leaf = write("svid.pem", &identity::bundle::to_pem_certificates([chain[0].as_slice()]));
    let mut cmd = Process::new("openssl");
    cmd.args(["verify", "-x509_strict", "-CAfile"]).arg(&bundle);
    if chain.len() > 2 {
        let rest: Vec<&[u8]> = chain[1..].iter().map(Vec::as_slice).collect();
        cmd.arg("-untrusted").arg(write("chain.pem", &identity::bundle::to_pem_certificates(rest)));
    }
    let out = cmd.arg(&leaf).output().unwrap();
    assert!(
        out.status.success(),
        "openssl: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_signs_with_the_one_replicated_ca() {
    let cluster = TestCluster::start(3, 10_000).await;
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let ca = ClusterCa {
        config: CaConfig::new(TrustDomain::parse("example.org").unwrap()),
        keys: CaKeys::Shared,
        upstream: None,
        clock: clock.clone(),
    };
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower(leader);
    assert!(ca.rotate(&cluster.replicas[&follower]).await.unwrap().is_empty(), "only the leader rotates");
    let events = ca.rotate(&cluster.replicas[&leader]).await.unwrap();
    assert_eq!(events.len(), 4, "X.509 CA and JWT key prepared and activated: {events:?}");
    assert!(ca.rotate(&cluster.replicas[&leader]).await.unwrap().is_empty(), "nothing more is due");

    let ids: Vec<u64> = cluster.replicas.keys().copied().collect();
    let workload = LocalKey::generate(KeyType::EcP256).unwrap();
    let web = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let mut ca_certs = Vec::new();
    // Every replica first, as each one's SVIDs are checked against the next one's bundle.
    let target = cluster.replicas[&leader].status().last_applied;
    for id in &ids {
        let replica = &cluster.replicas[id];
        eventually(Duration::from_secs(10), || Some(()).filter(|_| replica.status().last_applied >= target))
            .await
            .expect("every replica applies the CA's commands");
    }
    for (n, id) in ids.iter().enumerate() {
        let replica = &cluster.replicas[id];
        let local = ca.signing(replica).await.unwrap();
        let chain = local.mint_x509_svid(web.clone(), workload.public_key().clone(), None, vec![]).await.unwrap();
        ca_certs.push(chain[1].clone());
        // Checked against the bundle as another replica holds it.
        let other = &cluster.replicas[&ids[(n + 1) % ids.len()]];
        let bundle = ca.signing(other).await.unwrap().bundle().unwrap();
        assert_eq!(verify_x509_svid(&chain, &bundle, clock.now()).unwrap().spiffe_id, web);
        openssl_verify(&bundle.x509_authorities_pem(), &chain);
        let token = local.mint_jwt_svid(web.clone(), vec!["db".into()], None).await.unwrap();
        identity::jwt::validate_jwt_svid(&token, &bundle, "db", clock.now()).unwrap();
    }
    assert!(ca_certs.windows(2).all(|w| w[0] == w[1]), "one CA for the whole cluster");

    // Half-way through a rotation the leader changes; the new one finishes it.
    clock.advance(Duration::from_secs(13 * 3600));
    let events = ca.rotate(&cluster.replicas[&leader]).await.unwrap();
    assert_eq!(events.len(), 2, "next authorities prepared at half-life: {events:?}");
    let prepared =
        ca.signing(&cluster.replicas[&leader]).await.unwrap().journal().x509.prepared().unwrap().authority.clone();
    cluster.replicas[&follower].transfer_leadership(follower).await.unwrap();
    assert!(ca.rotate(&cluster.replicas[&leader]).await.unwrap().is_empty(), "the old leader no longer rotates");
    assert!(
        ca.rotate(&cluster.replicas[&follower]).await.unwrap().is_empty(),
        "the prepared authorities are not prepared again"
    );
    clock.advance(Duration::from_secs(8 * 3600));
    let events = ca.rotate(&cluster.replicas[&follower]).await.unwrap();
    assert!(events.iter().any(|e| matches!(e, JournalEvent::X509(SlotEvent::Activated { .. }))), "{events:?}");
    let journal = ca.signing(&cluster.replicas[&follower]).await.unwrap().journal().clone();
    assert_eq!(
        journal.x509.active().unwrap().authority,
        prepared,
        "the new leader activated what the old one prepared"
    );
    cluster.shutdown().await;
}
