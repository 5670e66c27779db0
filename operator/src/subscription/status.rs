//! Subscription status from the outcome of a reconcile (pure).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tributary_api::subscription::{ReplayPhase, ReplayStatus, ScalingEngine, TopicLag};
use tributary_api::{Subscription, SubscriptionStatus};

use super::ownership::{recorded, Held, Refused};
use super::replay;
use super::resolve::TopicsProblem;
use super::scaler::{self, Decision};
use crate::conditions::{self, DesiredCondition, Status};
use crate::kafka::GroupLag;

/// Condition types (and ReconciliationPaused, from [`conditions`]).
pub const READY: &str = "Ready";
pub const TOPICS_READY: &str = "TopicsReady";
pub const SCALED: &str = "Scaled";
pub const REPLAY_IN_PROGRESS: &str = "ReplayInProgress";

/// Condition reasons.
pub mod reason {
    // Ready
    pub const RUNNING: &str = "Running";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const CONSUMERS_NOT_READY: &str = "ConsumersNotReady";
    pub const REPLAYING: &str = "Replaying";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const CONSUMER_GROUP_CONFLICT: &str = "ConsumerGroupConflict";
    pub const ADOPTION_REQUIRED: &str = "AdoptionRequired";
    pub const DEAD_LETTER_TOPIC_NOT_OWNED: &str = "DeadLetterTopicNotOwned";
    pub const DEPLOYMENT_CONFLICT: &str = "DeploymentConflict";
    pub const KAFKA_SECRET_NOT_FOUND: &str = "KafkaSecretNotFound";
    pub const KAFKA_UNAVAILABLE: &str = "KafkaUnavailable";
    // Ready and TopicsReady
    pub const TOPICS_NOT_READY: &str = "TopicsNotReady";
    pub const ACCESS_DENIED: &str = "AccessDenied";
    // TopicsReady
    pub const TOPICS_READY: &str = "TopicsReady";
    pub const TOPIC_NOT_FOUND: &str = "TopicNotFound";
    pub const TOPIC_NOT_READY: &str = "TopicNotReady";
    // Scaled (and Ready for KEDA)
    pub const KEDA_SCALED_OBJECT: &str = "KedaScaledObject";
    pub const KEDA_NOT_INSTALLED: &str = "KedaNotInstalled";
    pub const AT_TARGET: &str = "AtTarget";
    pub const COOLING_DOWN: &str = "CoolingDown";
    pub const LAG_UNKNOWN: &str = "LagUnknown";
    pub const HELD_FOR_REPLAY: &str = "HeldForReplay";
    pub const NOT_RECONCILED: &str = "NotReconciled";
    // ReplayInProgress
    pub const NO_REPLAY: &str = "NoReplay";
    pub const REPLAY_COMPLETED: &str = "ReplayCompleted";
    pub const REPLAY_FAILED: &str = "ReplayFailed";
    pub const SCALING_DOWN: &str = "ScalingDown";
    pub const RESETTING_OFFSETS: &str = "ResettingOffsets";
    pub const SCALING_UP: &str = "ScalingUp";
}

/// Who sets the Deployment's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scaler {
    Keda,
    Builtin(Decision),
}

/// A reconcile that got as far as applying the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    pub scaler: Scaler,
    /// The group's lag, or why it could not be read.
    pub lag: Result<GroupLag, String>,
    /// Replicas the Deployment is asked to have (with KEDA: what its HPA set).
    pub desired_replicas: Option<i32>,
    pub ready_replicas: i32,
    pub lag_threshold: i64,
    pub replay: Option<ReplayStatus>,
    pub dead_letter_topic: String,
    /// How the Subscription holds its consumer group and dead-letter topic.
    pub held: Held,
    /// What went wrong in Kafka besides reading lag (the dead-letter topic, a replay's reset).
    pub kafka_problem: Option<String>,
}

/// How a reconcile of a Subscription ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    TopicsNotReady(TopicsProblem),
    /// An older Subscription uses the same consumer group.
    GroupConflict {
        owner: String,
        group: String,
    },
    InvalidSpec(String),
    /// The consumer group or dead-letter topic is someone else's.
    Refused(Refused),
    /// Kafka could not be asked whether they are.
    KafkaUnavailable(String),
    /// A Deployment of the Subscription's name exists and belongs to someone else.
    DeploymentConflict(String),
    /// The workload Kafka properties Secret cannot be mounted in the Subscription's namespace.
    KafkaSecretMissing(String),
    /// `scaling.engine: Keda` but KEDA's CRD is not installed.
    KedaNotInstalled,
    Reconciled(Box<Reconciled>),
}

fn condition(type_: &'static str, status: Status, reason: &'static str, message: impl Into<String>) -> DesiredCondition {
    DesiredCondition::new(type_, status, reason, message)
}

fn topics_condition(outcome: &Outcome) -> DesiredCondition {
    match outcome {
        Outcome::TopicsNotReady(problem) => {
            let reason = if !problem.denied.is_empty() {
                reason::ACCESS_DENIED
            } else if !problem.missing.is_empty() {
                reason::TOPIC_NOT_FOUND
            } else {
                reason::TOPIC_NOT_READY
            };
            condition(TOPICS_READY, Status::False, reason, problem.to_string())
        }
        _ => condition(TOPICS_READY, Status::True, reason::TOPICS_READY, "every EventTopic is Ready"),
    }
}

fn replay_condition(replay: Option<&ReplayStatus>) -> DesiredCondition {
    let Some(replay) = replay else {
        return condition(REPLAY_IN_PROGRESS, Status::False, reason::NO_REPLAY, "no replay was requested");
    };
    let to = &replay.to_timestamp.0;
    let (status, reason, message) = match replay.phase {
        ReplayPhase::ScalingDown => (Status::True, reason::SCALING_DOWN, format!("replay to {to}: waiting for the consumers to stop")),
        ReplayPhase::ResettingOffsets => (Status::True, reason::RESETTING_OFFSETS, format!("replay to {to}: moving the group's offsets")),
        ReplayPhase::ScalingUp => (Status::True, reason::SCALING_UP, format!("replay to {to}: offsets moved, consumers starting")),
        ReplayPhase::Completed => (Status::False, reason::REPLAY_COMPLETED, format!("replayed from {to}")),
        ReplayPhase::Failed => (
            Status::False,
            reason::REPLAY_FAILED,
            format!(
                "replay to {to} given up after {}: the consumer group kept members that are not this Subscription's pods (or the broker refused to move its offsets); stop those consumers, then ask again with another toTimestamp",
                replay::PATIENCE_TEXT
            ),
        ),
    };
    condition(REPLAY_IN_PROGRESS, status, reason, message)
}

fn scaled_condition(outcome: &Outcome, subscription: &Subscription) -> DesiredCondition {
    let not_reconciled = || condition(SCALED, Status::Unknown, reason::NOT_RECONCILED, "nothing is scaled until Ready's problem is solved");
    let reconciled = match outcome {
        Outcome::KedaNotInstalled => {
            return condition(
                SCALED,
                Status::False,
                reason::KEDA_NOT_INSTALLED,
                "spec.scaling.engine is Keda but the CRD scaledobjects.keda.sh is not installed; install KEDA or use Auto or Builtin",
            )
        }
        Outcome::Reconciled(reconciled) => reconciled,
        _ => return not_reconciled(),
    };
    if replay::in_progress(reconciled.replay.as_ref()) && reconciled.replay.as_ref().is_some_and(|r| r.phase != ReplayPhase::ScalingUp) {
        return condition(SCALED, Status::False, reason::HELD_FOR_REPLAY, "held at 0 replicas while the group's offsets are moved");
    }
    let scaling = &subscription.spec.scaling;
    match &reconciled.scaler {
        Scaler::Keda => condition(
            SCALED,
            Status::True,
            reason::KEDA_SCALED_OBJECT,
            format!(
                "KEDA ScaledObject {} scales the Deployment between {} and {} replicas, one per {} records of lag",
                subscription.metadata.name.as_deref().unwrap_or_default(),
                if scaling.scale_to_zero { 0 } else { scaling.min_replicas },
                scaling.max_replicas,
                reconciled.lag_threshold
            ),
        ),
        Scaler::Builtin(decision) => match decision.reason {
            scaler::Reason::AtTarget => condition(
                SCALED,
                Status::True,
                reason::AT_TARGET,
                format!("{} replicas, as the lag asks for (one per {} records)", decision.replicas, reconciled.lag_threshold),
            ),
            scaler::Reason::CoolingDown { target, until } => condition(
                SCALED,
                Status::True,
                reason::COOLING_DOWN,
                format!("the lag asks for {target} replicas; {} stay until the cooldown ends at {until}", decision.replicas),
            ),
            scaler::Reason::LagUnknown => condition(
                SCALED,
                Status::False,
                reason::LAG_UNKNOWN,
                format!(
                    "cannot read the consumer lag ({}); {} replicas stay",
                    reconciled.lag.as_ref().err().map(String::as_str).unwrap_or("unknown"),
                    decision.replicas
                ),
            ),
        },
    }
}

fn ready_condition(outcome: &Outcome) -> DesiredCondition {
    let not_ready = |reason, message: String| condition(READY, Status::False, reason, message);
    match outcome {
        Outcome::TopicsNotReady(problem) if !problem.denied.is_empty() => {
            not_ready(reason::ACCESS_DENIED, format!("not reconciled, nothing is created or changed: {problem}"))
        }
        Outcome::TopicsNotReady(problem) => not_ready(reason::TOPICS_NOT_READY, format!("waiting for EventTopics: {problem}")),
        Outcome::Refused(refused @ Refused::Group { .. }) => not_ready(reason::ADOPTION_REQUIRED, refused.message()),
        Outcome::Refused(refused @ Refused::DeadLetter { .. }) => not_ready(reason::DEAD_LETTER_TOPIC_NOT_OWNED, refused.message()),
        Outcome::KafkaUnavailable(message) => not_ready(reason::KAFKA_UNAVAILABLE, message.clone()),
        Outcome::GroupConflict { owner, group } => not_ready(
            reason::CONSUMER_GROUP_CONFLICT,
            format!("consumer group {group:?} belongs to Subscription {owner}, which is older; set spec.consumerGroup to another group"),
        ),
        Outcome::InvalidSpec(message) => not_ready(reason::INVALID_SPEC, message.clone()),
        Outcome::DeploymentConflict(message) => not_ready(reason::DEPLOYMENT_CONFLICT, message.clone()),
        Outcome::KafkaSecretMissing(message) => not_ready(reason::KAFKA_SECRET_NOT_FOUND, message.clone()),
        Outcome::KedaNotInstalled => not_ready(reason::KEDA_NOT_INSTALLED, "KEDA is not installed; see the Scaled condition".into()),
        Outcome::Reconciled(reconciled) => {
            if let Some(problem) = &reconciled.kafka_problem {
                return not_ready(reason::KAFKA_UNAVAILABLE, problem.clone());
            }
            if replay::in_progress(reconciled.replay.as_ref()) {
                return not_ready(reason::REPLAYING, "a replay is in progress; see ReplayInProgress".into());
            }
            match (reconciled.desired_replicas, reconciled.ready_replicas) {
                (None, _) => not_ready(reason::CONSUMERS_NOT_READY, "the Deployment is new; waiting for the autoscaler to size it".into()),
                (Some(0), _) => condition(READY, Status::True, reason::SCALED_TO_ZERO, "no consumer is needed: there is no lag"),
                (Some(desired), 0) => not_ready(reason::CONSUMERS_NOT_READY, format!("none of {desired} consumers is ready")),
                (Some(desired), ready) => condition(READY, Status::True, reason::RUNNING, format!("{ready} of {desired} consumers ready")),
            }
        }
    }
}

/// The status after a reconcile with this outcome.
pub fn build_status(subscription: &Subscription, group: &str, outcome: &Outcome, now: Timestamp) -> SubscriptionStatus {
    let previous = subscription.status.clone().unwrap_or_default();
    let generation = subscription.metadata.generation;
    let reconciled = match outcome {
        Outcome::Reconciled(reconciled) => Some(reconciled.as_ref()),
        _ => None,
    };
    let replay = match reconciled {
        Some(reconciled) => reconciled.replay.clone(),
        None => previous.replay.clone(),
    };
    let desired =
        [ready_condition(outcome), topics_condition(outcome), scaled_condition(outcome, subscription), replay_condition(replay.as_ref())];
    // The group and the dead-letter topic change only with the records of a reconcile that holds
    // them: a status never names a group it has not recorded as its own.
    let mut status = SubscriptionStatus {
        observed_generation: generation,
        conditions: conditions::merge_conditions(&previous.conditions, &desired, generation, now),
        lag: Vec::new(),
        total_lag: None,
        lag_observed_time: None,
        replay,
        ..previous.clone()
    };
    let Some(reconciled) = reconciled else {
        return status;
    };
    if let Ok(lag) = &reconciled.lag {
        status.lag = lag.by_topic().into_iter().map(|(topic, lag)| TopicLag { topic, lag }).collect();
        status.total_lag = Some(lag.total());
        status.lag_observed_time = Some(Time(now));
    }
    status.desired_replicas = reconciled.desired_replicas;
    status.ready_replicas = Some(reconciled.ready_replicas);
    if previous.desired_replicas != reconciled.desired_replicas {
        status.last_scale_time = Some(Time(now));
    }
    (status.engine, status.low_lag_since) = match &reconciled.scaler {
        Scaler::Keda => (Some(ScalingEngine::Keda), None),
        Scaler::Builtin(decision) => (Some(ScalingEngine::Builtin), decision.low_lag_since.map(Time)),
    };
    recorded(status, group, &reconciled.dead_letter_topic, &reconciled.held)
}

/// The status of a paused Subscription: what it last had, plus a condition saying it is paused.
pub fn paused_status(subscription: &Subscription, now: Timestamp) -> SubscriptionStatus {
    let previous = subscription.status.clone().unwrap_or_default();
    let is_left_alone = "the consumers are neither changed nor scaled";
    let conditions = conditions::paused_conditions(&previous.conditions, is_left_alone, subscription.metadata.generation, now);
    SubscriptionStatus { conditions, ..previous }
}

/// How often a status that differs only in the lag it read is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagWrites {
    /// At most this often while the lag changes.
    pub changed: Duration,
    /// At most this often while it stays the same (to refresh `lagObservedTime`).
    pub unchanged: Duration,
}

/// Whether `new` must be written over `old`. Lag moves all the time, and each write is a watch
/// event that would trigger the next reconcile at once, so a status that differs only in lag is
/// written at most as often as `intervals` say; anything else is written at once.
pub fn needs_patch(old: Option<&SubscriptionStatus>, new: &SubscriptionStatus, intervals: LagWrites) -> bool {
    let Some(old) = old else { return true };
    let without_lag =
        |status: &SubscriptionStatus| SubscriptionStatus { lag: Vec::new(), total_lag: None, lag_observed_time: None, ..status.clone() };
    let interval = if old.lag == new.lag { intervals.unchanged } else { intervals.changed };
    without_lag(old) != without_lag(new)
        || conditions::refresh_due(old.lag_observed_time.as_ref(), new.lag_observed_time.as_ref(), interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::PartitionOffsets;
    use crate::subscription::test_support::subscription;
    use tributary_api::event_topic::Origin;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("timestamp")
    }

    fn lag(total: i64) -> GroupLag {
        GroupLag {
            partitions: vec![PartitionOffsets {
                topic: "shop.orders".into(),
                partition: 0,
                committed: Some(0),
                log_start: 0,
                log_end: total,
                start_from: 0,
            }],
        }
    }

    fn reconciled(decision: Decision, lag_reading: Result<GroupLag, String>, ready: i32) -> Outcome {
        Outcome::Reconciled(Box::new(Reconciled {
            desired_replicas: Some(decision.replicas),
            scaler: Scaler::Builtin(decision),
            lag: lag_reading,
            ready_replicas: ready,
            lag_threshold: 100,
            replay: None,
            dead_letter_topic: "default.billing.dlq".into(),
            held: Held { group_origin: Origin::Created, dead_letter_origin: Some(Origin::Created) },
            kafka_problem: None,
        }))
    }

    fn at_target(replicas: i32) -> Decision {
        Decision { replicas, low_lag_since: None, reason: scaler::Reason::AtTarget }
    }

    fn find<'a>(status: &'a SubscriptionStatus, type_: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        conditions::find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"))
    }

    fn summary(status: &SubscriptionStatus) -> Vec<(String, String, String)> {
        status.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect()
    }

    #[test]
    fn a_running_subscription_reports_lag_replicas_and_all_four_conditions() {
        let subscription = subscription("billing", "");
        let status = build_status(&subscription, "default.billing", &reconciled(at_target(3), Ok(lag(250)), 2), at(0));
        assert_eq!(
            summary(&status),
            [
                ("Ready", "True", "Running"),
                ("TopicsReady", "True", "TopicsReady"),
                ("Scaled", "True", "AtTarget"),
                ("ReplayInProgress", "False", "NoReplay")
            ]
            .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
            .to_vec()
        );
        assert_eq!(status.lag, vec![TopicLag { topic: "shop.orders".into(), lag: 250 }]);
        assert_eq!((status.total_lag, status.desired_replicas, status.ready_replicas), (Some(250), Some(3), Some(2)));
        assert_eq!((status.engine, status.consumer_group.as_deref()), (Some(ScalingEngine::Builtin), Some("default.billing")));
        assert_eq!(status.last_scale_time, Some(Time(at(0))));
        assert_eq!(status.dead_letter_topic.as_deref(), Some("default.billing.dlq"));
    }

    #[test]
    fn unknown_lag_is_absent_not_zero() {
        let mut subscription = subscription("billing", "");
        subscription.status = Some(build_status(&subscription, "g", &reconciled(at_target(3), Ok(lag(250)), 3), at(0)));
        let unknown = Decision { replicas: 3, low_lag_since: None, reason: scaler::Reason::LagUnknown };
        let status = build_status(&subscription, "g", &reconciled(unknown, Err("Kafka is unavailable".into()), 3), at(15));
        assert_eq!((status.total_lag, status.lag.is_empty(), status.lag_observed_time.clone()), (None, true, None));
        let scaled = find(&status, SCALED);
        assert_eq!((scaled.status.as_str(), scaled.reason.as_str()), ("False", reason::LAG_UNKNOWN));
        assert!(scaled.message.contains("Kafka is unavailable") && scaled.message.contains("3 replicas stay"), "{}", scaled.message);
        assert_eq!(status.last_scale_time, Some(Time(at(0))), "replicas did not change");
    }

    #[test]
    fn transition_times_are_kept_while_a_condition_holds() {
        let mut subscription = subscription("billing", "");
        subscription.status = Some(build_status(&subscription, "g", &reconciled(at_target(2), Ok(lag(150)), 2), at(0)));
        let later = build_status(&subscription, "g", &reconciled(at_target(4), Ok(lag(350)), 3), at(60));
        assert_eq!(find(&later, READY).last_transition_time, Time(at(0)), "still Ready");
        assert_eq!(later.last_scale_time, Some(Time(at(60))), "2 → 4 replicas");
        subscription.status = Some(later);
        let waiting = build_status(
            &subscription,
            "g",
            &Outcome::TopicsNotReady(TopicsProblem { missing: vec!["orders".into()], ..TopicsProblem::default() }),
            at(120),
        );
        let ready = find(&waiting, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str(), &ready.last_transition_time),
            ("False", reason::TOPICS_NOT_READY, &Time(at(120)))
        );
        assert_eq!(find(&waiting, TOPICS_READY).reason, reason::TOPIC_NOT_FOUND);
        assert_eq!(find(&waiting, SCALED).status, "Unknown");
        assert_eq!((waiting.desired_replicas, waiting.total_lag), (Some(4), None), "last known replicas kept, lag not read");
    }

    #[test]
    fn ready_follows_the_consumers_and_the_replay() {
        let subscription = subscription("billing", "");
        let ready = |outcome: &Outcome| {
            let status = build_status(&subscription, "g", outcome, at(0));
            let ready = find(&status, READY);
            (ready.status.clone(), ready.reason.clone())
        };
        assert_eq!(ready(&reconciled(at_target(0), Ok(lag(0)), 0)), ("True".into(), reason::SCALED_TO_ZERO.into()));
        assert_eq!(ready(&reconciled(at_target(2), Ok(lag(150)), 0)), ("False".into(), reason::CONSUMERS_NOT_READY.into()));
        let Outcome::Reconciled(mut replaying) = reconciled(at_target(0), Ok(lag(0)), 0) else { unreachable!() };
        replaying.replay = Some(ReplayStatus { to_timestamp: Time(at(-60)), phase: ReplayPhase::ScalingDown, last_transition_time: None });
        let status = build_status(&subscription, "g", &Outcome::Reconciled(replaying), at(0));
        assert_eq!(
            (find(&status, READY).reason.as_str(), find(&status, SCALED).reason.as_str()),
            (reason::REPLAYING, reason::HELD_FOR_REPLAY)
        );
        assert_eq!(
            (find(&status, REPLAY_IN_PROGRESS).status.as_str(), find(&status, REPLAY_IN_PROGRESS).reason.as_str()),
            ("True", reason::SCALING_DOWN)
        );
        let conflict = Outcome::GroupConflict { owner: "team-a/billing".into(), group: "shared".into() };
        assert_eq!(ready(&conflict), ("False".into(), reason::CONSUMER_GROUP_CONFLICT.into()));
    }

    #[test]
    fn lag_alone_is_written_at_most_once_per_interval() {
        let mut subscription = subscription("billing", "");
        let first = build_status(&subscription, "g", &reconciled(at_target(2), Ok(lag(150)), 2), at(0));
        subscription.status = Some(first.clone());
        let intervals = LagWrites { changed: Duration::from_secs(15), unchanged: Duration::from_secs(300) };
        let after = |seconds: i64, total: i64| build_status(&subscription, "g", &reconciled(at_target(2), Ok(lag(total)), 2), at(seconds));
        assert!(!needs_patch(Some(&first), &after(5, 160), intervals), "changed lag, too soon");
        assert!(needs_patch(Some(&first), &after(15, 160), intervals), "changed lag, interval passed");
        assert!(!needs_patch(Some(&first), &after(60, 150), intervals), "same lag: only the read time moved");
        assert!(needs_patch(Some(&first), &after(300, 150), intervals), "same lag, refreshed now and then");
        let scaled = build_status(&subscription, "g", &reconciled(at_target(3), Ok(lag(150)), 2), at(1));
        assert!(needs_patch(Some(&first), &scaled, intervals), "anything else at once");
        let unknown = Decision { replicas: 2, low_lag_since: None, reason: scaler::Reason::LagUnknown };
        let unreadable = build_status(&subscription, "g", &reconciled(unknown, Err("down".into()), 2), at(1));
        assert!(needs_patch(Some(&first), &unreadable, intervals), "lag becoming unknown at once");
    }

    #[test]
    fn pausing_adds_a_condition_and_keeps_the_rest() {
        let mut subscription = subscription("billing", "");
        subscription.metadata.generation = Some(1);
        subscription.status = Some(build_status(&subscription, "g", &reconciled(at_target(2), Ok(lag(150)), 2), at(0)));
        subscription.metadata.generation = Some(2);
        let paused = paused_status(&subscription, at(10));
        assert_eq!(paused.conditions.len(), 5);
        assert_eq!(find(&paused, READY).observed_generation, Some(1), "not observed at the new generation");
        let condition = find(&paused, conditions::RECONCILIATION_PAUSED);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str(), condition.observed_generation),
            ("True", conditions::PAUSED, Some(2))
        );
        assert!(condition.message.contains("the consumers are neither changed nor scaled"), "{}", condition.message);
        assert_eq!(paused.total_lag, Some(150));
    }
}
