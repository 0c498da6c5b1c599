//! Cluster life cycle of a server replica: the cluster CA and replica certificates
//! ([`authority`]), the files a replica keeps ([`files`]), one-time invites ([`invite`]),
//! declarative formation ([`formation`]), admission of joiners ([`admission`]), renewal of
//! replica certificates ([`renewal`]), the CAs a replica trusts ([`trust`]) and their
//! rotation ([`rotate_ca`]), and the runtime that ties them to the Raft replica and its
//! views ([`runtime`]).
//! docs/cluster.md describes the flow and its threat model.

pub mod admission;
pub mod authority;
pub mod files;
pub mod formation;
pub mod invite;
pub mod renewal;
pub mod rotate_ca;
pub mod runtime;
pub mod trust;

/// Why a replica could not initialise, join or start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterSetupError {
    #[error("this replica already belongs to a cluster")]
    AlreadyMember,
    #[error("this replica belongs to no cluster yet; run `testudo-server cluster init` or `cluster join`")]
    NotMember,
    #[error("cluster files: {0}")]
    Files(String),
    #[error("cluster certificate: {0}")]
    Certificate(String),
    #[error("invite: {0}")]
    Invite(String),
    #[error("join failed: {0}")]
    Join(String),
    #[error("replica: {0}")]
    Replica(String),
    #[error("cluster CA rotation: {0}")]
    Rotation(String),
    #[error(
        "this replica forms or joins its cluster by itself (cluster.peers): init and join are for the invite flow"
    )]
    Declared,
}
