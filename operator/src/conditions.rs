//! Status conditions as Kubernetes API conventions describe them (including the one every
//! pausable object shows while paused), and how often a status that only refreshes a timestamp is
//! written.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Condition type and reason of an object whose reconciliation is paused.
pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";
pub const PAUSED: &str = "Paused";

/// Condition status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// A condition as a reconcile decides it, before it is stamped with times and generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(type_: &'static str, status: Status, reason: &'static str, message: impl Into<String>) -> Self {
        DesiredCondition { type_, status, reason, message: message.into() }
    }
}

/// The full conditions list for a status: `desired`, with `lastTransitionTime` carried over from
/// `previous` while a condition's status stays the same (as `meta.SetStatusCondition` does).
pub fn merge_conditions(previous: &[Condition], desired: &[DesiredCondition], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    desired
        .iter()
        .map(|condition| {
            let status = condition.status.as_str();
            let last_transition_time = previous
                .iter()
                .find(|old| old.type_ == condition.type_ && old.status == status)
                .map(|old| old.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: condition.type_.to_owned(),
                status: status.to_owned(),
                reason: condition.reason.to_owned(),
                message: condition.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|condition| condition.type_ == type_)
}

/// The conditions of a paused object: what it last had, each with its own observedGeneration (a
/// paused object is not observed anew), plus ReconciliationPaused saying the annotation is set and
/// what `is_left_alone`.
pub fn paused_conditions(previous: &[Condition], is_left_alone: &str, generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let message = format!("annotation {}=\"true\" is set; {is_left_alone}", tributary_api::PAUSED_ANNOTATION);
    let paused = DesiredCondition::new(RECONCILIATION_PAUSED, Status::True, PAUSED, message);
    let kept = previous.iter().filter(|condition| condition.type_ != RECONCILIATION_PAUSED).cloned();
    kept.chain(merge_conditions(previous, &[paused], generation, now)).collect()
}

/// Whether a status that differs from the one written only in a timestamp it refreshes (from
/// `before` to `after`) is due to be written: once `interval` has passed, so that the watch event
/// a write causes does not lead straight to another write. A timestamp that appears or goes is
/// due at once.
pub fn refresh_due(before: Option<&Time>, after: Option<&Time>, interval: Duration) -> bool {
    match (before, after) {
        (Some(Time(before)), Some(Time(after))) => {
            after.duration_since(*before) >= SignedDuration::try_from(interval).unwrap_or(SignedDuration::MAX)
        }
        (before, after) => before != after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("valid timestamp")
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let ready = DesiredCondition::new("Ready", Status::True, "Created", "created");
        let first = merge_conditions(&[], std::slice::from_ref(&ready), Some(1), at(100));
        assert_eq!(first[0].last_transition_time, Time(at(100)));

        // Same status, new reason and generation: the transition time stays.
        let updated = DesiredCondition::new("Ready", Status::True, "Updated", "config changed");
        let second = merge_conditions(&first, &[updated], Some(2), at(200));
        assert_eq!(second[0].last_transition_time, Time(at(100)));
        assert_eq!(second[0].reason, "Updated");
        assert_eq!(second[0].observed_generation, Some(2));

        // Status flips: the transition time moves.
        let failed = DesiredCondition::new("Ready", Status::False, "KafkaUnavailable", "down");
        let third = merge_conditions(&second, &[failed], Some(2), at(300));
        assert_eq!(third[0].last_transition_time, Time(at(300)));
    }

    #[test]
    fn conditions_not_desired_are_dropped() {
        let paused = DesiredCondition::new("ReconciliationPaused", Status::True, "Paused", "");
        let ready = DesiredCondition::new("Ready", Status::True, "InSync", "");
        let both = merge_conditions(&[], &[ready.clone(), paused], None, at(1));
        let resumed = merge_conditions(&both, &[ready], None, at(2));
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].type_, "Ready");
    }

    #[test]
    fn pausing_keeps_every_condition_as_it_was_and_adds_one_paused_condition() {
        let ready = DesiredCondition::new("Ready", Status::False, "KafkaUnavailable", "down");
        let before = merge_conditions(&[], &[ready], Some(1), at(100));
        let paused = paused_conditions(&before, "nothing is changed", Some(2), at(200));
        assert_eq!(paused[0], before[0], "Ready as it was, still at generation 1");
        assert_eq!((paused[1].type_.as_str(), paused[1].reason.as_str()), (RECONCILIATION_PAUSED, PAUSED));
        assert_eq!(paused[1].message, "annotation tributary.dev/paused=\"true\" is set; nothing is changed");
        assert_eq!((paused[1].observed_generation, &paused[1].last_transition_time), (Some(2), &Time(at(200))));

        let still_paused = paused_conditions(&paused, "nothing is changed", Some(3), at(300));
        assert_eq!(still_paused.len(), 2, "one ReconciliationPaused condition, not two");
        assert_eq!(still_paused[1].last_transition_time, Time(at(200)), "paused since the first time");
    }

    #[test]
    fn a_refreshed_timestamp_alone_is_written_once_the_interval_has_passed() {
        let interval = std::time::Duration::from_secs(60);
        let (first, soon, later) = (Time(at(100)), Time(at(130)), Time(at(160)));
        assert!(!refresh_due(Some(&first), Some(&first), interval));
        assert!(!refresh_due(Some(&first), Some(&soon), interval));
        assert!(refresh_due(Some(&first), Some(&later), interval));
        assert!(refresh_due(None, Some(&first), interval), "appears at once");
        assert!(refresh_due(Some(&first), None, interval), "goes at once");
    }
}
