//! A data dir written by the previous on-disk format (format 2, by commit af712c2; see
//! `tests/fixtures/make-data-dir-format2.sh`) is upgraded when a replica of this build
//! starts on it: every entry, the CA and the cluster survive, and the upgraded dir serves
//! and takes writes across a restart.

use std::path::Path;
use std::process::Command;

use testkit::{ReplicaOptions, ServerProcess};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data-dir-format2.tar.gz");

fn unpack(into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let status = Command::new("tar").arg("-xzf").arg(FIXTURE).arg("-C").arg(into).status().unwrap();
    assert!(status.success(), "tar -xzf {FIXTURE}");
}

fn entries(server: &ServerProcess) -> Vec<serde_json::Value> {
    let out = server.command(&["entry", "show", "--output", "json"]);
    assert!(out.status.success(), "entry show: {}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    shown["entries"].as_array().unwrap().clone()
}

fn upgrades_logged(server: &ServerProcess) -> Vec<String> {
    server.log().lines().filter(|l| l.contains("upgraded the data dir's on-disk format")).map(str::to_owned).collect()
}

#[test]
fn a_format_2_data_dir_is_upgraded_on_start() {
    let root = tempfile::tempdir().unwrap();
    let fixture = root.path().join("fixture");
    unpack(&fixture);
    let options = ReplicaOptions { data_dir: Some(fixture.join("data")), ..Default::default() };
    let mut server = ServerProcess::start_with(root.path(), 1, &options);
    assert!(server.serves_within(std::time::Duration::from_secs(20)), "the upgraded replica serves:\n{}", server.log());

    let upgraded = upgrades_logged(&server);
    assert_eq!(upgraded.len(), 1, "one upgrade at start:\n{}", server.log());
    let rewritten: u64 = upgraded[0]
        .split("log_entries=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the number of log entries rewritten");
    assert!(rewritten > 0, "the fixture's log holds entries to rewrite: {}", upgraded[0]);

    // Every entry the old build wrote, with its last update, and not the deleted one.
    let mut found: Vec<(String, String)> = entries(&server)
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e["hint"].as_str().unwrap_or_default().to_owned()))
        .collect();
    found.sort();
    let mut expected: Vec<(String, String)> = (1..=11)
        .map(|i| (format!("fixture-{i}"), if i == 3 { "updated".to_owned() } else { format!("h{i}") }))
        .collect();
    expected.sort();
    assert_eq!(found, expected);

    // The same CA, and it still signs.
    let bundle = std::fs::read_to_string(fixture.join("bundle.pem")).unwrap();
    assert_eq!(server.bundle_pem().trim(), bundle.trim(), "the CA the old build made");
    let out = server.command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/fixture/1"]);
    assert!(out.status.success(), "x509 mint: {}", String::from_utf8_lossy(&out.stderr));

    // The same cluster, and it takes writes that outlive a restart without a second upgrade.
    let cluster_id = server.status()["cluster_id"].as_str().unwrap().to_owned();
    let out = server.command(&[
        "entry",
        "create",
        "--entry-id",
        "after-upgrade",
        "--spiffe-id",
        "spiffe://example.org/after",
        "--parent-id",
        "spiffe://example.org/agent/fixture",
        "--selector",
        "unix:uid:3000",
    ]);
    assert!(out.status.success(), "entry create: {}", String::from_utf8_lossy(&out.stderr));
    server.kill();
    server.restart();
    assert!(server.serves_within(std::time::Duration::from_secs(20)), "restarted:\n{}", server.log());
    assert_eq!(upgrades_logged(&server).len(), 1, "format 3 is not upgraded again");
    assert_eq!(server.status()["cluster_id"], cluster_id.as_str());
    assert_eq!(entries(&server).len(), 12);
}
