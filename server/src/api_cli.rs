//! CLI commands that call SPIRE's server APIs over the admin socket: `bundle show`,
//! `x509 mint`, `jwt mint`.

use std::path::{Path, PathBuf};

use crate::admin_channel;
use anyhow::Context;
use identity::bundle::to_pem_certificates;
use identity::crypto::{KeyType, LocalKey};
use identity::SpiffeId;
use proto::spire::api::server::bundle::v1::bundle_client::BundleClient;
use proto::spire::api::server::bundle::v1::GetBundleRequest;
use proto::spire::api::server::svid::v1::svid_client::SvidClient;
use proto::spire::api::server::svid::v1::{MintJwtsvidRequest, MintX509svidRequest};
use proto::spire::api::types::Spiffeid;

use crate::Output;

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

fn x509_pem(authorities: &[proto::spire::api::types::X509Certificate]) -> String {
    to_pem_certificates(authorities.iter().map(|a| a.asn1.as_slice()))
}

/// `bundle show`: the local bundle's X.509 authorities as PEM, or the whole bundle as JSON.
/// `bundle show`: the local bundle as PEM, as `--output json`, or (`--format spiffe`) as
/// the SPIFFE bundle document a partner's `trust_domain_bundle` takes.
pub async fn bundle_show(socket_path: &Path, format: &str, output: Output) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(format, "pem" | "spiffe"), "--format {format:?}: use pem or spiffe");
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let bundle = BundleClient::new(channel)
        .get_bundle(GetBundleRequest { output_mask: None })
        .await
        .map_err(crate::status_error)?
        .into_inner();
    if format == "spiffe" {
        let stored = server::api::convert::bundle_from_pb(&bundle, "bundle").map_err(crate::status_error)?;
        let mut document = stored.to_bundle()?;
        document.sequence_number = bundle.sequence_number;
        println!("{}", document.to_spiffe_json());
        return Ok(());
    }
    match output {
        Output::Pretty => {
            print!("{}", x509_pem(&bundle.x509_authorities));
        }
        Output::Json => {
            let x509: Vec<String> =
                bundle.x509_authorities.iter().map(|a| to_pem_certificates([a.asn1.as_slice()])).collect();
            let jwt: Vec<_> = bundle
                .jwt_authorities
                .iter()
                .map(|k| serde_json::json!({ "key_id": k.key_id, "expires_at": k.expires_at, "tainted": k.tainted }))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "trust_domain": bundle.trust_domain, "sequence_number": bundle.sequence_number, "x509_authorities": x509, "jwt_authorities": jwt })
            );
        }
    }
    Ok(())
}

/// `x509 mint`: a key made here, a CSR for `spiffe_id`, and the SVID the server signs.
pub async fn x509_mint(
    socket_path: &Path,
    spiffe_id: &str,
    ttl: i32,
    write: Option<PathBuf>,
    output: Output,
) -> anyhow::Result<()> {
    let id = SpiffeId::parse(spiffe_id).with_context(|| format!("--spiffe-id {spiffe_id:?}"))?;
    let key = LocalKey::generate(KeyType::EcP256)?;
    let csr = identity::x509::create_csr(&key, Some(&id))?;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let svid = SvidClient::new(channel.clone())
        .mint_x509svid(MintX509svidRequest { csr, ttl })
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .svid
        .context("the server returned no SVID")?;
    let bundle = BundleClient::new(channel)
        .get_bundle(GetBundleRequest { output_mask: None })
        .await
        .map_err(crate::status_error)?
        .into_inner();
    let chain = to_pem_certificates(svid.cert_chain.iter().map(Vec::as_slice));
    let key_pem = pem("PRIVATE KEY", &key.to_pkcs8_der()?);
    let bundle_pem = x509_pem(&bundle.x509_authorities);
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
        Output::Json => println!(
            "{}",
            serde_json::json!({ "spiffe_id": id.to_string(), "expires_at": svid.expires_at, "svid": chain, "key": key_pem, "bundle": bundle_pem })
        ),
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
pub async fn jwt_mint(
    socket_path: &Path,
    spiffe_id: &str,
    audience: Vec<String>,
    ttl: i32,
    output: Output,
) -> anyhow::Result<()> {
    let id = SpiffeId::parse(spiffe_id).with_context(|| format!("--spiffe-id {spiffe_id:?}"))?;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let request = MintJwtsvidRequest {
        id: Some(Spiffeid { trust_domain: id.trust_domain().name().to_owned(), path: id.path().to_owned() }),
        audience,
        ttl,
    };
    let svid = SvidClient::new(channel)
        .mint_jwtsvid(request)
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .svid
        .context("the server returned no SVID")?;
    match output {
        Output::Pretty => println!("{}", svid.token),
        Output::Json => println!(
            "{}",
            serde_json::json!({ "token": svid.token, "issued_at": svid.issued_at, "expires_at": svid.expires_at })
        ),
    }
    Ok(())
}

/// `entry …` commands.
#[derive(clap::Subcommand)]
pub enum EntryCommand {
    /// Creates a registration entry.
    Create {
        #[command(flatten)]
        fields: EntryFields,
        /// Choose the entry id instead of letting the server pick one.
        #[arg(long)]
        entry_id: Option<String>,
    },
    /// Changes every field of an entry to the values given (as SPIRE's `entry update`).
    Update {
        #[arg(long)]
        entry_id: String,
        #[command(flatten)]
        fields: EntryFields,
    },
    /// Shows entries, all or those matching the filters.
    Show {
        #[arg(long)]
        entry_id: Option<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long)]
        parent_id: Option<String>,
        /// `type:value`; repeat for several. Entries whose selectors include all of them.
        #[arg(long)]
        selector: Vec<String>,
    },
    /// Counts entries.
    Count,
    /// Deletes an entry.
    Delete {
        #[arg(long)]
        entry_id: String,
    },
}

#[derive(clap::Args)]
pub struct EntryFields {
    #[arg(long)]
    spiffe_id: String,
    #[arg(long)]
    parent_id: String,
    /// `type:value`, e.g. `unix:uid:1000`; repeat for several.
    #[arg(long, required = true)]
    selector: Vec<String>,
    /// X.509-SVID TTL in seconds (0: the server's default).
    #[arg(long, default_value_t = 0)]
    x509_svid_ttl: i32,
    /// JWT-SVID TTL in seconds (0: the server's default).
    #[arg(long, default_value_t = 0)]
    jwt_svid_ttl: i32,
    #[arg(long)]
    dns_name: Vec<String>,
    #[arg(long)]
    federates_with: Vec<String>,
    #[arg(long)]
    admin: bool,
    #[arg(long)]
    downstream: bool,
    #[arg(long)]
    hint: Option<String>,
}

fn id_pb(text: &str, flag: &str) -> anyhow::Result<Spiffeid> {
    let id = SpiffeId::parse(text).with_context(|| format!("--{flag} {text:?}"))?;
    Ok(Spiffeid { trust_domain: id.trust_domain().name().to_owned(), path: id.path().to_owned() })
}

fn selectors_pb(selectors: &[String]) -> anyhow::Result<Vec<proto::spire::api::types::Selector>> {
    selectors
        .iter()
        .map(|s| {
            let parsed = identity::Selector::parse(s).with_context(|| format!("--selector {s:?}"))?;
            Ok(proto::spire::api::types::Selector {
                r#type: parsed.kind().to_owned(),
                value: parsed.value().to_owned(),
            })
        })
        .collect()
}

impl EntryFields {
    fn to_pb(&self, id: String) -> anyhow::Result<proto::spire::api::types::Entry> {
        Ok(proto::spire::api::types::Entry {
            id,
            spiffe_id: Some(id_pb(&self.spiffe_id, "spiffe-id")?),
            parent_id: Some(id_pb(&self.parent_id, "parent-id")?),
            selectors: selectors_pb(&self.selector)?,
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            dns_names: self.dns_name.clone(),
            federates_with: self.federates_with.clone(),
            admin: self.admin,
            downstream: self.downstream,
            hint: self.hint.clone().unwrap_or_default(),
            ..Default::default()
        })
    }
}

fn entry_json(e: &proto::spire::api::types::Entry) -> serde_json::Value {
    let id =
        |s: &Option<Spiffeid>| s.as_ref().map(|s| format!("spiffe://{}{}", s.trust_domain, s.path)).unwrap_or_default();
    serde_json::json!({
        "id": e.id, "spiffe_id": id(&e.spiffe_id), "parent_id": id(&e.parent_id),
        "selectors": e.selectors.iter().map(|s| format!("{}:{}", s.r#type, s.value)).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl, "jwt_svid_ttl": e.jwt_svid_ttl, "federates_with": e.federates_with,
        "dns_names": e.dns_names, "admin": e.admin, "downstream": e.downstream, "expires_at": e.expires_at,
        "hint": e.hint, "revision_number": e.revision_number, "created_at": e.created_at,
    })
}

fn print_entries(entries: &[proto::spire::api::types::Entry], output: Output) {
    match output {
        Output::Json => {
            println!("{}", serde_json::json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() }))
        }
        Output::Pretty => {
            println!("Found {} entr{}", entries.len(), if entries.len() == 1 { "y" } else { "ies" });
            for e in entries {
                let j = entry_json(e);
                println!("Entry ID         : {}", e.id);
                println!("SPIFFE ID        : {}", j["spiffe_id"].as_str().unwrap_or_default());
                println!("Parent ID        : {}", j["parent_id"].as_str().unwrap_or_default());
                println!("Revision         : {}", e.revision_number);
                println!(
                    "X509-SVID TTL    : {}",
                    if e.x509_svid_ttl == 0 { "default".to_string() } else { e.x509_svid_ttl.to_string() }
                );
                println!(
                    "JWT-SVID TTL     : {}",
                    if e.jwt_svid_ttl == 0 { "default".to_string() } else { e.jwt_svid_ttl.to_string() }
                );
                for s in &e.selectors {
                    println!("Selector         : {}:{}", s.r#type, s.value);
                }
                for td in &e.federates_with {
                    println!("FederatesWith    : {td}");
                }
                for dns in &e.dns_names {
                    println!("DNS name         : {dns}");
                }
                if e.admin {
                    println!("Admin            : true");
                }
                if e.downstream {
                    println!("Downstream       : true");
                }
                println!();
            }
        }
    }
}

/// Fails with the first refused item's status, the way the batch APIs report them.
pub(crate) fn first_refusal(
    statuses: impl Iterator<Item = Option<proto::spire::api::types::Status>>,
) -> anyhow::Result<()> {
    for status in statuses.flatten() {
        if status.code != 0 {
            anyhow::bail!("{}: {}", tonic::Code::from_i32(status.code), status.message);
        }
    }
    Ok(())
}

pub async fn entry(command: EntryCommand, socket_path: &Path, output: Output) -> anyhow::Result<()> {
    use proto::spire::api::server::entry::v1 as pb;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let mut client = pb::entry_client::EntryClient::new(channel);
    match command {
        EntryCommand::Create { fields, entry_id } => {
            let entry = fields.to_pb(entry_id.unwrap_or_default())?;
            let response = client
                .batch_create_entry(pb::BatchCreateEntryRequest { entries: vec![entry], output_mask: None })
                .await
                .map_err(crate::status_error)?
                .into_inner();
            first_refusal(response.results.iter().map(|r| r.status.clone()))?;
            let created: Vec<_> = response.results.into_iter().filter_map(|r| r.entry).collect();
            print_entries(&created, output);
        }
        EntryCommand::Update { entry_id, fields } => {
            let entry = fields.to_pb(entry_id)?;
            let response = client
                .batch_update_entry(pb::BatchUpdateEntryRequest {
                    entries: vec![entry],
                    input_mask: None,
                    output_mask: None,
                })
                .await
                .map_err(crate::status_error)?
                .into_inner();
            first_refusal(response.results.iter().map(|r| r.status.clone()))?;
            let updated: Vec<_> = response.results.into_iter().filter_map(|r| r.entry).collect();
            print_entries(&updated, output);
        }
        EntryCommand::Show { entry_id: Some(id), .. } => {
            let entry = client
                .get_entry(pb::GetEntryRequest { id, output_mask: None })
                .await
                .map_err(crate::status_error)?
                .into_inner();
            print_entries(&[entry], output);
        }
        EntryCommand::Show { entry_id: None, spiffe_id, parent_id, selector } => {
            let filter = pb::list_entries_request::Filter {
                by_spiffe_id: spiffe_id.as_deref().map(|s| id_pb(s, "spiffe-id")).transpose()?,
                by_parent_id: parent_id.as_deref().map(|s| id_pb(s, "parent-id")).transpose()?,
                by_selectors: if selector.is_empty() {
                    None
                } else {
                    Some(proto::spire::api::types::SelectorMatch {
                        selectors: selectors_pb(&selector)?,
                        r#match: proto::spire::api::types::selector_match::MatchBehavior::MatchSuperset as i32,
                    })
                },
                ..Default::default()
            };
            let (mut entries, mut page_token) = (Vec::new(), String::new());
            loop {
                let page = client
                    .list_entries(pb::ListEntriesRequest {
                        filter: Some(filter.clone()),
                        output_mask: None,
                        page_size: 500,
                        page_token,
                    })
                    .await
                    .map_err(crate::status_error)?
                    .into_inner();
                entries.extend(page.entries);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print_entries(&entries, output);
        }
        EntryCommand::Count => {
            let count = client
                .count_entries(pb::CountEntriesRequest { filter: None })
                .await
                .map_err(crate::status_error)?
                .into_inner()
                .count;
            match output {
                Output::Json => println!("{}", serde_json::json!({ "count": count })),
                Output::Pretty => println!("{count} registration entr{}", if count == 1 { "y" } else { "ies" }),
            }
        }
        EntryCommand::Delete { entry_id } => {
            let response = client
                .batch_delete_entry(pb::BatchDeleteEntryRequest { ids: vec![entry_id.clone()] })
                .await
                .map_err(crate::status_error)?
                .into_inner();
            first_refusal(response.results.iter().map(|r| r.status.clone()))?;
            match output {
                Output::Json => println!("{}", serde_json::json!({ "deleted": entry_id })),
                Output::Pretty => println!("Deleted entry with ID: {entry_id}"),
            }
        }
    }
    Ok(())
}

/// `token …` commands.
#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Creates a one-time join token for an agent.
    Generate {
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 600)]
        ttl: i32,
        /// Also make the token's agent this SPIFFE ID (a node alias entry).
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

pub async fn token(command: TokenCommand, socket_path: &Path, output: Output) -> anyhow::Result<()> {
    use proto::spire::api::server::agent::v1 as pb;
    let TokenCommand::Generate { ttl, spiffe_id } = command;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let agent_id = spiffe_id.as_deref().map(|s| id_pb(s, "spiffe-id")).transpose()?;
    let token = pb::agent_client::AgentClient::new(channel)
        .create_join_token(pb::CreateJoinTokenRequest { ttl, token: String::new(), agent_id })
        .await
        .map_err(crate::status_error)?
        .into_inner();
    match output {
        Output::Json => println!("{}", serde_json::json!({ "value": token.value, "expires_at": token.expires_at })),
        Output::Pretty => println!("Token: {}", token.value),
    }
    Ok(())
}

/// `agent …` commands.
#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// Lists attested agents.
    List,
    /// Shows one agent.
    Show {
        #[arg(long)]
        spiffe_id: String,
    },
    /// Counts attested agents.
    Count,
    /// Evicts an agent: it must attest again.
    Evict {
        #[arg(long)]
        spiffe_id: String,
    },
    /// Bans an agent: it cannot renew or attest again until evicted.
    Ban {
        #[arg(long)]
        spiffe_id: String,
    },
}

fn print_agents(agents: &[proto::spire::api::types::Agent], output: Output) {
    let json = |a: &proto::spire::api::types::Agent| {
        serde_json::json!({
            "id": a.id.as_ref().map(|i| format!("spiffe://{}{}", i.trust_domain, i.path)).unwrap_or_default(),
            "attestation_type": a.attestation_type, "serial_number": a.x509svid_serial_number,
            "expires_at": a.x509svid_expires_at, "banned": a.banned, "can_reattest": a.can_reattest,
            "selectors": a.selectors.iter().map(|s| format!("{}:{}", s.r#type, s.value)).collect::<Vec<_>>(),
        })
    };
    match output {
        Output::Json => println!("{}", serde_json::json!({ "agents": agents.iter().map(json).collect::<Vec<_>>() })),
        Output::Pretty => {
            println!("Found {} attested agent{}:", agents.len(), if agents.len() == 1 { "" } else { "s" });
            for a in agents {
                let j = json(a);
                println!("\nSPIFFE ID         : {}", j["id"].as_str().unwrap_or_default());
                println!("Attestation type  : {}", a.attestation_type);
                println!("Expiration time   : {}", a.x509svid_expires_at);
                println!("Serial number     : {}", a.x509svid_serial_number);
                println!("Banned            : {}", a.banned);
            }
        }
    }
}

pub async fn agent(command: AgentCommand, socket_path: &Path, output: Output) -> anyhow::Result<()> {
    use proto::spire::api::server::agent::v1 as pb;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let mut client = pb::agent_client::AgentClient::new(channel);
    match command {
        AgentCommand::List => {
            let agents = client
                .list_agents(pb::ListAgentsRequest::default())
                .await
                .map_err(crate::status_error)?
                .into_inner()
                .agents;
            print_agents(&agents, output);
        }
        AgentCommand::Show { spiffe_id } => {
            let agent = client
                .get_agent(pb::GetAgentRequest { id: Some(id_pb(&spiffe_id, "spiffe-id")?), output_mask: None })
                .await
                .map_err(crate::status_error)?
                .into_inner();
            print_agents(&[agent], output);
        }
        AgentCommand::Count => {
            let count = client
                .count_agents(pb::CountAgentsRequest { filter: None })
                .await
                .map_err(crate::status_error)?
                .into_inner()
                .count;
            match output {
                Output::Json => println!("{}", serde_json::json!({ "count": count })),
                Output::Pretty => println!("{count} attested agent{}", if count == 1 { "" } else { "s" }),
            }
        }
        AgentCommand::Evict { spiffe_id } => {
            client
                .delete_agent(pb::DeleteAgentRequest { id: Some(id_pb(&spiffe_id, "spiffe-id")?) })
                .await
                .map_err(crate::status_error)?;
            println!("Agent evicted successfully");
        }
        AgentCommand::Ban { spiffe_id } => {
            client
                .ban_agent(pb::BanAgentRequest { id: Some(id_pb(&spiffe_id, "spiffe-id")?) })
                .await
                .map_err(crate::status_error)?;
            println!("Agent banned successfully");
        }
    }
    Ok(())
}

/// `localauthority x509|jwt …`.
#[derive(clap::Subcommand)]
pub enum LocalAuthorityCommand {
    /// X.509 CA authorities.
    X509 {
        #[command(subcommand)]
        action: AuthorityAction,
    },
    /// JWT signing authorities.
    Jwt {
        #[command(subcommand)]
        action: AuthorityAction,
    },
}

#[derive(clap::Subcommand)]
pub enum AuthorityAction {
    /// The active, prepared and old authorities.
    Show,
    /// Prepares the next authority now.
    Prepare,
    /// Activates the prepared authority.
    Activate {
        /// JWT key ids are base64url and may start with `-`.
        #[arg(long, allow_hyphen_values = true)]
        authority_id: String,
    },
    /// Taints the old authority: what it signed is replaced.
    Taint {
        /// JWT key ids are base64url and may start with `-`.
        #[arg(long, allow_hyphen_values = true)]
        authority_id: String,
    },
    /// Revokes the tainted authority: it leaves the bundle.
    Revoke {
        /// JWT key ids are base64url and may start with `-`.
        #[arg(long, allow_hyphen_values = true)]
        authority_id: String,
    },
}

#[derive(clap::Subcommand)]
pub enum UpstreamAuthorityCommand {
    /// Taints the upstream authority that signed the old X.509 authority: agents replace
    /// what chains to it.
    Taint {
        /// Its subject key id, hex (as `localauthority x509 show` prints it).
        #[arg(long)]
        subject_key_id: String,
    },
    /// Revokes a tainted upstream authority: it leaves the bundle.
    Revoke {
        #[arg(long)]
        subject_key_id: String,
    },
}

pub async fn upstream_authority(
    command: UpstreamAuthorityCommand,
    socket_path: &Path,
    output: Output,
) -> anyhow::Result<()> {
    use proto::spire::api::server::localauthority::v1 as pb;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let mut client = pb::local_authority_client::LocalAuthorityClient::new(channel);
    let e = crate::status_error;
    let (verb, key_id) = match command {
        UpstreamAuthorityCommand::Taint { subject_key_id } => (
            "tainted",
            client
                .taint_x509_upstream_authority(pb::TaintX509UpstreamAuthorityRequest { subject_key_id })
                .await
                .map_err(e)?
                .into_inner()
                .upstream_authority_subject_key_id,
        ),
        UpstreamAuthorityCommand::Revoke { subject_key_id } => (
            "revoked",
            client
                .revoke_x509_upstream_authority(pb::RevokeX509UpstreamAuthorityRequest { subject_key_id })
                .await
                .map_err(e)?
                .into_inner()
                .upstream_authority_subject_key_id,
        ),
    };
    match output {
        Output::Json => println!("{}", serde_json::json!({ verb: key_id })),
        Output::Pretty => println!("{verb} upstream authority {key_id}"),
    }
    Ok(())
}

pub async fn local_authority(command: LocalAuthorityCommand, socket_path: &Path, output: Output) -> anyhow::Result<()> {
    use proto::spire::api::server::localauthority::v1 as pb;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let mut client = pb::local_authority_client::LocalAuthorityClient::new(channel.clone());
    let state = |s: Option<pb::AuthorityState>| {
        s.map(|s| serde_json::json!({ "authority_id": s.authority_id, "expires_at": s.expires_at, "upstream_authority_subject_key_id": s.upstream_authority_subject_key_id }))
    };
    let e = crate::status_error;
    let value = match command {
        LocalAuthorityCommand::X509 { action } => match action {
            AuthorityAction::Show => {
                let r =
                    client.get_x509_authority_state(pb::GetX509AuthorityStateRequest {}).await.map_err(e)?.into_inner();
                let mut shown = serde_json::json!({ "active": state(r.active), "prepared": state(r.prepared), "old": state(r.old) });
                // A nested cluster's calls to its upstream, as its leader last recorded them.
                let upstream = proto::admin::upstream_status_client::UpstreamStatusClient::new(channel)
                    .get_upstream_status(proto::admin::GetUpstreamStatusRequest {})
                    .await
                    .map_err(e)?
                    .into_inner();
                if upstream.last_success > 0 || upstream.last_error_at > 0 {
                    shown["upstream"] = serde_json::json!({
                        "last_success": upstream.last_success,
                        "last_error_at": upstream.last_error_at,
                        "last_error": upstream.last_error,
                    });
                }
                shown
            }
            AuthorityAction::Prepare => {
                serde_json::json!({ "prepared": state(client.prepare_x509_authority(pb::PrepareX509AuthorityRequest {}).await.map_err(e)?.into_inner().prepared_authority) })
            }
            AuthorityAction::Activate { authority_id } => {
                serde_json::json!({ "activated": state(client.activate_x509_authority(pb::ActivateX509AuthorityRequest { authority_id }).await.map_err(e)?.into_inner().activated_authority) })
            }
            AuthorityAction::Taint { authority_id } => {
                serde_json::json!({ "tainted": state(client.taint_x509_authority(pb::TaintX509AuthorityRequest { authority_id }).await.map_err(e)?.into_inner().tainted_authority) })
            }
            AuthorityAction::Revoke { authority_id } => {
                serde_json::json!({ "revoked": state(client.revoke_x509_authority(pb::RevokeX509AuthorityRequest { authority_id }).await.map_err(e)?.into_inner().revoked_authority) })
            }
        },
        LocalAuthorityCommand::Jwt { action } => match action {
            AuthorityAction::Show => {
                let r =
                    client.get_jwt_authority_state(pb::GetJwtAuthorityStateRequest {}).await.map_err(e)?.into_inner();
                serde_json::json!({ "active": state(r.active), "prepared": state(r.prepared), "old": state(r.old) })
            }
            AuthorityAction::Prepare => {
                serde_json::json!({ "prepared": state(client.prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {}).await.map_err(e)?.into_inner().prepared_authority) })
            }
            AuthorityAction::Activate { authority_id } => {
                serde_json::json!({ "activated": state(client.activate_jwt_authority(pb::ActivateJwtAuthorityRequest { authority_id }).await.map_err(e)?.into_inner().activated_authority) })
            }
            AuthorityAction::Taint { authority_id } => {
                serde_json::json!({ "tainted": state(client.taint_jwt_authority(pb::TaintJwtAuthorityRequest { authority_id }).await.map_err(e)?.into_inner().tainted_authority) })
            }
            AuthorityAction::Revoke { authority_id } => {
                serde_json::json!({ "revoked": state(client.revoke_jwt_authority(pb::RevokeJwtAuthorityRequest { authority_id }).await.map_err(e)?.into_inner().revoked_authority) })
            }
        },
    };
    match output {
        Output::Json => println!("{value}"),
        Output::Pretty => {
            if let Some(object) = value.as_object() {
                for (name, state) in object.iter().filter(|(name, _)| *name != "upstream") {
                    match state {
                        serde_json::Value::Null => println!("{name:<10} -"),
                        s => {
                            let upstream = s["upstream_authority_subject_key_id"]
                                .as_str()
                                .filter(|u| !u.is_empty())
                                .map(|u| format!("  signed by upstream {u}"))
                                .unwrap_or_default();
                            println!(
                                "{name:<10} {}  expires {}{upstream}",
                                s["authority_id"].as_str().unwrap_or_default(),
                                s["expires_at"]
                            );
                        }
                    }
                }
                if let Some(upstream) = object.get("upstream") {
                    println!("upstream   last success {}", upstream["last_success"]);
                    if upstream["last_error_at"].as_i64() > upstream["last_success"].as_i64() {
                        println!("           last error at {}: {}", upstream["last_error_at"], upstream["last_error"]);
                    }
                }
            }
        }
    }
    Ok(())
}

/// `healthcheck`: gRPC health over the admin socket.
pub async fn healthcheck(socket_path: &Path) -> anyhow::Result<()> {
    use proto::health::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let channel = admin_channel::connect(socket_path)
        .await
        .with_context(|| format!("server is unhealthy: cannot reach {}", socket_path.display()))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        println!("Server is healthy.");
        Ok(())
    } else {
        anyhow::bail!("server is unhealthy: it belongs to no cluster or the cluster has no leader")
    }
}

/// `bundle list`: the federated bundles.
pub async fn bundle_list(socket_path: &Path, output: Output) -> anyhow::Result<()> {
    use proto::spire::api::server::bundle::v1::ListFederatedBundlesRequest;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let bundles = BundleClient::new(channel)
        .list_federated_bundles(ListFederatedBundlesRequest::default())
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .bundles;
    match output {
        Output::Json => {
            let list: Vec<_> = bundles.iter().map(|b| serde_json::json!({ "trust_domain": b.trust_domain, "x509_authorities": b.x509_authorities.len(), "jwt_authorities": b.jwt_authorities.len(), "sequence_number": b.sequence_number })).collect();
            println!("{}", serde_json::json!({ "bundles": list }));
        }
        Output::Pretty => {
            for b in &bundles {
                println!(
                    "****************************************\n* {}\n****************************************",
                    b.trust_domain
                );
                print!("{}", x509_pem(&b.x509_authorities));
            }
        }
    }
    Ok(())
}

/// A bundle of `trust_domain` from a file's bytes, `pem` (X.509 authorities) or `spiffe`
/// (a SPIFFE bundle document), as the API takes it.
pub fn bundle_from_file(
    trust_domain: &str,
    bytes: &[u8],
    format: &str,
) -> anyhow::Result<proto::spire::api::types::Bundle> {
    use proto::spire::api::types::{Bundle, JwtKey, X509Certificate};
    let td = identity::TrustDomain::parse(trust_domain.trim_start_matches("spiffe://"))
        .with_context(|| format!("trust domain {trust_domain:?}"))?;
    Ok(match format {
        "pem" => Bundle {
            trust_domain: td.name().to_owned(),
            x509_authorities: identity::bundle::parse_pem_certificates(&String::from_utf8_lossy(bytes))?
                .into_iter()
                .map(|asn1| X509Certificate { asn1, tainted: false })
                .collect(),
            ..Default::default()
        },
        "spiffe" => {
            let parsed = identity::bundle::Bundle::from_spiffe_json(td.clone(), bytes)?;
            Bundle {
                trust_domain: td.name().to_owned(),
                x509_authorities: parsed
                    .x509_authorities()
                    .iter()
                    .map(|a| X509Certificate { asn1: a.der.clone(), tainted: false })
                    .collect(),
                jwt_authorities: parsed
                    .jwt_authorities()
                    .iter()
                    .map(|k| JwtKey {
                        public_key: k.public_key.spki_der().to_vec(),
                        key_id: k.key_id.clone(),
                        expires_at: k.expires_at.unwrap_or(0),
                        tainted: false,
                    })
                    .collect(),
                refresh_hint: parsed.refresh_hint.map_or(0, |h| i64::try_from(h).unwrap_or(i64::MAX)),
                sequence_number: 0,
            }
        }
        other => anyhow::bail!("bundle format {other:?}: use pem or spiffe"),
    })
}

/// `bundle set`: a federated bundle from a PEM or SPIFFE bundle JSON file.
pub async fn bundle_set(socket_path: &Path, id: &str, path: &Path, format: &str) -> anyhow::Result<()> {
    use proto::spire::api::server::bundle::v1::BatchSetFederatedBundleRequest;
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bundle = bundle_from_file(id, &text, format).with_context(|| format!("--id {id:?}"))?;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let results = BundleClient::new(channel)
        .batch_set_federated_bundle(BatchSetFederatedBundleRequest { bundle: vec![bundle], output_mask: None })
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .results;
    first_refusal(results.iter().map(|r| r.status.clone()))?;
    println!("bundle set.");
    Ok(())
}

/// `bundle delete`: removes a federated bundle.
pub async fn bundle_delete(socket_path: &Path, id: &str) -> anyhow::Result<()> {
    use proto::spire::api::server::bundle::v1::BatchDeleteFederatedBundleRequest;
    let channel =
        admin_channel::connect(socket_path).await.with_context(|| format!("cannot reach {}", socket_path.display()))?;
    let results = BundleClient::new(channel)
        .batch_delete_federated_bundle(BatchDeleteFederatedBundleRequest {
            trust_domains: vec![id.to_owned()],
            mode: 0,
        })
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .results;
    first_refusal(results.iter().map(|r| r.status.clone()))?;
    println!("bundle deleted.");
    Ok(())
}
