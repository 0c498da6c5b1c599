//! A nested deployment: an upstream cluster of three replicas holds the trust domain's root;
//! a downstream cluster of three replicas signs with an intermediate the upstream signed
//! (`UpstreamAuthority "spire"`), its replicas taking their SVID from an upstream agent's
//! Workload API (an entry marked `downstream`, selected by the server binary's path). A
//! workload under a downstream agent holds an SVID chain leaf ← downstream intermediate ←
//! upstream root that openssl verifies against the upstream bundle, and against the bundle a
//! workload under the upstream agent holds; and the other way round. The downstream
//! publishes its JWT key upward and mirrors the upstream bundle, so a JWT-SVID minted on
//! either side validates through an agent of the other. When the upstream taints its
//! root, the downstream moves to an intermediate under the new root at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::proxy::{FaultProxy, Link};
use testkit::{wait_until, AgentProcess, ReplicaOptions, ServerProcess};

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap().to_string_lossy().into_owned()
}

fn pem_of(ders: &[Vec<u8>]) -> String {
    identity::bundle::to_pem_certificates(ders.iter().map(Vec::as_slice))
}

/// An agent of `servers` under `root` whose unix attestor reads the caller's binary path.
fn agent_with_paths(root: &Path, servers: &[ServerProcess]) -> (AgentProcess, String) {
    let token = servers[0].json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let addresses: Vec<String> = servers.iter().map(ServerProcess::api_address).collect();
    let agent = AgentProcess::start_discovering_paths(root, &addresses, &servers[0].bundle_pem(), &token, "1s");
    (agent, format!("spiffe://example.org/spire/agent/join_token/{token}"))
}

/// DER certificates.
type Certificates = Vec<Vec<u8>>;

/// The X.509 SVID chain and the bundle a workload gets from `agent` (raw Workload API).
fn x509_of(agent: &AgentProcess, id: &str) -> Option<(Certificates, Certificates)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel = proto::unix_socket::connect(&agent.socket()).await.ok()?;
        let mut client = proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
        let mut request = tonic::Request::new(proto::workload::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = client.fetch_x509svid(request).await.ok()?.into_inner();
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.ok()?.ok()??;
        let svid = message.svids.iter().find(|s| s.spiffe_id == id)?;
        Some((
            identity::x509::split_der_certificates(&svid.x509_svid).ok()?,
            identity::x509::split_der_certificates(&svid.bundle).ok()?,
        ))
    })
}

/// The JWT key ids of a cluster's bundle (its SPIFFE bundle document).
fn jwt_kids(server: &ServerProcess) -> Vec<String> {
    let document = server.json(&["bundle", "show", "--format", "spiffe"]);
    let mut kids: Vec<String> = document["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|k| k["use"] == "jwt-svid")
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    kids.sort();
    kids
}

/// A JWT-SVID minted by `server` validates through `agent`'s Workload API within 30 s.
fn validates_through(server: &ServerProcess, agent: &AgentProcess, id: &str) {
    let out = server.command(&["jwt", "mint", "--spiffe-id", id, "--audience", "peer"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint()).await.unwrap();
        let mut last = None;
        for _ in 0..150 {
            match client.validate_jwt_token("peer", &token).await {
                Ok(validated) => {
                    assert_eq!(validated.spiffe_id().to_string(), id);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{id}'s JWT-SVID never validated: {last:?}\nagent log:\n{}", agent.log());
    });
}

/// `openssl verify` of `chain` (leaf first) against `roots`; its output when it fails.
fn openssl_verifies(dir: &Path, name: &str, chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), String> {
    let (leaf, untrusted, ca) =
        (dir.join(format!("{name}-leaf.pem")), dir.join(format!("{name}-mid.pem")), dir.join(format!("{name}-ca.pem")));
    std::fs::write(&leaf, pem_of(&chain[..1])).unwrap();
    std::fs::write(&untrusted, pem_of(&chain[1..])).unwrap();
    std::fs::write(&ca, pem_of(roots)).unwrap();
    let mut command = Command::new("openssl");
    command.args(["verify", "-CAfile"]).arg(&ca);
    if chain.len() > 1 {
        command.arg("-untrusted").arg(&untrusted);
    }
    let out = command.arg(&leaf).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// How the downstream cluster of a [`Tree`] runs.
#[derive(Default)]
struct Downstream {
    /// Lines for the downstream replicas' `server { }` block.
    server_extra: String,
    /// A `KeyManager` block (memory when empty).
    key_manager: String,
    env: Vec<(String, String)>,
    /// The intermediate's lifetime: the downstream entry's X.509 TTL (0: the upstream's).
    intermediate_ttl: u32,
}

/// An upstream cluster of three with an agent whose unix attestor reads binary paths, and a
/// downstream cluster of three whose replicas reach the upstream through one fault proxy
/// each and take their SVID from that agent; a workload entry under each tier.
struct Tree {
    upstream: Vec<ServerProcess>,
    up_agent: AgentProcess,
    downstream: Vec<ServerProcess>,
    down_agent: AgentProcess,
    /// In front of each upstream replica's API, as the downstream reaches it.
    links: Vec<FaultProxy>,
    up_roots: Certificates,
    // Last: the processes above are stopped before their directory goes.
    root: tempfile::TempDir,
}

impl Tree {
    fn start(down: Downstream) -> Self {
        let root = tempfile::tempdir().unwrap();
        let (up_root, down_root) = (root.path().join("upstream"), root.path().join("downstream"));
        let upstream = ServerProcess::cluster(&up_root, 3, "");
        let (up_agent, up_agent_id) = agent_with_paths(&up_root, &upstream);
        let server_binary = canonical(&testkit::binary("testudo-server"));
        let this_test: PathBuf = std::env::current_exe().unwrap();
        let ttl = down.intermediate_ttl.to_string();
        for (id, selector, flags) in [
            (
                "spiffe://example.org/region/eu",
                format!("unix:path:{server_binary}"),
                vec!["--downstream", "--x509-svid-ttl", ttl.as_str()],
            ),
            ("spiffe://example.org/up-web", format!("unix:path:{}", canonical(&this_test)), vec![]),
        ] {
            let mut args =
                vec!["entry", "create", "--spiffe-id", id, "--parent-id", &up_agent_id, "--selector", &selector];
            args.extend(flags);
            upstream[0].json(&args);
        }

        let links: Vec<FaultProxy> =
            upstream.iter().map(|s| FaultProxy::start(s.api_address().parse().unwrap())).collect();
        let servers: Vec<String> = links.iter().map(|l| format!("\"{}\"", l.address())).collect();
        let plugins = format!(
            "{}\n UpstreamAuthority \"spire\" {{\n plugin_data {{\n server_address = [{}]\n workload_api_socket = \"{}\"\n }}\n }}",
            down.key_manager,
            servers.join(", "),
            up_agent.socket().display()
        );
        let options = ReplicaOptions {
            plugins_extra: plugins,
            server_extra: down.server_extra,
            env: down.env,
            ..Default::default()
        };
        let downstream: Vec<ServerProcess> =
            (1..=3).map(|i| ServerProcess::start_with(&down_root, i, &options)).collect();
        ServerProcess::form_cluster(&downstream);
        let up_roots = identity::bundle::parse_pem_certificates(&upstream[0].bundle_pem()).unwrap();
        wait_until(
            Duration::from_secs(60),
            || downstream.iter().all(|s| s.command(&["bundle", "show"]).status.success()),
            "every downstream replica to hold a CA from the upstream",
        );
        for server in &downstream {
            let held = identity::bundle::parse_pem_certificates(&server.bundle_pem()).unwrap();
            assert_eq!(held, up_roots, "replica {}: a downstream's bundle is its upstream's roots", server.id);
        }

        // A workload under a downstream agent.
        let token = downstream[0].json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
        let uid = nix::unistd::getuid().as_raw();
        downstream[1].json(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/eu-web",
            "--parent-id",
            &format!("spiffe://example.org/spire/agent/join_token/{token}"),
            "--selector",
            &format!("unix:uid:{uid}"),
        ]);
        let addresses: Vec<String> = downstream.iter().map(ServerProcess::api_address).collect();
        let down_agent = AgentProcess::start(&down_root, &addresses, &downstream[0].bundle_pem(), &token, "1s");
        Tree { upstream, up_agent, downstream, down_agent, links, up_roots, root }
    }

    /// The downstream workload's SVID chain and bundle, within 30 s.
    fn downstream_x509(&self) -> (Certificates, Certificates) {
        let mut found = None;
        wait_until(
            Duration::from_secs(30),
            || {
                found = x509_of(&self.down_agent, "spiffe://example.org/eu-web");
                found.is_some()
            },
            &format!("an SVID for the downstream workload\nagent log:\n{}", self.down_agent.log()),
        );
        found.unwrap()
    }
}

#[test]
fn a_downstream_cluster_signs_with_an_intermediate_of_its_upstream() {
    let tree = Tree::start(Downstream::default());
    let Tree { upstream, up_agent, downstream, down_agent, up_roots, root, .. } = &tree;
    let (down_chain, down_bundle) = tree.downstream_x509();
    assert_eq!(down_chain.len(), 2, "leaf, then the downstream intermediate");
    assert_eq!(&down_bundle, up_roots, "the downstream agent serves the upstream's roots");
    let mut up = None;
    wait_until(
        Duration::from_secs(30),
        || {
            up = x509_of(up_agent, "spiffe://example.org/up-web");
            up.is_some()
        },
        &format!("an SVID for the upstream workload\nagent log:\n{}", up_agent.log()),
    );
    let (up_chain, up_bundle) = up.unwrap();

    let dir = root.path();
    openssl_verifies(dir, "down-vs-up-roots", &down_chain, up_roots).unwrap();
    openssl_verifies(dir, "down-vs-up-workload", &down_chain, &up_bundle).unwrap();
    openssl_verifies(dir, "up-vs-down-workload", &up_chain, &down_bundle).unwrap();
    // Without the intermediate the leaf does not verify: it is signed by the downstream CA.
    let err = openssl_verifies(dir, "leaf-alone", &down_chain[..1], up_roots).unwrap_err();
    assert!(err.contains("unable to get local issuer"), "{err}");

    // JWT: the downstream's key is published upward, and the downstream mirrors every key
    // the upstream publishes, on every replica.
    wait_until(
        Duration::from_secs(30),
        || {
            let up = jwt_kids(&upstream[2]);
            up.len() >= 2 && downstream.iter().all(|s| jwt_kids(s) == up)
        },
        "both clusters to publish the same JWT keys, the downstream's among them",
    );
    validates_through(&downstream[2], up_agent, "spiffe://example.org/eu-db");
    validates_through(&upstream[1], down_agent, "spiffe://example.org/root-db");

    // The upstream moves to a new root and taints the old one: the downstream takes a new
    // intermediate under the new root at once, and its workload's SVID follows.
    let old_id =
        upstream[0].json(&["localauthority", "x509", "show"])["active"]["authority_id"].as_str().unwrap().to_owned();
    let prepared = upstream[0].json(&["localauthority", "x509", "prepare"]);
    let new_id = prepared["prepared"]["authority_id"].as_str().unwrap().to_owned();
    upstream[0].json(&["localauthority", "x509", "activate", "--authority-id", &new_id]);
    let roots_now = identity::bundle::parse_pem_certificates(&upstream[0].bundle_pem()).unwrap();
    let new_root: Vec<Vec<u8>> = roots_now.into_iter().filter(|r| !up_roots.contains(r)).collect();
    assert_eq!(new_root.len(), 1);
    upstream[0].json(&["localauthority", "x509", "taint", "--authority-id", &old_id]);
    let mut moved = None;
    wait_until(
        Duration::from_secs(40),
        || {
            moved = x509_of(down_agent, "spiffe://example.org/eu-web")
                .filter(|(chain, _)| openssl_verifies(dir, "down-after-taint", chain, &new_root).is_ok());
            moved.is_some()
        },
        &format!("the downstream workload's SVID to chain to the new root\nagent log:\n{}", down_agent.log()),
    );
    let (chain, _) = moved.unwrap();
    assert_ne!(chain[1], down_chain[1], "a new downstream intermediate");
    assert!(openssl_verifies(dir, "down-vs-old-root", &chain, up_roots).is_err(), "not under the tainted root");
}

/// A downstream whose CA keys live in `key_manager` signs under the upstream: the CSR for
/// its intermediate and its JWT key are signed by the HSM or KMS key itself.
fn managed_downstream_signs_under_the_upstream(tree: Tree) {
    let (chain, _) = tree.downstream_x509();
    assert_eq!(chain.len(), 2, "leaf, then the downstream intermediate");
    openssl_verifies(tree.root.path(), "managed", &chain, &tree.up_roots).unwrap();
    validates_through(&tree.downstream[0], &tree.up_agent, "spiffe://example.org/eu-db");
}

#[test]
fn a_downstream_on_an_hsm_signs_under_its_upstream() {
    use testkit::softhsm::{self, MODULE};
    let tokens = tempfile::tempdir().unwrap();
    let conf = softhsm::init_token(tokens.path(), "testudo-eu", "1357");
    let pin = tokens.path().join("pin");
    std::fs::write(&pin, "1357\n").unwrap();
    let key_manager = format!(
        "KeyManager \"pkcs11\" {{\n plugin_data {{\n module_path = \"{MODULE}\"\n token_label = \"testudo-eu\"\n \
         user_pin_path = \"{}\"\n }}\n }}",
        pin.display()
    );
    let env = vec![("SOFTHSM2_CONF".to_owned(), conf.display().to_string())];
    managed_downstream_signs_under_the_upstream(Tree::start(Downstream { key_manager, env, ..Default::default() }));
}

#[test]
fn a_downstream_on_kms_signs_under_its_upstream() {
    let moto = testkit::moto::MotoServer::start();
    let key_manager =
        format!("KeyManager \"aws_kms\" {{\n plugin_data {{\n endpoint = \"{}\"\n }}\n }}", moto.endpoint());
    let env = moto.env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    managed_downstream_signs_under_the_upstream(Tree::start(Downstream { key_manager, env, ..Default::default() }));
}

/// Cut off from the upstream for several SVID lifetimes (but far less than half the
/// intermediate's), the downstream region keeps issuing: the workload sees no error, its
/// SVID keeps rotating, and every SVID verifies against the upstream roots.
#[test]
fn a_region_cut_off_from_its_upstream_keeps_issuing() {
    let tree = Tree::start(Downstream {
        server_extra: r#"default_x509_svid_ttl = "10s""#.into(),
        intermediate_ttl: 600,
        ..Default::default()
    });
    let (first, _) = tree.downstream_x509();
    let roots = {
        let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
        for root in &tree.up_roots {
            bundle.add_x509_authority(root).unwrap();
        }
        bundle
    };
    let errors_before: u64 = tree.downstream.iter().map(upstream_errors).sum();
    for link in &tree.links {
        link.set(Link::Reset);
    }
    let cut = std::time::Instant::now();
    let (mut serials, mut failures, mut last) = (std::collections::BTreeSet::new(), Vec::new(), Vec::new());
    while cut.elapsed() < Duration::from_secs(35) {
        match x509_of(&tree.down_agent, "spiffe://example.org/eu-web") {
            None => failures.push(format!("{:?}: no SVID from the Workload API", cut.elapsed())),
            Some((chain, _)) => {
                match identity::x509::verify_x509_svid(&chain, &roots, time::OffsetDateTime::now_utc()) {
                    Ok(_) => {
                        last = identity::x509::certificate_facts(&chain[0]).unwrap().serial;
                        serials.insert(last.clone());
                    }
                    Err(e) => failures.push(format!("{:?}: {e}", cut.elapsed())),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let errors_during: u64 = tree.downstream.iter().map(upstream_errors).sum();
    // Any replica shows the failing upstream, as the leader recorded it.
    let shown = tree.downstream[2].json(&["localauthority", "x509", "show"]);
    let upstream = &shown["upstream"];
    assert!(upstream["last_error_at"].as_i64() > upstream["last_success"].as_i64(), "{shown}");
    assert!(upstream["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{shown}");
    for link in &tree.links {
        link.set(Link::Open);
    }
    wait_until(
        Duration::from_secs(30),
        || {
            let shown = tree.downstream[0].json(&["localauthority", "x509", "show"]);
            shown["upstream"]["last_success"].as_i64() > shown["upstream"]["last_error_at"].as_i64()
        },
        "the downstream to record that the upstream answers again",
    );
    assert!(failures.is_empty(), "{failures:?}\nagent log:\n{}", tree.down_agent.log());
    assert!(serials.len() >= 3, "the SVID rotated through the cut: {} seen", serials.len());
    assert_ne!(
        last,
        identity::x509::certificate_facts(&first[0]).unwrap().serial,
        "the SVID from before the cut was replaced"
    );
    // The cut was real: the leader's calls to the upstream failed meanwhile (its bundle
    // mirror, every 5 s).
    assert!(errors_during > errors_before, "no upstream call failed during the cut");
}

/// `testudo_upstream_bundle_sync_total{result="error"}` on one replica.
fn upstream_errors(server: &ServerProcess) -> u64 {
    let (_, metrics) = testkit::http_get(server.metrics_port, "/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("testudo_upstream_bundle_sync_total{") && l.contains("result=\"error\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// How many downstream CAs the upstream replicas have signed (their logs say each).
fn intermediates_signed(upstream: &[ServerProcess]) -> usize {
    upstream.iter().map(|s| s.log().matches("signed a downstream X.509 CA").count()).sum()
}

/// The downstream leader dies while the upstream's answer to its request for the next
/// intermediate is on its way: nothing was recorded, the next leader asks again, and the
/// cluster ends up with exactly one prepared CA that every replica agrees on.
#[test]
fn a_downstream_leader_killed_during_its_upstream_request_leaves_one_intermediate() {
    let mut tree = Tree::start(Downstream {
        server_extra: r#"default_x509_svid_ttl = "10s""#.into(),
        intermediate_ttl: 60,
        ..Default::default()
    });
    let before = intermediates_signed(&tree.upstream);
    let first = tree.downstream[0].json(&["localauthority", "x509", "show"]);
    let active = first["active"]["authority_id"].as_str().unwrap().to_owned();
    // Slow answers: the next request's answer spends seconds on the way back.
    for link in &tree.links {
        link.set(Link::Delay(Duration::from_secs(2)));
    }
    wait_until(
        Duration::from_secs(60),
        || intermediates_signed(&tree.upstream) > before,
        "the downstream leader to ask for its next intermediate (half the first one's life)",
    );
    let status = tree.downstream[0].json(&["cluster", "status"]);
    let leader = status["leader"].as_u64().unwrap();
    let index = tree.downstream.iter().position(|s| s.id == leader).unwrap();
    tree.downstream[index].kill();
    for link in &tree.links {
        link.set(Link::Open);
    }
    let other = (index + 1) % 3;
    let mut prepared = String::new();
    wait_until(
        Duration::from_secs(60),
        || {
            // Until the others elect a leader, the read is refused (no leader contact).
            let out = tree.downstream[other].command(&["localauthority", "x509", "show", "--output", "json"]);
            let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            prepared = shown["prepared"]["authority_id"].as_str().unwrap_or_default().to_owned();
            out.status.success() && !prepared.is_empty()
        },
        "the new leader to record the next intermediate",
    );
    tree.downstream[index].restart();
    assert!(tree.downstream[index].serves_within(Duration::from_secs(20)));
    assert!(
        intermediates_signed(&tree.upstream) >= before + 2,
        "the answer the dead leader never got, and the new leader's own request"
    );
    for server in &tree.downstream {
        let shown = server.json(&["localauthority", "x509", "show"]);
        assert_eq!(shown["active"]["authority_id"], active.as_str(), "replica {}: still the first CA", server.id);
        assert_eq!(shown["prepared"]["authority_id"], prepared.as_str(), "replica {}: one prepared CA", server.id);
    }
    let (chain, _) = tree.downstream_x509();
    openssl_verifies(tree.root.path(), "after-leader-kill", &chain, &tree.up_roots).unwrap();
}

/// The upstream's leader is down while the downstream's next intermediate falls due (a
/// 60 s intermediate: half its life after it was signed): the
/// downstream's pool moves to the other upstream replicas, and the rotation goes on.
#[test]
fn the_upstream_leader_down_while_the_downstream_rotates() {
    let mut tree = Tree::start(Downstream {
        server_extra: r#"default_x509_svid_ttl = "10s""#.into(),
        intermediate_ttl: 60,
        ..Default::default()
    });
    let shown = tree.downstream[0].json(&["localauthority", "x509", "show"]);
    let active = shown["active"]["authority_id"].as_str().unwrap().to_owned();
    // The next intermediate must not exist yet, or the kill below would test nothing.
    assert!(shown["prepared"].is_null(), "prepared before the upstream leader went down: {shown}");
    let leader = tree.upstream[0].json(&["cluster", "status"])["leader"].as_u64().unwrap();
    let index = tree.upstream.iter().position(|s| s.id == leader).unwrap();
    tree.upstream[index].kill();
    let mut prepared = String::new();
    wait_until(
        Duration::from_secs(60),
        || {
            let shown = tree.downstream[1].json(&["localauthority", "x509", "show"]);
            prepared = shown["prepared"]["authority_id"].as_str().unwrap_or_default().to_owned();
            !prepared.is_empty()
        },
        "the downstream's next intermediate while the upstream leader is down",
    );
    assert_ne!(prepared, active);
    tree.upstream[index].restart();
    let (chain, _) = tree.downstream_x509();
    openssl_verifies(tree.root.path(), "upstream-leader-down", &chain, &tree.up_roots).unwrap();
}
