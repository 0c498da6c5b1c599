//! `openssl verify` and `openssl x509 -text` against what we mint, and openssl's CSRs
//! through our CSR handling.

use std::process::Command;

use identity::bundle::{to_pem_certificates, Bundle};
use identity::crypto::{KeyType, LocalKey, Signer};
use identity::x509::{create_csr, public_key_from_csr, verify_x509_svid};
use identity::SpiffeId;
use time::OffsetDateTime;

use crate::support::*;

#[test]
fn openssl_verifies_svids_for_every_key_type() {
    let dir = tempfile::tempdir().unwrap();
    for ca_type in KeyType::ALL {
        let ca = root_ca(ca_type);
        let mut bundle = Bundle::new(td());
        bundle.add_x509_authority(&ca.cert.der).unwrap();
        let bundle_pem = write(dir.path(), "bundle.pem", bundle.x509_authorities_pem());
        for leaf_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let key = LocalKey::generate(leaf_type).unwrap();
            let svid = svid_for(&ca, key.public_key(), "spiffe://example.org/ns/prod/web", &[]);
            let svid_pem = write(dir.path(), "svid.pem", svid.pem());
            for purpose in ["sslclient", "sslserver"] {
                let (ok, out) = run(Command::new("openssl")
                    .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
                    .arg(&bundle_pem)
                    .arg(&svid_pem));
                assert!(ok && out.contains(": OK"), "CA {ca_type}, leaf {leaf_type}, {purpose}: {out}");
            }
        }
    }
}

#[test]
fn openssl_verifies_chains_through_an_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_ca(KeyType::EcP384);
    let inter = intermediate_ca(&root, KeyType::EcP256);
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let svid = svid_for(&inter, key.public_key(), "spiffe://example.org/db", &["db.example.org"]);
    let bundle_pem = write(dir.path(), "bundle.pem", to_pem_certificates([root.cert.der.as_slice()]));
    let chain_pem = write(dir.path(), "chain.pem", inter.cert.pem());
    let svid_pem = write(dir.path(), "svid.pem", svid.pem());
    let (ok, out) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&bundle_pem)
        .arg("-untrusted")
        .arg(&chain_pem)
        .arg(&svid_pem));
    assert!(ok && out.contains(": OK"), "{out}");
    // Without the intermediate openssl cannot build the chain either.
    let (ok, _) = run(Command::new("openssl").args(["verify", "-CAfile"]).arg(&bundle_pem).arg(&svid_pem));
    assert!(!ok);
}

#[test]
fn openssl_shows_the_required_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root_ca(KeyType::EcP256);
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let svid = svid_for(&ca, key.public_key(), "spiffe://example.org/web", &["web.example.org"]);
    let text = |pem: String| {
        let path = write(dir.path(), "c.pem", pem);
        let (ok, out) = run(Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(path));
        assert!(ok, "{out}");
        out
    };
    let leaf = text(svid.pem());
    for needle in [
        "X509v3 Key Usage: critical",
        "Digital Signature, Key Encipherment, Key Agreement",
        "X509v3 Extended Key Usage",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "X509v3 Basic Constraints: critical",
        "CA:FALSE",
        "URI:spiffe://example.org/web",
        "DNS:web.example.org",
        "CN = web.example.org",
    ] {
        assert!(leaf.contains(needle), "leaf lacks {needle:?}:\n{leaf}");
    }
    assert_eq!(leaf.matches("URI:").count(), 1, "exactly one URI SAN");
    let ca_text = text(ca.cert.pem());
    for needle in ["CA:TRUE", "Certificate Sign, CRL Sign", "URI:spiffe://example.org\n", "O = SPIFFE"] {
        assert!(ca_text.contains(needle), "CA lacks {needle:?}:\n{ca_text}");
    }
}

#[test]
fn openssl_accepts_our_csrs_and_we_accept_openssls() {
    let dir = tempfile::tempdir().unwrap();
    // Ours → openssl.
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let csr = create_csr(&key, Some(&SpiffeId::parse("spiffe://example.org/agent").unwrap())).unwrap();
    let csr_pem = write(dir.path(), "ours.csr", pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr)));
    let (ok, out) = run(Command::new("openssl").args(["req", "-noout", "-verify", "-in"]).arg(&csr_pem));
    assert!(ok && out.contains("verify OK"), "{out}");

    // openssl → ours, then the SVID minted from it → openssl.
    let ca = root_ca(KeyType::EcP256);
    for keyspec in [
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ["-newkey", "rsa:2048", "-pkeyopt", "rsa_keygen_pubexp:65537"],
    ] {
        let key_path = dir.path().join("openssl.key");
        let csr_path = dir.path().join("openssl.csr");
        let (ok, out) = run(Command::new("openssl")
            .args(["req", "-new", "-nodes", "-subj", "/CN=ignored", "-outform", "DER"])
            .args(keyspec)
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&csr_path));
        assert!(ok, "{out}");
        let der = std::fs::read(&csr_path).unwrap();
        let public_key = public_key_from_csr(&der).unwrap();
        let svid = svid_for(&ca, &public_key, "spiffe://example.org/from-openssl", &[]);
        let mut bundle = Bundle::new(td());
        bundle.add_x509_authority(&ca.cert.der).unwrap();
        let verified = verify_x509_svid(&[&svid.der], &bundle, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(verified.spiffe_id.path(), "/from-openssl");
        // The SVID carries openssl's key: openssl agrees the key matches the certificate.
        let svid_pem = write(dir.path(), "svid.pem", svid.pem());
        let (_, cert_pub) = run(Command::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(&svid_pem));
        let (_, key_pub) = run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key_path));
        assert_eq!(cert_pub, key_pub);
    }
}

#[test]
fn we_verify_what_openssl_signs_and_refuse_what_the_spec_forbids() {
    // A leaf with two URI SANs, signed by openssl with our CA's key exported for the test.
    let dir = tempfile::tempdir().unwrap();
    let ca = root_ca(KeyType::EcP256);
    let ca_key = write(
        dir.path(),
        "ca.key",
        pem::encode(&pem::Pem::new("PRIVATE KEY", ca.key.to_pkcs8_der().unwrap().to_vec())),
    );
    let ca_pem = write(dir.path(), "ca.pem", ca.cert.pem());
    let mut bundle = Bundle::new(td());
    bundle.add_x509_authority(&ca.cert.der).unwrap();
    let cases = [
        ("subjectAltName=URI:spiffe://example.org/a\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n", Ok("/a")),
        ("subjectAltName=URI:spiffe://example.org/a,URI:spiffe://example.org/b\nkeyUsage=critical,digitalSignature\n", Err("exactly one URI SAN")),
        ("subjectAltName=URI:spiffe://example.org/a\nkeyUsage=critical,keyEncipherment\n", Err("digitalSignature")),
        ("subjectAltName=URI:spiffe://example.org/a\nkeyUsage=critical,digitalSignature,keyCertSign\n", Err("keyCertSign")),
        ("subjectAltName=URI:spiffe://example.org/a\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:TRUE\n", Err("must not be a CA")),
        ("subjectAltName=URI:https://example.org/a\nkeyUsage=critical,digitalSignature\n", Err("not a valid SPIFFE ID")),
    ];
    for (i, (extensions, want)) in cases.into_iter().enumerate() {
        let ext = write(dir.path(), "ext.cnf", extensions);
        let leaf_key = dir.path().join(format!("leaf{i}.key"));
        let csr = dir.path().join(format!("leaf{i}.csr"));
        let cert = dir.path().join(format!("leaf{i}.der"));
        let (ok, out) = run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-nodes",
                "-subj",
                "/O=test",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-keyout",
            ])
            .arg(&leaf_key)
            .arg("-out")
            .arg(&csr));
        assert!(ok, "{out}");
        let (ok, out) = run(Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-outform", "DER", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca_pem)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert));
        assert!(ok, "{out}");
        let der = std::fs::read(&cert).unwrap();
        let got = verify_x509_svid(&[&der], &bundle, OffsetDateTime::now_utc());
        match want {
            Ok(path) => assert_eq!(got.unwrap().spiffe_id.path(), path),
            Err(text) => {
                let err = got.unwrap_err().to_string();
                assert!(err.contains(text), "case {i}: {err:?} should mention {text:?}");
            }
        }
    }
}
