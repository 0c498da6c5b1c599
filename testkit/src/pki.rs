//! Certificates made by openssl: for node attestation by x509pop, and for HTTPS endpoints.

use std::path::Path;
use std::process::Command;

/// Runs openssl in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (deploy/bootstrap.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A self-signed EC P-256 CA, valid for a day: `<name>.pem` and `<name>.key`.
fn self_signed_ca(dir: &Path, name: &str) {
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{name}.key")]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "1",
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

/// An EC P-256 CA and a leaf it signed, in `dir`: `<name>.pem` and `<name>.key` (SEC1 PEM);
/// the leaf's key usage as given (e.g. `digitalSignature`), extended usage clientAuth.
pub fn ca_and_leaf(dir: &Path, ca: &str, leaf: &str, key_usage: &str) {
    self_signed_ca(dir, ca);
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{leaf}.key")]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{leaf}.key"),
            "-subj",
            &format!("/CN={leaf}"),
            "-out",
            &format!("{leaf}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{leaf}.ext")),
        format!("keyUsage=critical,{key_usage}\nextendedKeyUsage=clientAuth\n"),
    )
    .expect("extension file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &format!("{leaf}.pem"),
            "-extfile",
            &format!("{leaf}.ext"),
        ],
    );
}

/// A web PKI root and a server certificate it signed for 127.0.0.1 and localhost, in `dir`:
/// `root.pem`, `web.pem` and `web.key` (SEC1 PEM), as an HTTPS endpoint presents them.
pub fn web_server(dir: &Path) {
    self_signed_ca(dir, "root");
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "web.key"]);
    openssl(dir, &["req", "-new", "-key", "web.key", "-subj", "/CN=localhost", "-out", "web.csr"]);
    std::fs::write(
        dir.join("web.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("extension file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "web.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "web.pem",
            "-extfile",
            "web.ext",
        ],
    );
}
