//! `testudo-server run`: load the config, start logging, the replica and the admin socket,
//! and stop cleanly on SIGINT or SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::admin::cluster_admin_server::ClusterAdminServer;
use proto::spire::api::server::agent::v1::agent_server::AgentServer;
use proto::spire::api::server::bundle::v1::bundle_server::BundleServer;
use proto::spire::api::server::debug::v1::debug_server::DebugServer;
use proto::spire::api::server::entry::v1::entry_server::EntryServer;
use proto::spire::api::server::svid::v1::svid_server::SvidServer;
use proto::unix_socket as socket;
use raft_store::node::Timing;
use server::admin::cluster::ClusterAdminService;
use server::api::authorize::{AuthorizeLayer, Listener};
use server::cluster::runtime::{ClusterRuntime, ReplicaSettings};
use server::config::sections::LogFormat;
use server::config::ServerConfig;

pub fn run(config_path: &Path, expand_env: bool) -> anyhow::Result<()> {
    let config = ServerConfig::load_with(config_path, expand_env)?;
    init_logging(&config);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(config))
}

fn init_logging(config: &ServerConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},openraft=warn", config.server.log_level.as_filter()))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.server.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Every minute, drops rate-limit state of callers who have been quiet.
async fn forget_idle_callers(limits: Arc<server::api::rate_limits::RateLimits>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        limits.forget_idle();
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let data_dir = &config.server.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict data_dir {}", data_dir.display()))?;

    let settings = settings(&config)?;
    let metrics = server::ops::metrics::install().map_err(anyhow::Error::msg)?;
    let ca = cluster_ca(&config, &settings.clocks).await?;
    let runtime = Arc::new(ClusterRuntime::start(settings, ca.clone()).await?);
    let mut background = vec![tokio::spawn(server::ops::metrics::sample_raft(runtime.clone(), Duration::from_secs(1)))];
    let forming = runtime.clone();
    background.push(tokio::spawn(async move {
        if let Err(e) = forming.form_declared().await {
            tracing::error!(error = %e, "cannot form or join the declared cluster");
        }
    }));
    let api = server::api::ApiContext {
        runtime: runtime.clone(),
        ca: ca.clone(),
        started: std::time::Instant::now(),
        admin_ids: config.server.admin_ids.clone(),
        node_attestors: Arc::new(server::node_attestor::NodeAttestors::build(&config.node_attestors)?),
        agent_ttl: config.server.agent_ttl,
        limits: Arc::new(server::api::rate_limits::RateLimits::new(
            &config.server.ratelimit,
            matches!(config.key_manager, kms::KeyManagerConfig::Pkcs11(_) | kms::KeyManagerConfig::AwsKms(_)),
        )),
        federates_with: Arc::new(config.federates_with.clone()),
    };
    background.push(tokio::spawn(forget_idle_callers(api.limits.clone())));
    // The network listener: agents, and admins with an SVID listed in admin_ids.
    let identity =
        Arc::new(server::api::listener::ServerIdentity::new(&config.server.trust_domain).map_err(anyhow::Error::msg)?);
    let trust = Arc::new(std::sync::RwLock::new(identity::bundle::Bundle::new(config.server.trust_domain.clone())));
    background.push(tokio::spawn(server::api::listener::maintain(identity.clone(), trust.clone(), runtime.clone())));
    let api_address = std::net::SocketAddr::new(config.server.bind_address, config.server.bind_port);
    let (bound, incoming) =
        server::api::listener::bind(api_address, identity.clone(), trust).await.map_err(anyhow::Error::msg)?;
    tracing::info!(address = %bound, "server API listening");
    let network_routes = api_routes(&api);
    let network_authorize = AuthorizeLayer::new(api.clone(), Listener::Network);
    background.push(tokio::spawn(async move {
        // Streams per connection are bounded (an agent keeps a sync and a notification
        // stream, and mints in batches), and a peer that stops answering pings is dropped.
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(server::api::listener::MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(server::ops::api_metrics::ApiMetricsLayer)
            .layer(network_authorize)
            .add_routes(network_routes);
        if let Err(e) = server.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "server API listener stopped");
        }
    }));
    if let Some(endpoint) = &config.bundle_endpoint {
        background.extend(bundle_endpoint(endpoint, identity, runtime.clone()).await?);
    }
    let federation = server::leader::federation_refresh::FederationRefreshing {
        trust_domain: config.server.trust_domain.clone(),
        configured: config.federates_with.clone(),
        web_roots: tokio::task::spawn_blocking(server::federation::fetch::system_roots).await?,
        timeout: server::federation::fetch::EXCHANGE_TIMEOUT,
    };
    let unreachable = config
        .cluster
        .remove_unreachable_after
        .map(|after| server::leader::unreachable::UnreachableRemoval { after, keep_voters: config.cluster.founders() });
    background.push(tokio::spawn(server::leader::run(
        runtime.clone(),
        server::leader::server_duties(ca, federation, unreachable),
    )));
    if let Some(prometheus) = &config.telemetry.prometheus {
        let router = server::ops::metrics::router(metrics);
        background.push(serve_http("Prometheus metrics", &prometheus.host, prometheus.port, router).await?);
    }
    let health = &config.health_checks;
    if health.listener_enabled {
        let router = server::ops::health::router(runtime.clone(), &health.live_path, &health.ready_path);
        background.push(serve_http("health checks", &health.bind_address, health.bind_port, router).await?);
    }

    let listener = socket::bind(&config.server.socket_path, 0o600)
        .with_context(|| format!("cannot listen on admin socket {}", config.server.socket_path.display()))?;
    tracing::info!(socket = %config.server.socket_path.display(), "admin socket ready");
    let admin = ClusterAdminServer::new(ClusterAdminService { runtime: runtime.clone() });
    let served = tonic::transport::Server::builder()
        .layer(server::ops::api_metrics::ApiMetricsLayer)
        .layer(AuthorizeLayer::new(api.clone(), Listener::AdminSocket))
        .add_routes(api_routes(&api))
        .add_service(admin)
        .serve_with_incoming_shutdown(proto::unix_authority::accept(listener), stop_signal(runtime.clone()))
        .await;
    tracing::info!("shutting down");
    for task in background {
        task.abort();
    }
    let fault = runtime.replica().and_then(|r| r.fault());
    runtime.shutdown().await;
    let _ = std::fs::remove_file(&config.server.socket_path);
    served.context("admin socket server failed")?;
    match fault {
        // Exit non-zero so the supervisor restarts the replica: RocksDB then recovers what
        // was made durable, as etcd does after a failed fsync.
        Some(fault) => anyhow::bail!("the replica stopped on a fault: {fault}"),
        None => Ok(()),
    }
}

/// SIGTERM, Ctrl-C, or the replica's Raft core stopping on a fault of its own.
async fn stop_signal(runtime: Arc<server::cluster::runtime::ClusterRuntime>) {
    let faulted = Arc::new(tokio::sync::Notify::new());
    let watching = {
        let faulted = faulted.clone();
        async move {
            runtime
                .for_each_member(|member| {
                    let faulted = faulted.clone();
                    async move {
                        let fault = member.replica.stopped_by_fault().await;
                        tracing::error!(%fault, "the Raft core stopped on a fault (a failed disk write or sync?): \
                            shutting down so a supervisor restarts this replica from what it made durable");
                        faulted.notify_one();
                        std::future::pending::<()>().await
                    }
                })
                .await;
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        () = shutdown_signal() => {}
        () = faulted.notified() => {}
        () = watching => {}
    }
}

/// The cluster's CA as this config describes it. The development key managers (`memory`,
/// `disk`) share CA keys through the replicated journal; with `pkcs11` and `aws_kms` the
/// journal names keys that live in the HSM or KMS every replica reaches.
async fn cluster_ca(
    config: &ServerConfig,
    clocks: &raft_store::PeerClocks,
) -> anyhow::Result<server::ca::replicated::ClusterCa> {
    let keys = match &config.key_manager {
        kms::KeyManagerConfig::Memory | kms::KeyManagerConfig::Disk { .. } => server::ca::CaKeys::Shared,
        kms::KeyManagerConfig::Pkcs11(_) | kms::KeyManagerConfig::AwsKms(_) => {
            server::ca::CaKeys::Managed(config.key_manager.build().await.context("the CA's KeyManager")?)
        }
    };
    use server::upstream::{disk::DiskUpstreamAuthority, spire::SpireUpstreamAuthority, UpstreamConfig};
    let upstream: Option<Arc<dyn server::upstream::UpstreamAuthority>> = match &config.upstream_authority {
        Some(UpstreamConfig::Disk(disk)) => {
            Some(Arc::new(DiskUpstreamAuthority::new(disk.clone()).await.context("UpstreamAuthority \"disk\"")?))
        }
        Some(UpstreamConfig::Spire(spire)) => Some(Arc::new(
            SpireUpstreamAuthority::new(spire.clone(), config.server.trust_domain.clone())
                .await
                .context("UpstreamAuthority \"spire\"")?,
        )),
        None => None,
    };
    Ok(server::ca::replicated::ClusterCa {
        config: config.ca_config(),
        keys,
        upstream,
        clock: Arc::new(server::clock::ClusterClock::new(clocks.clone())),
    })
}

/// Where this replica listens and how it is reached, from its config; reads the cluster CA
/// files of a declared cluster.
pub fn settings(config: &ServerConfig) -> anyhow::Result<ReplicaSettings> {
    let cluster = &config.cluster;
    let declared = match (&cluster.ca_cert_file, &cluster.ca_key_file) {
        (Some(cert), Some(key)) if !cluster.peers.is_empty() => Some(
            server::cluster::formation::Declared::load(cluster.founders(), cluster.peers.clone(), cert, key)
                .context("cluster CA files")?,
        ),
        _ => None,
    };
    let api_address = cluster
        .api_advertise_address
        .clone()
        .unwrap_or_else(|| std::net::SocketAddr::new(config.server.bind_address, config.server.bind_port).to_string());
    Ok(ReplicaSettings {
        node_id: cluster.node_id,
        trust_domain: config.server.trust_domain.clone(),
        data_dir: config.server.data_dir.clone(),
        raft_listen: cluster.raft_bind_address,
        raft_advertise: cluster.raft_advertise_address.clone(),
        raft_source: cluster.raft_source_address,
        api_address,
        timing: Timing {
            heartbeat_interval: cluster.heartbeat_interval,
            election_timeout_min: cluster.election_timeout,
            election_timeout_max: cluster.election_timeout * 2,
            rpc_timeout: Duration::from_secs(2),
            snapshot_every: cluster.snapshot_every,
        },
        clocks: raft_store::PeerClocks::new(cluster.max_clock_skew),
        declared,
    })
}

/// `validate`: reads the config as `run` would, says what it warns of, and stops.
pub fn validate(config_path: &Path, expand_env: bool) -> anyhow::Result<()> {
    let config = ServerConfig::load_with(config_path, expand_env)?;
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    println!("{} is valid", config_path.display());
    Ok(())
}

/// `cluster new-ca`: a cluster CA for declarative formation, written to two new files.
pub fn new_cluster_ca(trust_domain: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let trust_domain = identity::TrustDomain::parse(trust_domain).context("--trust-domain")?;
    let authority = server::cluster::authority::ClusterAuthority::create(&trust_domain)?;
    let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", authority.cert_der.clone()));
    let key_pem = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", authority.key_pkcs8()?.to_vec())));
    let (cert, key) = (std::path::absolute(cert)?, std::path::absolute(key)?);
    server::cluster::files::write_new(&cert, cert_pem.as_bytes())?;
    server::cluster::files::write_new(&key, key_pem.as_bytes())?;
    println!("Wrote the cluster CA certificate to {} and its key to {}.", cert.display(), key.display());
    println!("Give both to every replica (cluster.ca_cert_file, cluster.ca_key_file); whoever holds the key can add replicas.");
    Ok(())
}

/// `cluster restore`: seeds a pristine replica from a backup file, offline.
pub fn restore(config_path: &Path, expand_env: bool, file: &Path) -> anyhow::Result<()> {
    let config = ServerConfig::load_with(config_path, expand_env)?;
    let backup = std::fs::read(file).with_context(|| format!("cannot read backup {}", file.display()))?;
    let data_dir = &config.server.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict data_dir {}", data_dir.display()))?;
    let (cluster_id, node_id, index) = ClusterRuntime::restore(&settings(&config)?, &backup)?;
    println!(
        "Restored state up to log index {index} into {}: cluster {cluster_id} with node {node_id} as its only member.",
        data_dir.display(),
    );
    if config.cluster.peers.is_empty() {
        println!(
            "Start it with `testudo-server run --config {}`, then invite the other replicas.",
            config_path.display()
        );
    } else {
        println!("Start it, then start the other replicas with empty data dirs: they join it.");
    }
    Ok(())
}

/// SPIRE's server APIs and ours; who may call each is `server::api::policy`'s answer.
fn api_routes(api: &server::api::ApiContext) -> tonic::service::Routes {
    use proto::agent_push::entry_notifications_server::EntryNotificationsServer;
    use proto::spire::api::server::localauthority::v1::local_authority_server::LocalAuthorityServer;
    use server::api::entry_notifications::EntryNotificationService;
    use server::api::{
        agent::AgentService, bundle::BundleService, debug::DebugService, entry::EntryService,
        local_authority::LocalAuthorityService, svid::SvidService,
    };
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(AgentServer::new(AgentService { context: api.clone() }));
    routes.add_service(EntryServer::new(EntryService { context: api.clone() }));
    routes.add_service(EntryNotificationsServer::new(EntryNotificationService::new(api.clone())));
    routes.add_service(SvidServer::new(SvidService { context: api.clone() }));
    routes.add_service(BundleServer::new(BundleService { context: api.clone() }));
    routes.add_service(LocalAuthorityServer::new(LocalAuthorityService { context: api.clone() }));
    routes.add_service(proto::spire::api::server::trustdomain::v1::trust_domain_server::TrustDomainServer::new(
        server::api::trust_domain::TrustDomainService { context: api.clone() },
    ));
    routes.add_service(proto::admin::federation_status_server::FederationStatusServer::new(
        server::api::federation_status::FederationStatusService { context: api.clone() },
    ));
    routes.add_service(proto::admin::upstream_status_server::UpstreamStatusServer::new(
        server::api::upstream_status::UpstreamStatusService { context: api.clone() },
    ));
    routes.add_service(proto::health::health_server::HealthServer::new(server::api::health::HealthService::new(
        api.clone(),
    )));
    routes.add_service(DebugServer::new(DebugService { context: api.clone() }));
    routes.routes()
}

/// Serves the SPIFFE bundle endpoint; the tasks it runs.
async fn bundle_endpoint(
    endpoint: &server::config::federation::BundleEndpoint,
    server_identity: Arc<server::api::listener::ServerIdentity>,
    runtime: Arc<ClusterRuntime>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use server::config::federation::EndpointProfile;
    let mut tasks = Vec::new();
    let certificate: Arc<dyn rustls::server::ResolvesServerCert> = match &endpoint.profile {
        EndpointProfile::HttpsSpiffe => server_identity,
        EndpointProfile::HttpsWeb(files) => {
            let files = files.clone();
            let web = tokio::task::spawn_blocking(move || server::federation::web_cert::WebCertificate::load(files))
                .await?
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("bundle endpoint certificate: {e}"))?;
            tasks.push(web.clone().spawn());
            web
        }
    };
    let (document, following) = server::federation::document::follow(runtime, endpoint.refresh_hint);
    tasks.push(following);
    let (bound, serving) = server::federation::endpoint::serve(endpoint.address, certificate, document)
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(address = %bound, "bundle endpoint listening");
    tasks.push(serving);
    Ok(tasks)
}

/// Binds `host:port` and serves `router` on it in a task.
async fn serve_http(
    what: &str,
    host: &str,
    port: u16,
    router: axum::Router,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen for {what} on {host}:{port}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "{what} listening");
    let what = what.to_string();
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "{what} server stopped");
        }
    }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
