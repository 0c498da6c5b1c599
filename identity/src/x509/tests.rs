//! Minting and verification tested together: what we mint, we verify, and what we must
//! refuse, we refuse.

use std::time::Duration;

use time::OffsetDateTime;

use super::*;
use crate::bundle::{Bundle, BundleSet};
use crate::crypto::{KeyType, LocalKey, Signer};
use crate::{SpiffeId, TrustDomain};

pub(crate) struct TestCa {
    pub key: LocalKey,
    pub cert: MintedCertificate,
}

pub(crate) fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

pub(crate) fn root(key_type: KeyType, ttl: Duration) -> TestCa {
    let key = LocalKey::generate(key_type).unwrap();
    let template = CaTemplate {
        trust_domain: td(),
        public_key: key.public_key().clone(),
        ttl,
        subject: Subject::ca_default(),
        serial: None,
    };
    let cert = mint_ca(&template, None, Some(&key), now()).unwrap();
    TestCa { key, cert }
}

pub(crate) fn svid(ca: &TestCa, id: &str, key_type: KeyType, ttl: Duration) -> (LocalKey, MintedCertificate) {
    let key = LocalKey::generate(key_type).unwrap();
    let template = SvidTemplate {
        spiffe_id: SpiffeId::parse(id).unwrap(),
        public_key: key.public_key().clone(),
        ttl,
        dns_names: vec![],
        subject: Subject::svid_default(),
        serial: None,
    };
    let issuer = Issuer::new(&ca.cert.der, &ca.key).unwrap();
    let cert = mint_x509_svid(&template, &issuer, now()).unwrap();
    (key, cert)
}

pub(crate) fn bundle_of(cas: &[&TestCa]) -> Bundle {
    let mut bundle = Bundle::new(td());
    for ca in cas {
        bundle.add_x509_authority(&ca.cert.der).unwrap();
    }
    bundle
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

#[test]
fn minted_svid_verifies_for_every_key_type() {
    for ca_type in KeyType::ALL {
        let ca = root(ca_type, DAY);
        for leaf_type in [KeyType::EcP256, KeyType::Rsa2048] {
            let (_, leaf) = svid(&ca, "spiffe://example.org/web", leaf_type, HOUR);
            let verified = verify_x509_svid(&[&leaf.der], &bundle_of(&[&ca]), now()).unwrap();
            assert_eq!(verified.spiffe_id.to_string(), "spiffe://example.org/web");
            assert_eq!(verified.authority, ca.cert.der);
        }
    }
}

#[test]
fn svid_has_the_required_shape() {
    let ca = root(KeyType::EcP256, DAY);
    let (key, leaf) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, HOUR);
    let facts = certificate_facts(&leaf.der).unwrap();
    assert!(!facts.is_ca);
    assert_eq!(facts.uri_sans, vec!["spiffe://example.org/web".to_owned()]);
    assert_eq!(&facts.public_key, key.public_key());
    assert_eq!(facts.not_before, now() - time::Duration::seconds(10), "NotBefore is backdated 10s");
    assert_eq!(facts.not_after, now() + time::Duration::hours(1));
    assert_eq!(facts.serial, leaf.serial);
    assert_eq!(facts.serial.len(), 16);

    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.der).unwrap();
    let ku = parsed.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && ku.value.key_encipherment() && ku.value.key_agreement());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = parsed.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    let bc = parsed.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);

    let ca_facts = certificate_facts(&ca.cert.der).unwrap();
    assert!(ca_facts.is_ca);
    assert_eq!(ca_facts.uri_sans, vec!["spiffe://example.org".to_owned()]);
    let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca.cert.der).unwrap();
    let ca_ku = ca_parsed.key_usage().unwrap().unwrap().value;
    assert!(ca_ku.key_cert_sign() && ca_ku.crl_sign() && !ca_ku.digital_signature());
}

#[test]
fn svid_lifetime_is_capped_at_the_issuer() {
    let ca = root(KeyType::EcP256, HOUR);
    let (_, leaf) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, DAY);
    assert_eq!(leaf.not_after, ca.cert.not_after);
}

#[test]
fn dns_names_and_common_name() {
    let ca = root(KeyType::EcP256, DAY);
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let mut template = SvidTemplate {
        spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
        public_key: key.public_key().clone(),
        ttl: HOUR,
        dns_names: vec!["web.example.org".into(), "*.web.example.org".into()],
        subject: Subject::svid_default(),
        serial: None,
    };
    let issuer = Issuer::new(&ca.cert.der, &ca.key).unwrap();
    let cert = mint_x509_svid(&template, &issuer, now()).unwrap();
    let facts = certificate_facts(&cert.der).unwrap();
    assert_eq!(facts.dns_sans, template.dns_names);
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
    let cn = parsed.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
    assert_eq!(cn, "web.example.org");

    template.dns_names = vec!["bad name".into()];
    assert!(matches!(mint_x509_svid(&template, &issuer, now()), Err(MintError::Template(_))));
    template.dns_names = vec![];
    template.spiffe_id = SpiffeId::parse("spiffe://other.org/web").unwrap();
    let err = mint_x509_svid(&template, &issuer, now()).unwrap_err();
    assert!(err.to_string().contains("not in the issuer's trust domain"), "{err}");
    template.spiffe_id = td().id();
    assert!(matches!(mint_x509_svid(&template, &issuer, now()), Err(MintError::Template(_))));
}

#[test]
fn intermediate_chain_verifies_and_is_capped() {
    let root_ca = root(KeyType::EcP384, DAY);
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let template = CaTemplate {
        trust_domain: td(),
        public_key: key.public_key().clone(),
        ttl: DAY * 10,
        subject: Subject::ca_default(),
        serial: None,
    };
    let root_issuer = Issuer::new(&root_ca.cert.der, &root_ca.key).unwrap();
    let intermediate = mint_ca(&template, Some(&root_issuer), None, now()).unwrap();
    assert_eq!(intermediate.not_after, root_ca.cert.not_after, "capped at the upstream's NotAfter");
    let inter = TestCa { key, cert: intermediate };
    let (_, leaf) = svid(&inter, "spiffe://example.org/db", KeyType::EcP256, HOUR);

    let bundle = bundle_of(&[&root_ca]);
    let verified = verify_x509_svid(&[&leaf.der, &inter.cert.der], &bundle, now()).unwrap();
    assert_eq!(verified.spiffe_id.path(), "/db");
    assert_eq!(verified.authority, root_ca.cert.der);
    assert_eq!(verify_ca_chain(&[&inter.cert.der], &bundle, now()).unwrap(), root_ca.cert.der);
    assert!(matches!(
        verify_ca_chain(&[&inter.cert.der], &bundle_of(&[&inter]), now()),
        Err(VerifyX509Error::NoPathToAuthority(_))
    ));
    assert_eq!(verify_ca_chain(&[&leaf.der], &bundle, now()), Err(VerifyX509Error::SignerNotCa { index: 0 }));
    // Without the intermediate there is no path.
    assert!(matches!(verify_x509_svid(&[&leaf.der], &bundle, now()), Err(VerifyX509Error::NoPathToAuthority(_))));
}

#[test]
fn refuses_expired_not_yet_valid_and_unknown_authorities() {
    let ca = root(KeyType::EcP256, DAY);
    let (_, leaf) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, HOUR);
    let bundle = bundle_of(&[&ca]);
    let later = now() + time::Duration::hours(2);
    assert!(matches!(verify_x509_svid(&[&leaf.der], &bundle, later), Err(VerifyX509Error::Expired { index: 0, .. })));
    let earlier = now() - time::Duration::minutes(1);
    assert!(matches!(
        verify_x509_svid(&[&leaf.der], &bundle, earlier),
        Err(VerifyX509Error::NotYetValid { index: 0, .. })
    ));

    let other = root(KeyType::EcP256, DAY);
    assert!(matches!(
        verify_x509_svid(&[&leaf.der], &bundle_of(&[&other]), now()),
        Err(VerifyX509Error::NoPathToAuthority(_))
    ));
    assert!(matches!(
        verify_x509_svid(&[&leaf.der], &Bundle::new(TrustDomain::parse("other.org").unwrap()), now()),
        Err(VerifyX509Error::NoBundle(_))
    ));
    let mut set = BundleSet::new();
    set.insert(bundle_of(&[&other, &ca]));
    assert!(verify_x509_svid(&[&leaf.der], &set, now()).is_ok(), "either authority of a rotating bundle works");
}

#[test]
fn a_slow_clock_is_allowed_a_fresh_certificate_but_never_an_expired_one() {
    let ca = root(KeyType::EcP256, DAY);
    let (_, leaf) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, HOUR);
    let bundle = bundle_of(&[&ca]);
    let allowance = std::time::Duration::from_secs(300);
    let verify = |at| verify_x509_svid_allowing_slow_clock(&[&leaf.der], &bundle, at, allowance);
    assert!(verify(now() - time::Duration::minutes(3)).is_ok(), "three minutes slow is within five");
    assert!(matches!(verify(now() - time::Duration::minutes(6)), Err(VerifyX509Error::NotYetValid { index: 0, .. })));
    assert!(matches!(verify(now() + time::Duration::hours(2)), Err(VerifyX509Error::Expired { index: 0, .. })));
    // A new CA looks not yet valid to a slow clock too.
    let fresh_ca = root(KeyType::EcP256, DAY);
    let (_, under_fresh) = svid(&fresh_ca, "spiffe://example.org/web", KeyType::EcP256, HOUR);
    let fresh_bundle = bundle_of(&[&fresh_ca]);
    let at = now() - time::Duration::minutes(3);
    assert!(verify_x509_svid(&[&under_fresh.der], &fresh_bundle, at).is_err());
    assert!(verify_x509_svid_allowing_slow_clock(&[&under_fresh.der], &fresh_bundle, at, allowance).is_ok());
    let expired_ca = root(KeyType::EcP256, Duration::from_secs(60));
    let (_, under_expired) = svid(&expired_ca, "spiffe://example.org/web", KeyType::EcP256, Duration::from_secs(30));
    let later = now() + time::Duration::minutes(2);
    assert!(verify_x509_svid_allowing_slow_clock(&[&under_expired.der], &bundle_of(&[&expired_ca]), later, allowance)
        .is_err());
    // Nor does the allowance stretch a certificate's end: one that expires within it is
    // refused to a clock that needed the allowance.
    let (_, short) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, Duration::from_secs(60));
    let at = now() - time::Duration::minutes(3);
    assert!(verify_x509_svid_allowing_slow_clock(&[&short.der], &bundle, at, allowance).is_err());
}

#[test]
fn refuses_tampered_and_malformed_certificates() {
    let ca = root(KeyType::EcP256, DAY);
    let (_, leaf) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, HOUR);
    let bundle = bundle_of(&[&ca]);
    let mut tampered = leaf.der.clone();
    let at = tampered.len() - 5;
    tampered[at] ^= 0x01;
    assert!(verify_x509_svid(&[&tampered], &bundle, now()).is_err());
    assert!(matches!(
        verify_x509_svid(&[b"not a cert".as_slice()], &bundle, now()),
        Err(VerifyX509Error::Malformed { index: 0, .. })
    ));
    let empty: [&[u8]; 0] = [];
    assert_eq!(verify_x509_svid(&empty, &bundle, now()), Err(VerifyX509Error::EmptyChain));
    let long = vec![leaf.der.clone(); MAX_CHAIN_LENGTH + 1];
    assert_eq!(verify_x509_svid(&long, &bundle, now()), Err(VerifyX509Error::ChainTooLong));
}

#[test]
fn a_ca_certificate_is_not_an_svid() {
    let ca = root(KeyType::EcP256, DAY);
    let err = verify_x509_svid(&[&ca.cert.der], &bundle_of(&[&ca]), now()).unwrap_err();
    assert_eq!(err, VerifyX509Error::LeafIsCa);
}

#[test]
fn issuer_must_hold_the_certificates_key() {
    let ca = root(KeyType::EcP256, DAY);
    let stranger = LocalKey::generate(KeyType::EcP256).unwrap();
    assert!(matches!(Issuer::new(&ca.cert.der, &stranger), Err(MintError::Issuer(_))));
    let (leaf_key, leaf) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, HOUR);
    assert!(matches!(Issuer::new(&leaf.der, &leaf_key), Err(MintError::Issuer(_))), "a leaf cannot issue");
}

#[test]
fn expired_issuer_cannot_mint() {
    let ca = root(KeyType::EcP256, HOUR);
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let template = SvidTemplate {
        spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
        public_key: key.public_key().clone(),
        ttl: HOUR,
        dns_names: vec![],
        subject: Subject::svid_default(),
        serial: None,
    };
    let issuer = Issuer::new(&ca.cert.der, &ca.key).unwrap();
    let late = now() + time::Duration::hours(2);
    assert!(matches!(mint_x509_svid(&template, &issuer, late), Err(MintError::Issuer(_))));
}

#[test]
fn csr_round_trip_yields_the_requesters_key() {
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let csr = create_csr(&key, Some(&SpiffeId::parse("spiffe://example.org/agent").unwrap())).unwrap();
    assert_eq!(&public_key_from_csr(&csr).unwrap(), key.public_key());
    let mut tampered = csr.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 0x01;
    assert!(public_key_from_csr(&tampered).is_err());
    assert_eq!(public_key_from_csr(b"junk"), Err(CsrError::Malformed));
}

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn on_arbitrary_der(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let bundle = Bundle::new(td());
            prop_assert!(verify_x509_svid(&[&bytes], &bundle, now()).is_err());
            let _ = public_key_from_csr(&bytes);
            let _ = certificate_facts(&bytes);
            let _ = crate::crypto::PublicKey::from_spki_der(&bytes);
        }

        #[test]
        fn on_corrupted_svids(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            use std::sync::OnceLock;
            static FIXTURE: OnceLock<(Vec<u8>, Bundle)> = OnceLock::new();
            let (der, bundle) = FIXTURE.get_or_init(|| {
                let ca = root(KeyType::EcP256, DAY);
                let (_, leaf) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, HOUR);
                (leaf.der, bundle_of(&[&ca]))
            });
            let mut bytes = der.clone();
            let mut changed = false;
            for (index, value) in flips {
                let i = index.index(bytes.len());
                changed |= bytes[i] != value;
                bytes[i] = value;
            }
            let result = verify_x509_svid(&[&bytes], bundle, now());
            // A changed certificate never verifies: the signature covers every byte that matters.
            if changed {
                prop_assert!(result.is_err() || bytes == *der);
            }
        }
    }
}

#[test]
fn no_single_byte_change_verifies() {
    // Exhaustive over every byte, every single-bit flip and a few values: the signature
    // covers the TBS, the outer algorithm identifier must repeat the signed one byte for
    // byte, and the outer tags must be exactly DER's (a flipped class bit in the signature's
    // BIT STRING tag once got through the parser).
    let ca = root(KeyType::EcP256, DAY);
    let (_, leaf) = svid(&ca, "spiffe://example.org/web", KeyType::EcP256, HOUR);
    let bundle = bundle_of(&[&ca]);
    for i in 0..leaf.der.len() {
        let flips = (0..8).map(|bit| leaf.der[i] ^ (1 << bit));
        for v in [0u8, 1, 0x40, 0xff].into_iter().chain(flips) {
            let mut bytes = leaf.der.clone();
            if bytes[i] == v {
                continue;
            }
            bytes[i] = v;
            assert!(verify_x509_svid(&[&bytes], &bundle, now()).is_err(), "byte {i} set to {v:#04x} still verifies");
        }
    }
}
