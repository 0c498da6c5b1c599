//! What the agent reports about itself (the admin socket's debug API): when it started, its
//! current SVID, and when it last synced with the servers.

use std::sync::RwLock;
use std::time::Instant;

use time::OffsetDateTime;

/// Shared by the runtime (which records) and the admin API (which reads).
pub struct AgentStatus {
    started: Instant,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    svid_chain: Vec<Vec<u8>>,
    last_sync_success: Option<OffsetDateTime>,
}

impl Default for AgentStatus {
    fn default() -> Self {
        Self { started: Instant::now(), inner: RwLock::default() }
    }
}

impl AgentStatus {
    pub fn set_svid(&self, chain: &[Vec<u8>]) {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).svid_chain = chain.to_vec();
    }

    pub fn synced(&self) {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).last_sync_success = Some(OffsetDateTime::now_utc());
    }

    pub fn svid_chain(&self) -> Vec<Vec<u8>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).svid_chain.clone()
    }

    pub fn last_sync_success(&self) -> Option<OffsetDateTime> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).last_sync_success
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}
