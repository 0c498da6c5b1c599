//! `cluster rotate-ca` on real processes: the cluster CA key every data dir holds stops
//! opening the cluster RPC once it is rotated away, the members keep replicating through
//! every phase, a restarted member and a new one come up on the new CA, and a member that
//! is down holds the rotation until it returns.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use identity::bundle::Bundle;
use identity::crypto::{KeyType, LocalKey, Signer};
use identity::TrustDomain;
use proto::cluster::cluster_client::ClusterClient;
use proto::cluster::Payload;
use raft_store::network::tls::{client_endpoint, ClusterTls};
use server::cluster::authority::{replicas_id, ClusterAuthority};
use testkit::{wait_until, ServerProcess as Server};

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

/// A certificate for member `node_id`, minted with the cluster CA key copied from a data
/// dir, as whoever stole the dir (or a backup of it) would; it trusts `trusted` CAs.
fn forged_replica(stolen_dir: &Path, node_id: u64, trusted: &[Vec<u8>]) -> ClusterTls {
    let ca_der = std::fs::read(stolen_dir.join("ca.der")).unwrap();
    let ca_key = std::fs::read(stolen_dir.join("ca.key")).unwrap();
    let authority = ClusterAuthority::from_parts(ca_der.clone(), &ca_key).unwrap();
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let cert = authority.issue_replica(&td(), node_id, key.public_key().clone()).unwrap();
    let mut bundle = Bundle::new(td());
    for der in trusted {
        bundle.add_x509_authority(der).unwrap();
    }
    ClusterTls {
        chain: vec![cert, ca_der],
        key_pkcs8: key.to_pkcs8_der().unwrap(),
        bundle: Arc::new(RwLock::new(bundle)),
        replicas: replicas_id(&td()).unwrap(),
    }
}

/// A Vote call with a garbage payload: "cannot decode" means the caller was admitted.
fn vote(tls: &ClusterTls, server: &Server) -> String {
    let address = format!("127.0.0.1:{}", server.raft_port);
    let endpoint = client_endpoint(tls, &address, Duration::from_secs(3)).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return format!("connect: {e:?}"),
        };
        match ClusterClient::new(channel).vote(Payload { data: b"\xff garbage".to_vec() }).await {
            Ok(_) => "answered".into(),
            Err(status) => format!("{}: {}", status.code(), status.message()),
        }
    })
}

fn rotate(server: &Server, wait: &str) -> std::process::Output {
    server.command(&["cluster", "rotate-ca", "--wait", wait, "--output", "json"])
}

fn ca_files(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(server.data_dir.join("cluster"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("ca"))
        .collect();
    names.sort();
    names
}

/// Waits until `server` has a leader and has applied at least `index`.
fn caught_up(server: &Server, index: u64) {
    wait_until(
        Duration::from_secs(30),
        || {
            let status = server.status();
            status["leader"].is_u64() && status["last_applied"].as_u64().unwrap_or(0) >= index
        },
        &format!("replica {} to catch up to {index}", server.id),
    );
}

#[test]
fn rotating_the_cluster_ca_retires_the_key_every_data_dir_held() {
    let root = tempfile::tempdir().unwrap();
    let mut servers = Server::cluster(root.path(), 3, "");
    let old_ca = std::fs::read(servers[2].data_dir.join("cluster/ca.der")).unwrap();
    let stolen = root.path().join("stolen");
    std::fs::create_dir(&stolen).unwrap();
    for file in ["ca.der", "ca.key"] {
        std::fs::copy(servers[2].data_dir.join("cluster").join(file), stolen.join(file)).unwrap();
    }

    // Before: the stolen key mints a certificate for member 1 that the cluster admits.
    let forged = forged_replica(&stolen, 1, std::slice::from_ref(&old_ca));
    let answer = vote(&forged, &servers[0]);
    assert!(answer.contains("cannot decode Vote payload"), "the forged member is admitted before: {answer}");

    // Rotate through a follower.
    let out = rotate(&servers[1], "60");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["generation"], 1);
    let new_sha = rotated["ca_sha256"].as_str().unwrap().to_owned();
    for server in &servers {
        wait_until(
            Duration::from_secs(20),
            || server.status()["ca_sha256"] == new_sha.as_str(),
            &format!("replica {} to issue from the new CA", server.id),
        );
        assert_eq!(server.status()["ca_generation"], 1);
    }
    let new_ca = std::fs::read(servers[0].data_dir.join("cluster/ca-1.der")).unwrap();

    // After: the same forgery is refused at the handshake, even by a client that trusts
    // both CAs (so only the server's check can fail). A certificate from the new CA (read
    // from a data dir after the rotation) still gets in: the refusal is the CA's.
    let both = [old_ca.clone(), new_ca.clone()];
    let forged = forged_replica(&stolen, 1, &both);
    let answer = vote(&forged, &servers[0]);
    assert!(!answer.contains("cannot decode"), "the old CA's key still opens the cluster RPC: {answer}");
    let fresh = root.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::copy(servers[0].data_dir.join("cluster/ca-1.der"), fresh.join("ca.der")).unwrap();
    std::fs::copy(servers[0].data_dir.join("cluster/ca-1.key"), fresh.join("ca.key")).unwrap();
    let answer = vote(&forged_replica(&fresh, 1, &both), &servers[0]);
    assert!(answer.contains("cannot decode Vote payload"), "{answer}");
    for server in &servers {
        wait_until(
            Duration::from_secs(10),
            || ca_files(server) == ["ca-1.der", "ca-1.key"],
            &format!("replica {} to delete the old CA's files", server.id),
        );
    }

    // The members still replicate: a write on one is read on every other.
    let out = servers[0].command(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/after-rotation",
        "--parent-id",
        "spiffe://example.org/node",
        "--selector",
        "unix:uid:7",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let index = servers[0].status()["last_applied"].as_u64().unwrap();
    for server in &servers {
        caught_up(server, index);
    }

    // A restarted member comes back on the new CA; a new replica joins with a new invite.
    servers[2].kill();
    servers[2].restart();
    caught_up(&servers[2], index);
    assert_eq!(servers[2].status()["ca_sha256"], new_sha.as_str());
    let newcomer = Server::start(root.path(), 4, "");
    newcomer.join(&servers[1]);
    caught_up(&newcomer, index);
    assert_eq!(newcomer.status()["ca_sha256"], new_sha.as_str());
    assert_eq!(ca_files(&newcomer), ["ca-1.der", "ca-1.key"]);
    servers.push(newcomer);

    // A member that does not answer holds the next rotation at its first phase; once it is
    // back, running the command again finishes it.
    servers[3].pause();
    let out = rotate(&servers[0], "3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("members [4] have not reached it"), "{err}");
    assert!(err.contains("prepared"), "{err}");
    assert_eq!(servers[0].status()["ca_generation"], 1, "still presenting the CA of generation 1");
    servers[3].resume();
    let out = rotate(&servers[0], "60");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["generation"], 2, "the rotation under way was finished, not a third started");
    for server in &servers {
        wait_until(
            Duration::from_secs(20),
            || server.status()["ca_sha256"] == rotated["ca_sha256"],
            &format!("replica {} to issue from generation 2", server.id),
        );
    }
}
