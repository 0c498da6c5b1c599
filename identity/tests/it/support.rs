//! Shared set-up for the interop tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use identity::crypto::{KeyType, LocalKey, Signer};
use identity::x509::{mint_ca, mint_x509_svid, CaTemplate, Issuer, MintedCertificate, Subject, SvidTemplate};
use identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

pub struct Ca {
    pub key: LocalKey,
    pub cert: MintedCertificate,
}

pub fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

pub fn root_ca(key_type: KeyType) -> Ca {
    let key = LocalKey::generate(key_type).unwrap();
    let template = CaTemplate {
        trust_domain: td(),
        public_key: key.public_key().clone(),
        ttl: Duration::from_secs(86400),
        subject: Subject::ca_default(),
        serial: None,
    };
    let cert = mint_ca(&template, None, Some(&key), OffsetDateTime::now_utc()).unwrap();
    Ca { key, cert }
}

pub fn intermediate_ca(parent: &Ca, key_type: KeyType) -> Ca {
    let key = LocalKey::generate(key_type).unwrap();
    let template = CaTemplate {
        trust_domain: td(),
        public_key: key.public_key().clone(),
        ttl: Duration::from_secs(3 * 3600),
        subject: Subject { common_name: Some("intermediate".into()), ..Subject::ca_default() },
        serial: None,
    };
    let issuer = Issuer::new(&parent.cert.der, &parent.key).unwrap();
    let cert = mint_ca(&template, Some(&issuer), None, OffsetDateTime::now_utc()).unwrap();
    Ca { key, cert }
}

pub fn svid_for(ca: &Ca, public_key: &identity::crypto::PublicKey, id: &str, dns: &[&str]) -> MintedCertificate {
    let template = SvidTemplate {
        spiffe_id: SpiffeId::parse(id).unwrap(),
        public_key: public_key.clone(),
        ttl: Duration::from_secs(3600),
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        subject: Subject::svid_default(),
        serial: None,
    };
    let issuer = Issuer::new(&ca.cert.der, &ca.key).unwrap();
    mint_x509_svid(&template, &issuer, OffsetDateTime::now_utc()).unwrap()
}

/// Runs a command and returns (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// The venv's Python, which `deploy/bootstrap.sh` creates. A missing venv fails the test:
/// interop that silently does not run proves nothing.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TESTUDO_PYTHON") {
        let p = PathBuf::from(p);
        if p.exists() {
            return p;
        }
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.exists(), "no Python venv at {}: run deploy/bootstrap.sh (make test does)", p.display());
    p
}
