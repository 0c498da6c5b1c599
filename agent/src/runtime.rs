//! A running agent: its identity (restored from disk or attested), the server pool, the
//! sync loop that keeps the cache and its own SVID fresh, and the Workload API socket.

use std::future::Future;
use std::sync::{Arc, RwLock};

use identity::bundle::Bundle;
use identity::x509::{certificate_facts, verify_x509_svid_allowing_slow_clock};
use identity::SpiffeId;
use time::OffsetDateTime;
use tonic::Code;

use crate::admin::DebugApi;
use crate::cache::Cache;
use crate::config::plugins::{KeyStorage, NodeAttestor};
use crate::config::{AgentConfig, TrustSource};
use crate::identity_store::{IdentityStore, StoredIdentity};
use crate::status::AgentStatus;
use crate::workload::api::WorkloadApi;
use crate::workload::sds::SecretDiscovery;
use crate::{attest, sync, trust};
use server_pool::ServerPool;
use spiffe_tls::SLOW_CLOCK_ALLOWANCE;

/// The counter of server calls a replica failed (it was skipped for the next one).
const AGENT_POOL_FAILURES: &str = "testudo_agent_server_failures_total";

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    #[error(transparent)]
    Store(#[from] crate::identity_store::StoreError),
    #[error("node attestation failed: {0}")]
    Attestation(String),
    #[error("{0}")]
    Config(String),
    #[error("workload API socket {path}: {reason}")]
    Socket { path: String, reason: String },
}

/// The agent's SVID and when to renew it.
struct AgentSvid {
    identity: StoredIdentity,
    spiffe_id: SpiffeId,
    renew_at: OffsetDateTime,
}

impl AgentSvid {
    /// The agent SVID a server just issued (`fresh`), or one kept from an earlier run.
    fn new(identity: StoredIdentity, bundle: &Bundle, fresh: bool) -> Result<Self, String> {
        let now = OffsetDateTime::now_utc();
        // A clock behind the servers' sees a fresh SVID as not yet valid.
        let verified = verify_x509_svid_allowing_slow_clock(&identity.chain, bundle, now, SLOW_CLOCK_ALLOWANCE)
            .map_err(|e| e.to_string())?;
        let facts = certificate_facts(&identity.chain[0]).map_err(|e| e.to_string())?;
        let renew_at = if fresh {
            sync::x509_renewal_time(now, &facts)
        } else {
            // When a kept SVID arrived is not known: count from the issuer's NotBefore.
            sync::renewal_time(facts.not_before, time::Duration::ZERO, facts.not_after - facts.not_before)
        };
        Ok(Self { spiffe_id: verified.spiffe_id, renew_at, identity })
    }
}

/// Runs the agent until `shutdown` resolves; removes the Workload API socket on the way out.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ops = crate::ops::start(&config, ready.clone()).await.map_err(|e| StartError::Config(e.to_string()))?;
    let trust_domain = config.agent.trust_domain.clone();
    let store_dir = match &config.key_storage {
        KeyStorage::Disk(dir) => dir.clone(),
        KeyStorage::Memory => config.agent.data_dir.clone(),
    };
    let store = IdentityStore::new(&store_dir);
    let bundle = match store.load_bundle(&trust_domain).await? {
        Some(saved) => saved,
        None => match &config.trust {
            TrustSource::File { path, spiffe_format } => trust::from_file(&trust_domain, path, *spiffe_format)?,
            TrustSource::Url { url, spiffe_format } => trust::from_url(&trust_domain, url, *spiffe_format).await?,
            TrustSource::InsecureBootstrap => trust::bootstrap_insecurely(&config.servers).await?,
        },
    };
    let trust = Arc::new(RwLock::new(bundle.clone()));
    let server_id =
        SpiffeId::new(trust_domain.clone(), "/spire/server").map_err(|e| StartError::Config(e.to_string()))?;
    let pool = Arc::new(ServerPool::new(config.servers.clone(), server_id, trust.clone(), AGENT_POOL_FAILURES).await);
    tracing::info!(servers = ?pool.addresses(), "server replicas");

    let restored = match (&config.key_storage, store.load_identity().await?) {
        (KeyStorage::Disk(_), Some(identity)) => match AgentSvid::new(identity, &bundle, false) {
            Ok(svid) => Some(svid),
            Err(e) => {
                tracing::warn!(error = %e, "the stored agent SVID is no longer valid; attesting again");
                None
            }
        },
        _ => None,
    };
    let agent = match restored {
        Some(svid) => {
            tracing::info!(spiffe_id = %svid.spiffe_id, "resumed with the stored agent SVID");
            svid
        }
        None => {
            if config.node_attestor == NodeAttestor::JoinToken && config.agent.join_token.is_none() {
                return Err(StartError::Config("agent.join_token is required to attest (no stored SVID)".into()));
            }
            let identity = attest_node(&config, &pool)
                .await
                .map_err(|e| StartError::Attestation(format!("{:?}: {}", e.code(), e.message())))?;
            let svid = AgentSvid::new(identity, &bundle, true)
                .map_err(|e| StartError::Attestation(format!("the server issued an SVID that does not verify: {e}")))?;
            tracing::info!(spiffe_id = %svid.spiffe_id, "node attested");
            if matches!(config.key_storage, KeyStorage::Disk(_)) {
                store.save_identity(&svid.identity).await?;
            }
            svid
        }
    };
    store.save_bundle(&bundle).await?;
    pool.set_identity(&agent.identity.chain, &agent.identity.key_pkcs8);
    let status = Arc::new(AgentStatus::default());
    status.set_svid(&agent.identity.chain);

    // As SPIRE's agent does, serve workloads only once the cache holds what the servers
    // say: a workload that connects earlier would be told it has no identity.
    let cache = Cache::default();
    let mut shutdown = Box::pin(shutdown);
    loop {
        let first = tokio::select! {
            first = sync::sync_once(&pool, &cache, &trust) => first,
            () = &mut shutdown => return Ok(()),
        };
        match first {
            Ok(report) => {
                tracing::info!(entries = report.entries, minted = report.minted, "first sync done");
                status.synced();
                break;
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "first sync failed; retrying before \
                    serving workloads");
                tokio::time::sleep(config.agent.sync_interval).await;
            }
        }
    }
    let probe_task = tokio::spawn(pool.clone().probe_unhealthy(std::time::Duration::from_secs(1)));
    let dns_task = tokio::spawn(pool.clone().follow_dns(server_pool::RESOLVE_EVERY));
    let wake = Arc::new(tokio::sync::Notify::new());
    let watch_task = tokio::spawn(crate::entry_watch::watch(pool.clone(), wake.clone()));
    let sync_task = tokio::spawn(sync_loop(
        SyncParts {
            config: config.clone(),
            pool: pool.clone(),
            cache: cache.clone(),
            trust: trust.clone(),
            store: store.clone(),
            agent_status: status.clone(),
            wake,
        },
        agent,
    ));

    let socket = &config.agent.socket_path;
    let listener = proto::unix_socket::bind(socket, 0o777)
        .map_err(|e| StartError::Socket { path: socket.display().to_string(), reason: e.to_string() })?;
    tracing::info!(socket = %socket.display(), "Workload API and Envoy SDS listening");
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let attestors = crate::workload::attestor::WorkloadAttestors::build(&config.workload_attestors);
    tracing::info!(attestors = ?attestors.names(), "workload attestors");
    let sds = SecretDiscovery::new(cache.clone(), attestors.clone(), config.agent.sds.clone());
    let api = WorkloadApi::new(cache.clone(), attestors, pool);
    let admin_task = match &config.agent.admin_socket_path {
        Some(path) => {
            let listener = proto::unix_socket::bind(path, 0o600)
                .map_err(|e| StartError::Socket { path: path.display().to_string(), reason: e.to_string() })?;
            tracing::info!(socket = %path.display(), "admin API listening");
            let debug = DebugApi { status: status.clone(), cache, workload: api.clone() };
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(proto::spire::agent::debug::v1::debug_server::DebugServer::new(debug))
                    .serve_with_incoming(proto::unix_authority::accept(listener)),
            ))
        }
        None => None,
    };
    let served = tonic::transport::Server::builder()
        .add_service(proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(api))
        .add_service(
            proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new(sds),
        )
        .serve_with_incoming_shutdown(crate::workload::peer_process::accept(listener), shutdown)
        .await;
    sync_task.abort();
    watch_task.abort();
    probe_task.abort();
    if let (Some(task), Some(path)) = (admin_task, &config.agent.admin_socket_path) {
        task.abort();
        let _ = std::fs::remove_file(path);
    }
    dns_task.abort();
    ops.iter().for_each(tokio::task::JoinHandle::abort);
    let _ = std::fs::remove_file(socket);
    served.map_err(|e| StartError::Socket { path: socket.display().to_string(), reason: e.to_string() })
}

/// Starts using a new agent SVID (after renewal or a new attestation): checks it against
/// the bundle, presents it from now on, and keeps it on disk with `KeyManager "disk"`.
async fn adopt(
    identity: StoredIdentity,
    config: &AgentConfig,
    pool: &ServerPool,
    store: &IdentityStore,
    trust: &RwLock<Bundle>,
    status: &AgentStatus,
) -> Result<AgentSvid, String> {
    let svid = trust
        .read()
        .map_err(|_| "bundle lock poisoned".to_string())
        .and_then(|b| AgentSvid::new(identity, &b, true))?;
    pool.set_identity(&svid.identity.chain, &svid.identity.key_pkcs8);
    status.set_svid(&svid.identity.chain);
    if matches!(config.key_storage, KeyStorage::Disk(_)) {
        if let Err(e) = store.save_identity(&svid.identity).await {
            tracing::warn!(error = %e, "cannot save the new agent SVID; a restart will attest again");
        }
    }
    Ok(svid)
}

/// Attests the node with the configured attestor.
async fn attest_node(config: &AgentConfig, pool: &ServerPool) -> Result<StoredIdentity, tonic::Status> {
    match &config.node_attestor {
        NodeAttestor::JoinToken => {
            let token = config
                .agent
                .join_token
                .as_deref()
                .ok_or_else(|| tonic::Status::failed_precondition("no join_token configured"))?;
            attest::with_join_token(pool, token).await
        }
        NodeAttestor::X509Pop { private_key_path, certificate_path, intermediates_path } => {
            attest::with_x509pop(pool, private_key_path, certificate_path, intermediates_path.as_deref()).await
        }
    }
}

/// What the sync loop works with.
struct SyncParts {
    config: AgentConfig,
    pool: Arc<ServerPool>,
    cache: Cache,
    trust: Arc<RwLock<Bundle>>,
    store: IdentityStore,
    agent_status: Arc<AgentStatus>,
    /// Woken when the servers say this agent's entries changed: sync now.
    wake: Arc<tokio::sync::Notify>,
}

/// Syncs every `sync_interval`, and at once when woken by an entry notification.
async fn sync_loop(parts: SyncParts, mut agent: AgentSvid) {
    let SyncParts { config, pool, cache, trust, store, agent_status, wake } = parts;
    let mut tick = tokio::time::interval(config.agent.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_bundle_sequence = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => {
                // The periodic sync counts from here: this one just happened.
                tick.reset();
            }
        }
        match sync::sync_once(&pool, &cache, &trust).await {
            Ok(report) => {
                metrics::counter!("testudo_agent_syncs_total", "result" => "ok").increment(1);
                agent_status.synced();
                if report.minted > 0 {
                    tracing::info!(entries = report.entries, minted = report.minted, server = %pool.current(), "synced");
                }
            }
            Err(status) if status.code() == Code::PermissionDenied => {
                metrics::counter!("testudo_agent_syncs_total", "result" => "denied").increment(1);
                // An evicted agent whose attestor can prove the node again (x509pop; a join
                // token works once) attests again, as SPIRE's does; a banned one cannot.
                let evicted = proto::reason::Reason::of(&status) == Some(proto::reason::Reason::AgentNotAttested);
                if evicted && matches!(config.node_attestor, NodeAttestor::X509Pop { .. }) {
                    tracing::warn!(error = %status.message(), "this agent was evicted; attesting again");
                    match attest_node(&config, &pool).await {
                        Ok(identity) => match adopt(identity, &config, &pool, &store, &trust, &agent_status).await {
                            Ok(renewed) => {
                                tracing::info!(spiffe_id = %renewed.spiffe_id, "attested again");
                                agent = renewed;
                            }
                            Err(e) => tracing::error!(error = %e, "the new agent SVID does not verify; no new SVIDs"),
                        },
                        Err(e) => {
                            tracing::error!(error = %e, "attesting again failed; serving what the agent has, no new \
                                SVIDs")
                        }
                    }
                } else {
                    tracing::error!(error = %status.message(), "the servers refuse this agent (banned, or evicted \
                        with a spent join token): it serves what it has and gets no new SVIDs");
                }
            }
            Err(status) => {
                metrics::counter!("testudo_agent_syncs_total", "result" => "failed").increment(1);
                tracing::warn!(code = ?status.code(), error = %status.message(), "sync failed; serving the cached \
                    SVIDs and bundles");
            }
        }
        let bundle = trust.read().map(|b| b.clone()).ok();
        if let Some(bundle) = bundle.filter(|b| Some(b.sequence_number) != last_bundle_sequence) {
            last_bundle_sequence = Some(bundle.sequence_number);
            if let Err(e) = store.save_bundle(&bundle).await {
                tracing::warn!(error = %e, "cannot save the trust bundle");
            }
        }
        if OffsetDateTime::now_utc() >= agent.renew_at {
            // A node attestor that can prove the node again attests again instead of renewing
            // (the servers refuse renewal to such agents, as SPIRE's do).
            let renewed = match config.node_attestor {
                NodeAttestor::X509Pop { .. } => attest_node(&config, &pool).await,
                NodeAttestor::JoinToken => attest::renew(&pool).await,
            };
            match renewed {
                Ok(identity) => match adopt(identity, &config, &pool, &store, &trust, &agent_status).await {
                    Ok(renewed) => {
                        tracing::info!(renew_at = %renewed.renew_at, "agent SVID renewed");
                        agent = renewed;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the renewed agent SVID does not verify; keeping the current one")
                    }
                },
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = %status.message(), "agent SVID renewal failed; \
                        retrying at the next sync")
                }
            }
        }
    }
}
