//! Prometheus metrics: the recorder every `metrics::` call in the process reports to, the
//! `/metrics` route that renders it, and the Raft gauges sampled from the replica.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::cluster::runtime::ClusterRuntime;

/// Installs the process-wide recorder; call once, before anything records.
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new().install_recorder().map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// `/metrics` in Prometheus' text format.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route("/metrics", get(move || std::future::ready(handle.render())))
}

/// Samples this replica's Raft state into gauges every `every` until the runtime stops.
pub async fn sample_raft(runtime: Arc<ClusterRuntime>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(status) = runtime.status() else {
            metrics::gauge!("testudo_raft_member").set(0.0);
            continue;
        };
        metrics::gauge!("testudo_raft_member").set(1.0);
        metrics::gauge!("testudo_raft_is_leader").set(if status.leader == Some(status.node_id) { 1.0 } else { 0.0 });
        metrics::gauge!("testudo_raft_term").set(status.term as f64);
        metrics::gauge!("testudo_raft_last_log_index").set(status.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("testudo_raft_last_applied_index").set(status.last_applied.unwrap_or(0) as f64);
        metrics::gauge!("testudo_raft_voters").set(status.members.iter().filter(|m| m.voter).count() as f64);
        for member in &status.members {
            if let Some(lag) = member.lag {
                metrics::gauge!("testudo_raft_member_lag", "node_id" => member.node_id.to_string()).set(lag as f64);
            }
        }
    }
}
