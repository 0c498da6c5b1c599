//! The RocksDB column families and what each holds.

/// A column family. Log and state machine share one database, so one WAL sync covers both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Format header, node id, cluster id, vote, committed and last-purged log ids.
    Meta,
    /// Raft log entries by index (u64 big-endian).
    Logs,
    /// Last applied log id, last membership, current revision.
    SmMeta,
    Entries,
    EntriesByParent,
    EntriesBySpiffeId,
    EntriesBySelector,
    /// SPIFFE ID, parent ID and selectors → entry id: the uniqueness rule.
    EntriesByIdentity,
    Agents,
    JoinTokens,
    LocalBundle,
    FederatedBundles,
    FederationRelationships,
    CaJournal,
    /// Revision (u64 big-endian) → what changed.
    ChangeLog,
    /// SHA-256 of an invite secret (hex) → replica invitation.
    ReplicaInvites,
}

impl Cf {
    /// The column families that make up the state machine, which snapshots carry.
    pub const STATE: [Cf; 14] = [
        Cf::SmMeta,
        Cf::Entries,
        Cf::EntriesByParent,
        Cf::EntriesBySpiffeId,
        Cf::EntriesBySelector,
        Cf::EntriesByIdentity,
        Cf::Agents,
        Cf::JoinTokens,
        Cf::LocalBundle,
        Cf::FederatedBundles,
        Cf::FederationRelationships,
        Cf::CaJournal,
        Cf::ChangeLog,
        Cf::ReplicaInvites,
    ];

    /// Every column family: the log's own and the state machine's.
    pub fn all() -> impl Iterator<Item = Cf> {
        [Cf::Meta, Cf::Logs].into_iter().chain(Cf::STATE)
    }

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Logs => "logs",
            Cf::SmMeta => "sm_meta",
            Cf::Entries => "entries",
            Cf::EntriesByParent => "entries_by_parent",
            Cf::EntriesBySpiffeId => "entries_by_spiffe_id",
            Cf::EntriesBySelector => "entries_by_selector",
            Cf::EntriesByIdentity => "entries_by_identity",
            Cf::Agents => "agents",
            Cf::JoinTokens => "join_tokens",
            Cf::LocalBundle => "local_bundle",
            Cf::FederatedBundles => "federated_bundles",
            Cf::FederationRelationships => "federation_relationships",
            Cf::CaJournal => "ca_journal",
            Cf::ChangeLog => "change_log",
            Cf::ReplicaInvites => "replica_invites",
        }
    }

    pub fn from_name(name: &str) -> Option<Cf> {
        Cf::all().find(|cf| cf.name() == name)
    }
}

/// Keys in `Cf::Meta`.
pub mod meta_key {
    pub const HEADER: &[u8] = b"header";
    pub const VOTE: &[u8] = b"vote";
    pub const COMMITTED: &[u8] = b"committed";
    pub const LAST_PURGED: &[u8] = b"last_purged";
}

/// Keys in `Cf::CaJournal`.
pub mod ca_key {
    pub const JOURNAL: &[u8] = b"journal";
    /// `model::KeyIntents`, absent until a key id is first reserved.
    pub const KEY_INTENTS: &[u8] = b"key_intents";
}

/// Keys in `Cf::SmMeta`.
pub mod sm_key {
    pub const LAST_APPLIED: &[u8] = b"last_applied";
    pub const MEMBERSHIP: &[u8] = b"membership";
    pub const REVISION: &[u8] = b"revision";
    /// The oldest revision the change log may still hold: everything before it was pruned.
    pub const CHANGE_LOG_FLOOR: &[u8] = b"change_log_floor";
    /// Node ids that were members and were removed: they may not call or join again.
    pub const REMOVED_REPLICAS: &[u8] = b"removed_replicas";
    /// The latest rotation of the cluster CA (`model::ClusterCaRotation`).
    pub const CLUSTER_CA: &[u8] = b"cluster_ca";
    /// Trust domain → `model::FederationRefresh`: the refresh schedule of federated bundles.
    pub const FEDERATION_REFRESH: &[u8] = b"federation_refresh";
    /// `model::UpstreamStatus`: how a nested cluster's calls to its upstream are going.
    pub const UPSTREAM_STATUS: &[u8] = b"upstream_status";
    /// How many idempotent writes were answered: the next one's slot in the ring of kept
    /// answers (`state_machine::requests`), whose rows also live in this table.
    pub const REQUESTS_SEEN: &[u8] = b"requests_seen";
}
