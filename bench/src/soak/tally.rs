//! What the sink's log of deliveries says about the promises: nothing lost, nothing skipped,
//! nothing out of order; duplicates (at-least-once) are counted, not faulted.

use std::collections::HashSet;

/// One record as the sink received it: its aggregate (the Kafka key) and its place in the
/// aggregate's sequence (1, 2, 3, … as the writers inserted them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery {
    pub aggregate: u16,
    pub sequence: u64,
}

/// The soak's verdict figures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Distinct records delivered.
    pub delivered: u64,
    /// Inserted records never delivered.
    pub lost: u64,
    /// Lost records of which a later record of the same aggregate was delivered: a gap that was
    /// never filled (a subset of `lost`).
    pub skipped: u64,
    /// First deliveries of a record after a later record of its aggregate had been delivered.
    pub order_violations: u64,
    /// Deliveries beyond the first of a record.
    pub duplicates: u64,
    /// Delivered records the writers never confirmed inserting (unknown aggregate, or beyond the
    /// aggregate's last confirmed sequence): must not happen.
    pub unexpected: u64,
}

/// Tallies `deliveries` (in the order the sink received them) against what was inserted:
/// `inserted[a]` is the last sequence number of aggregate `a` (1..=it were inserted).
pub fn tally(inserted: &[u64], deliveries: &[Delivery]) -> Tally {
    let mut result = Tally::default();
    let mut seen = HashSet::with_capacity(deliveries.len());
    // Per aggregate, the highest sequence delivered so far.
    let mut highest = vec![0_u64; inserted.len()];
    for delivery in deliveries {
        if !seen.insert(*delivery) {
            result.duplicates += 1;
            continue;
        }
        let aggregate = usize::from(delivery.aggregate);
        match (highest.get_mut(aggregate), inserted.get(aggregate)) {
            (Some(highest), Some(&last)) if (1..=last).contains(&delivery.sequence) => {
                result.delivered += 1;
                if delivery.sequence < *highest {
                    result.order_violations += 1;
                }
                *highest = (*highest).max(delivery.sequence);
            }
            _ => result.unexpected += 1,
        }
    }
    for (aggregate, (&last, &highest)) in inserted.iter().zip(&highest).enumerate() {
        let Ok(aggregate) = u16::try_from(aggregate) else { break };
        for sequence in 1..=last {
            if !seen.contains(&Delivery { aggregate, sequence }) {
                result.lost += 1;
                if sequence < highest {
                    result.skipped += 1;
                }
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliveries(list: &[(u16, u64)]) -> Vec<Delivery> {
        list.iter().map(|&(aggregate, sequence)| Delivery { aggregate, sequence }).collect()
    }

    #[test]
    fn everything_once_in_order_is_clean() {
        let tally = tally(&[2, 3], &deliveries(&[(0, 1), (1, 1), (1, 2), (0, 2), (1, 3)]));
        assert_eq!(tally, Tally { delivered: 5, ..Tally::default() });
    }

    #[test]
    fn redeliveries_are_duplicates_and_not_order_violations() {
        // After a crash the dispatcher delivers 1 and 2 again: at least once, order kept.
        let tally = tally(&[3], &deliveries(&[(0, 1), (0, 2), (0, 1), (0, 2), (0, 3), (0, 3)]));
        assert_eq!(tally, Tally { delivered: 3, duplicates: 3, ..Tally::default() });
    }

    #[test]
    fn a_late_first_delivery_is_an_order_violation() {
        let tally = tally(&[3], &deliveries(&[(0, 1), (0, 3), (0, 2)]));
        assert_eq!(tally, Tally { delivered: 3, order_violations: 1, ..Tally::default() });
    }

    #[test]
    fn a_gap_never_filled_is_skipped_and_lost_a_missing_tail_only_lost() {
        // Aggregate 0: 2 and 3 never come although 4 did; aggregate 1: its last two never came.
        let tally = tally(&[4, 3], &deliveries(&[(0, 1), (0, 4), (1, 1)]));
        assert_eq!(tally, Tally { delivered: 3, lost: 4, skipped: 2, ..Tally::default() });
    }

    #[test]
    fn records_nobody_inserted_are_unexpected() {
        let tally = tally(&[1], &deliveries(&[(0, 1), (0, 2), (7, 1)]));
        assert_eq!(tally, Tally { delivered: 1, unexpected: 2, ..Tally::default() });
    }
}
