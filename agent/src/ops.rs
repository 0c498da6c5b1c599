//! The agent's operational endpoints, as configured: `/live` and `/ready` (`health_checks`)
//! and Prometheus `/metrics` (`telemetry`). Ready means the first sync is done and
//! workloads are being served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::config::AgentConfig;

/// Starts the endpoints the config asks for; returns their tasks.
pub async fn start(config: &AgentConfig, ready: Arc<AtomicBool>) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let health = &config.health_checks;
    if health.listener_enabled {
        let router = Router::new().route(&health.live_path, get(|| async { (StatusCode::OK, "live\n") })).route(
            &health.ready_path,
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the first sync with the servers is not done\n")
                    }
                }
            }),
        );
        tasks.push(listen("health checks", &health.bind_address, health.bind_port, router).await?);
    }
    if let Some(prometheus) = &config.telemetry.prometheus {
        let handle =
            metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().map_err(std::io::Error::other)?;
        let router = Router::new().route("/metrics", get(move || std::future::ready(handle.render())));
        tasks.push(listen("Prometheus metrics", &prometheus.host, prometheus.port, router).await?);
    }
    Ok(tasks)
}

async fn listen(
    what: &'static str,
    host: &str,
    port: u16,
    router: Router,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} on {host}:{port}: {e}")))?;
    tracing::info!(address = %listener.local_addr()?, "{what} listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "{what} stopped");
        }
    }))
}
