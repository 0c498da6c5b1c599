//! The Kubernetes base as its pods would run it, without a Kubernetes: each "pod" is a
//! network namespace of its own (testkit::netns) whose processes see, at the paths the
//! StatefulSet mounts them, exactly the `server.hcl` the ConfigMap carries, the cluster CA
//! Secret, a data volume and a run directory, and resolve the headless Service's names
//! (`testudo-server-<ordinal>.testudo-server-raft`) to the pods' addresses. Started at once
//! with `POD_NAME` as the downward API sets it, the three form one cluster the declared way.
//! Needs root (namespaces, bind mounts), as the partition drills do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::netns::{MountPoints, Network};
use testkit::wait_until;

const PODS: usize = 3;

/// Where the StatefulSet mounts each volume (deploy/kubernetes/base/server-statefulset.yaml),
/// and the directory of a pod's own files that stands for it.
const MOUNTS: [(&str, &str); 5] = [
    ("/etc/testudo", "config"),
    ("/etc/testudo-cluster-ca", "cluster-ca"),
    ("/etc/testudo-node-ca", "node-ca"),
    ("/var/lib/testudo", "data"),
    ("/run/testudo", "run"),
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
    fn start(network: &Network, ordinal: usize, dir: PathBuf) -> Self {
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut script = String::from("set -e\nmount --bind \"$1/hosts\" /etc/hosts\n");
        for (path, volume) in MOUNTS {
            script.push_str(&format!("mount --bind \"$1/{volume}\" {path}\n"));
        }
        script.push_str("exec \"$2\" run --config /etc/testudo/server.hcl --expand-env\n");
        let launcher = network.launcher(ordinal);
        let child = Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(["sh", "-c", &script, "pod"])
            .arg(&dir)
            .arg(testkit::binary("testudo-server"))
            .env("POD_NAME", format!("testudo-server-{ordinal}"))
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
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_statefulset_config_forms_one_cluster_across_pods() {
    let base = repo().join("deploy/kubernetes/base");
    let server_hcl = std::fs::read_to_string(base.join("server.hcl")).unwrap();
    // What the ConfigMap carries is this file, line for line.
    let rendered = Command::new("kubectl").arg("kustomize").arg(&base).output().expect("kubectl");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let rendered = String::from_utf8_lossy(&rendered.stdout);
    let carried: String =
        server_hcl.lines().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("    {l}\n") }).collect();
    assert!(rendered.contains(&format!("  server.hcl: |\n{carried}")), "the ConfigMap does not carry server.hcl as is");

    let root = tempfile::tempdir().unwrap();
    let (cert, key) = (root.path().join("ca.crt"), root.path().join("ca.key"));
    testkit::new_cluster_ca(&cert, &key);

    let network = Network::create(PODS).expect("network namespaces (run as root)");
    let _mount_points = MountPoints::make(&MOUNTS.map(|(path, _)| path));
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
            std::fs::copy(&cert, dir.join("node-ca/ca.pem")).unwrap();
            std::fs::write(dir.join("hosts"), &hosts).unwrap();
            dir
        })
        .enumerate()
        .map(|(ordinal, dir)| Pod::start(&network, ordinal, dir))
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
}
