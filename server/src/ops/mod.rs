//! Operations endpoints: liveness and readiness for orchestrators, and Prometheus metrics.

pub mod api_metrics;
pub mod health;
pub mod metrics;
