//! How far this replica's wall clock is from its peers'. Raft needs no wall clock, but
//! what replicas do with the time does: a replica whose clock runs minutes ahead signs
//! certificates that workloads reject as not yet valid and, leading, prunes entries and
//! tokens that have not expired. Each replica asks every member for its clock every few
//! seconds (the `Clock` call, timed both ways) and keeps the latest offset of each; the
//! cluster's time is the median of its members' clocks, this one's included, so with one
//! clock off in three, the two good replicas agree with each other and the third sees that
//! it is the odd one out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::types::NodeId;

/// How often each peer's clock is read.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A reading older than this no longer counts: the peer may have left or its clock moved.
const FRESH_FOR: Duration = Duration::from_secs(30);
/// The offset allowed when none is configured: well inside the 10 s X.509-SVIDs are
/// backdated by, so a replica inside it never signs what a correct clock refuses.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5);

/// Why this replica's clock is not to be trusted now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockSkewed {
    /// It is further from the cluster's than allowed.
    #[error(
        "this replica's clock is {} ms {} the cluster's (the median of {members} members' clocks), more \
         than the {} ms allowed: it does nothing time-dependent until its clock is fixed",
        .offset_ms.unsigned_abs(),
        if *.offset_ms > 0 { "behind" } else { "ahead of" },
        .max.as_millis()
    )]
    Off {
        /// The cluster's time minus this replica's, in milliseconds: positive when this
        /// replica's clock is behind.
        offset_ms: i64,
        max: Duration,
        /// How many clocks the median was taken over, this replica's included.
        members: usize,
    },
    /// The replica has just started and has not yet asked its peers for their clocks.
    #[error("this replica has not yet compared its clock with the other members' (it just started)")]
    NotYetCompared,
}

impl ClockSkewed {
    /// The cluster's time minus this replica's, in milliseconds, where known.
    pub fn offset_ms(&self) -> Option<i64> {
        match self {
            Self::Off { offset_ms, .. } => Some(*offset_ms),
            Self::NotYetCompared => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Reading {
    /// The peer's clock minus ours, shrunk toward zero by half the round trip (the most
    /// the peer's answer could have been delayed either way): never larger than the truth.
    offset_ms: i64,
    at: Instant,
}

/// The latest clock reading of each peer. Cheap to clone; clones share the readings.
#[derive(Clone, Debug)]
pub struct PeerClocks {
    readings: Arc<Mutex<BTreeMap<NodeId, Reading>>>,
    max_skew: Duration,
    /// Set once every member was asked after start: a replica restarted with a clock off
    /// must not sign in the seconds before it finds out.
    compared: Arc<AtomicBool>,
    /// When this replica first set out to read each peer's clock (it was a member then).
    noticed: Arc<Mutex<BTreeMap<NodeId, Instant>>>,
}

impl Default for PeerClocks {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SKEW)
    }
}

/// Milliseconds since the Unix epoch by this process's wall clock.
pub fn wall_clock_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

impl PeerClocks {
    pub fn new(max_skew: Duration) -> Self {
        Self { readings: Arc::default(), max_skew, compared: Arc::default(), noticed: Arc::default() }
    }

    /// A clock that trusts itself from the start: for replicas that never ask their peers
    /// (tools, tests).
    pub fn compared(max_skew: Duration) -> Self {
        let clocks = Self::new(max_skew);
        clocks.compared.store(true, Ordering::Relaxed);
        clocks
    }

    pub fn max_skew(&self) -> Duration {
        self.max_skew
    }

    /// Records a reading of `peer`'s clock: `peer_ms` was its answer to a call sent when our
    /// clock read `sent_ms` and answered `round_trip` later.
    pub fn record(&self, peer: NodeId, sent_ms: i64, round_trip: Duration, peer_ms: i64) {
        let half_trip = i64::try_from(round_trip.as_millis() / 2).unwrap_or(i64::MAX);
        let raw = peer_ms.saturating_sub(sent_ms.saturating_add(half_trip));
        let offset_ms = raw.signum() * raw.abs().saturating_sub(half_trip).max(0);
        if let Ok(mut readings) = self.readings.lock() {
            readings.insert(peer, Reading { offset_ms, at: Instant::now() });
        }
        metrics::gauge!("testudo_clock_offset_seconds").set(self.cluster_offset_ms() as f64 / 1000.0);
    }

    /// The cluster's time minus this replica's, in milliseconds: the median of the fresh
    /// readings and our own clock (offset 0). Between two middle values, the one nearer
    /// zero: with too few readings to outvote it, our own clock is given the benefit.
    pub fn cluster_offset_ms(&self) -> i64 {
        self.offsets().1
    }

    /// Notes that `peers` are members whose clocks are to be read, from now on for those new.
    fn notice(&self, peers: impl IntoIterator<Item = NodeId>) {
        if let Ok(mut noticed) = self.noticed.lock() {
            for peer in peers {
                noticed.entry(peer).or_insert_with(Instant::now);
            }
        }
    }

    /// How long this replica has not heard from `peer`: since its last answer for its clock,
    /// or since this replica first tried to read it if it never answered; zero for a peer
    /// this replica has not tried yet.
    pub fn unheard_for(&self, peer: NodeId) -> Duration {
        let Some(noticed) = self.noticed.lock().ok().and_then(|n| n.get(&peer).copied()) else {
            return Duration::ZERO;
        };
        let last = self.readings.lock().ok().and_then(|r| r.get(&peer).map(|r| r.at));
        last.map_or(noticed, |at| at.max(noticed)).elapsed()
    }

    /// How many clocks the cluster's time is taken over now: this replica's and each peer
    /// read in the last 30 seconds.
    pub fn clocks_read(&self) -> usize {
        self.offsets().0
    }

    fn offsets(&self) -> (usize, i64) {
        let mut offsets = vec![0_i64];
        if let Ok(readings) = self.readings.lock() {
            offsets.extend(readings.values().filter(|r| r.at.elapsed() < FRESH_FOR).map(|r| r.offset_ms));
        }
        offsets.sort_unstable();
        let n = offsets.len();
        let median = if n % 2 == 1 {
            offsets[n / 2]
        } else {
            let (a, b) = (offsets[n / 2 - 1], offsets[n / 2]);
            if a.abs() <= b.abs() {
                a
            } else {
                b
            }
        };
        (n, median)
    }

    /// `Err` when this replica's clock is further than allowed from the cluster's, or has
    /// not been compared with the other members' since start.
    pub fn check(&self) -> Result<(), ClockSkewed> {
        if !self.compared.load(Ordering::Relaxed) {
            return Err(ClockSkewed::NotYetCompared);
        }
        let (members, offset_ms) = self.offsets();
        if offset_ms.unsigned_abs() > u64::try_from(self.max_skew.as_millis()).unwrap_or(u64::MAX) {
            return Err(ClockSkewed::Off { offset_ms, max: self.max_skew, members });
        }
        Ok(())
    }

    /// Among `candidates`, the peers whose clocks are within the allowed skew of the
    /// cluster's, nearest first: where a replica whose own clock is off hands leadership.
    pub fn in_step(&self, candidates: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let cluster = self.cluster_offset_ms();
        let max = i64::try_from(self.max_skew.as_millis()).unwrap_or(i64::MAX);
        let Ok(readings) = self.readings.lock() else {
            return Vec::new();
        };
        let mut near: Vec<(i64, NodeId)> = candidates
            .into_iter()
            .filter_map(|id| readings.get(&id).filter(|r| r.at.elapsed() < FRESH_FOR).map(|r| (r.offset_ms, id)))
            .map(|(offset, id)| ((offset - cluster).abs(), id))
            .filter(|(distance, _)| *distance <= max)
            .collect();
        near.sort_unstable();
        near.into_iter().map(|(_, id)| id).collect()
    }
}

/// Reads every other member's clock every [`PROBE_EVERY`] into `clocks`, until the Raft
/// core whose `metrics` these are stops. Holds no Raft handle, so it keeps nothing alive.
pub(crate) async fn probe(
    id: NodeId,
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, crate::ReplicaNode>>,
    client: crate::network::ClusterClient,
    clocks: PeerClocks,
) {
    let mut first = true;
    loop {
        let sleep = tokio::time::sleep(if first { Duration::ZERO } else { PROBE_EVERY });
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
        let peers: Vec<(NodeId, String)> = metrics
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(peer, _)| **peer != id)
            .map(|(peer, node)| (*peer, node.raft_address.clone()))
            .collect();
        clocks.notice(peers.iter().map(|(peer, _)| *peer));
        let mut reads = tokio::task::JoinSet::new();
        for (peer, address) in peers {
            let (client, clocks) = (client.clone(), clocks.clone());
            reads.spawn(async move {
                let (sent_ms, sent) = (wall_clock_ms(), Instant::now());
                match client.clock(peer, &address).await {
                    Ok(peer_ms) => clocks.record(peer, sent_ms, sent.elapsed(), peer_ms),
                    // A peer that is down or of an older build has no say; its last
                    // reading ages out.
                    Err(e) => tracing::debug!(peer, error = %e, "cannot read a peer's clock"),
                }
            });
        }
        while reads.join_next().await.is_some() {}
        if first {
            first = false;
            clocks.compared.store(true, Ordering::Relaxed);
        }
        if let Err(skewed) = clocks.check() {
            tracing::warn!(offset_ms = skewed.offset_ms(), "{skewed}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_unheard_since_its_last_answer_or_since_it_was_first_asked() {
        let clocks = PeerClocks::new(Duration::from_secs(5));
        clocks.notice([2, 3]);
        std::thread::sleep(Duration::from_millis(30));
        clocks.record(2, wall_clock_ms(), Duration::ZERO, wall_clock_ms());
        clocks.notice([2, 3, 4]);
        assert!(clocks.unheard_for(2) < Duration::from_millis(30));
        assert!(clocks.unheard_for(3) >= Duration::from_millis(30), "never answered: counted from the first ask");
        assert!(clocks.unheard_for(4) < Duration::from_millis(30), "asked just now");
        assert_eq!(clocks.unheard_for(5), Duration::ZERO, "never asked");
    }

    const MINUTE: i64 = 60_000;

    fn clocks(peer_offsets: &[i64]) -> PeerClocks {
        let clocks = PeerClocks::compared(Duration::from_secs(5));
        for (i, offset) in peer_offsets.iter().enumerate() {
            clocks.record(i as NodeId + 2, 1_000_000, Duration::ZERO, 1_000_000 + offset);
        }
        clocks
    }

    #[test]
    fn the_odd_clock_out_is_the_one_that_is_off() {
        // Seen from the replica 10 minutes ahead: both peers are 10 minutes behind it.
        let ahead = clocks(&[-10 * MINUTE, -10 * MINUTE]);
        let skewed = ahead.check().expect_err("the clock ahead is off");
        assert_eq!(skewed, ClockSkewed::Off { offset_ms: -10 * MINUTE, max: Duration::from_secs(5), members: 3 });
        assert!(skewed.to_string().contains("ahead of"), "{skewed}");
        // Seen from a good replica: one peer ahead, one in step.
        assert_eq!(clocks(&[10 * MINUTE, 0]).check(), Ok(()));
        // Five replicas, one behind: the others are fine, the one behind is not.
        assert_eq!(clocks(&[-3 * MINUTE, 0, 0, 0]).check(), Ok(()));
        let behind = clocks(&[3 * MINUTE; 4]).check().expect_err("behind");
        assert!(behind.to_string().contains("behind"), "{behind}");
    }

    #[test]
    fn a_clock_not_yet_compared_is_not_trusted() {
        let fresh = PeerClocks::new(Duration::from_secs(5));
        assert_eq!(fresh.check(), Err(ClockSkewed::NotYetCompared));
        assert_eq!(PeerClocks::compared(Duration::from_secs(5)).check(), Ok(()));
    }

    #[test]
    fn too_few_readings_to_outvote_it_leave_a_clock_trusted() {
        assert_eq!(clocks(&[]).check(), Ok(()));
        // One peer against us is a tie: we do not condemn our own clock on one word.
        assert_eq!(clocks(&[10 * MINUTE]).check(), Ok(()));
    }

    #[test]
    fn a_slow_answer_is_not_mistaken_for_a_clock_off() {
        let clocks = PeerClocks::compared(Duration::from_secs(5));
        // Sent at 0 by our clock; the peer's clock is right, but its answer took 20 s to
        // come back: it read 10 s (half-way), which the round trip fully explains.
        clocks.record(2, 0, Duration::from_secs(20), 10_000);
        clocks.record(3, 0, Duration::from_secs(20), 19_000);
        assert_eq!(clocks.cluster_offset_ms(), 0);
        // A reading beyond the round trip's slack keeps what the slack cannot explain.
        clocks.record(2, 0, Duration::from_millis(10), 60_005);
        clocks.record(3, 0, Duration::from_millis(10), 60_005);
        assert_eq!(clocks.cluster_offset_ms(), 59_995);
    }

    #[test]
    fn leadership_goes_to_a_peer_in_step() {
        let from_ahead = clocks(&[-10 * MINUTE, -10 * MINUTE - 1_000]);
        assert_eq!(from_ahead.in_step([2, 3, 9]), vec![2, 3]);
        assert_eq!(clocks(&[10 * MINUTE, 0]).in_step([2, 3]), vec![3]);
    }
}
