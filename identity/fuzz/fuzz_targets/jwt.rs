//! JWT-SVID validation: arbitrary tokens never panic and are never accepted (the bundle's
//! key signed none of them).
#![no_main]

use identity::bundle::{Bundle, JwtAuthority};
use identity::crypto::{KeyType, LocalKey, Signer};
use identity::jwt::validate_jwt_svid;
use identity::TrustDomain;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let key = LocalKey::generate(KeyType::EcP256).expect("key");
        let mut bundle = Bundle::new(TrustDomain::parse("example.org").expect("td"));
        bundle
            .add_jwt_authority(JwtAuthority { key_id: "k1".into(), public_key: key.public_key().clone(), expires_at: None, tainted: false })
            .expect("authority");
        bundle
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
    assert!(validate_jwt_svid(token, bundle(), "db", now).is_err());
});
