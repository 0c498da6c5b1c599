//! `testudo-server`: `run` starts a replica; every other command talks to a running
//! replica over its admin socket.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use proto::admin::cluster_admin_client::ClusterAdminClient;
use proto::admin::{
    ClusterStatus, CreateInviteRequest, InitRequest, JoinRequest, RemoveMemberRequest, RotateCaRequest,
    SaveBackupRequest, StatusRequest, TransferLeadershipRequest,
};
use proto::unix_socket as socket;

mod admin_channel;
mod api_cli;
mod federation_cli;
mod run;

// glibc's malloc showed up high in Raft and signing profiles; mimalloc costs less per call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "testudo-server", version, about = "Testudo server: a SPIFFE identity control plane replica")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The config file `run` and `validate` read.
#[derive(Args)]
struct ConfigFile {
    /// Path to the HCL config file.
    #[arg(long)]
    config: PathBuf,
    /// Replace `$VAR` and `${VAR}` in the file with the environment's values first (as
    /// SPIRE's `-expandEnv`); a variable that is not set is an error.
    #[arg(long)]
    expand_env: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a server replica.
    Run {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Checks a config file as `run` would read it, and exits.
    Validate {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Registration entries: create, show, count, update, delete.
    Entry {
        #[command(subcommand)]
        command: api_cli::EntryCommand,
        #[command(flatten)]
        common: Common,
    },
    /// Attested agents: list, show, count, evict, ban.
    Agent {
        #[command(subcommand)]
        command: api_cli::AgentCommand,
        #[command(flatten)]
        common: Common,
    },
    /// Federation relationships: `federation create|list|show|update|delete|refresh`.
    Federation {
        #[command(subcommand)]
        command: federation_cli::FederationCommand,
        #[command(flatten)]
        common: Common,
    },
    /// Join tokens: `token generate`.
    Token {
        #[command(subcommand)]
        command: api_cli::TokenCommand,
        #[command(flatten)]
        common: Common,
    },
    /// The CA's authorities: `localauthority x509|jwt show|prepare|activate|taint|revoke`.
    Localauthority {
        #[command(subcommand)]
        command: api_cli::LocalAuthorityCommand,
        #[command(flatten)]
        common: Common,
    },
    /// Upstream authorities in the bundle: `upstreamauthority taint|revoke --subject-key-id`.
    Upstreamauthority {
        #[command(subcommand)]
        command: api_cli::UpstreamAuthorityCommand,
        #[command(flatten)]
        common: Common,
    },
    /// Checks that the server is up and part of a cluster with a leader.
    Healthcheck {
        #[command(flatten)]
        common: Common,
    },
    /// The trust bundle: `bundle show`.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
        #[command(flatten)]
        common: Common,
    },
    /// X.509-SVIDs: `x509 mint`.
    X509 {
        #[command(subcommand)]
        command: X509Command,
        #[command(flatten)]
        common: Common,
    },
    /// JWT-SVIDs: `jwt mint`.
    Jwt {
        #[command(subcommand)]
        command: JwtCommand,
        #[command(flatten)]
        common: Common,
    },
    /// Cluster life cycle: init, invite, join, status, remove, transfer.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// The running replica's admin socket (`server.socket_path`).
    #[arg(long, global = true, default_value = "/tmp/spire-server/private/api.sock")]
    socket_path: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Output {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Prints the local bundle's X.509 authorities (PEM), or the bundle as JSON.
    Show {
        /// `pem`, or `spiffe` for the SPIFFE bundle document (as the bundle endpoint serves it).
        #[arg(long, default_value = "pem")]
        format: String,
    },
    /// Lists the federated bundles.
    List,
    /// Creates or replaces a federated bundle from a file.
    Set {
        /// The federated trust domain, e.g. `spiffe://partner.org` or `partner.org`.
        #[arg(long)]
        id: String,
        #[arg(long)]
        path: PathBuf,
        /// `pem` (X.509 authorities) or `spiffe` (SPIFFE bundle JSON).
        #[arg(long, default_value = "pem")]
        format: String,
    },
    /// Deletes a federated bundle.
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum X509Command {
    /// Mints an X.509-SVID for a key made here.
    Mint {
        #[arg(long)]
        spiffe_id: String,
        /// Seconds; 0 means the server's default.
        #[arg(long, default_value_t = 0)]
        ttl: i32,
        /// Write svid.pem, key.pem and bundle.pem to this directory instead of printing.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum JwtCommand {
    /// Mints a JWT-SVID.
    Mint {
        #[arg(long)]
        spiffe_id: String,
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Seconds; 0 means the server's default.
        #[arg(long, default_value_t = 0)]
        ttl: i32,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Makes this pristine replica the sole voter of a new cluster.
    Init,
    /// Creates a one-time invite for a new replica.
    Invite {
        /// Invite lifetime in seconds (default 3600).
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// Joins this pristine replica to the cluster an invite names.
    Join {
        #[arg(long)]
        token: String,
    },
    /// Shows leader, term and each member's progress.
    Status,
    /// Removes a member.
    Remove {
        #[arg(long)]
        node_id: u64,
    },
    /// Hands leadership to a voter.
    Transfer {
        #[arg(long)]
        node_id: u64,
    },
    /// Writes the whole replicated state to a new file (on the replica's host).
    Backup {
        #[arg(long)]
        file: PathBuf,
    },
    /// Replaces the cluster CA: every member trusts a new CA, presents a certificate from
    /// it, then drops the old one (whose key every data dir held). Run again to go on with
    /// a rotation a down member held up.
    RotateCa {
        /// Seconds to wait for every member at each phase.
        #[arg(long, default_value_t = 60)]
        wait: u32,
    },
    /// Offline: creates a cluster CA for declarative formation (`cluster { peers … }`): a
    /// PEM certificate and a PEM PKCS#8 key (0600), to provision to every replica.
    NewCa {
        #[arg(long)]
        trust_domain: String,
        /// Where to write the certificate (must not exist).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the key (must not exist).
        #[arg(long)]
        key: PathBuf,
    },
    /// Offline: seeds this pristine replica from a backup as the only member of a new cluster.
    Restore {
        // The replica's config: its data_dir must hold no cluster yet.
        #[command(flatten)]
        config: ConfigFile,
        #[arg(long)]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run::run(&config.config, config.expand_env),
        Command::Validate { config } => run::validate(&config.config, config.expand_env),
        Command::Cluster { command: ClusterCommand::Restore { config, file }, .. } => {
            run::restore(&config.config, config.expand_env, &file)
        }
        Command::Cluster { command: ClusterCommand::NewCa { trust_domain, cert, key }, .. } => {
            run::new_cluster_ca(&trust_domain, &cert, &key)
        }
        Command::Cluster { command, common } => client(command, common),
        Command::Healthcheck { common } => block_on(api_cli::healthcheck(&common.socket_path)),
        Command::Localauthority { command, common } => {
            block_on(api_cli::local_authority(command, &common.socket_path, common.output))
        }
        Command::Upstreamauthority { command, common } => {
            block_on(api_cli::upstream_authority(command, &common.socket_path, common.output))
        }
        Command::Agent { command, common } => block_on(api_cli::agent(command, &common.socket_path, common.output)),
        Command::Token { command, common } => block_on(api_cli::token(command, &common.socket_path, common.output)),
        Command::Federation { command, common } => {
            block_on(federation_cli::federation(command, &common.socket_path, common.output))
        }
        Command::Entry { command, common } => block_on(api_cli::entry(command, &common.socket_path, common.output)),
        Command::Bundle { command: BundleCommand::Show { format }, common } => {
            block_on(api_cli::bundle_show(&common.socket_path, &format, common.output))
        }
        Command::Bundle { command: BundleCommand::List, common } => {
            block_on(api_cli::bundle_list(&common.socket_path, common.output))
        }
        Command::Bundle { command: BundleCommand::Set { id, path, format }, common } => {
            block_on(api_cli::bundle_set(&common.socket_path, &id, &path, &format))
        }
        Command::Bundle { command: BundleCommand::Delete { id }, common } => {
            block_on(api_cli::bundle_delete(&common.socket_path, &id))
        }
        Command::X509 { command: X509Command::Mint { spiffe_id, ttl, write }, common } => {
            block_on(api_cli::x509_mint(&common.socket_path, &spiffe_id, ttl, write, common.output))
        }
        Command::Jwt { command: JwtCommand::Mint { spiffe_id, audience, ttl }, common } => {
            block_on(api_cli::jwt_mint(&common.socket_path, &spiffe_id, audience, ttl, common.output))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(future)
}

fn client(command: ClusterCommand, common: Common) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let channel = socket::connect(&common.socket_path)
            .await
            .with_context(|| format!("cannot reach the server's admin socket at {}", common.socket_path.display()))?;
        let mut admin = ClusterAdminClient::new(channel);
        let status = match command {
            ClusterCommand::Init => admin.init(InitRequest {}).await,
            ClusterCommand::Join { token } => admin.join(JoinRequest { token }).await,
            ClusterCommand::Status => admin.status(StatusRequest {}).await,
            ClusterCommand::Remove { node_id } => admin.remove_member(RemoveMemberRequest { node_id }).await,
            ClusterCommand::Transfer { node_id } => {
                admin.transfer_leadership(TransferLeadershipRequest { node_id }).await
            }
            ClusterCommand::Restore { .. } | ClusterCommand::NewCa { .. } => {
                anyhow::bail!("restore and new-ca run offline, not over the admin socket")
            }
            ClusterCommand::Backup { file } => {
                let path = std::path::absolute(&file).with_context(|| format!("bad path {}", file.display()))?;
                let path = path.to_str().context("the backup path must be UTF-8")?.to_string();
                let saved = admin.save_backup(SaveBackupRequest { path }).await.map_err(status_error)?.into_inner();
                match common.output {
                    Output::Json => println!("{}", serde_json::json!({ "path": saved.path, "bytes": saved.bytes })),
                    Output::Pretty => println!("Saved {} bytes to {}", saved.bytes, saved.path),
                }
                return Ok(());
            }
            ClusterCommand::RotateCa { wait } => {
                let rotated =
                    admin.rotate_ca(RotateCaRequest { wait_seconds: wait }).await.map_err(status_error)?.into_inner();
                match common.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({ "generation": rotated.generation, "ca_sha256": rotated.ca_sha256 })
                    ),
                    Output::Pretty => println!(
                        "The cluster CA is now generation {} (SHA-256 {}); the old one is retired.",
                        rotated.generation, rotated.ca_sha256
                    ),
                }
                return Ok(());
            }
            ClusterCommand::Invite { ttl } => {
                let invite = admin
                    .create_invite(CreateInviteRequest { ttl_seconds: ttl })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                match common.output {
                    Output::Json => {
                        println!("{}", serde_json::json!({ "token": invite.token, "expires_at": invite.expires_at }))
                    }
                    Output::Pretty => println!("Token: {}\nExpires at (unix): {}", invite.token, invite.expires_at),
                }
                return Ok(());
            }
        };
        print_status(&status.map_err(status_error)?.into_inner(), common.output);
        Ok(())
    })
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

fn print_status(s: &ClusterStatus, output: Output) {
    if let Output::Json = output {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "node_id": m.node_id, "raft_address": m.raft_address, "api_address": m.api_address,
                    "voter": m.voter, "matched_index": m.matched_index, "lag": m.lag,
                })
            })
            .collect();
        let value = serde_json::json!({
            "initialized": s.initialized, "node_id": s.node_id, "cluster_id": s.cluster_id, "state": s.state,
            "leader": s.leader, "term": s.term, "last_log_index": s.last_log_index, "last_applied": s.last_applied,
            "members": members, "ca_generation": s.ca_generation, "ca_sha256": s.ca_sha256,
        });
        println!("{value}");
        return;
    }
    if !s.initialized {
        println!("This replica belongs to no cluster yet.");
        return;
    }
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!("Cluster {}  node {}  {}  term {}  leader {}", s.cluster_id, s.node_id, s.state, s.term, opt(s.leader));
    println!("Cluster CA generation {}  SHA-256 {}", s.ca_generation, s.ca_sha256);
    println!("{:<8} {:<8} {:<24} {:<24} {:>8} {:>6}", "NODE", "ROLE", "RAFT ADDRESS", "API ADDRESS", "MATCHED", "LAG");
    for m in &s.members {
        let role = if m.voter { "voter" } else { "learner" };
        println!(
            "{:<8} {:<8} {:<24} {:<24} {:>8} {:>6}",
            m.node_id,
            role,
            m.raft_address,
            m.api_address,
            opt(m.matched_index),
            opt(m.lag)
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn authority_ids_may_start_with_a_hyphen() {
        // JWT key ids are base64url: one in 64 starts with `-`.
        for verb in ["activate", "taint", "revoke"] {
            let parsed =
                Cli::try_parse_from(["testudo-server", "localauthority", "jwt", verb, "--authority-id", "-hZ3kx"]);
            assert!(parsed.is_ok(), "{verb}: {:?}", parsed.err());
        }
    }
}
