//! Status conditions as Kubernetes API conventions describe them, and the clock they are stamped
//! with (replaceable, so tests can fix time).

use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still until moved; for tests.
#[derive(Debug)]
pub struct FixedClock(Mutex<Timestamp>);

impl FixedClock {
    pub fn new(now: Timestamp) -> Self {
        FixedClock(Mutex::new(now))
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *now = now.checked_add(k8s_openapi::jiff::SignedDuration::try_from(by).unwrap_or_default()).unwrap_or(*now);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

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
    fn fixed_clock_moves_only_when_advanced() {
        let clock = FixedClock::new(at(10));
        assert_eq!(clock.now(), at(10));
        clock.advance(std::time::Duration::from_secs(5));
        assert_eq!(clock.now(), at(15));
    }
}
