//! SPIFFE ID and trust domain parsing: never panics; whatever parses prints back the same.
#![no_main]

use identity::{Selector, SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.to_string(), text);
        assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id));
    }
    if let Ok(td) = TrustDomain::parse(text) {
        assert_eq!(TrustDomain::parse(td.name()), Ok(td));
    }
    if let Ok(selector) = Selector::parse(text) {
        assert_eq!(selector.to_string(), text);
    }
});
