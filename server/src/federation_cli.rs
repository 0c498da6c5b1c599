//! `testudo-server federation create|list|show|update|delete|refresh`, with SPIRE's flags
//! and `--data` files, over the Trust Domain API on the admin socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::admin_channel;
use anyhow::Context;
use proto::admin::federation_status_client::FederationStatusClient;
use proto::admin::{BundleRefresh, ListRefreshesRequest};
use proto::spire::api::server::trustdomain::v1 as pb;
use proto::spire::api::server::trustdomain::v1::trust_domain_client::TrustDomainClient;
use proto::spire::api::types;
use serde::Deserialize;

use crate::api_cli::{bundle_from_file, first_refusal};
use crate::Output;

#[derive(clap::Subcommand)]
pub enum FederationCommand {
    /// Creates relationships with foreign trust domains (from flags, or `--data`).
    Create(RelationshipArgs),
    /// Lists every relationship.
    List,
    /// Shows one relationship.
    Show {
        #[arg(long = "trustDomain", alias = "trust-domain")]
        trust_domain: String,
    },
    /// Updates relationships (every field given replaces the stored one).
    Update(RelationshipArgs),
    /// Deletes a relationship.
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Fetches a partner's bundle now.
    Refresh {
        #[arg(long)]
        id: String,
    },
}

/// A relationship by flags, or a JSON file of them (`--data`, `-` for standard input).
#[derive(clap::Args)]
pub struct RelationshipArgs {
    #[arg(long = "trustDomain", alias = "trust-domain")]
    trust_domain: Option<String>,
    #[arg(long = "bundleEndpointURL", alias = "bundle-endpoint-url")]
    bundle_endpoint_url: Option<String>,
    /// `https_web` or `https_spiffe`.
    #[arg(long = "bundleEndpointProfile", alias = "bundle-endpoint-profile")]
    bundle_endpoint_profile: Option<String>,
    /// The endpoint's SPIFFE ID (`https_spiffe` only).
    #[arg(long = "endpointSpiffeID", alias = "endpoint-spiffe-id")]
    endpoint_spiffe_id: Option<String>,
    /// A bundle to store for the partner (the bootstrap of an `https_spiffe` relationship).
    #[arg(long = "trustDomainBundlePath", alias = "trust-domain-bundle-path")]
    trust_domain_bundle_path: Option<PathBuf>,
    /// `pem` or `spiffe`.
    #[arg(long = "trustDomainBundleFormat", alias = "trust-domain-bundle-format", default_value = "pem")]
    trust_domain_bundle_format: String,
    /// A JSON file: `{"federationRelationships": [{"trustDomain": …, "bundleEndpointURL": …,
    /// "bundleEndpointProfile": …, "endpointSPIFFEID": …, "trustDomainBundle": …,
    /// "trustDomainBundleFormat": …}]}`, as SPIRE's CLI takes it.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Deserialize)]
struct DataFile {
    #[serde(rename = "federationRelationships")]
    relationships: Vec<DataRelationship>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataRelationship {
    #[serde(rename = "trustDomain", default)]
    trust_domain: String,
    #[serde(rename = "bundleEndpointURL", default)]
    bundle_endpoint_url: String,
    #[serde(rename = "bundleEndpointProfile", default)]
    bundle_endpoint_profile: String,
    #[serde(rename = "endpointSPIFFEID", default)]
    endpoint_spiffe_id: String,
    /// PEM text (a JSON string), or a SPIFFE bundle document (a JSON object).
    #[serde(rename = "trustDomainBundle", default)]
    trust_domain_bundle: Option<serde_json::Value>,
    #[serde(rename = "trustDomainBundleFormat", default)]
    trust_domain_bundle_format: String,
}

/// A relationship for the API. The bundle's trust domain is the endpoint SVID's for
/// `https_spiffe`, else the partner's, as in SPIRE.
fn relationship(
    trust_domain: &str,
    url: &str,
    profile: &str,
    endpoint_spiffe_id: &str,
    bundle: Option<(Vec<u8>, &str)>,
) -> anyhow::Result<types::FederationRelationship> {
    use types::federation_relationship::BundleEndpointProfile as Profile;
    anyhow::ensure!(!trust_domain.is_empty(), "trust domain is required");
    anyhow::ensure!(!url.is_empty(), "bundle endpoint URL is required");
    let mut bundle_domain = trust_domain.trim_start_matches("spiffe://").to_owned();
    let profile = match profile {
        "https_web" => Profile::HttpsWeb(types::HttpsWebProfile {}),
        "https_spiffe" => {
            anyhow::ensure!(
                !endpoint_spiffe_id.is_empty(),
                "endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set"
            );
            let id = identity::SpiffeId::parse(endpoint_spiffe_id)
                .with_context(|| format!("cannot parse bundle endpoint SPIFFE ID {endpoint_spiffe_id:?}"))?;
            bundle_domain = id.trust_domain().name().to_owned();
            Profile::HttpsSpiffe(types::HttpsspiffeProfile { endpoint_spiffe_id: endpoint_spiffe_id.to_owned() })
        }
        other => anyhow::bail!("unknown bundle endpoint profile type: {other:?}"),
    };
    let trust_domain_bundle = match bundle {
        Some((bytes, format)) => Some(bundle_from_file(&bundle_domain, &bytes, format)?),
        None => None,
    };
    Ok(types::FederationRelationship {
        trust_domain: trust_domain.to_owned(),
        bundle_endpoint_url: url.to_owned(),
        bundle_endpoint_profile: Some(profile),
        trust_domain_bundle,
    })
}

fn relationships(args: RelationshipArgs) -> anyhow::Result<Vec<types::FederationRelationship>> {
    if let Some(path) = &args.data {
        let flags_given = args.trust_domain.is_some()
            || args.bundle_endpoint_url.is_some()
            || args.bundle_endpoint_profile.is_some()
            || args.endpoint_spiffe_id.is_some()
            || args.trust_domain_bundle_path.is_some();
        anyhow::ensure!(!flags_given, "cannot use other flags to specify relationship fields when 'data' flag is set");
        let text = read_input(path)?;
        let file: DataFile = serde_json::from_slice(&text).with_context(|| format!("{}", path.display()))?;
        return file
            .relationships
            .iter()
            .map(|r| {
                let format =
                    if r.trust_domain_bundle_format.is_empty() { "pem" } else { &r.trust_domain_bundle_format };
                let bundle = match &r.trust_domain_bundle {
                    None => None,
                    Some(serde_json::Value::String(pem)) if format == "pem" => Some((pem.clone().into_bytes(), format)),
                    Some(value) if format == "spiffe" => Some((serde_json::to_vec(value)?, format)),
                    Some(_) => anyhow::bail!("trustDomainBundle does not match trustDomainBundleFormat {format:?}"),
                };
                relationship(
                    &r.trust_domain,
                    &r.bundle_endpoint_url,
                    &r.bundle_endpoint_profile,
                    &r.endpoint_spiffe_id,
                    bundle,
                )
            })
            .collect();
    }
    let bundle = match &args.trust_domain_bundle_path {
        Some(path) => Some((
            std::fs::read(path).with_context(|| format!("cannot read bundle file {}", path.display()))?,
            args.trust_domain_bundle_format.as_str(),
        )),
        None => None,
    };
    Ok(vec![relationship(
        args.trust_domain.as_deref().unwrap_or_default(),
        args.bundle_endpoint_url.as_deref().unwrap_or_default(),
        args.bundle_endpoint_profile.as_deref().unwrap_or_default(),
        args.endpoint_spiffe_id.as_deref().unwrap_or_default(),
        bundle,
    )?])
}

/// A file, or standard input for `-`; at most 4 MiB.
fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    const MAX: u64 = 4 << 20;
    let mut text = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().take(MAX + 1).read_to_end(&mut text)?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .take(MAX + 1)
            .read_to_end(&mut text)?;
    }
    anyhow::ensure!(text.len() as u64 <= MAX, "{} is larger than 4 MiB", path.display());
    Ok(text)
}

/// Refresh states by trust domain.
type Refreshes = BTreeMap<String, BundleRefresh>;

fn refresh_json(r: &BundleRefresh) -> serde_json::Value {
    serde_json::json!({
        "last_attempt": r.last_attempt,
        "last_success": r.last_success,
        "next_due": r.next_due,
        "last_error": r.last_error,
        "failures": r.failures,
        "bundle_sequence": r.bundle_sequence,
    })
}

/// Unix seconds as RFC 3339, or `never`.
fn when(unix: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) if unix > 0 => t.format(&Rfc3339).unwrap_or_else(|_| unix.to_string()),
        _ => "never".to_owned(),
    }
}

fn print_refresh(r: &BundleRefresh) {
    println!("Last refresh attempt      : {}", when(r.last_attempt));
    println!("Last successful refresh   : {}", when(r.last_success));
    println!("Next refresh due          : {}", if r.next_due > 0 { when(r.next_due) } else { "now".to_owned() });
    if r.last_success > 0 {
        println!("Bundle sequence           : {}", r.bundle_sequence);
    }
    if !r.last_error.is_empty() {
        println!("Last error                : {} ({} failures in a row)", r.last_error, r.failures);
    }
}

fn to_json(r: &types::FederationRelationship) -> serde_json::Value {
    use types::federation_relationship::BundleEndpointProfile as Profile;
    let (profile, endpoint) = match &r.bundle_endpoint_profile {
        Some(Profile::HttpsWeb(_)) => ("https_web", None),
        Some(Profile::HttpsSpiffe(p)) => ("https_spiffe", Some(p.endpoint_spiffe_id.clone())),
        None => ("", None),
    };
    serde_json::json!({
        "trust_domain": r.trust_domain,
        "bundle_endpoint_url": r.bundle_endpoint_url,
        "bundle_endpoint_profile": profile,
        "endpoint_spiffe_id": endpoint,
        "bundle_sequence_number": r.trust_domain_bundle.as_ref().map(|b| b.sequence_number),
        "bundle_x509_authorities": r.trust_domain_bundle.as_ref().map(|b| b.x509_authorities.len()),
    })
}

fn print(relationships: &[types::FederationRelationship], refreshes: &Refreshes, output: Output) {
    use types::federation_relationship::BundleEndpointProfile as Profile;
    if let Output::Json = output {
        let list: Vec<_> = relationships
            .iter()
            .map(|r| {
                let mut json = to_json(r);
                if let Some(refresh) = refreshes.get(&r.trust_domain) {
                    json["refresh"] = refresh_json(refresh);
                }
                json
            })
            .collect();
        println!("{}", serde_json::json!({ "federation_relationships": list }));
        return;
    }
    if relationships.len() != 1 {
        println!("Found {} federation relationships\n", relationships.len());
    }
    for r in relationships {
        println!("Trust domain              : {}", r.trust_domain);
        println!("Bundle endpoint URL       : {}", r.bundle_endpoint_url);
        match &r.bundle_endpoint_profile {
            Some(Profile::HttpsWeb(_)) => println!("Bundle endpoint profile   : https_web"),
            Some(Profile::HttpsSpiffe(p)) => {
                println!("Bundle endpoint profile   : https_spiffe");
                println!("Endpoint SPIFFE ID        : {}", p.endpoint_spiffe_id);
            }
            None => {}
        }
        if let Some(refresh) = refreshes.get(&r.trust_domain) {
            print_refresh(refresh);
        }
        println!();
    }
}

/// The refresh states the cluster recorded (one trust domain's, or all when `trust_domain`
/// is empty).
async fn refreshes(channel: admin_channel::AdminChannel, trust_domain: String) -> anyhow::Result<Refreshes> {
    let answer = FederationStatusClient::new(channel)
        .list_refreshes(ListRefreshesRequest { trust_domain })
        .await
        .map_err(crate::status_error)?;
    Ok(answer.into_inner().refreshes.into_iter().map(|r| (r.trust_domain.clone(), r)).collect())
}

/// A batch's answer: the first refusal as the error, else the relationships written.
fn print_results(
    results: Vec<(Option<types::Status>, Option<types::FederationRelationship>)>,
    output: Output,
) -> anyhow::Result<()> {
    first_refusal(results.iter().map(|(status, _)| status.clone()))?;
    print(&results.into_iter().filter_map(|(_, r)| r).collect::<Vec<_>>(), &Refreshes::new(), output);
    Ok(())
}

pub async fn federation(command: FederationCommand, socket_path: &Path, output: Output) -> anyhow::Result<()> {
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let mut client = TrustDomainClient::new(channel.clone());
    match command {
        FederationCommand::Create(args) => {
            let request = pb::BatchCreateFederationRelationshipRequest {
                federation_relationships: relationships(args)?,
                output_mask: None,
            };
            let answer = client.batch_create_federation_relationship(request).await.map_err(crate::status_error)?;
            let results = answer.into_inner().results.into_iter().map(|r| (r.status, r.federation_relationship));
            print_results(results.collect(), output)?;
        }
        FederationCommand::Update(args) => {
            let request = pb::BatchUpdateFederationRelationshipRequest {
                federation_relationships: relationships(args)?,
                input_mask: None,
                output_mask: None,
            };
            let answer = client.batch_update_federation_relationship(request).await.map_err(crate::status_error)?;
            let results = answer.into_inner().results.into_iter().map(|r| (r.status, r.federation_relationship));
            print_results(results.collect(), output)?;
        }
        FederationCommand::List => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListFederationRelationshipsRequest { output_mask: None, page_size: 0, page_token };
                let page = client.list_federation_relationships(request).await.map_err(crate::status_error)?;
                let page = page.into_inner();
                all.extend(page.federation_relationships);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print(&all, &refreshes(channel, String::new()).await?, output);
        }
        FederationCommand::Show { trust_domain } => {
            let request = pb::GetFederationRelationshipRequest { trust_domain, output_mask: None };
            let found = client.get_federation_relationship(request).await.map_err(crate::status_error)?.into_inner();
            let state = refreshes(channel, found.trust_domain.clone()).await?;
            print(&[found], &state, output);
        }
        FederationCommand::Delete { id } => {
            let request = pb::BatchDeleteFederationRelationshipRequest { trust_domains: vec![id] };
            let results = client
                .batch_delete_federation_relationship(request)
                .await
                .map_err(crate::status_error)?
                .into_inner()
                .results;
            first_refusal(results.iter().map(|r| r.status.clone()))?;
            println!("federation relationship deleted.");
        }
        FederationCommand::Refresh { id } => {
            client.refresh_bundle(pb::RefreshBundleRequest { trust_domain: id }).await.map_err(crate::status_error)?;
            println!("Bundle refreshed");
        }
    }
    Ok(())
}
