//! Envoy SDS v3 on the Workload API socket, spoken to by a client built from Envoy's own
//! protos (`xds-protos`, in the test venv): resource names as SPIRE users configure them,
//! the xDS ACK/nonce rules, the SPIFFE validator and its fallbacks, refusals, rotation.

use serde_json::Value;

use super::workload_api::{run_python_client, world};

fn verify(chain_pem: &str, bundle: &identity::bundle::Bundle) -> String {
    let chain = identity::bundle::parse_pem_certificates(chain_pem).unwrap();
    identity::x509::verify_x509_svid(&chain, bundle, time::OffsetDateTime::now_utc()).unwrap().spiffe_id.to_string()
}

#[test]
fn envoy_gets_svids_and_bundles_over_sds() {
    // Short SVIDs, so a rotation reaches the stream within the test.
    let world = world(r#"default_x509_svid_ttl = "20s""#, "1s");
    let seen = run_python_client("sds_client.py", &world.agent);
    let bundle_pem = world.bundle.x509_authorities_pem();

    // The first response: the default SVID, which verifies, with its own key.
    let first = &seen["stream_first"];
    assert_eq!(first["version"], "1", "{first}");
    assert_eq!(first["nonce_set"], true);
    let default = &first["secrets"]["default"];
    assert_eq!(default["kind"], "tls_certificate", "{first}");
    assert_eq!(default["uris"], serde_json::json!(["spiffe://example.org/workload"]));
    assert_eq!(default["key_matches"], true);
    assert_eq!(verify(default["chain_pem"].as_str().unwrap(), &world.bundle), "spiffe://example.org/workload");

    // xDS rules: an ACK gets nothing again (a rotation may come); a stale nonce is ignored,
    // new names are answered.
    assert_eq!(seen["resent_after_ack"], serde_json::json!([]), "{seen}");
    let after_stale = seen["after_stale_nonce"].as_array().unwrap();
    assert!(
        after_stale.is_empty() || after_stale == &[Value::from("default")],
        "the stale request's names were served: {after_stale:?}"
    );
    assert_eq!(seen["after_new_names"], serde_json::json!(["ROOTCA", "default"]));
    assert_eq!(
        seen["rotated_serials"],
        2,
        "the rotated SVID was not pushed: {seen}\nagent log:\n{}",
        world.agent.log()
    );
    assert_eq!(seen["versions_increase"], true);

    // No names: every bundle and SVID of the caller, named by ID; the SPIFFE validator.
    let all = seen["fetch_all"].as_object().unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["spiffe://example.org", "spiffe://example.org/workload"], "{all:?}");
    let own = &all["spiffe://example.org"];
    assert_eq!(own["kind"], "spiffe_validator");
    assert_eq!(own["validator"], "envoy.tls.cert_validator.spiffe");
    assert_eq!(own["trust_domains"], serde_json::json!({ "example.org": bundle_pem }));
    assert_eq!(
        seen["fetch_by_id"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["spiffe://example.org", "spiffe://example.org/workload"]
    );
    assert_eq!(seen["fetch_all_bundles"]["ALL"]["trust_domains"], serde_json::json!({ "example.org": bundle_pem }));

    // Plain CA certificates for an Envoy older than 1.18 and when the node opts out; ALL
    // needs the validator.
    assert_eq!(
        seen["fetch_old_envoy"]["ROOTCA"],
        serde_json::json!({ "kind": "trusted_ca", "trusted_ca": bundle_pem })
    );
    assert_eq!(seen["fetch_disabled_by_metadata"]["ROOTCA"]["kind"], "trusted_ca");
    assert_eq!(seen["fetch_all_bundles_old_envoy"]["error"], "FAILED_PRECONDITION", "{seen}");

    // Refusals.
    assert_eq!(seen["fetch_unauthorized"]["error"], "INVALID_ARGUMENT", "{seen}");
    assert!(seen["fetch_unauthorized"]["message"].as_str().unwrap().contains("spiffe://example.org/someone-else"));
    assert_eq!(seen["fetch_wrong_type"], "INVALID_ARGUMENT");
    assert_eq!(seen["delta"], "UNIMPLEMENTED");
}
