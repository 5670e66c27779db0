//! Which records may be delivered now, and up to where each partition may be committed. Pure:
//! no I/O, no clock; the engine feeds it records and outcomes.
//!
//! - `PerKey`: records with the same key (within a partition) go one at a time, in offset order;
//!   a record waits while an earlier record of its key is out (in flight, waiting for a retry, or
//!   being dead-lettered). Other keys of the partition go on. Records without a key have no order.
//! - `Unordered`: every record is ready at once.
//!
//! A partition may be committed up to (not including) its lowest record that is neither delivered,
//! dead-lettered nor filtered out: nothing is ever skipped, whatever order outcomes arrive in.
//!
//! A revoked partition is first stopped (its held records dropped, nothing new taken, the records
//! out still finishing and moving its position) and then removed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
pub use tributary_api::subscription::Ordering;

/// One assignment of one partition to this consumer. Never reused: work left over from an
/// earlier assignment of the same partition is recognised as stale and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub u64);

/// A record's place in its partition's tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub partition: PartitionId,
    seq: u64,
}

#[derive(Debug)]
struct Slot {
    offset: i64,
    done: bool,
    /// The ordering key (per-key mode only).
    key: Option<Bytes>,
}

/// The records of one partition not yet done, in offset order, and the commit position they imply.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    slots: VecDeque<Slot>,
    /// One past the highest offset seen.
    end: Option<i64>,
}

impl OffsetTracker {
    fn track(&mut self, offset: i64, key: Option<Bytes>) -> u64 {
        self.end = Some(offset + 1);
        self.slots.push_back(Slot { offset, done: false, key });
        self.first_seq + self.slots.len() as u64 - 1
    }

    /// A record that is done as soon as it is seen (filtered out).
    fn skip(&mut self, offset: i64) {
        if !self.slots.is_empty() {
            self.track(offset, None);
            let last = self.slots.len() - 1;
            self.slots[last].done = true;
        } else {
            self.end = Some(offset + 1);
        }
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.slots.get_mut(index)
    }

    /// Marks a record done; returns its key, or None when it was not pending.
    fn complete(&mut self, seq: u64) -> Option<Option<Bytes>> {
        let slot = self.slot_mut(seq).filter(|slot| !slot.done)?;
        slot.done = true;
        let key = slot.key.take();
        while self.slots.front().is_some_and(|slot| slot.done) {
            self.slots.pop_front();
            self.first_seq += 1;
        }
        Some(key)
    }

    /// The offset to commit: the lowest record not done, or one past the last seen; None before
    /// the first record.
    pub fn position(&self) -> Option<i64> {
        self.slots.front().map(|slot| slot.offset).or(self.end)
    }
}

#[derive(Debug)]
struct PartitionState<T> {
    tracker: OffsetTracker,
    /// Per-key mode: keys with a record out, and their records waiting behind it, in order.
    keys: HashMap<Bytes, VecDeque<(u64, T)>>,
    /// Being revoked: takes nothing new, only lets its records out finish.
    stopped: bool,
}

/// See the module documentation. `T` is whatever the engine carries per record.
#[derive(Debug)]
pub struct Scheduler<T> {
    ordering: Ordering,
    partitions: HashMap<PartitionId, PartitionState<T>>,
    ready: VecDeque<(Ticket, T)>,
}

impl<T> Scheduler<T> {
    pub fn new(ordering: Ordering) -> Self {
        Scheduler { ordering, partitions: HashMap::new(), ready: VecDeque::new() }
    }

    pub fn assign(&mut self, partition: PartitionId) {
        self.partitions.entry(partition).or_insert_with(|| PartitionState {
            tracker: OffsetTracker::default(),
            keys: HashMap::new(),
            stopped: false,
        });
    }

    /// Stops a partition being revoked: returns the records it held (waiting or ready), which are
    /// not done; records of it that are out may still finish (and move its position), but
    /// nothing is retried or taken in any more.
    pub fn stop(&mut self, partition: PartitionId) -> Vec<T> {
        let Some(state) = self.partitions.get_mut(&partition) else { return Vec::new() };
        state.stopped = true;
        let mut dropped: Vec<T> = state.keys.values_mut().flat_map(std::mem::take).map(|(_, record)| record).collect();
        let ready = std::mem::take(&mut self.ready);
        for (ticket, record) in ready {
            if ticket.partition == partition {
                dropped.push(record);
            } else {
                self.ready.push_back((ticket, record));
            }
        }
        dropped
    }

    /// Forgets a (stopped) partition: work on it still out is stale from now on.
    pub fn remove(&mut self, partition: PartitionId) {
        self.partitions.remove(&partition);
    }

    /// Whether work on this ticket still counts (its partition was not removed since).
    pub fn is_current(&self, ticket: Ticket) -> bool {
        self.partitions.contains_key(&ticket.partition)
    }

    fn taking(&mut self, partition: PartitionId) -> Option<&mut PartitionState<T>> {
        self.partitions.get_mut(&partition).filter(|state| !state.stopped)
    }

    /// Takes a record in; it becomes ready now or once its key's earlier records are done.
    /// Offsets of a partition must come in increasing order. A record of a partition not
    /// assigned (or stopped) is handed back.
    pub fn push(&mut self, partition: PartitionId, offset: i64, key: Option<Bytes>, record: T) -> Result<(), T> {
        let ordering = self.ordering;
        let Some(state) = self.taking(partition) else { return Err(record) };
        let key = match ordering {
            Ordering::PerKey => key,
            Ordering::Unordered => None,
        };
        let seq = state.tracker.track(offset, key.clone());
        let ready = match key {
            None => true,
            Some(key) => match state.keys.entry(key) {
                Entry::Occupied(mut waiting) => {
                    waiting.get_mut().push_back((seq, record));
                    return Ok(());
                }
                Entry::Vacant(vacant) => {
                    vacant.insert(VecDeque::new());
                    true
                }
            },
        };
        if ready {
            self.ready.push_back((Ticket { partition, seq }, record));
        }
        Ok(())
    }

    /// A record that needs no delivery (filtered out): done at once. False for a partition not
    /// assigned (or stopped).
    pub fn skip(&mut self, partition: PartitionId, offset: i64) -> bool {
        let Some(state) = self.taking(partition) else { return false };
        state.tracker.skip(offset);
        true
    }

    /// The next record to deliver; it is out until `finish` (or `retry`).
    pub fn pop_ready(&mut self) -> Option<(Ticket, T)> {
        self.ready.pop_front()
    }

    /// An out record whose retry is due: ready again, ahead of the others (it held its key up).
    /// Handed back when its partition was stopped meanwhile.
    pub fn retry(&mut self, ticket: Ticket, record: T) -> Result<(), T> {
        if self.taking(ticket.partition).is_none() {
            return Err(record);
        }
        self.ready.push_front((ticket, record));
        Ok(())
    }

    /// An out record is done (delivered or dead-lettered): its offset may be committed once the
    /// lower ones are, and the next record of its key becomes ready. False for a stale ticket.
    pub fn finish(&mut self, ticket: Ticket) -> bool {
        let Some(state) = self.partitions.get_mut(&ticket.partition) else { return false };
        let Some(key) = state.tracker.complete(ticket.seq) else { return false };
        if let Some(key) = key {
            if let Entry::Occupied(mut waiting) = state.keys.entry(key) {
                match waiting.get_mut().pop_front() {
                    Some((seq, record)) => self.ready.push_back((Ticket { partition: ticket.partition, seq }, record)),
                    None => {
                        waiting.remove();
                    }
                }
            }
        }
        true
    }

    /// The commit position of a partition (see [`OffsetTracker::position`]).
    pub fn position(&self, partition: PartitionId) -> Option<i64> {
        self.partitions.get(&partition)?.tracker.position()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T> Scheduler<T> {
        /// Records of a partition seen and not yet done.
        fn pending(&self, partition: PartitionId) -> usize {
            self.partitions.get(&partition).map_or(0, |state| state.tracker.slots.iter().filter(|slot| !slot.done).count())
        }
    }

    const P: PartitionId = PartitionId(1);
    const Q: PartitionId = PartitionId(2);

    fn key(text: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// A scheduler over records named by their offset.
    fn scheduler(ordering: Ordering, partitions: &[PartitionId]) -> Scheduler<i64> {
        let mut scheduler = Scheduler::new(ordering);
        partitions.iter().for_each(|partition| scheduler.assign(*partition));
        scheduler
    }

    fn push(scheduler: &mut Scheduler<i64>, partition: PartitionId, offset: i64, key_text: &str) {
        scheduler.push(partition, offset, key(key_text), offset).expect("assigned");
    }

    fn drain(scheduler: &mut Scheduler<i64>) -> Vec<(Ticket, i64)> {
        std::iter::from_fn(|| scheduler.pop_ready()).collect()
    }

    fn offsets(out: &[(Ticket, i64)]) -> Vec<i64> {
        out.iter().map(|(_, offset)| *offset).collect()
    }

    #[test]
    fn position_is_the_lowest_record_not_done_whatever_order_outcomes_arrive_in() {
        let mut scheduler = scheduler(Ordering::Unordered, &[P]);
        assert_eq!(scheduler.position(P), None, "nothing seen, nothing to commit");
        for offset in [10, 11, 12, 14, 15] {
            push(&mut scheduler, P, offset, "k");
        }
        let out = drain(&mut scheduler);
        assert_eq!(offsets(&out), [10, 11, 12, 14, 15], "unordered: every record at once");
        assert_eq!(scheduler.position(P), Some(10));
        assert!(scheduler.finish(out[2].0)); // 12
        assert!(scheduler.finish(out[4].0)); // 15
        assert_eq!(scheduler.position(P), Some(10));
        assert!(scheduler.finish(out[0].0)); // 10
        assert_eq!(scheduler.position(P), Some(11));
        assert!(scheduler.finish(out[1].0)); // 11: 12 was done already, the gap 13 was never a record
        assert_eq!(scheduler.position(P), Some(14));
        assert_eq!(scheduler.pending(P), 1);
        assert!(scheduler.finish(out[3].0)); // 14
        assert_eq!(scheduler.position(P), Some(16), "one past the last record once all are done");
        assert!(!scheduler.finish(out[3].0), "a record is done once");
    }

    #[test]
    fn filtered_records_advance_the_position_only_past_done_records() {
        let mut scheduler = scheduler(Ordering::PerKey, &[P]);
        assert!(scheduler.skip(P, 0));
        assert_eq!(scheduler.position(P), Some(1));
        push(&mut scheduler, P, 1, "a");
        assert!(scheduler.skip(P, 2));
        assert!(scheduler.skip(P, 3));
        assert_eq!(scheduler.position(P), Some(1), "a filtered record does not jump a pending one");
        let out = drain(&mut scheduler);
        assert!(scheduler.finish(out[0].0));
        assert_eq!(scheduler.position(P), Some(4));
        assert!(!scheduler.skip(Q, 0), "unknown partition");
    }

    #[test]
    fn per_key_delivers_one_record_of_a_key_at_a_time_in_order_while_other_keys_proceed() {
        let mut scheduler = scheduler(Ordering::PerKey, &[P]);
        for (offset, k) in [(0, "a"), (1, "b"), (2, "a"), (3, "c"), (4, "a"), (5, "b")] {
            push(&mut scheduler, P, offset, k);
        }
        let first = drain(&mut scheduler);
        assert_eq!(offsets(&first), [0, 1, 3], "the first record of each key");
        // "a" is slow (still out); "b" and "c" finish, and "b"'s next record becomes ready.
        assert!(scheduler.finish(first[1].0));
        assert!(scheduler.finish(first[2].0));
        let second = drain(&mut scheduler);
        assert_eq!(offsets(&second), [5]);
        assert!(scheduler.finish(second[0].0));
        assert_eq!(scheduler.pending(P), 3, "a@0 out, a@2 and a@4 waiting");
        assert_eq!(scheduler.position(P), Some(0), "commits wait for the slow key");
        assert!(scheduler.finish(first[0].0));
        let third = drain(&mut scheduler);
        assert_eq!(offsets(&third), [2], "a@4 waits for a@2");
        assert!(scheduler.finish(third[0].0));
        let fourth = drain(&mut scheduler);
        assert_eq!(offsets(&fourth), [4]);
        assert!(scheduler.finish(fourth[0].0));
        assert_eq!(scheduler.position(P), Some(6));
        assert!(drain(&mut scheduler).is_empty());
    }

    #[test]
    fn a_retried_record_keeps_its_key_and_goes_first_when_due() {
        let mut scheduler = scheduler(Ordering::PerKey, &[P]);
        for (offset, k) in [(0, "a"), (1, "a"), (2, "b")] {
            push(&mut scheduler, P, offset, k);
        }
        let out = drain(&mut scheduler);
        assert_eq!(offsets(&out), [0, 2]);
        push(&mut scheduler, P, 3, "c");
        // a@0 failed and waits for its retry: a@1 stays behind it.
        assert_eq!(offsets(&drain(&mut scheduler)), [3]);
        push(&mut scheduler, P, 4, "d");
        scheduler.retry(out[0].0, 0).expect("current");
        let next = drain(&mut scheduler);
        assert_eq!(offsets(&next), [0, 4], "the due retry first");
        assert!(scheduler.finish(next[0].0));
        assert_eq!(offsets(&drain(&mut scheduler)), [1]);
    }

    #[test]
    fn same_key_in_two_partitions_is_two_keys_and_keyless_records_have_no_order() {
        let mut scheduler = scheduler(Ordering::PerKey, &[P, Q]);
        push(&mut scheduler, P, 0, "a");
        push(&mut scheduler, Q, 0, "a");
        scheduler.push(P, 1, None, 1).expect("assigned");
        scheduler.push(P, 2, None, 2).expect("assigned");
        assert_eq!(drain(&mut scheduler).len(), 4);
    }

    #[test]
    fn unordered_ignores_keys() {
        let mut scheduler = scheduler(Ordering::Unordered, &[P]);
        for offset in 0..5 {
            push(&mut scheduler, P, offset, "same");
        }
        assert_eq!(scheduler.ready.len(), 5);
    }

    #[test]
    fn revoking_drops_held_records_lets_out_records_finish_then_makes_them_stale() {
        let mut scheduler = scheduler(Ordering::PerKey, &[P, Q]);
        for (offset, k) in [(0, "a"), (1, "a"), (2, "b"), (3, "c")] {
            push(&mut scheduler, P, offset, k);
        }
        push(&mut scheduler, Q, 7, "a");
        let a0 = scheduler.pop_ready().expect("a@0");
        let b2 = scheduler.pop_ready().expect("b@2");
        assert_eq!((a0.1, b2.1), (0, 2));
        let mut dropped = scheduler.stop(P);
        dropped.sort_unstable();
        assert_eq!(dropped, [1, 3], "waiting a@1 and ready c@3; a@0 and b@2 are out");
        assert_eq!(scheduler.push(P, 4, key("d"), 4), Err(4), "a stopped partition takes nothing new");
        assert!(!scheduler.skip(P, 4));
        assert_eq!(scheduler.retry(b2.0, 2), Err(2), "nor retries");
        assert!(scheduler.finish(a0.0), "what is out still finishes");
        assert_eq!(scheduler.position(P), Some(1), "and moves the position");
        assert_eq!(offsets(&drain(&mut scheduler)), [7], "nothing of the stopped partition becomes ready");
        scheduler.remove(P);
        assert!(!scheduler.is_current(b2.0));
        assert!(!scheduler.finish(b2.0), "a stale outcome changes nothing");
        assert_eq!(scheduler.position(P), None);
        // A new assignment of the same partition starts afresh under a new id.
        let again = PartitionId(3);
        scheduler.assign(again);
        push(&mut scheduler, again, 1, "a");
        assert_eq!(offsets(&drain(&mut scheduler)), [1]);
        assert_eq!(scheduler.partitions.len(), 2);
    }
}
