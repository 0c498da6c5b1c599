//! X.509-SVID verification and CSR parsing on arbitrary DER: never panics, never accepts.
#![no_main]

use identity::bundle::Bundle;
use identity::x509::{public_key_from_csr, verify_x509_svid};
use identity::TrustDomain;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bundle = Bundle::new(TrustDomain::parse("example.org").expect("td"));
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
    assert!(verify_x509_svid(&[data], &bundle, now).is_err());
    let _ = public_key_from_csr(data);
    let _ = identity::x509::certificate_facts(data);
});
