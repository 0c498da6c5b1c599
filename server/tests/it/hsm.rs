//! `KeyManager "pkcs11"` in a 3-replica cluster of real processes sharing one SoftHSM2 token
//! (each process loads the module with the same SOFTHSM2_CONF). The CA keys are made on the
//! token and the journal only names them: every replica signs through the token, SVIDs
//! verify with openssl, JWT-SVIDs with PyJWT, and the token (read with OpenSC's pkcs11-tool)
//! holds exactly the keys in use, sensitive and never extractable. A forced rotation makes a
//! new key; re-preparing the slot of the old authority deletes the old key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chaos_tests::harness::{wait_until, ServerProcess};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "testudo-cluster";
const PIN: &str = "2468";

/// A SoftHSM2 token in `root`; returns its SOFTHSM2_CONF and a PIN file.
fn softhsm_token(root: &Path) -> (PathBuf, PathBuf) {
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = root.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display())).unwrap();
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "87654321"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (deploy/bootstrap.sh installs softhsm2)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pin = root.join("pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    (conf, pin)
}

/// The private keys on the token, as OpenSC's pkcs11-tool lists them: (label, access flags).
fn private_keys(conf: &Path) -> Vec<(String, String)> {
    let out = Command::new("pkcs11-tool")
        .args(["--module", MODULE, "--token-label", TOKEN, "--login", "--pin", PIN, "--list-objects", "--type", "privkey"])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("pkcs11-tool (deploy/bootstrap.sh installs opensc)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(label) = line.strip_prefix("label:") {
            keys.push((label.trim().to_owned(), String::new()));
        } else if let (Some(access), Some(last)) = (line.strip_prefix("Access:"), keys.last_mut()) {
            last.1 = access.trim().to_owned();
        }
    }
    keys.sort();
    keys
}

fn labels(keys: &[(String, String)]) -> Vec<&str> {
    keys.iter().map(|(l, _)| l.as_str()).collect()
}

fn mint_and_verify(servers: &[ServerProcess], root: &Path, round: &str) {
    let bundle = root.join(format!("bundle-{round}.pem"));
    std::fs::write(&bundle, servers[2].bundle_pem()).unwrap();
    for server in servers {
        let dir = root.join(format!("svid-{round}-{}", server.id));
        let out = server.command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--write", dir.to_str().unwrap()]);
        assert!(out.status.success(), "replica {}: {}\n{}", server.id, String::from_utf8_lossy(&out.stderr), server.log());
        let verify = Command::new("openssl").args(["verify", "-CAfile"]).arg(&bundle).arg(dir.join("svid.pem")).output().unwrap();
        assert!(verify.status.success(), "replica {}: {}{}", server.id, String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    }
}

/// The JWT authorities' public keys (PEM) by key id, from GetBundle on `server`.
fn jwt_keys(server: &ServerProcess) -> Vec<(String, String)> {
    use proto::spire::api::server::bundle::v1::{bundle_client::BundleClient, GetBundleRequest};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for der in identity::bundle::parse_pem_certificates(&server.bundle_pem()).unwrap() {
        bundle.add_x509_authority(&der).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let verifier = std::sync::Arc::new(spiffe_tls::SvidVerifier::any_svid(std::sync::Arc::new(std::sync::RwLock::new(bundle))));
        let tls = tonic::transport::ClientTlsConfig::new().domain_name("server.example.org");
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", server.api_address())).unwrap().tls_config_with_verifier(tls, verifier).unwrap();
        // The listener presents its server SVID shortly after the CA's first activation.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if std::time::Instant::now() > deadline => panic!("connect: {e:?}
server log:\n{}", server.log()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let served = BundleClient::new(channel).get_bundle(GetBundleRequest { output_mask: None }).await.unwrap().into_inner();
        served.jwt_authorities.iter().map(|k| (k.key_id.clone(), pem::encode(&pem::Pem::new("PUBLIC KEY", k.public_key.clone())))).collect()
    })
}

const PYJWT_VALIDATE: &str = r#"
import sys, json, jwt
token, keys_path, aud = sys.argv[1:4]
keys = dict(json.load(open(keys_path)))
kid = jwt.get_unverified_header(token)["kid"]
claims = jwt.decode(token, keys[kid], algorithms=["ES256"], audience=aud, options={"require": ["exp", "aud", "sub"]})
print(claims["sub"])
"#;

fn python() -> PathBuf {
    std::env::var("TESTUDO_PYTHON").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

#[test]
fn three_replicas_sign_through_one_hsm_token() {
    let root = tempfile::tempdir().unwrap();
    let (conf, pin) = softhsm_token(root.path());
    let plugins = format!(
        "KeyManager \"pkcs11\" {{\n    plugin_data {{\n      module_path = \"{MODULE}\"\n      token_label = \"{TOKEN}\"\n      user_pin_path = \"{}\"\n    }}\n  }}",
        pin.display()
    );
    let conf_text = conf.to_str().unwrap();
    let servers = ServerProcess::cluster_with(root.path(), 3, "", &plugins, &[("SOFTHSM2_CONF", conf_text)]);

    // The first CA and JWT keys were made on the token, named after the trust domain.
    mint_and_verify(&servers, root.path(), "first");
    let first = private_keys(&conf);
    assert_eq!(first.len(), 2, "one X.509 CA key and one JWT key: {first:?}");
    assert!(first.iter().all(|(label, _)| label.starts_with("testudo/example.org/")), "{first:?}");
    assert!(first.iter().all(|(_, access)| access.contains("sensitive") && access.contains("never extractable")), "{first:?}");
    let first_x509 = first.iter().find(|(l, _)| l.contains("x509-CA")).expect("the X.509 CA key").0.clone();

    // JWT-SVIDs signed through the token on every replica validate with PyJWT.
    let keys = root.path().join("jwt-keys.json");
    std::fs::write(&keys, serde_json::to_string(&jwt_keys(&servers[0])).unwrap()).unwrap();
    let script = root.path().join("validate.py");
    std::fs::write(&script, PYJWT_VALIDATE).unwrap();
    for server in &servers {
        let out = server.command(&["jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", "db"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let checked = Command::new(python()).arg(&script).arg(&token).arg(&keys).arg("db").output().unwrap();
        assert!(checked.status.success(), "replica {}: PyJWT refused the token: {}", server.id, String::from_utf8_lossy(&checked.stderr));
        assert_eq!(String::from_utf8_lossy(&checked.stdout).trim(), "spiffe://example.org/web");
    }

    // A forced rotation, driven from a follower's CLI: a new key on the token.
    let run = |args: &[&str]| {
        let mut all = vec!["localauthority", "x509"];
        all.extend(args);
        servers[1].json(&all)
    };
    let prepared = run(&["prepare"]);
    let second = prepared["prepared"]["authority_id"].as_str().unwrap().to_owned();
    let after_prepare = private_keys(&conf);
    assert_eq!(after_prepare.len(), 3, "{after_prepare:?}");
    run(&["activate", "--authority-id", &second]);
    wait_until(Duration::from_secs(10), || servers.iter().all(|s| s.command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/probe"]).status.success()), "every replica to sign");
    mint_and_verify(&servers, root.path(), "second");

    // Preparing again reuses the slot of the first authority: its key leaves the token.
    run(&["prepare"]);
    let after = private_keys(&conf);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!labels(&after).contains(&first_x509.as_str()), "the replaced CA key was not deleted: {after:?}");
    mint_and_verify(&servers, root.path(), "third");
}
