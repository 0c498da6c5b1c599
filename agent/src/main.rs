//! `testudo-agent`: `run` starts the agent; `api …` and `healthcheck` are Workload API
//! clients of a running agent's socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agent::config::AgentConfig;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use proto::workload as pb;
use proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::Channel;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "testudo-agent", version, about = "Testudo agent: identities for the workloads of one node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Default, ValueEnum)]
enum Output {
    #[default]
    Pretty,
    Json,
}

#[derive(clap::Args)]
struct Client {
    /// The agent's Workload API socket.
    #[arg(long, default_value = "/tmp/spire-agent/public/api.sock")]
    socket_path: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
}

/// The config file `run` and `validate` read.
#[derive(clap::Args)]
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
    /// Runs the agent.
    Run {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Checks a config file as `run` would read it, and exits.
    Validate {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Calls the Workload API as this process.
    Api {
        #[command(subcommand)]
        call: ApiCall,
    },
    /// Exits 0 if the agent answers on its socket.
    Healthcheck {
        #[command(flatten)]
        client: Client,
    },
}

#[derive(Subcommand)]
enum ApiCall {
    /// Fetches SVIDs or bundles once.
    Fetch {
        #[command(subcommand)]
        what: Fetch,
    },
    /// Validates a JWT-SVID.
    Validate {
        #[command(subcommand)]
        what: Validate,
    },
    /// Prints every X.509-SVID update the agent streams, until interrupted.
    Watch {
        #[command(flatten)]
        client: Client,
    },
}

#[derive(Subcommand)]
enum Fetch {
    /// This process's X.509-SVIDs; with --write, as svid.N.pem, svid.N.key and bundle.N.pem.
    X509 {
        #[command(flatten)]
        client: Client,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// This process's JWT-SVIDs for an audience.
    Jwt {
        #[command(flatten)]
        client: Client,
        #[arg(long, required = true)]
        audience: Vec<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum Validate {
    Jwt {
        #[command(flatten)]
        client: Client,
        #[arg(long)]
        audience: String,
        #[arg(long)]
        svid: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(&config).await,
            Command::Validate { config } => {
                AgentConfig::load_with(&config.config, config.expand_env)?;
                println!("{} is valid", config.config.display());
                Ok(())
            }
            Command::Healthcheck { client } => healthcheck(&client).await,
            Command::Api { call: ApiCall::Fetch { what: Fetch::X509 { client, write } } } => {
                fetch_x509(&client, write.as_deref()).await
            }
            Command::Api { call: ApiCall::Fetch { what: Fetch::Jwt { client, audience, spiffe_id } } } => {
                fetch_jwt(&client, audience, spiffe_id).await
            }
            Command::Api { call: ApiCall::Validate { what: Validate::Jwt { client, audience, svid } } } => {
                validate_jwt(&client, audience, svid).await
            }
            Command::Api { call: ApiCall::Watch { client } } => watch(&client).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &AgentConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.agent.log_level.to_ascii_lowercase()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if config.agent.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(file: &ConfigFile) -> anyhow::Result<()> {
    let config = AgentConfig::load_with(&file.config, file.expand_env)?;
    init_logging(&config);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    std::fs::create_dir_all(&config.agent.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.agent.data_dir.display()))?;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    agent::runtime::run(config, shutdown).await?;
    Ok(())
}

async fn connect(client: &Client) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    let channel = proto::unix_socket::connect(&client.socket_path)
        .await
        .with_context(|| format!("cannot reach the agent at {}", client.socket_path.display()))?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    request
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

async fn healthcheck(client: &Client) -> anyhow::Result<()> {
    let mut api = connect(client).await?;
    // Any answer but Unavailable means the agent is up (a caller with no entry gets
    // PermissionDenied, which is an answer).
    match api.fetch_x509_bundles(with_header(pb::X509BundlesRequest {})).await {
        Ok(_) => {}
        Err(e) if e.code() != tonic::Code::Unavailable => {}
        Err(e) => return Err(status(e)),
    }
    println!("Agent is healthy.");
    Ok(())
}

fn split_certs(bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    identity::x509::split_der_certificates(bytes).map_err(anyhow::Error::msg)
}

fn pem_certs(ders: &[Vec<u8>]) -> String {
    identity::bundle::to_pem_certificates(ders.iter().map(Vec::as_slice))
}

async fn fetch_x509(client: &Client, write: Option<&Path>) -> anyhow::Result<()> {
    let mut api = connect(client).await?;
    let mut stream = api.fetch_x509svid(with_header(pb::X509svidRequest {})).await.map_err(status)?.into_inner();
    let response = stream.message().await.map_err(status)?.context("the agent closed the stream")?;
    let mut out = Vec::new();
    for (i, svid) in response.svids.iter().enumerate() {
        let chain = split_certs(&svid.x509_svid)?;
        let facts = identity::x509::certificate_facts(&chain[0])?;
        if let Some(dir) = write {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(format!("svid.{i}.pem")), pem_certs(&chain))?;
            let key = pem::encode(&pem::Pem::new("PRIVATE KEY", svid.x509_svid_key.clone()));
            write_private(&dir.join(format!("svid.{i}.key")), key.as_bytes())?;
            std::fs::write(dir.join(format!("bundle.{i}.pem")), pem_certs(&split_certs(&svid.bundle)?))?;
        }
        out.push(serde_json::json!({
            "spiffe_id": svid.spiffe_id,
            "hint": svid.hint,
            "serial": hex::encode(&facts.serial),
            "not_before": facts.not_before.unix_timestamp(),
            "not_after": facts.not_after.unix_timestamp(),
            "chain_length": chain.len(),
        }));
    }
    match client.output {
        Output::Json => println!("{}", serde_json::json!({ "svids": out })),
        Output::Pretty => {
            for svid in &out {
                println!("SPIFFE ID:     {}", svid["spiffe_id"].as_str().unwrap_or_default());
                println!("Serial:        {}", svid["serial"].as_str().unwrap_or_default());
                let when = |key: &str| {
                    svid[key]
                        .as_i64()
                        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                };
                println!("Valid:         {} .. {}", when("not_before"), when("not_after"));
                println!("Chain length:  {}", svid["chain_length"]);
                println!();
            }
            if let Some(dir) = write {
                println!("Written to {}", dir.display());
            }
        }
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    Ok(())
}

async fn fetch_jwt(client: &Client, audience: Vec<String>, spiffe_id: Option<String>) -> anyhow::Result<()> {
    let mut api = connect(client).await?;
    let response = api
        .fetch_jwtsvid(with_header(pb::JwtsvidRequest { audience, spiffe_id: spiffe_id.unwrap_or_default() }))
        .await
        .map_err(status)?
        .into_inner();
    match client.output {
        Output::Json => {
            let svids: Vec<_> = response
                .svids
                .iter()
                .map(|s| serde_json::json!({ "spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint }))
                .collect();
            println!("{}", serde_json::json!({ "svids": svids }));
        }
        Output::Pretty => {
            for svid in &response.svids {
                println!("SPIFFE ID: {}", svid.spiffe_id);
                println!("Token:     {}", svid.svid);
                println!();
            }
        }
    }
    Ok(())
}

async fn validate_jwt(client: &Client, audience: String, svid: String) -> anyhow::Result<()> {
    let mut api = connect(client).await?;
    let response = api
        .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest { audience, svid }))
        .await
        .map_err(status)?
        .into_inner();
    match client.output {
        Output::Json => println!("{}", serde_json::json!({ "spiffe_id": response.spiffe_id })),
        Output::Pretty => println!("SVID is valid.\nSPIFFE ID: {}", response.spiffe_id),
    }
    Ok(())
}

async fn watch(client: &Client) -> anyhow::Result<()> {
    let mut api = connect(client).await?;
    let mut stream = api.fetch_x509svid(with_header(pb::X509svidRequest {})).await.map_err(status)?.into_inner();
    while let Some(response) = stream.message().await.map_err(status)? {
        for svid in &response.svids {
            let chain = split_certs(&svid.x509_svid)?;
            let facts = identity::x509::certificate_facts(&chain[0])?;
            match client.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "spiffe_id": svid.spiffe_id, "serial": hex::encode(&facts.serial), "not_after": facts.not_after.unix_timestamp() })
                ),
                Output::Pretty => {
                    println!("{} serial {} valid until {}", svid.spiffe_id, hex::encode(&facts.serial), facts.not_after)
                }
            }
        }
    }
    Ok(())
}
