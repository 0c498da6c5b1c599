//! Stock gRPC clients on the admin socket: Python's grpcio (gRPC's C core, shared by the
//! C++, Ruby and PHP clients) with stubs generated from SPIRE's API protos, unmodified. The
//! C core sends an `:authority` that the HTTP/2 server under tonic refuses unless the socket
//! accepts it; SPIRE's socket serves such clients, so ours must.

use testkit::ServerProcess;

#[test]
fn grpcio_with_spires_protos_calls_the_admin_socket() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let python = std::env::var("TESTUDO_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python").to_string());
    // Cargo sets CARGO_MANIFEST_DIR when it runs a test; the compiled-in one may name
    // another clone that shares the build cache.
    let package = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let script = format!("{package}/tests/py/spire_api_client.py");
    let protos = format!("{package}/../proto/proto");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&protos)
        .arg(format!("unix:{}", server.socket().display()))
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (make test creates the venv)"));
    assert!(
        out.status.success(),
        "{script} failed: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["created"][0]["code"], 0, "{seen}");
    assert_eq!(seen["count"], 1, "{seen}");
    assert_eq!(seen["listed"], serde_json::json!(["spiffe://example.org/from-python"]), "{seen}");
    assert_eq!(seen["token_ttl_ok"], true, "{seen}");
    assert_eq!(seen["agents"], 0, "{seen}");
    assert_eq!(seen["bundle_trust_domain"], "example.org", "{seen}");
    assert!(seen["bundle_x509_authorities"].as_u64().unwrap() >= 1, "{seen}");
    assert_eq!(seen["missing"], "NOT_FOUND", "{seen}");
}
