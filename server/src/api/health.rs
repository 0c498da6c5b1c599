//! `grpc.health.v1.Health`: SERVING while this replica belongs to a cluster with a leader
//! (it can then commit writes and serve linearizable reads), NOT_SERVING otherwise.

use std::time::Duration;

use proto::health::health_check_response::ServingStatus;
use proto::health::health_server::Health;
use proto::health::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

use super::ApiContext;

/// The services a caller may ask about by name; "" is the server as a whole.
const SERVICES: [&str; 8] = [
    "",
    "spire.api.server.agent.v1.Agent",
    "spire.api.server.entry.v1.Entry",
    "spire.api.server.svid.v1.SVID",
    "spire.api.server.bundle.v1.Bundle",
    "spire.api.server.localauthority.v1.LocalAuthority",
    "spire.api.server.debug.v1.Debug",
    "grpc.health.v1.Health",
];

/// Watch streams open at once: anyone may open one, so each is a bounded resource.
pub const MAX_WATCHES: usize = 64;

pub struct HealthService {
    pub context: ApiContext,
    watches: std::sync::Arc<tokio::sync::Semaphore>,
}

impl HealthService {
    pub fn new(context: ApiContext) -> Self {
        Self { context, watches: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WATCHES)) }
    }
}

async fn status(context: &ApiContext) -> ServingStatus {
    match context.runtime.status() {
        Some(s) if s.leader.is_some() => ServingStatus::Serving,
        _ => ServingStatus::NotServing,
    }
}

fn known(service: &str) -> Result<(), Status> {
    if SERVICES.contains(&service) {
        Ok(())
    } else {
        Err(Status::not_found(format!("service: unknown service {service:?}")))
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        Ok(Response::new(HealthCheckResponse { status: status(&self.context).await as i32 }))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let slot = self.watches.clone().try_acquire_owned().map_err(|_| {
            proto::reason::Reason::RateLimited
                .status(tonic::Code::ResourceExhausted, format!("{MAX_WATCHES} health watches are open; try later"))
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let context = self.context.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if !SERVICES.contains(&service.as_str()) {
                let _ = tx.send(Ok(HealthCheckResponse { status: ServingStatus::ServiceUnknown as i32 })).await;
                return;
            }
            let mut last = None;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // The caller went away: stop, and give the slot back.
                    () = tx.closed() => return,
                }
                let now = status(&context).await;
                if last != Some(now) {
                    if tx.send(Ok(HealthCheckResponse { status: now as i32 })).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
