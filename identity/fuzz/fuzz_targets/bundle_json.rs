//! SPIFFE bundle JSON: never panics; whatever parses survives a round trip.
#![no_main]

use identity::bundle::Bundle;
use identity::TrustDomain;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::parse("example.org").expect("td");
    if let Ok(bundle) = Bundle::from_spiffe_json(td.clone(), data) {
        let again = Bundle::from_spiffe_json(td, bundle.to_spiffe_json().as_bytes()).expect("round trip");
        assert_eq!(again.jwt_authorities(), bundle.jwt_authorities());
        assert_eq!(again.x509_authorities(), bundle.x509_authorities());
    }
});
