//! Certificates made by openssl, for node attestation by x509pop.

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

/// An EC P-256 CA and a leaf it signed, in `dir`: `<name>.pem` and `<name>.key` (SEC1 PEM);
/// the leaf's key usage as given (e.g. `digitalSignature`), extended usage clientAuth.
pub fn ca_and_leaf(dir: &Path, ca: &str, leaf: &str, key_usage: &str) {
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{ca}.key")]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{ca}.key"),
            "-subj",
            &format!("/CN={ca}"),
            "-days",
            "1",
            "-out",
            &format!("{ca}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
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
