//! The Kubernetes base as its pods would run it, without a Kubernetes: each "pod" is a
//! network namespace of its own (testkit::netns) whose processes see, at the paths the
//! StatefulSet mounts them, exactly the `server.hcl` the ConfigMap carries, the cluster CA
//! Secret, a data volume and a run directory, and resolve the headless Service's names
//! (`testudo-server-<ordinal>.testudo-server-raft`) to the pods' addresses. Started at once
//! with `POD_NAME` as the downward API sets it, the three form one cluster the declared way.
//! A fourth namespace is a node running the agent DaemonSet's pod: exactly the `agent.hcl`
//! its ConfigMap carries, the API Service's name resolving to every server pod, attesting
//! with the node's x509pop certificate, and serving a workload on the host socket directory.
//! Needs root (namespaces, bind mounts), as the partition drills do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::netns::{MountPoints, Network};
use testkit::wait_until;

const PODS: usize = 3;
/// The node's namespace, after the server pods'.
const NODE: usize = PODS;

/// Where the StatefulSet mounts each volume (deploy/kubernetes/base/server-statefulset.yaml),
/// and the directory of a pod's own files that stands for it.
const MOUNTS: [(&str, &str); 5] = [
    ("/etc/testudo", "config"),
    ("/etc/testudo-cluster-ca", "cluster-ca"),
    ("/etc/testudo-node-ca", "node-ca"),
    ("/var/lib/testudo", "data"),
    ("/run/testudo", "run"),
];

/// Where the agent DaemonSet mounts its volumes (deploy/kubernetes/base/agent-daemonset.yaml).
const AGENT_MOUNTS: [(&str, &str); 5] = [
    ("/etc/testudo", "config"),
    ("/etc/testudo-bundle", "bundle"),
    ("/etc/testudo-node", "node-identity"),
    ("/run/testudo-agent/public", "workload-api"),
    ("/var/lib/testudo/agent", "data"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// One pod: its directory (a subdirectory per volume) and its server process.
struct Pod {
    dir: PathBuf,
    child: Child,
}

impl Pod {
    /// A server pod of the StatefulSet.
    fn server(network: &Network, ordinal: usize, dir: PathBuf) -> Self {
        let args = ["run", "--config", "/etc/testudo/server.hcl", "--expand-env"];
        Self::start(network, ordinal, dir, &MOUNTS, "testudo-server", &args, &format!("testudo-server-{ordinal}"))
    }

    /// Runs `binary args` in namespace `index` with `dir`'s `hosts` and volumes mounted as
    /// `mounts` say, `POD_NAME` set to `name`.
    fn start(
        network: &Network,
        index: usize,
        dir: PathBuf,
        mounts: &[(&str, &str)],
        binary: &str,
        args: &[&str],
        name: &str,
    ) -> Self {
        let log = std::fs::File::create(dir.join("pod.log")).unwrap();
        let mut script = String::from("set -e\nmount --bind \"$1/hosts\" /etc/hosts\n");
        for (path, volume) in mounts {
            script.push_str(&format!("mount --bind \"$1/{volume}\" {path}\n"));
        }
        script.push_str("shift 2\nexec \"$0\" \"$@\"\n");
        let launcher = network.launcher(index);
        let child = Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(["sh", "-c", &script])
            .arg(testkit::binary(binary))
            .arg(&dir)
            .arg("-")
            .args(args)
            .env("POD_NAME", name)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ip netns exec");
        Self { dir, child }
    }

    fn cli(&self, args: &[&str]) -> Option<serde_json::Value> {
        let out = Command::new(testkit::binary("testudo-server"))
            .args(args)
            .arg("--socket-path")
            .arg(self.dir.join("run/api.sock"))
            .args(["--output", "json"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Its node id and the voters it sees, once it follows a leader and votes.
    fn voters(&self) -> Option<(u64, Vec<u64>)> {
        testkit::voters_of(&self.cli(&["cluster", "status"])?)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pod.log")).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` of the base, after checking that the rendered ConfigMap carries it line for line.
fn carried(rendered: &str, name: &str) -> String {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/base").join(name)).unwrap();
    let indented: String =
        text.lines().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("    {l}\n") }).collect();
    assert!(rendered.contains(&format!("  {name}: |\n{indented}")), "no ConfigMap carries {name} as is");
    text
}

#[test]
fn the_statefulset_forms_one_cluster_and_the_daemonset_serves_a_workload() {
    let base = repo().join("deploy/kubernetes/base");
    let rendered = Command::new("kubectl").arg("kustomize").arg(&base).output().expect("kubectl");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let rendered = String::from_utf8_lossy(&rendered.stdout);
    let (server_hcl, agent_hcl) = (carried(&rendered, "server.hcl"), carried(&rendered, "agent.hcl"));

    let root = tempfile::tempdir().unwrap();
    let (cert, key) = (root.path().join("ca.crt"), root.path().join("ca.key"));
    testkit::new_cluster_ca(&cert, &key);
    // The platform's PKI for nodes: a CA the servers trust for x509pop, and the node's pair.
    let pki = root.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    testkit::pki::ca_and_leaf(&pki, "nodes-ca", "node", "digitalSignature");

    let network = Network::create(PODS + 1).expect("network namespaces (run as root)");
    let agent_paths = ["/etc/testudo-bundle", "/etc/testudo-node", "/run/testudo-agent", "/run/testudo-agent/public"];
    let paths: Vec<&str> =
        MOUNTS.iter().map(|(path, _)| *path).chain(agent_paths).chain(["/var/lib/testudo/agent"]).collect();
    let _mount_points = MountPoints::make(&paths);
    // The headless Service's names, as the cluster's DNS answers them (ordinals 3 and 4,
    // listed in peers for scaling to five, do not exist).
    let hosts: String = std::iter::once("127.0.0.1 localhost\n".to_owned())
        .chain((0..PODS).map(|i| format!("{} testudo-server-{i}.testudo-server-raft\n", network.address(i))))
        .collect();
    let pods: Vec<Pod> = (0..PODS)
        .map(|ordinal| {
            let dir = root.path().join(format!("testudo-server-{ordinal}"));
            for (_, volume) in MOUNTS {
                std::fs::create_dir_all(dir.join(volume)).unwrap();
            }
            std::fs::write(dir.join("config/server.hcl"), &server_hcl).unwrap();
            std::fs::copy(&cert, dir.join("cluster-ca/ca.crt")).unwrap();
            std::fs::copy(&key, dir.join("cluster-ca/ca.key")).unwrap();
            std::fs::copy(pki.join("nodes-ca.pem"), dir.join("node-ca/ca.pem")).unwrap();
            std::fs::write(dir.join("hosts"), &hosts).unwrap();
            dir
        })
        .enumerate()
        .map(|(ordinal, dir)| Pod::server(&network, ordinal, dir))
        .collect();

    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(60),
        || {
            seen = pods.iter().map(Pod::voters).collect();
            seen.iter().all(|v| v.as_ref().is_some_and(|(_, voters)| voters.len() == PODS))
                && seen.windows(2).all(|w| w[0].as_ref().map(|v| &v.1) == w[1].as_ref().map(|v| &v.1))
        },
        "three pods in one cluster",
    );
    let ids: Vec<u64> = seen.iter().filter_map(|v| v.as_ref().map(|(me, _)| *me)).collect();
    // Ordinal i founds the cluster as node i + 1; a majority of founders is certain.
    let founders = ids.iter().enumerate().filter(|(ordinal, id)| **id == *ordinal as u64 + 1).count();
    assert!(founders >= 2, "node ids {ids:?}; logs:\n{}", pods[0].log());

    // A write through one pod is read through another.
    pods[1]
        .cli(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--parent-id",
            "spiffe://example.org/node",
            "--selector",
            "unix:uid:1",
        ])
        .expect("an entry created through testudo-server-1");
    let count = pods[2].cli(&["entry", "count"]).and_then(|c| c["count"].as_u64());
    assert_eq!(count, Some(1), "read through testudo-server-2");

    // The DaemonSet's pod on a node: the API Service's name stands for every server pod.
    let node = root.path().join("node");
    for (_, volume) in AGENT_MOUNTS {
        std::fs::create_dir_all(node.join(volume)).unwrap();
    }
    let service: String =
        (0..PODS).map(|i| format!("{} testudo-server.testudo.svc.cluster.local\n", network.address(i))).collect();
    std::fs::write(node.join("hosts"), format!("127.0.0.1 localhost\n{service}")).unwrap();
    std::fs::write(node.join("config/agent.hcl"), &agent_hcl).unwrap();
    std::fs::copy(pki.join("node.pem"), node.join("node-identity/node.crt")).unwrap();
    std::fs::copy(pki.join("node.key"), node.join("node-identity/node.key")).unwrap();
    let bundle = Command::new(testkit::binary("testudo-server"))
        .args(["bundle", "show", "--socket-path"])
        .arg(pods[0].dir.join("run/api.sock"))
        .output()
        .unwrap();
    assert!(bundle.status.success(), "{}", String::from_utf8_lossy(&bundle.stderr));
    std::fs::write(node.join("bundle/bundle.pem"), &bundle.stdout).unwrap();
    let args = ["run", "--config", "/etc/testudo/agent.hcl"];
    let agent = Pod::start(&network, NODE, node, &AGENT_MOUNTS, "testudo-agent", &args, "testudo-agent-node");

    let mut agent_id = None;
    wait_until(
        Duration::from_secs(60),
        || {
            let listed = pods[0].cli(&["agent", "list"]).map(|a| a.to_string()).unwrap_or_default();
            agent_id = listed
                .split('"')
                .find(|s| s.starts_with("spiffe://example.org/spire/agent/x509pop/"))
                .map(str::to_owned);
            agent_id.is_some()
        },
        "the node's agent to attest with x509pop",
    );
    let uid = Command::new("id").arg("-u").output().unwrap();
    let selector = format!("unix:uid:{}", String::from_utf8_lossy(&uid.stdout).trim());
    let workload = "spiffe://example.org/on-a-node";
    pods[2]
        .cli(&["entry", "create", "--spiffe-id", workload, "--parent-id", &agent_id.unwrap(), "--selector", &selector])
        .expect("an entry for the workload");
    // A workload on the node reaches the socket in the host directory.
    let socket = agent.dir.join("workload-api/api.sock");
    wait_until(
        Duration::from_secs(60),
        || {
            let out = Command::new(testkit::binary("testudo-agent"))
                .args(["api", "fetch", "x509", "--output", "json", "--socket-path"])
                .arg(&socket)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(workload)
        },
        "the workload's SVID from the node's agent",
    );
}
