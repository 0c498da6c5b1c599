//! What `deploy/` ships is checked as a user would meet it: the systemd units pass
//! `systemd-analyze verify`, every example config is valid for the binary it is for (as the
//! unit or the pod runs it), and the Kubernetes base and overlays render offline.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// Runs `command`, answering its output, or panicking with it if it fails.
fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn systemd_units_verify_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for role in ["server", "agent"] {
        let name = format!("testudo-{role}.service");
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(&name)).unwrap();
        // verify checks that ExecStart names an executable: the one built here.
        let binary = testkit::binary(&format!("testudo-{role}"));
        let text = text.replace(&format!("/usr/local/bin/testudo-{role}"), &binary.display().to_string());
        assert!(text.contains(&binary.display().to_string()), "{name} runs /usr/local/bin/testudo-{role}");
        let path = dir.path().join(&name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let said = run(Command::new("systemd-analyze").arg("verify").args(&units));
    assert!(said.trim().is_empty(), "systemd-analyze verify warned:\n{said}");
}

#[test]
fn every_example_config_is_valid() {
    let deploy = repo().join("deploy");
    let configs = [
        ("testudo-server", "systemd/server-aws-kms.hcl"),
        ("testudo-server", "systemd/server-pkcs11.hcl"),
        ("testudo-agent", "systemd/agent.hcl"),
        ("testudo-server", "kubernetes/base/server.hcl"),
        ("testudo-server", "kubernetes/overlays/single-region/server.hcl"),
        ("testudo-server", "kubernetes/overlays/nested-region/server.hcl"),
        ("testudo-agent", "kubernetes/base/agent.hcl"),
    ];
    for (binary, config) in configs {
        let said = run(Command::new(testkit::binary(binary))
            .args(["validate", "--expand-env", "--config"])
            .arg(deploy.join(config))
            .env("POD_NAME", "testudo-server-1")
            .env("TESTUDO_HSM_PIN", "1234"));
        assert!(said.contains("is valid"), "{config}: {said}");
    }
    // The StatefulSet's replicas find themselves in peers once $POD_NAME is expanded.
    let base = std::fs::read_to_string(deploy.join("kubernetes/base/server.hcl")).unwrap();
    assert!(base.contains("\"testudo-server-1.testudo-server-raft:8082\""));
    assert!(base.contains("raft_advertise_address = \"${POD_NAME}.testudo-server-raft:8082\""));
}

#[test]
fn kubernetes_base_and_overlays_render_offline() {
    let kubernetes = repo().join("deploy/kubernetes");
    for dir in ["base", "overlays/single-region", "overlays/nested-region"] {
        let out = Command::new("kubectl").arg("kustomize").arg(kubernetes.join(dir)).output().expect("kubectl");
        assert!(out.status.success(), "{dir}: {}", String::from_utf8_lossy(&out.stderr));
        let rendered = String::from_utf8_lossy(&out.stdout);
        for kind in ["StatefulSet", "DaemonSet", "PodDisruptionBudget", "ConfigMap", "Service", "ServiceAccount"] {
            assert!(rendered.contains(&format!("kind: {kind}\n")), "{dir} renders no {kind}");
        }
        for needed in
            ["maxUnavailable: 1", "path: /ready", "path: /live", "publishNotReadyAddresses: true", "hostPID: true"]
        {
            assert!(rendered.contains(needed), "{dir}: no {needed:?}");
        }
    }
}

#[test]
fn install_sh_installs_into_a_root_and_keeps_configs_when_run_again() {
    let root = tempfile::tempdir().unwrap();
    let binary = testkit::binary("testudo-server");
    let bin_dir = binary.parent().expect("the binaries' directory");
    let install = || {
        run(Command::new("bash")
            .arg(repo().join("deploy/install.sh"))
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--root")
            .arg(root.path()))
    };
    install();
    let at = |path: &str| root.path().join(path);
    for path in [
        "usr/local/bin/testudo-server",
        "usr/local/bin/testudo-agent",
        "etc/systemd/system/testudo-server.service",
        "etc/systemd/system/testudo-agent.service",
    ] {
        assert!(at(path).is_file(), "{path} not installed");
    }
    let config = at("etc/testudo/server.hcl");
    assert_eq!(
        std::fs::read(&config).unwrap(),
        std::fs::read(repo().join("deploy/systemd/server-aws-kms.hcl")).unwrap()
    );
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    let said = install();
    assert!(!said.contains("wrote /etc/testudo/server.hcl"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# edited by the operator\n",
        "a config is never overwritten"
    );
}
