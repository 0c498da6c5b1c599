//! What a pristine replica of a declared cluster serves on its cluster port while it decides
//! whether to form the cluster or join it: the formation probe, answered "not formed", and
//! nothing else. Raft does not run yet, so no leader can replicate to it: a leader that
//! still lists a wiped replica's node id at this address must not count the empty replica
//! towards a quorum (entries committed before the wipe could be lost).

use std::net::SocketAddr;
use std::sync::Arc;

use proto::cluster::cluster_server::{Cluster, ClusterServer};
use proto::cluster::Payload;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::{Request, Response, Status};

use super::accept::{accept_tls, ConnectionLimits};
use super::server::{caller_node, clock_answer};
use super::tls::{server_config, ClusterTls, PresentedCertificate, TlsError};
use super::wire::{encode, FormationState};

/// The probe-only server; stops when [`Self::stop`] is called or it is dropped.
pub struct FormingServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Owns the listener: the port is free once it has ended.
    accept_task: tokio::task::JoinHandle<()>,
    task: tokio::task::JoinHandle<()>,
}

impl FormingServer {
    /// Listens on `listen` with this replica's certificate until stopped.
    pub async fn start(tls: &ClusterTls, listen: SocketAddr) -> Result<Self, TlsError> {
        let certificate = Arc::new(PresentedCertificate::new(&tls.chain, &tls.key_pkcs8)?);
        let acceptor = TlsAcceptor::from(Arc::new(server_config(tls, certificate)?));
        let listener =
            TcpListener::bind(listen).await.map_err(|e| TlsError::Config(format!("cannot listen on {listen}: {e}")))?;
        let (incoming, accept_task) = accept_tls(listener, acceptor, "cluster", ConnectionLimits::CLUSTER);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(4))
            .timeout(std::time::Duration::from_secs(5))
            .add_service(ClusterServer::new(Forming).max_decoding_message_size(1024))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "formation probe server stopped");
            }
        });
        Ok(Self { stop: Some(stop), accept_task, task })
    }

    /// Stops serving and returns once the port is free for the replica. Peers' open
    /// connections are given a moment to close, then dropped.
    pub async fn stop(mut self) {
        self.accept_task.abort();
        let _ = (&mut self.accept_task).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for FormingServer {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.task.abort();
    }
}

struct Forming;

fn forming() -> Status {
    Status::unavailable("this replica is deciding whether to form its cluster or join it")
}

#[tonic::async_trait]
impl Cluster for Forming {
    async fn append_entries(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
        Err(forming())
    }
    async fn vote(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
        Err(forming())
    }
    async fn install_snapshot(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
        Err(forming())
    }
    async fn write(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
        Err(forming())
    }
    async fn read_index(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
        Err(forming())
    }
    async fn admin(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
        Err(forming())
    }
    async fn join(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
        Err(forming())
    }
    async fn clock(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        clock_answer(&request)
    }
    async fn formation(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        caller_node(&request)?;
        Ok(Response::new(encode("Formation result", &FormationState { formed: false, members: Vec::new() })?))
    }
}
