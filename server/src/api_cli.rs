//! CLI commands that call SPIRE's server APIs over the admin socket: `bundle show`,
//! `x509 mint`, `jwt mint`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use identity::crypto::{KeyType, LocalKey};
use identity::SpiffeId;
use proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use proto::spire::api::server::bundle::v1::GetBundleRequest;
use proto::spire::api::server::svid::v1::svid_client::SvidClient;
use proto::spire::api::server::svid::v1::{MintJwtsvidRequest, MintX509svidRequest};
use proto::spire::api::types::Spiffeid;
use server::admin::socket;

use crate::Output;

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// `bundle show`: the local bundle's X.509 authorities as PEM, or the whole bundle as JSON.
pub async fn bundle_show(socket_path: &Path, output: Output) -> anyhow::Result<()> {
    let channel = socket::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let bundle = BundleClient::new(channel).get_bundle(GetBundleRequest { output_mask: None }).await.map_err(crate::status_error)?.into_inner();
    match output {
        Output::Pretty => {
            for authority in &bundle.x509_authorities {
                print!("{}", pem("CERTIFICATE", &authority.asn1));
            }
        }
        Output::Json => {
            let x509: Vec<String> = bundle.x509_authorities.iter().map(|a| pem("CERTIFICATE", &a.asn1)).collect();
            let jwt: Vec<_> = bundle.jwt_authorities.iter().map(|k| serde_json::json!({ "key_id": k.key_id, "expires_at": k.expires_at, "tainted": k.tainted })).collect();
            println!("{}", serde_json::json!({ "trust_domain": bundle.trust_domain, "sequence_number": bundle.sequence_number, "x509_authorities": x509, "jwt_authorities": jwt }));
        }
    }
    Ok(())
}

/// `x509 mint`: a key made here, a CSR for `spiffe_id`, and the SVID the server signs.
pub async fn x509_mint(socket_path: &Path, spiffe_id: &str, ttl: i32, write: Option<PathBuf>, output: Output) -> anyhow::Result<()> {
    let id = SpiffeId::parse(spiffe_id).with_context(|| format!("--spiffe-id {spiffe_id:?}"))?;
    let key = LocalKey::generate(KeyType::EcP256)?;
    let csr = identity::x509::create_csr(&key, Some(&id))?;
    let channel = socket::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let svid = SvidClient::new(channel.clone())
        .mint_x509svid(MintX509svidRequest { csr, ttl })
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .svid
        .context("the server returned no SVID")?;
    let bundle = BundleClient::new(channel).get_bundle(GetBundleRequest { output_mask: None }).await.map_err(crate::status_error)?.into_inner();
    let chain: String = svid.cert_chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    let key_pem = pem("PRIVATE KEY", &key.to_pkcs8_der()?);
    let bundle_pem: String = bundle.x509_authorities.iter().map(|a| pem("CERTIFICATE", &a.asn1)).collect();
    if let Some(dir) = write {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("svid.pem"), &chain)?;
        write_private(&dir.join("key.pem"), &key_pem)?;
        std::fs::write(dir.join("bundle.pem"), &bundle_pem)?;
        println!("X509-SVID written to {}", dir.join("svid.pem").display());
        println!("Private key written to {}", dir.join("key.pem").display());
        println!("Root CAs written to {}", dir.join("bundle.pem").display());
        return Ok(());
    }
    match output {
        Output::Pretty => println!("X509-SVID:\n{chain}\nPrivate key:\n{key_pem}\nRoot CAs:\n{bundle_pem}"),
        Output::Json => println!("{}", serde_json::json!({ "spiffe_id": id.to_string(), "expires_at": svid.expires_at, "svid": chain, "key": key_pem, "bundle": bundle_pem })),
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// `jwt mint`: a JWT-SVID for `spiffe_id` and `audience`.
pub async fn jwt_mint(socket_path: &Path, spiffe_id: &str, audience: Vec<String>, ttl: i32, output: Output) -> anyhow::Result<()> {
    let id = SpiffeId::parse(spiffe_id).with_context(|| format!("--spiffe-id {spiffe_id:?}"))?;
    let channel = socket::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let request = MintJwtsvidRequest {
        id: Some(Spiffeid { trust_domain: id.trust_domain().name().to_owned(), path: id.path().to_owned() }),
        audience,
        ttl,
    };
    let svid = SvidClient::new(channel).mint_jwtsvid(request).await.map_err(crate::status_error)?.into_inner().svid.context("the server returned no SVID")?;
    match output {
        Output::Pretty => println!("{}", svid.token),
        Output::Json => println!("{}", serde_json::json!({ "token": svid.token, "issued_at": svid.issued_at, "expires_at": svid.expires_at })),
    }
    Ok(())
}
