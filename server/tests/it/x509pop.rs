//! The x509pop node attestor against certificates and signatures made by openssl: the
//! agent side of the challenge is computed with `openssl pkeyutl`, not with our code.

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use identity::TrustDomain;
use rustls::pki_types::UnixTime;
use server::node_attestor::x509pop::{X509Pop, X509PopError};

use testkit::pki::openssl;

/// A CA and a leaf it signed (`<name>.pem`, `<name>.key`); the leaf's key usage as given.
pub(crate) fn pki(dir: &Path, ca: &str, leaf: &str, key_usage: &str) {
    testkit::pki::ca_and_leaf(dir, ca, leaf, key_usage);
}

pub(crate) fn der(dir: &Path, name: &str) -> Vec<u8> {
    pem::parse(std::fs::read(dir.join(name)).unwrap()).unwrap().into_contents()
}

pub(crate) fn payload(leaf_der: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "certificates": [STANDARD.encode(leaf_der)] })).unwrap()
}

/// The agent's answer, signed by openssl over SHA-256(server nonce || agent nonce).
pub(crate) fn respond(dir: &Path, key: &str, challenge: &[u8], tamper: bool) -> Vec<u8> {
    let challenge: serde_json::Value = serde_json::from_slice(challenge).unwrap();
    let theirs = STANDARD.decode(challenge["ecdsa_signature"]["nonce"].as_str().unwrap()).unwrap();
    let ours = [7u8; 32];
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &[theirs.as_slice(), &ours].concat());
    std::fs::write(dir.join("digest.bin"), digest.as_ref()).unwrap();
    openssl(dir, &["pkeyutl", "-sign", "-inkey", key, "-in", "digest.bin", "-out", "sig.der"]);
    let sig = std::fs::read(dir.join("sig.der")).unwrap();
    // SEQUENCE { INTEGER r, INTEGER s }, short lengths for P-256.
    let r_len = sig[3] as usize;
    let r = &sig[4..4 + r_len];
    let s = &sig[4 + r_len + 2..];
    let strip = |x: &[u8]| x.iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>();
    let mut s = strip(s);
    if tamper {
        s[0] ^= 1;
    }
    serde_json::to_vec(&serde_json::json!({ "ecdsa_signature": { "nonce": STANDARD.encode(ours), "r": STANDARD.encode(strip(r)), "s": STANDARD.encode(s) } })).unwrap()
}

#[test]
fn an_agent_holding_the_key_of_a_trusted_certificate_is_attested() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "root", "node-1", "digitalSignature");
    let attestor = X509Pop::load(&[d.join("root.pem")]).unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let leaf = der(d, "node-1.pem");
    let pending = attestor.begin(&payload(&leaf), &td, UnixTime::now()).unwrap();
    X509Pop::finish(&pending, &respond(d, "node-1.key", &pending.challenge, false)).unwrap();

    let fingerprint = |name: &str| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in", name])
            .current_dir(d)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase()
    };
    assert_eq!(
        pending.agent_id.to_string(),
        format!("spiffe://example.org/spire/agent/x509pop/{}", fingerprint("node-1.pem"))
    );
    let selectors: Vec<String> = pending.selectors.iter().map(ToString::to_string).collect();
    assert!(selectors.contains(&"x509pop:subject:cn:node-1".to_string()), "{selectors:?}");
    assert!(selectors.contains(&format!("x509pop:ca:fingerprint:{}", fingerprint("root.pem"))), "{selectors:?}");

    // A wrong signature, or the right one for another challenge, is refused.
    let pending = attestor.begin(&payload(&leaf), &td, UnixTime::now()).unwrap();
    assert!(matches!(
        X509Pop::finish(&pending, &respond(d, "node-1.key", &pending.challenge, true)),
        Err(X509PopError::BadSignature)
    ));
    let other = attestor.begin(&payload(&leaf), &td, UnixTime::now()).unwrap();
    assert!(matches!(
        X509Pop::finish(&pending, &respond(d, "node-1.key", &other.challenge, false)),
        Err(X509PopError::BadSignature)
    ));
}

#[test]
fn untrusted_unsuitable_or_malformed_chains_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "root", "node-1", "digitalSignature");
    pki(d, "stranger", "node-2", "digitalSignature");
    pki(d, "root2", "node-3", "keyEncipherment");
    let attestor = X509Pop::load(&[d.join("root.pem"), d.join("root2.pem")]).unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let err = attestor.begin(&payload(&der(d, "node-2.pem")), &td, UnixTime::now()).err().unwrap();
    assert!(matches!(err, X509PopError::Untrusted(_)), "{err}");
    let err = attestor.begin(&payload(&der(d, "node-3.pem")), &td, UnixTime::now()).err().unwrap();
    assert!(err.to_string().contains("digital signature"), "{err}");
    for bad in [
        b"not json".to_vec(),
        b"{\"certificates\": []}".to_vec(),
        b"{\"certificates\": [\"!!\"]}".to_vec(),
        b"{\"certificates\": [\"AAAA\"]}".to_vec(),
    ] {
        let err = attestor.begin(&bad, &td, UnixTime::now()).err().unwrap();
        assert!(matches!(err, X509PopError::BadInput(_)), "{err}");
    }
    assert!(matches!(X509Pop::load(&[d.join("missing.pem")]), Err(X509PopError::Config { .. })));
}
