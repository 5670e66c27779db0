//! The replay phase machine (pure): ScalingDown → ResettingOffsets → ScalingUp → Completed, one
//! phase per reconcile so that status shows each, applied once per value of
//! `spec.replay.toTimestamp`; Failed when the group's offsets cannot be moved for [`PATIENCE`].
//!
//! Offsets can only be moved while nobody consumes: the consumers are held at zero replicas until
//! the Deployment has no pods left and (when the broker can tell) the group has no members; the
//! broker itself refuses a reset of a group with members, which makes the reset safe to retry.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tributary_api::subscription::{ReplayPhase, ReplayStatus};

/// What the replay needs to know about the consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumers {
    /// Ready pods of the Deployment.
    pub ready: i32,
    /// Pods of the Deployment that have not terminated.
    pub running: i32,
    /// Members of the consumer group; `None` when the broker cannot tell (or was not asked).
    pub members: Option<usize>,
    /// Replicas the autoscaler wants once the replay lets it.
    pub wanted: i32,
}

impl Consumers {
    fn gone(&self) -> bool {
        self.pods_gone() && self.members.unwrap_or(0) == 0
    }

    fn pods_gone(&self) -> bool {
        self.ready == 0 && self.running == 0
    }
}

/// How long a replay waits for a consumer group with members that are not the Subscription's
/// pods (or for a broker that keeps refusing the reset) before it gives up: phase Failed, the
/// consumers come back, and the timestamp is not tried again.
pub const PATIENCE: Duration = Duration::from_secs(300);
pub const PATIENCE_TEXT: &str = "5 minutes";

/// Whether a replay status is about the requested time. Times are compared to the second: status
/// is written with whole seconds (as Kubernetes writes times), so a request of `…:01.5Z` must
/// still match the `…:01Z` it was recorded as.
pub fn is_for(status: &ReplayStatus, requested: &Time) -> bool {
    status.to_timestamp.0.as_second() == requested.0.as_second()
}

/// What the replay asks of this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No replay in progress: scale as usual.
    Idle,
    /// Keep the consumers at zero replicas.
    HoldAtZero,
    /// Keep the consumers at zero and move the group's offsets to this time (ms since the epoch).
    ResetOffsets(i64),
    /// Offsets are reset: scale as usual again.
    Resume,
}

impl Step {
    pub fn holds_at_zero(&self) -> bool {
        matches!(self, Step::HoldAtZero | Step::ResetOffsets(_))
    }
}

/// The replay status and step for this reconcile. `requested` is `spec.replay.toTimestamp`;
/// `previous` the replay status the object has.
pub fn advance(
    requested: Option<&Time>,
    previous: Option<&ReplayStatus>,
    consumers: &Consumers,
    now: Timestamp,
) -> (Option<ReplayStatus>, Step) {
    let Some(requested) = requested else {
        // A replay whose request was withdrawn stops; a completed one stays on record.
        let kept = previous.filter(|status| status.phase == ReplayPhase::Completed).cloned();
        return (kept, Step::Idle);
    };
    let Some(previous) = previous.filter(|status| is_for(status, requested)) else {
        let started =
            ReplayStatus { to_timestamp: requested.clone(), phase: ReplayPhase::ScalingDown, last_transition_time: Some(Time(now)) };
        return (Some(started), Step::HoldAtZero);
    };
    let in_phase = |phase| ReplayStatus { phase, last_transition_time: Some(Time(now)), ..previous.clone() };
    let out_of_patience = || {
        let since = previous.last_transition_time.as_ref().map_or(now, |time| time.0);
        now.duration_since(since) >= SignedDuration::try_from(PATIENCE).unwrap_or(SignedDuration::MAX)
    };
    match previous.phase {
        ReplayPhase::ScalingDown if consumers.gone() => (Some(in_phase(ReplayPhase::ResettingOffsets)), Step::HoldAtZero),
        // The Deployment has no pods left, yet the group has members: someone else consumes with it.
        ReplayPhase::ScalingDown if consumers.pods_gone() && out_of_patience() => (Some(in_phase(ReplayPhase::Failed)), Step::Idle),
        ReplayPhase::ScalingDown => (Some(previous.clone()), Step::HoldAtZero),
        // The broker keeps refusing the reset (members it does not report).
        ReplayPhase::ResettingOffsets if consumers.pods_gone() && out_of_patience() => (Some(in_phase(ReplayPhase::Failed)), Step::Idle),
        ReplayPhase::ResettingOffsets if consumers.gone() => (Some(previous.clone()), Step::ResetOffsets(requested.0.as_millisecond())),
        ReplayPhase::ResettingOffsets => (Some(previous.clone()), Step::HoldAtZero),
        ReplayPhase::ScalingUp if consumers.ready >= consumers.wanted.min(1) => (Some(in_phase(ReplayPhase::Completed)), Step::Idle),
        ReplayPhase::ScalingUp => (Some(previous.clone()), Step::Resume),
        ReplayPhase::Completed | ReplayPhase::Failed => (Some(previous.clone()), Step::Idle),
    }
}

/// Whether the replay `previous` is waiting for the consumers to stop before it moves the
/// offsets of the time `requested` (then the group's members are asked for).
pub fn waits_for_consumers(requested: Option<&Time>, previous: Option<&ReplayStatus>) -> bool {
    previous.is_some_and(|replay| {
        requested.is_some_and(|requested| is_for(replay, requested))
            && matches!(replay.phase, ReplayPhase::ScalingDown | ReplayPhase::ResettingOffsets)
    })
}

/// The status once the offsets were moved: the consumers may come back.
pub fn offsets_reset(status: &ReplayStatus, now: Timestamp) -> ReplayStatus {
    ReplayStatus { phase: ReplayPhase::ScalingUp, last_transition_time: Some(Time(now)), ..status.clone() }
}

/// Whether a replay is under way.
pub fn in_progress(status: Option<&ReplayStatus>) -> bool {
    status.is_some_and(|status| status.phase != ReplayPhase::Completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("timestamp")
    }

    const RUNNING: Consumers = Consumers { ready: 3, running: 3, members: Some(3), wanted: 3 };
    const STOPPING: Consumers = Consumers { ready: 0, running: 1, members: Some(0), wanted: 3 };
    const GONE: Consumers = Consumers { ready: 0, running: 0, members: Some(0), wanted: 3 };

    fn status(phase: ReplayPhase, since: i64) -> ReplayStatus {
        ReplayStatus { to_timestamp: Time(at(-3_600)), phase, last_transition_time: Some(Time(at(since))) }
    }

    #[test]
    fn walks_every_phase_once_per_requested_timestamp() {
        let target = Time(at(-3_600));
        let (started, step) = advance(Some(&target), None, &RUNNING, at(0));
        assert_eq!((started.clone(), step), (Some(status(ReplayPhase::ScalingDown, 0)), Step::HoldAtZero));

        let (waiting, step) = advance(Some(&target), started.as_ref(), &STOPPING, at(5));
        assert_eq!((waiting.clone(), step), (started.clone(), Step::HoldAtZero), "a pod is still terminating");

        let (resetting, step) = advance(Some(&target), waiting.as_ref(), &GONE, at(10));
        assert_eq!((resetting.clone(), step), (Some(status(ReplayPhase::ResettingOffsets, 10)), Step::HoldAtZero));

        let (still, step) = advance(Some(&target), resetting.as_ref(), &GONE, at(11));
        assert_eq!((still.clone(), step), (resetting.clone(), Step::ResetOffsets(at(-3_600).as_millisecond())));

        let scaling_up = offsets_reset(still.as_ref().expect("status"), at(12));
        assert_eq!(scaling_up, status(ReplayPhase::ScalingUp, 12));

        let (not_yet, step) = advance(Some(&target), Some(&scaling_up), &GONE, at(13));
        assert_eq!((not_yet, step), (Some(scaling_up.clone()), Step::Resume));

        let (completed, step) = advance(Some(&target), Some(&scaling_up), &Consumers { ready: 1, ..RUNNING }, at(20));
        assert_eq!((completed.clone(), step), (Some(status(ReplayPhase::Completed, 20)), Step::Idle));

        let (again, step) = advance(Some(&target), completed.as_ref(), &RUNNING, at(500));
        assert_eq!((again, step), (completed, Step::Idle), "the same timestamp is not replayed twice");
    }

    #[test]
    fn a_group_with_members_is_not_reset() {
        let target = Time(at(-3_600));
        let members_left = Consumers { members: Some(1), ..GONE };
        let scaling_down = status(ReplayPhase::ScalingDown, 0);
        assert_eq!(advance(Some(&target), Some(&scaling_down), &members_left, at(1)).1, Step::HoldAtZero);
        let resetting = status(ReplayPhase::ResettingOffsets, 0);
        assert_eq!(advance(Some(&target), Some(&resetting), &members_left, at(1)), (Some(resetting), Step::HoldAtZero));
        let unknown_members = Consumers { members: None, ..GONE };
        assert!(matches!(
            advance(Some(&target), Some(&status(ReplayPhase::ResettingOffsets, 0)), &unknown_members, at(1)).1,
            Step::ResetOffsets(_)
        ));
    }

    #[test]
    fn a_group_that_keeps_members_outside_the_deployment_fails_the_replay_after_a_while() {
        let target = Time(at(-3_600));
        let others_consume = Consumers { members: Some(2), ..GONE };
        let patience = PATIENCE.as_secs() as i64;
        let scaling_down = status(ReplayPhase::ScalingDown, 0);
        assert_eq!(advance(Some(&target), Some(&scaling_down), &others_consume, at(patience - 1)).1, Step::HoldAtZero, "still waiting");
        let (failed, step) = advance(Some(&target), Some(&scaling_down), &others_consume, at(patience));
        assert_eq!((failed.clone(), step), (Some(status(ReplayPhase::Failed, patience)), Step::Idle), "the consumers come back");
        let (still_failed, step) = advance(Some(&target), failed.as_ref(), &RUNNING, at(patience + 100));
        assert_eq!((still_failed, step), (failed, Step::Idle), "not tried again for the same timestamp");

        // Pods still terminating are waited for however long they take.
        let terminating = Consumers { running: 1, ..others_consume };
        assert_eq!(advance(Some(&target), Some(&scaling_down), &terminating, at(patience * 10)).1, Step::HoldAtZero);

        // A reset the broker keeps refusing (members it does not report) ends the same way.
        let resetting = status(ReplayPhase::ResettingOffsets, 0);
        let unknown = Consumers { members: None, ..GONE };
        assert!(matches!(advance(Some(&target), Some(&resetting), &unknown, at(patience - 1)).1, Step::ResetOffsets(_)));
        assert_eq!(advance(Some(&target), Some(&resetting), &unknown, at(patience)).0.map(|s| s.phase), Some(ReplayPhase::Failed));
    }

    #[test]
    fn a_new_timestamp_starts_over_and_a_withdrawn_request_stops() {
        let completed = status(ReplayPhase::Completed, 0);
        let newer = Time(at(-60));
        let (restarted, step) = advance(Some(&newer), Some(&completed), &RUNNING, at(100));
        assert_eq!(restarted.map(|s| (s.to_timestamp, s.phase)), Some((newer, ReplayPhase::ScalingDown)));
        assert_eq!(step, Step::HoldAtZero);

        assert_eq!(advance(None, Some(&status(ReplayPhase::ScalingDown, 0)), &RUNNING, at(1)), (None, Step::Idle));
        assert_eq!(advance(None, Some(&completed), &RUNNING, at(1)), (Some(completed), Step::Idle));
    }

    #[test]
    fn a_fractional_request_matches_the_whole_seconds_status_records() {
        let requested: Time = serde_json::from_value(serde_json::json!("2027-01-15T08:00:01.500Z")).expect("time");
        let (started, _) = advance(Some(&requested), None, &RUNNING, at(0));
        let recorded: ReplayStatus = serde_json::from_value(serde_json::to_value(started).expect("serializes")).expect("parses");
        assert_eq!(recorded.to_timestamp.0.as_second(), requested.0.as_second());
        let (next, step) = advance(Some(&requested), Some(&recorded), &STOPPING, at(1));
        assert_eq!((next.map(|s| s.phase), step), (Some(ReplayPhase::ScalingDown), Step::HoldAtZero), "not started over");
    }

    #[test]
    fn scaling_up_to_zero_wanted_completes_without_pods() {
        let scaling_up = status(ReplayPhase::ScalingUp, 0);
        let idle = Consumers { wanted: 0, ..GONE };
        assert_eq!(advance(Some(&Time(at(-3_600))), Some(&scaling_up), &idle, at(1)).0.map(|s| s.phase), Some(ReplayPhase::Completed));
    }
}
