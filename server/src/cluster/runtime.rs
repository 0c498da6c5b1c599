//! One replica's place in the cluster over its life: pristine until an admin initialises a
//! new cluster or joins an existing one, then a running Raft replica that restarts from its
//! data dir.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use identity::bundle::Bundle;
use identity::crypto::{KeyType, LocalKey, Signer};
use identity::TrustDomain;
use raft_store::command::CreateReplicaInvite;
use raft_store::model::ReplicaInvite;
use raft_store::network::tls::{joiner_endpoint, ClusterTls};
use raft_store::node::{ClusterStatus, Replica, ReplicaConfig, Timing};
use raft_store::PeerClocks;
use tokio::sync::{watch, Mutex};

use crate::ca::replicated::ClusterCa;
use crate::views::Views;
use zeroize::Zeroizing;

use super::admission::{Admission, JoinReply, JoinRequest};
use super::authority::{replicas_id, ClusterAuthority};
use super::files::{self, ClusterMaterial};
use super::formation::{self, Decision, Declared};
use super::invite::Invite;
use super::renewal::{Renewal, Renewing};
use super::rotate_ca::{self, CaFollower, Rotated};
use super::trust::ClusterTrust;
use super::ClusterSetupError;

/// Where this replica listens and how it is reached.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    pub node_id: u64,
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub raft_listen: SocketAddr,
    /// Address other replicas dial; `None` means the bound listen address.
    pub raft_advertise: Option<String>,
    /// The local IP outbound cluster connections come from; `None` lets the kernel choose.
    pub raft_source: Option<std::net::IpAddr>,
    pub api_address: String,
    pub timing: Timing,
    /// This replica's readings of the members' clocks, shared with whatever must not act
    /// on a clock that is off.
    pub clocks: PeerClocks,
    /// The cluster this replica forms or joins by itself (`cluster { peers … }`); its node
    /// id is then the cluster's choice, kept in its certificate, not `node_id`.
    pub declared: Option<Declared>,
}

/// How long a new replica may take to catch up before its join is reported as failed.
const CATCH_UP: Duration = Duration::from_secs(120);
/// Default invite lifetime.
pub const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(3600);

/// A new cluster's id, CA, and this replica's certificate.
fn new_cluster_material(trust_domain: &TrustDomain, node_id: u64) -> Result<ClusterMaterial, ClusterSetupError> {
    let mut id_bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id_bytes)
        .map_err(|_| ClusterSetupError::Certificate("no randomness available".into()))?;
    ClusterAuthority::create(trust_domain)?.material_for(trust_domain, node_id, hex::encode(id_bytes))
}

/// The replica, once it has one. Its phase is read without waiting: a call that arrives
/// while the replica forms or joins a cluster is answered at once, never held behind it.
pub struct ClusterRuntime {
    settings: ReplicaSettings,
    ca: ClusterCa,
    phase: watch::Sender<Phase>,
    /// One init, join or shutdown at a time; never held by a call that only reads.
    setup: Mutex<()>,
}

/// Where this replica is in its life.
#[derive(Clone)]
pub enum Phase {
    /// Belongs to no cluster: waits for `cluster init` or `cluster join`.
    Pristine,
    /// Forming a new cluster or joining one.
    Joining,
    Member(Arc<Member>),
    /// Shut down.
    Stopped,
}

/// Why the replica cannot serve a call now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotServing {
    #[error("this server belongs to no cluster yet")]
    Pristine,
    #[error("this server is forming or joining a cluster")]
    Joining,
    #[error("this server is shutting down")]
    Stopped,
}

/// A running replica of a cluster, its in-memory views, and what invites need of the
/// cluster's identity.
pub struct Member {
    pub replica: Arc<Replica>,
    pub views: Arc<Views>,
    cluster_id: String,
    /// The cluster CAs this replica trusts and issues from.
    pub trust: Arc<ClusterTrust>,
    /// Renews this replica's certificate while it runs; stops when dropped.
    _renewing: Renewing,
    /// Follows rotations of the cluster CA; stops when dropped.
    _following_ca: AbortOnDrop,
    /// Keeps `views` current; stops when dropped.
    _following: AbortOnDrop,
}

impl Member {
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ClusterRuntime {
    /// Starts the replica if this data dir already belongs to a cluster. `ca` is what its
    /// views build signers with.
    pub async fn start(settings: ReplicaSettings, ca: ClusterCa) -> Result<Self, ClusterSetupError> {
        let runtime = Self { settings, ca, phase: watch::channel(Phase::Pristine).0, setup: Mutex::new(()) };
        let material = files::load(&runtime.settings.data_dir)?;
        if let Some(material) = material {
            let node_id = match &runtime.settings.declared {
                Some(_) => raft_store::network::tls::node_id_of(&material.replica_cert_der).ok_or_else(|| {
                    ClusterSetupError::Certificate("this replica's certificate names no node id".into())
                })?,
                None => runtime.settings.node_id,
            };
            let member = runtime.start_replica(&material, node_id).await?;
            runtime.phase.send_replace(Phase::Member(Arc::new(member)));
        } else if runtime.settings.declared.is_none() {
            tracing::info!(
                "this replica belongs to no cluster yet: run `testudo-server cluster init` or `cluster join`"
            );
        }
        Ok(runtime)
    }

    /// What this replica is now.
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Changes of phase, as they happen.
    pub fn phases(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// The running member, or why there is none.
    pub fn member(&self) -> Result<Arc<Member>, NotServing> {
        match self.phase() {
            Phase::Member(member) => Ok(member),
            Phase::Pristine => Err(NotServing::Pristine),
            Phase::Joining => Err(NotServing::Joining),
            Phase::Stopped => Err(NotServing::Stopped),
        }
    }

    /// Runs `serve` with each member this replica becomes (at start, after init, join or
    /// restore), cancelling it when the phase changes; returns once the runtime stops.
    pub async fn for_each_member<F, Fut>(&self, mut serve: F)
    where
        F: FnMut(Arc<Member>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut phases = self.phases();
        loop {
            if let Ok(member) = self.member() {
                tokio::select! {
                    () = serve(member) => {}
                    changed = phases.changed() => if changed.is_err() { return } else { continue },
                }
            }
            if phases.changed().await.is_err() {
                return;
            }
        }
    }

    /// The running replica, if any.
    pub fn replica(&self) -> Option<Arc<Replica>> {
        self.member().ok().map(|m| m.replica.clone())
    }

    /// The cluster id, if this replica belongs to a cluster.
    pub fn cluster_id(&self) -> Option<String> {
        self.member().ok().map(|m| m.cluster_id.clone())
    }

    async fn start_replica(&self, material: &ClusterMaterial, node_id: u64) -> Result<Member, ClusterSetupError> {
        let s = &self.settings;
        let trust = Arc::new(ClusterTrust::from_material(&s.trust_domain, material)?);
        let renewal = Arc::new(Renewal::new(
            trust.clone(),
            s.trust_domain.clone(),
            node_id,
            s.data_dir.clone(),
            material.replica_key_pkcs8.clone(),
            material.replica_cert_der.clone(),
        ));
        let replica_cert_der = renewal.certificate_at(time::OffsetDateTime::now_utc()).await?;
        let tls = ClusterTls {
            chain: vec![replica_cert_der, trust.issuing().cert_der.clone()],
            key_pkcs8: material.replica_key_pkcs8.clone(),
            bundle: trust.bundle(),
            replicas: replicas_id(&s.trust_domain)?,
        };
        let late = Arc::new(OnceLock::new());
        let admission = Admission {
            trust_domain: s.trust_domain.clone(),
            cluster_id: material.cluster_id.clone(),
            trust: trust.clone(),
            replica: late.clone(),
        };
        let config = ReplicaConfig {
            node_id,
            cluster_id: material.cluster_id.clone(),
            data_dir: s.data_dir.join("raft"),
            listen: s.raft_listen,
            api_address: s.api_address.clone(),
            tls,
            timing: s.timing.clone(),
            join: Some(Arc::new(admission)),
            advertise_address: s.raft_advertise.clone(),
            source_address: s.raft_source,
            clocks: s.clocks.clone(),
        };
        let replica = Arc::new(Replica::start(config).await.map_err(|e| ClusterSetupError::Replica(e.to_string()))?);
        let _ = late.set(Arc::downgrade(&replica));
        let renewing = renewal.clone().spawn(Arc::downgrade(&replica));
        let ca_follower = Arc::new(CaFollower {
            trust: trust.clone(),
            renewal,
            trust_domain: s.trust_domain.clone(),
            node_id,
            data_dir: s.data_dir.clone(),
        });
        let following_ca = AbortOnDrop(ca_follower.spawn(Arc::downgrade(&replica)));
        let views = Arc::new(Views::new(self.ca.clone()));
        let following =
            AbortOnDrop(tokio::spawn(views.clone().follow(replica.local_reader().clone(), replica.applied().clone())));
        Ok(Member {
            replica,
            views,
            cluster_id: material.cluster_id.clone(),
            trust,
            _renewing: renewing,
            _following_ca: following_ca,
            _following: following,
        })
    }

    /// Makes this pristine replica the sole voter of a new cluster.
    pub async fn init(&self) -> Result<ClusterStatus, ClusterSetupError> {
        if self.settings.declared.is_some() {
            return Err(ClusterSetupError::Declared);
        }
        let _setup = self.begin_setup().await?;
        let material = new_cluster_material(&self.settings.trust_domain, self.settings.node_id)?;
        files::store(&self.settings.data_dir, &material)?;
        let member = self.start_replica(&material, self.settings.node_id).await?;
        let (replica, cluster_id) = (member.replica.clone(), member.cluster_id.clone());
        // From here the data dir holds a cluster: whatever happens next, this is a member.
        self.phase.send_replace(Phase::Member(Arc::new(member)));
        replica.initialize().await.map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
        replica
            .wait_for_leader(Duration::from_secs(10))
            .await
            .map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
        tracing::info!(%cluster_id, node_id = self.settings.node_id, "initialised a new cluster");
        Ok(replica.status())
    }

    /// Seeds this pristine replica's data dir from a backup, as the sole voter of a new
    /// cluster (new cluster id, new cluster CA; a declared cluster keeps its own) holding
    /// the backup's state. Offline: run it before `run`. Returns the cluster id, this
    /// replica's node id and the restored log index.
    pub fn restore(settings: &ReplicaSettings, backup: &[u8]) -> Result<(String, u64, u64), ClusterSetupError> {
        if files::load(&settings.data_dir)?.is_some() {
            return Err(ClusterSetupError::AlreadyMember);
        }
        let node = raft_store::ReplicaNode {
            raft_address: settings.raft_advertise.clone().unwrap_or_else(|| settings.raft_listen.to_string()),
            api_address: settings.api_address.clone(),
        };
        // A declared cluster is restored under its own CA and id, as node 1 or its founder
        // id: the other replicas, started empty, find it formed and join it.
        let (material, node_id) = match &settings.declared {
            Some(declared) => {
                let id = declared.bootstrap_id(&node.raft_address).unwrap_or(1);
                (declared.material(&settings.trust_domain, id)?, id)
            }
            None => (new_cluster_material(&settings.trust_domain, settings.node_id)?, settings.node_id),
        };
        let index =
            raft_store::backup::restore(&settings.data_dir.join("raft"), node_id, &material.cluster_id, node, backup)
                .map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
        files::store(&settings.data_dir, &material)?;
        Ok((material.cluster_id, node_id, index))
    }

    /// Writes the replicated state, as of now (read-index barrier), to a new file at `path`.
    pub async fn save_backup(&self, path: &std::path::Path) -> Result<u64, ClusterSetupError> {
        let replica = self.replica().ok_or(ClusterSetupError::NotMember)?;
        let reader = replica.linearizable_reader().await.map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
        let bytes = reader.backup().await.map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
        let path = path.to_path_buf();
        let len = bytes.len() as u64;
        tokio::task::spawn_blocking(move || files::write_new(&path, &bytes))
            .await
            .map_err(|e| ClusterSetupError::Files(e.to_string()))??;
        Ok(len)
    }

    /// Creates a one-time invite valid for `ttl`.
    pub async fn create_invite(&self, ttl: Duration) -> Result<(String, i64), ClusterSetupError> {
        let member = self.member().map_err(|_| ClusterSetupError::NotMember)?;
        let (replica, ca_cert_der) = (member.replica.clone(), member.trust.issuing().cert_der.clone());
        let mut addresses = vec![replica.node().raft_address.clone()];
        let status = replica.status();
        addresses
            .extend(status.members.iter().filter(|m| m.node_id != status.node_id).map(|m| m.node.raft_address.clone()));
        let invite = Invite::generate(&ca_cert_der, addresses)?;
        let ttl_secs = i64::try_from(ttl.as_secs()).map_err(|_| ClusterSetupError::Invite("ttl too long".into()))?;
        let expires_at = time::OffsetDateTime::now_utc().unix_timestamp() + ttl_secs;
        let command =
            CreateReplicaInvite(ReplicaInvite { secret_sha256: Invite::secret_sha256(&invite.secret), expires_at });
        let stored = replica.write(command).await.map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
        stored.map_err(|e| ClusterSetupError::Replica(format!("invite not stored: {e}")))?;
        Ok((invite.encode()?, expires_at))
    }

    /// Joins this pristine replica to the cluster `token` names and waits until it votes.
    pub async fn join(&self, token: &str) -> Result<ClusterStatus, ClusterSetupError> {
        if self.settings.declared.is_some() {
            return Err(ClusterSetupError::Declared);
        }
        let invite = Invite::decode(token)?;
        let setup = self.begin_setup().await?;
        let key = LocalKey::generate(KeyType::EcP256).map_err(|e| ClusterSetupError::Certificate(e.to_string()))?;
        let request = JoinRequest {
            secret: invite.secret.to_vec(),
            node_id: self.settings.node_id,
            raft_address: self.settings.raft_advertise.clone().unwrap_or_else(|| self.settings.raft_listen.to_string()),
            api_address: self.settings.api_address.clone(),
            public_key: key.public_key().spki_der().to_vec(),
        };
        let reply = self.ask_to_join(&invite, &request).await?;
        if super::invite::sha256(&reply.ca_cert_der) != invite.ca_sha256 {
            return Err(ClusterSetupError::Join("the cluster answered with a CA other than the invite's".into()));
        }
        let material = ClusterMaterial {
            cluster_id: reply.cluster_id,
            ca_generation: reply.ca_generation,
            ca_cert_der: reply.ca_cert_der,
            ca_key_pkcs8: Zeroizing::new(reply.ca_key_pkcs8),
            also_trusted: reply.also_trusted,
            replica_cert_der: reply.replica_cert_der,
            replica_key_pkcs8: key.to_pkcs8_der().map_err(|e| ClusterSetupError::Certificate(e.to_string()))?,
        };
        // Check the reply before keeping it: a usable CA, and a replica certificate it signed.
        ClusterAuthority::from_parts(material.ca_cert_der.clone(), &material.ca_key_pkcs8)?;
        let mut bundle = Bundle::new(self.settings.trust_domain.clone());
        bundle
            .add_x509_authority(&material.ca_cert_der)
            .map_err(|e| ClusterSetupError::Join(format!("cluster CA: {e}")))?;
        identity::x509::verify_x509_svid(
            &[material.replica_cert_der.as_slice()],
            &bundle,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| {
            ClusterSetupError::Join(format!("the replica certificate from the cluster does not verify: {e}"))
        })?;
        files::store(&self.settings.data_dir, &material)?;
        let member = self.start_replica(&material, self.settings.node_id).await?;
        let (replica, cluster_id) = (member.replica.clone(), member.cluster_id.clone());
        self.phase.send_replace(Phase::Member(Arc::new(member)));
        drop(setup);
        replica
            .join_through(&invite.addresses, CATCH_UP)
            .await
            .map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
        tracing::info!(%cluster_id, node_id = self.settings.node_id, "joined the cluster as a voter");
        Ok(replica.status())
    }

    /// Forms or joins the declared cluster (`cluster { peers … }`, see [`formation`]) and
    /// returns once this replica votes; a replica that already did returns at once. Until
    /// then the replica is `Joining`. Does nothing without a declared cluster.
    pub async fn form_declared(&self) -> Result<(), ClusterSetupError> {
        let Some(declared) = self.settings.declared.clone() else { return Ok(()) };
        if let Ok(member) = self.member() {
            // Its files were written but it stopped before forming or joining: go on.
            if member.replica.is_pristine().await.map_err(|e| ClusterSetupError::Replica(e.to_string()))? {
                self.finish_declared(&declared, &member.replica, None).await?;
            }
            return Ok(());
        }
        let setup = self.begin_setup().await?;
        let s = &self.settings;
        let me = s.raft_advertise.clone().unwrap_or_else(|| s.raft_listen.to_string());
        let provisional = match declared.bootstrap_id(&me) {
            Some(id) => id,
            None => formation::drawn_node_id()?,
        };
        let material = declared.material(&s.trust_domain, provisional)?;
        let decision =
            formation::probe_until_decided(&declared, &s.trust_domain, &me, s.raft_listen, &material).await?;
        let (material, node_id, through) = match decision {
            Decision::Form => (material, provisional, None),
            Decision::Join(through) => {
                // A founder's id may still be a member (its data dir was lost): an empty
                // replica must not count as that member, so it joins under a new id.
                let id = formation::drawn_node_id()?;
                (declared.material(&s.trust_domain, id)?, id, Some(through))
            }
            Decision::Wait(why) => return Err(ClusterSetupError::Join(why)),
        };
        files::store(&s.data_dir, &material)?;
        let member = self.start_replica(&material, node_id).await?;
        let replica = member.replica.clone();
        self.phase.send_replace(Phase::Member(Arc::new(member)));
        drop(setup);
        self.finish_declared(&declared, &replica, through).await
    }

    /// Initialises a founder that decided to form the cluster; asks the members to add any
    /// other replica (in place of the members at its address) until it votes.
    async fn finish_declared(
        &self,
        declared: &Declared,
        replica: &Replica,
        through: Option<Vec<String>>,
    ) -> Result<(), ClusterSetupError> {
        let founder = declared.bootstrap_id(&replica.node().raft_address) == Some(replica.id());
        if founder {
            replica
                .initialize_with(declared.first_members())
                .await
                .map_err(|e| ClusterSetupError::Replica(e.to_string()))?;
            tracing::info!(node_id = replica.id(), "formed the declared cluster with its peers");
            return Ok(());
        }
        let through = through.unwrap_or_else(|| declared.peers.clone());
        loop {
            match replica.replace_through(&through, CATCH_UP).await {
                Ok(()) => {
                    tracing::info!(node_id = replica.id(), "joined the declared cluster as a voter");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not join the declared cluster yet; asking again");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    async fn ask_to_join(&self, invite: &Invite, request: &JoinRequest) -> Result<JoinReply, ClusterSetupError> {
        let data = serde_json::to_vec(request).map_err(|e| ClusterSetupError::Join(e.to_string()))?;
        let replicas = replicas_id(&self.settings.trust_domain)?;
        let mut failures = Vec::new();
        for address in &invite.addresses {
            let endpoint = joiner_endpoint(replicas.clone(), invite.ca_sha256, address, Duration::from_secs(15))
                .map_err(|e| ClusterSetupError::Join(e.to_string()))?
                .local_address(self.settings.raft_source);
            let channel = match endpoint.connect().await {
                Ok(channel) => channel,
                Err(e) => {
                    failures.push(format!("{address}: {e}"));
                    continue;
                }
            };
            let mut client = proto::cluster::cluster_client::ClusterClient::new(channel);
            match client.join(proto::cluster::Payload { data: data.clone() }).await {
                Ok(reply) => {
                    return serde_json::from_slice(&reply.into_inner().data)
                        .map_err(|e| ClusterSetupError::Join(format!("malformed reply from {address}: {e}")));
                }
                // A refusal is the cluster's answer: another address would say the same.
                Err(status) if status.code() != tonic::Code::Unavailable => {
                    return Err(ClusterSetupError::Join(format!("{address} refused: {}", status.message())));
                }
                Err(status) => failures.push(format!("{address}: {}", status.message())),
            }
        }
        Err(ClusterSetupError::Join(format!("no replica of the invite answered: {}", failures.join("; "))))
    }

    /// Rotates the cluster CA (see [`rotate_ca`]), waiting up to `within` for the members.
    pub async fn rotate_ca(&self, within: Duration) -> Result<Rotated, ClusterSetupError> {
        let member = self.member().map_err(|_| ClusterSetupError::NotMember)?;
        rotate_ca::rotate(&member.replica, &member.trust, &self.settings.trust_domain, within).await
    }

    /// This replica's readings of the members' clocks.
    pub fn clocks(&self) -> &PeerClocks {
        &self.settings.clocks
    }

    /// Status of this replica's view of the cluster, or `None` when pristine.
    pub fn status(&self) -> Option<ClusterStatus> {
        self.replica().map(|r| r.status())
    }

    /// Starts an init or join: refused unless pristine, and the phase is `Joining` until
    /// the returned guard is dropped or the caller moves the phase on. A setup that fails
    /// before starting a replica leaves the replica pristine again.
    async fn begin_setup(&self) -> Result<Setup<'_>, ClusterSetupError> {
        let lock = self.setup.lock().await;
        match self.phase() {
            Phase::Pristine => {}
            Phase::Stopped => return Err(ClusterSetupError::Replica(NotServing::Stopped.to_string())),
            Phase::Joining | Phase::Member(_) => return Err(ClusterSetupError::AlreadyMember),
        }
        self.phase.send_replace(Phase::Joining);
        Ok(Setup { phase: &self.phase, _lock: lock })
    }

    /// Stops the replica, releasing the data dir.
    pub async fn shutdown(&self) {
        let _setup = self.setup.lock().await;
        let Phase::Member(member) = self.phase.send_replace(Phase::Stopped) else { return };
        match Arc::try_unwrap(member) {
            Ok(member) => {
                drop(member._following);
                match Arc::try_unwrap(member.replica) {
                    Ok(replica) => replica.shutdown().await,
                    Err(_) => tracing::warn!("replica still in use at shutdown; its tasks stop with the process"),
                }
            }
            Err(_) => tracing::warn!("replica still in use at shutdown; its tasks stop with the process"),
        }
    }
}

/// An init or join in progress: back to pristine if dropped while still joining.
struct Setup<'a> {
    phase: &'a watch::Sender<Phase>,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

impl Drop for Setup<'_> {
    fn drop(&mut self) {
        self.phase.send_if_modified(|phase| {
            let joining = matches!(phase, Phase::Joining);
            if joining {
                *phase = Phase::Pristine;
            }
            joining
        });
    }
}
