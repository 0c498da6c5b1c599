//! Managed CA keys in a 3-replica cluster of real processes: `KeyManager "pkcs11"` with one
//! SoftHSM2 token every replica loads (the same SOFTHSM2_CONF), and `KeyManager "aws_kms"`
//! with one local KMS (moto). The CA keys are made in the HSM or KMS and the journal only
//! names them: every replica signs through it, SVIDs verify with openssl, JWT-SVIDs with
//! PyJWT, and the backend, read with its own tools (OpenSC's pkcs11-tool, boto3), holds
//! exactly the keys in use. A forced rotation makes a new key; preparing the slot of the old
//! authority again retires the old key (deleted from the token; alias removed and key
//! scheduled for deletion in KMS).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::moto::MotoServer;
use testkit::proxy::FaultProxy;
use testkit::softhsm::{self, MODULE};
use testkit::{wait_until, ServerProcess};

const TOKEN: &str = "testudo-cluster";
const PIN: &str = "2468";

/// A SoftHSM2 token in `root`; returns its SOFTHSM2_CONF and a PIN file.
fn softhsm_token(root: &Path) -> (PathBuf, PathBuf) {
    let conf = softhsm::init_token(root, TOKEN, PIN);
    let pin = root.join("pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    (conf, pin)
}

/// The private keys on the token, as OpenSC's pkcs11-tool lists them: (label, access flags).
fn private_keys(conf: &Path) -> Vec<(String, String)> {
    let out = Command::new("pkcs11-tool")
        .args([
            "--module",
            MODULE,
            "--token-label",
            TOKEN,
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            "privkey",
        ])
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

fn labels(keys: &[(String, String)]) -> Vec<String> {
    keys.iter().map(|(l, _)| l.clone()).collect()
}

fn mint_and_verify(servers: &[ServerProcess], root: &Path, round: &str) {
    let bundle = root.join(format!("bundle-{round}.pem"));
    std::fs::write(&bundle, servers[2].bundle_pem()).unwrap();
    for server in servers {
        let dir = root.join(format!("svid-{round}-{}", server.id));
        let out = server.command(&[
            "x509",
            "mint",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--write",
            dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "replica {}: {}\n{}",
            server.id,
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&bundle)
            .arg(dir.join("svid.pem"))
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "replica {}: {}{}",
            server.id,
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
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
        let verifier = std::sync::Arc::new(spiffe_tls::SvidVerifier::any_svid(std::sync::Arc::new(
            std::sync::RwLock::new(bundle),
        )));
        let tls = tonic::transport::ClientTlsConfig::new().domain_name("server.example.org");
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", server.api_address()))
            .unwrap()
            .tls_config_with_verifier(tls, verifier)
            .unwrap();
        // The listener presents its server SVID shortly after the CA's first activation.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if std::time::Instant::now() > deadline => panic!(
                    "connect: {e:?}
server log:\n{}",
                    server.log()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let served =
            BundleClient::new(channel).get_bundle(GetBundleRequest { output_mask: None }).await.unwrap().into_inner();
        served
            .jwt_authorities
            .iter()
            .map(|k| (k.key_id.clone(), pem::encode(&pem::Pem::new("PUBLIC KEY", k.public_key.clone()))))
            .collect()
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
    std::env::var("TESTUDO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// JWT-SVIDs from every replica validate with PyJWT; then a forced rotation from a
/// follower's CLI: prepare makes a third key, activate moves signing to it on every replica,
/// and preparing again retires the first X.509 CA key. `keys` names the backend's keys in
/// use. Returns the retired key's name.
fn rotate_and_check(servers: &[ServerProcess], root: &Path, keys: impl Fn() -> Vec<String>) -> String {
    mint_and_verify(servers, root, "first");
    let first = keys();
    assert_eq!(first.len(), 2, "one X.509 CA key and one JWT key: {first:?}");
    let first_x509 = first.iter().find(|name| name.contains("x509-CA")).expect("the X.509 CA key").clone();

    let jwks = root.join("jwt-keys.json");
    std::fs::write(&jwks, serde_json::to_string(&jwt_keys(&servers[0])).unwrap()).unwrap();
    let script = root.join("validate.py");
    std::fs::write(&script, PYJWT_VALIDATE).unwrap();
    for server in servers {
        let out = server.command(&["jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", "db"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let checked = Command::new(python()).arg(&script).arg(&token).arg(&jwks).arg("db").output().unwrap();
        assert!(
            checked.status.success(),
            "replica {}: PyJWT refused the token: {}",
            server.id,
            String::from_utf8_lossy(&checked.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&checked.stdout).trim(), "spiffe://example.org/web");
    }

    let run = |args: &[&str]| {
        let mut all = vec!["localauthority", "x509"];
        all.extend(args);
        servers[1].json(&all)
    };
    let prepared = run(&["prepare"]);
    let second = prepared["prepared"]["authority_id"].as_str().unwrap().to_owned();
    let after_prepare = keys();
    assert_eq!(after_prepare.len(), 3, "the prepared authority has a key of its own: {after_prepare:?}");
    run(&["activate", "--authority-id", &second]);
    wait_until(
        Duration::from_secs(30),
        || {
            servers
                .iter()
                .all(|s| s.command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/probe"]).status.success())
        },
        "every replica to sign",
    );
    mint_and_verify(servers, root, "second");

    run(&["prepare"]);
    let after = keys();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!after.contains(&first_x509), "the replaced CA key is still in use: {after:?}");
    mint_and_verify(servers, root, "third");
    first_x509
}

#[test]
fn three_replicas_sign_through_one_hsm_token() {
    let root = tempfile::tempdir().unwrap();
    let (conf, pin) = softhsm_token(root.path());
    let plugins = format!(
        "KeyManager \"pkcs11\" {{\n    plugin_data {{\n      module_path = \"{MODULE}\"\n      token_label = \
            \"{TOKEN}\"\n      user_pin_path = \"{}\"\n    }}\n  }}",
        pin.display()
    );
    let servers = ServerProcess::cluster_with(
        root.path(),
        3,
        "ca_key_sweep_grace = \"4s\"",
        &plugins,
        &[("SOFTHSM2_CONF", conf.to_str().unwrap())],
    );
    // The leader makes the CA keys after the cluster forms; on a loaded machine that can take
    // a while (a make test run timed out waiting 10 s for the listing).
    let mint = || servers[0].command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/probe"]).status.success();
    wait_until(Duration::from_secs(60), mint, "the cluster to sign");
    // SoftHSM keeps each object in a file that a replica may be writing while pkcs11-tool
    // reads it (a listing once showed a key with no label yet): read until it settles.
    let named = |keys: &[(String, String)]| {
        keys.len() == 2 && keys.iter().all(|(label, _)| label.starts_with("testudo/example.org/"))
    };
    let mut first = private_keys(&conf);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !named(&first) {
        assert!(
            std::time::Instant::now() < deadline,
            "the token lists {first:?}, not an X.509 CA key and a JWT key named after the trust domain"
        );
        std::thread::sleep(Duration::from_millis(100));
        first = private_keys(&conf);
    }
    rotate_and_check(&servers, root.path(), || labels(&private_keys(&conf)));
    let after = private_keys(&conf);
    assert!(
        after.iter().all(|(_, access)| access.contains("sensitive") && access.contains("never extractable")),
        "{after:?}"
    );

    // Keys nothing records, as a replica that died between making a key and recording its
    // authority leaves them: the leader's sweep deletes the one made for this cluster and
    // leaves another cluster's key and a key made by hand alone.
    let cluster = servers[0].status()["cluster_id"].as_str().unwrap().to_owned();
    let make = |label: &str, object_id: &str| {
        let out = Command::new("pkcs11-tool")
            .args(["--module", MODULE, "--token-label", TOKEN, "--login", "--pin", PIN, "--keypairgen"])
            .args(["--key-type", "EC:prime256v1", "--label", label, "--id", &hex::encode(object_id)])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    make("testudo/example.org/x509-CA-B-90", &format!("{cluster}/x509/B/x509-CA-B-90"));
    make("testudo/example.org/x509-CA-B-91", "another-cluster/x509/B/x509-CA-B-91");
    make("testudo/example.org/by-hand", "by-hand");
    let in_use = labels(&after);
    let mut expected: Vec<String> = in_use
        .iter()
        .cloned()
        .chain(["testudo/example.org/x509-CA-B-91".to_owned(), "testudo/example.org/by-hand".to_owned()])
        .collect();
    expected.sort();
    wait_until(
        Duration::from_secs(30),
        || labels(&private_keys(&conf)) == expected,
        "the sweep to delete the leftover",
    );
    assert!(
        servers.iter().any(|s| s.log().contains("deleted a CA key that nothing records")),
        "the sweep logs what it deleted"
    );
    mint_and_verify(&servers, root.path(), "after-sweep");
}

/// What the local KMS holds, read with boto3: our aliases, and the key ids (from the
/// `testudo-key-id` tag) of keys pending deletion.
const BOTO3_LIST: &str = r#"
import sys, json, boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
aliases = sorted(a["AliasName"] for a in kms.list_aliases()["Aliases"] if a["AliasName"].startswith("alias/testudo/example_org/"))
pending = []
for key in kms.list_keys()["Keys"]:
    meta = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]}
    if meta["KeyState"] == "PendingDeletion":
        pending.append(tags.get("testudo-key-id"))
print(json.dumps({"aliases": aliases, "pending": sorted(p for p in pending if p)}))
"#;

/// Waits for a key to appear in the local KMS that was not there when it started, prints
/// "ready" once it has looked, then the new key's id.
const BOTO3_WATCH: &str = r#"
import sys, time, boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
seen = {k["KeyId"] for k in kms.list_keys()["Keys"]}
print("ready", flush=True)
deadline = time.time() + 60
while time.time() < deadline:
    new = [k["KeyId"] for k in kms.list_keys()["Keys"] if k["KeyId"] not in seen]
    if new:
        print(new[0], flush=True)
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
"#;

/// The state of one key in the local KMS, read with boto3.
const BOTO3_KEY_STATE: &str = r#"
import sys, boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
print(kms.describe_key(KeyId=sys.argv[2])["KeyMetadata"]["KeyState"])
"#;

/// The leader is killed after KMS made a new CA key and before the key was named or
/// recorded (every KMS call is slowed to make that window seconds long; the kill follows the
/// key's appearance in KMS). The key was tagged with the cluster and its reserved id, so the
/// next leader's sweep finds it and schedules it for deletion once the grace has passed.
#[test]
fn a_leader_killed_while_making_a_kms_key_leaves_no_key_behind() {
    use std::io::BufRead;
    let root = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    let link = FaultProxy::start(format!("127.0.0.1:{}", moto.port).parse().unwrap());
    let plugins = format!(
        "KeyManager \"aws_kms\" {{\n    plugin_data {{\n      endpoint = \"http://{}\"\n    }}\n  }}",
        link.address()
    );
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut servers = ServerProcess::cluster_with(root.path(), 3, "ca_key_sweep_grace = \"4s\"", &plugins, &env);
    let mint = |s: &ServerProcess| s.command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/web"]);
    wait_until(Duration::from_secs(60), || mint(&servers[0]).status.success(), "the cluster to sign");
    let leader = servers[0].status()["leader"].as_u64().unwrap() as usize - 1;

    let watch = root.path().join("watch.py");
    std::fs::write(&watch, BOTO3_WATCH).unwrap();
    let mut watcher =
        Command::new(python()).arg(&watch).arg(moto.endpoint()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let state_script = root.path().join("state.py");
    std::fs::write(&state_script, BOTO3_KEY_STATE).unwrap();
    let state = |key: &str| {
        let out = Command::new(python()).arg(&state_script).arg(moto.endpoint()).arg(key).output().unwrap();
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    link.set(testkit::proxy::Link::Delay(Duration::from_millis(700)));
    let pid = servers[leader].pid().unwrap();
    let leftover = std::thread::scope(|scope| {
        let prepare = scope.spawn(|| servers[leader].command(&["localauthority", "x509", "prepare"]));
        let leftover = lines.next().expect("a new key in KMS").unwrap();
        let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        assert!(killed.success());
        link.set(testkit::proxy::Link::Open);
        // Well inside the sweep's grace: the key is still there, nothing named it.
        assert_eq!(state(&leftover), "Enabled", "the leftover key exists until the sweep");
        let answered = prepare.join().unwrap();
        assert!(!answered.status.success(), "the leader died before answering the prepare");
        leftover
    });
    assert!(watcher.wait().unwrap().success());
    servers[leader].kill();

    wait_until(
        Duration::from_secs(60),
        || state(&leftover) == "PendingDeletion",
        "the sweep to schedule the leftover key",
    );
    let survivors: Vec<&ServerProcess> =
        servers.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, s)| s).collect();
    assert!(
        survivors.iter().any(|s| s.log().contains("deleted a CA key that nothing records")),
        "the new leader's sweep logs the deletion"
    );
    // The keys in use were left alone.
    for server in survivors {
        assert!(mint(server).status.success(), "{}", server.log());
    }
}

#[test]
fn three_replicas_sign_through_one_kms() {
    let root = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    // The replicas reach KMS through a proxy the test can cut.
    let link = FaultProxy::start(format!("127.0.0.1:{}", moto.port).parse().unwrap());
    let plugins = format!(
        "KeyManager \"aws_kms\" {{\n    plugin_data {{\n      endpoint = \
        \"http://{}\"\n      key_tags = {{ team = \"identity\" }}\n    }}\n  }}",
        link.address()
    );
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let servers = ServerProcess::cluster_with(root.path(), 3, "", &plugins, &env);
    let script = root.path().join("list.py");
    std::fs::write(&script, BOTO3_LIST).unwrap();
    let state = || {
        let out = Command::new(python()).arg(&script).arg(moto.endpoint()).output().unwrap();
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
    };
    let retired = rotate_and_check(&servers, root.path(), || names(&state()["aliases"]));
    let retired_id = retired.strip_prefix("alias/testudo/example_org/").unwrap().to_owned();
    assert_eq!(names(&state()["pending"]), [retired_id], "exactly the retired CA key is scheduled for deletion");

    // KMS out of reach: signing answers Unavailable naming the backend; reads still work;
    // once KMS is back, signing resumes by itself.
    link.cut();
    let mint = || servers[0].command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/web"]);
    let out = mint();
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success() && err.contains("unavailable") && err.contains("aws_kms"), "{err}");
    assert!(servers[1].command(&["bundle", "show"]).status.success(), "reads do not need KMS");
    assert!(servers[2].command(&["entry", "count"]).status.success(), "reads do not need KMS");
    link.restore();
    wait_until(Duration::from_secs(20), || mint().status.success(), "signing to resume once KMS is back");
}
