//! Where "now" comes from, so time-driven logic can be tested with a clock the test moves.

use std::sync::Mutex;

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;

    /// The time, to sign with or to decide by what expired: refused while this replica's
    /// clock is known to be off from the cluster's.
    fn trusted_now(&self) -> Result<OffsetDateTime, ClockSkewed> {
        Ok(self.now())
    }
}

pub use raft_store::ClockSkewed;

/// The system's wall clock, checked against the other replicas' (see
/// [`raft_store::peer_clocks`]): what a running replica signs with.
#[derive(Clone, Debug)]
pub struct ClusterClock {
    clocks: raft_store::PeerClocks,
}

impl ClusterClock {
    pub fn new(clocks: raft_store::PeerClocks) -> Self {
        Self { clocks }
    }
}

impl Clock for ClusterClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn trusted_now(&self) -> Result<OffsetDateTime, ClockSkewed> {
        self.clocks.check()?;
        Ok(self.now())
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to; for tests and simulations.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self { now: Mutex::new(start) }
    }

    pub fn set(&self, now: OffsetDateTime) {
        if let Ok(mut guard) = self.now.lock() {
            *guard = now;
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        if let Ok(mut guard) = self.now.lock() {
            *guard += by;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.now.lock().map(|g| *g).unwrap_or_else(|p| *p.into_inner())
    }
}
