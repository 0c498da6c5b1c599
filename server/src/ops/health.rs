//! `/live` and `/ready` (paths from `health_checks`), as SPIRE serves them: live while the
//! process runs; ready when this replica belongs to a cluster that has a leader, so it can
//! serve writes (forwarded) and linearizable reads, and its clock is in step with the
//! cluster's, so it can sign.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::cluster::runtime::ClusterRuntime;

#[derive(Serialize)]
struct Ready {
    ready: bool,
    member: bool,
    leader: Option<u64>,
    node_id: Option<u64>,
    /// Why this replica signs nothing now, if its clock is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<String>,
}

/// The health router for `live_path` and `ready_path`.
pub fn router(runtime: Arc<ClusterRuntime>, live_path: &str, ready_path: &str) -> Router {
    Router::new()
        .route(live_path, get(|| async { (StatusCode::OK, Json(serde_json::json!({ "live": true }))) }))
        .route(ready_path, get(ready))
        .with_state(runtime)
}

async fn ready(State(runtime): State<Arc<ClusterRuntime>>) -> (StatusCode, Json<Ready>) {
    let status = runtime.status();
    let leader = status.as_ref().and_then(|s| s.leader);
    let clock = runtime.clocks().check().err().map(|e| e.to_string());
    let body = Ready {
        ready: leader.is_some() && clock.is_none(),
        member: status.is_some(),
        leader,
        node_id: status.as_ref().map(|s| s.node_id),
        clock,
    };
    let code = if body.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}
