//! The tail of the log, kept in memory. Apply and replication read the entries just
//! appended; serving them from here spares a RocksDB read and a decode of every entry on
//! every replica. Entries are cheap to clone (commands are shared). Entries this replica
//! has applied go first, once the tail passes a small cap; entries not applied yet stay up
//! to a larger one, because a follower whose apply falls behind (it shares the CPU with
//! everything else) would otherwise read them back from RocksDB and decode them again,
//! which is more CPU and more lag. Older entries are read from RocksDB.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::types::Entry;

/// Applied entries are dropped beyond this many entries or encoded bytes.
const APPLIED_ENTRIES: usize = 4096;
const APPLIED_BYTES: usize = 16 << 20;
/// Any entry is dropped beyond these: apply reads what is older from RocksDB.
const MAX_ENTRIES: usize = 65_536;
const MAX_BYTES: usize = 128 << 20;

/// A suffix of the log: consecutive indexes ending at the last appended entry, or empty.
#[derive(Default)]
pub(crate) struct RecentEntries {
    tail: Mutex<Tail>,
    /// One past the last index the state machine has applied (0: none yet).
    applied_end: AtomicU64,
}

#[derive(Default)]
struct Tail {
    /// Entries with their encoded sizes, by consecutive index.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn drop_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops the oldest entries while the tail is over a cap: the applied caps for entries
    /// before `applied_end`, the hard caps for any.
    fn trim(&mut self, applied_end: u64) {
        while let Some((front, _)) = self.entries.front() {
            let applied = front.log_id.index < applied_end;
            let over = |entries: usize, bytes: usize| {
                self.entries.len() > entries || (self.bytes > bytes && self.entries.len() > 1)
            };
            if !(over(MAX_ENTRIES, MAX_BYTES) || (applied && over(APPLIED_ENTRIES, APPLIED_BYTES))) {
                break;
            }
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    fn drop_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.log_id.index <= index) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }
}

impl RecentEntries {
    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // A panic while holding the lock leaves a consistent deque (every step is one
        // push or pop), so a poisoned lock is still usable.
        self.tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records entries just handed to the log writer (consecutive, each with its encoded
    /// size). Entries at or after the first new index are replaced, as the log's are.
    pub(crate) fn appended(&self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        let mut tail = self.tail();
        for (entry, size) in entries {
            let index = entry.log_id.index;
            tail.drop_from(index);
            let follows = tail.entries.back().is_none_or(|(last, _)| last.log_id.index + 1 == index);
            if !follows {
                // A gap would break "a suffix of the log"; start over from this entry.
                tail.entries.clear();
                tail.bytes = 0;
            }
            tail.entries.push_back((entry, size));
            tail.bytes += size;
        }
        tail.trim(self.applied_end.load(Ordering::Acquire));
    }

    /// The state machine has applied every entry up to and including `index`.
    pub(crate) fn applied(&self, index: u64) {
        let end = index.saturating_add(1);
        self.applied_end.fetch_max(end, Ordering::AcqRel);
        self.tail().trim(end);
    }

    /// The log was truncated: entries at and after `index` are gone.
    pub(crate) fn truncated(&self, index: u64) {
        self.tail().drop_from(index);
    }

    /// The log was purged: entries up to and including `index` are gone.
    pub(crate) fn purged(&self, index: u64) {
        self.tail().drop_through(index);
    }

    /// Entries `start..end` (`end` None: to the end of the log), if all of them are here.
    pub(crate) fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let tail = self.tail();
        let first = tail.first_index()?;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let entries = tail.entries.iter().skip(skip);
        Some(match end {
            Some(end) => entries.take_while(|(e, _)| e.log_id.index < end).map(|(e, _)| e.clone()).collect(),
            None => entries.map(|(e, _)| e.clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(index: u64) -> (Entry, usize) {
        (Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }, 10)
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let recent = RecentEntries::default();
        assert_eq!(indexes(recent.get(1, None)), None, "empty: nothing is served");
        recent.appended((5..=9).map(entry));
        assert_eq!(indexes(recent.get(5, Some(8))), Some(vec![5, 6, 7]));
        assert_eq!(indexes(recent.get(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(recent.get(4, Some(6))), None, "index 4 is only on disk");
        assert_eq!(indexes(recent.get(10, None)), Some(vec![]), "past the end is empty, as on disk");
    }

    #[test]
    fn follows_truncate_purge_and_overwrite() {
        let recent = RecentEntries::default();
        recent.appended((1..=10).map(entry));
        recent.truncated(8);
        assert_eq!(indexes(recent.get(6, None)), Some(vec![6, 7]));
        recent.purged(3);
        assert_eq!(indexes(recent.get(3, None)), None);
        assert_eq!(indexes(recent.get(4, Some(6))), Some(vec![4, 5]));
        // An append at an existing index replaces it and everything after it.
        recent.appended([entry(6)]);
        assert_eq!(indexes(recent.get(4, None)), Some(vec![4, 5, 6]));
        // A gap starts the tail over, so it never claims entries it lacks.
        recent.appended([entry(20)]);
        assert_eq!(indexes(recent.get(6, None)), None);
        assert_eq!(indexes(recent.get(20, None)), Some(vec![20]));
    }

    #[test]
    fn keeps_within_its_caps() {
        let recent = RecentEntries::default();
        recent.appended((1..=(MAX_ENTRIES as u64 + 10)).map(entry));
        assert_eq!(indexes(recent.get(10, Some(12))), None, "the oldest were dropped");
        assert_eq!(indexes(recent.get(11, Some(13))), Some(vec![11, 12]));
        let big = RecentEntries::default();
        big.appended((1..=3).map(|i| (entry(i).0, MAX_BYTES / 2)));
        assert_eq!(indexes(big.get(1, None)), None);
        assert_eq!(indexes(big.get(2, None)), Some(vec![2, 3]));
    }

    #[test]
    fn keeps_entries_not_yet_applied_past_the_applied_caps() {
        let recent = RecentEntries::default();
        let size = APPLIED_BYTES / 4;
        recent.appended((1..=8).map(|i| (entry(i).0, size)));
        assert_eq!(indexes(recent.get(1, Some(3))), Some(vec![1, 2]), "nothing applied: all eight kept");
        // Applying through 6 drops applied entries until the tail is within the applied
        // cap or only unapplied entries are left.
        recent.applied(6);
        assert_eq!(indexes(recent.get(4, None)), None);
        assert_eq!(indexes(recent.get(5, None)), Some(vec![5, 6, 7, 8]), "four entries are the applied cap");
        recent.applied(8);
        recent.appended([(entry(9).0, size)]);
        assert_eq!(indexes(recent.get(6, None)), Some(vec![6, 7, 8, 9]));
        assert_eq!(indexes(recent.get(5, None)), None);
    }
}
