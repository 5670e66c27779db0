//! EventTopic status from the outcome of a reconcile (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use tributary_api::event_topic::Origin;
use tributary_api::{EventTopic, EventTopicStatus};

use super::controller::{Prepared, Reconciled};
use super::desired::TopicRole;
use super::names::KafkaNames;
use super::ownership::{recorded, AdoptionRequired, Holding};
use super::plan::Blocker;
use super::sync::{TopicProblem, TopicReport};
use crate::conditions::{self, DesiredCondition, Status};

/// Condition types (and ReconciliationPaused, from [`conditions`]).
pub const READY: &str = "Ready";

/// Condition reasons.
pub mod reason {
    pub const CREATED: &str = "Created";
    pub const UPDATED: &str = "Updated";
    pub const IN_SYNC: &str = "InSync";
    pub const PARTITION_DECREASE_NOT_SUPPORTED: &str = "PartitionDecreaseNotSupported";
    pub const RESOURCE_CONFLICT: &str = "ResourceConflict";
    pub const KAFKA_UNAVAILABLE: &str = "KafkaUnavailable";
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    pub const NOT_SUPPORTED: &str = "NotSupported";
    pub const REJECTED: &str = "Rejected";
    pub const ADOPTION_REQUIRED: &str = "AdoptionRequired";

    /// The reasons of Ready.
    pub const ALL: [&str; 10] = [
        CREATED,
        UPDATED,
        IN_SYNC,
        PARTITION_DECREASE_NOT_SUPPORTED,
        RESOURCE_CONFLICT,
        KAFKA_UNAVAILABLE,
        INVALID_CONFIG,
        NOT_SUPPORTED,
        REJECTED,
        ADOPTION_REQUIRED,
    ];
}

/// How a reconcile of an EventTopic ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Kafka was compared with the spec (and changed, unless it was a dry run).
    Synced(Vec<TopicReport>),
    /// The spec cannot be turned into Kafka settings.
    InvalidSpec(String),
    /// An older EventTopic owns one of the Kafka topics this one names.
    Conflict {
        owner: String,
        topic: String,
    },
    /// One of the Kafka topics exists and this EventTopic may not take it over.
    AdoptionRequired(AdoptionRequired),
    KafkaUnavailable(String),
}

/// The Ready condition for an outcome. A sync that changed nothing keeps the previous Ready
/// reason, so a topic created once does not flip from Created to InSync on the next resync.
pub fn ready_condition(outcome: &Outcome, previous: Option<&EventTopicStatus>) -> DesiredCondition {
    let ready = |status, reason, message: String| DesiredCondition::new(READY, status, reason, message);
    match outcome {
        Outcome::InvalidSpec(message) => ready(Status::False, reason::INVALID_CONFIG, message.clone()),
        Outcome::Conflict { owner, topic } => ready(
            Status::False,
            reason::RESOURCE_CONFLICT,
            format!("Kafka topic {topic:?} is already managed by EventTopic {owner}, which is older; this EventTopic leaves it alone"),
        ),
        Outcome::AdoptionRequired(refused) => ready(Status::False, reason::ADOPTION_REQUIRED, refused.message()),
        Outcome::KafkaUnavailable(message) => ready(Status::False, reason::KAFKA_UNAVAILABLE, message.clone()),
        Outcome::Synced(reports) => {
            if let Some((reason, message)) = first_problem(reports) {
                return ready(Status::False, reason, message);
            }
            let changed: Vec<String> = reports.iter().filter_map(describe_changes).collect();
            if changed.is_empty() {
                let previous_ready =
                    previous.and_then(|status| conditions::find(&status.conditions, READY)).filter(|condition| condition.status == "True");
                return match previous_ready {
                    Some(condition) => DesiredCondition {
                        type_: READY,
                        status: Status::True,
                        reason: known_reason(&condition.reason),
                        message: condition.message.clone(),
                    },
                    None => {
                        let verb = if reports.len() == 1 { "matches" } else { "match" };
                        ready(Status::True, reason::IN_SYNC, format!("{} {verb} the spec", topic_list(reports)))
                    }
                };
            }
            let created = reports.iter().any(|report| report.plan.create);
            let reason = if created { reason::CREATED } else { reason::UPDATED };
            ready(Status::True, reason, changed.join("; "))
        }
    }
}

/// Maps a stored reason back to our constant (reasons are `&'static str`); an unknown one reads
/// as InSync.
fn known_reason(stored: &str) -> &'static str {
    reason::ALL.into_iter().find(|known| *known == stored).unwrap_or(reason::IN_SYNC)
}

fn first_problem(reports: &[TopicReport]) -> Option<(&'static str, String)> {
    // Most actionable first: a config the broker refuses, then impossible changes, then
    // operations the broker lacks.
    let rank = |problem: &TopicProblem| match problem {
        TopicProblem::InvalidConfig(_) => 0,
        TopicProblem::Rejected(_) => 1,
        TopicProblem::Blocked(Blocker::PartitionDecrease { .. }) => 2,
        TopicProblem::Blocked(Blocker::ReplicationFactorChange { .. }) => 3,
        TopicProblem::Unsupported { .. } => 4,
    };
    let (report, problem) = reports
        .iter()
        .flat_map(|report| report.problems.iter().map(move |problem| (report, problem)))
        .min_by_key(|(_, problem)| rank(problem))?;
    let subject = format!("{} {:?}", report.role.describe(), report.name);
    Some(match problem {
        TopicProblem::InvalidConfig(message) => (reason::INVALID_CONFIG, format!("Kafka rejected the config of {subject}: {message}")),
        TopicProblem::Rejected(message) => (reason::REJECTED, format!("{subject}: {message}")),
        TopicProblem::Blocked(blocker @ Blocker::PartitionDecrease { .. }) => {
            (reason::PARTITION_DECREASE_NOT_SUPPORTED, format!("{subject} {blocker}"))
        }
        TopicProblem::Blocked(blocker @ Blocker::ReplicationFactorChange { .. }) => (reason::NOT_SUPPORTED, format!("{subject} {blocker}")),
        TopicProblem::Unsupported { operation, message } => (
            reason::NOT_SUPPORTED,
            format!("the broker does not support {operation}, needed for {subject} ({message}); other settings are in sync"),
        ),
    })
}

fn describe_changes(report: &TopicReport) -> Option<String> {
    let plan = &report.plan;
    let subject = format!("{} {:?}", report.role.describe(), report.name);
    if plan.create {
        return Some(format!("created {subject}"));
    }
    let mut parts = Vec::new();
    if let Some((from, to)) = plan.add_partitions {
        parts.push(format!("partitions {from}→{to}"));
    }
    if !plan.config_changes.is_empty() {
        parts.push(format!("set {}", plan.config_changes.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    (!parts.is_empty()).then(|| format!("updated {subject}: {}", parts.join(", ")))
}

fn topic_list(reports: &[TopicReport]) -> String {
    reports.iter().map(|report| format!("{} {:?}", report.role.describe(), report.name)).collect::<Vec<_>>().join(" and ")
}

/// The status after a reconcile that ended so.
pub fn build_status(topic: &EventTopic, reconciled: &Reconciled, now: Timestamp) -> EventTopicStatus {
    let previous = topic.status.as_ref();
    let outcome = &reconciled.outcome;
    let generation = topic.metadata.generation;
    let ready = ready_condition(outcome, previous);
    let previous_conditions = previous.map(|status| status.conditions.as_slice()).unwrap_or_default();
    let record = |role| {
        // Without names (the spec has none) the status keeps the ones it had.
        let name = match &reconciled.names {
            Some(names) => names.of_role(role).map(str::to_owned),
            None => previous.and_then(|status| name_in(status, role).clone()),
        };
        let origin = match outcome {
            Outcome::Synced(reports) => reports.iter().find(|report| report.role == role).and_then(|report| report.origin),
            _ => kept_origin(previous, role, name.as_deref()),
        };
        (name, origin)
    };
    let ((topic_name, origin), (dead_letter_topic, dead_letter_origin)) = (record(TopicRole::Main), record(TopicRole::DeadLetter));
    let mut status = EventTopicStatus {
        observed_generation: generation,
        conditions: conditions::merge_conditions(previous_conditions, &[ready], generation, now),
        topic_name,
        origin,
        partitions: previous.and_then(|s| s.partitions),
        replication_factor: previous.and_then(|s| s.replication_factor),
        dead_letter_topic,
        dead_letter_origin,
        last_sync_time: previous.and_then(|s| s.last_sync_time.clone()),
    };
    match outcome {
        Outcome::Synced(reports) => {
            if let Some(main) = reports.iter().find(|report| report.role == TopicRole::Main) {
                status.partitions = main.partitions;
                status.replication_factor = main.replication_factor;
            }
            status.last_sync_time = Some(Time(now));
        }
        // The topic belongs to another EventTopic; showing its numbers here would mislead.
        Outcome::Conflict { .. } => {
            status.partitions = None;
            status.replication_factor = None;
        }
        Outcome::InvalidSpec(_) | Outcome::KafkaUnavailable(_) | Outcome::AdoptionRequired(_) => {}
    }
    // Numbers only for a topic this EventTopic holds: another's would mislead, and a status with
    // partitions but no origin reads as one written before origins were recorded.
    if status.origin.is_none() {
        status.partitions = None;
        status.replication_factor = None;
    }
    status
}

/// The status to write before creating topics: the current one, with each topic about to be
/// created recorded as `Created` under its name. If the operator stops before it writes the
/// status that follows, its next reconcile still knows the topics as its own. `None` when every
/// such record is there already.
pub fn with_creations_recorded(topic: &EventTopic, prepared: &Prepared) -> Option<EventTopicStatus> {
    let previous = topic.status.as_ref();
    let mut status = previous.cloned().unwrap_or_default();
    let mut changed = false;
    for role in [TopicRole::Main, TopicRole::DeadLetter] {
        let name = prepared.names.of_role(role).map(str::to_owned);
        let creating = prepared.held.iter().any(|held| held.desired.role == role && held.holding == Holding::Create);
        let origin = if creating { Some(Origin::Created) } else { kept_origin(previous, role, name.as_deref()) };
        // Records from before origins existed are written out, as the new record replaces them.
        let (name_field, origin_field) = match role {
            TopicRole::Main => (&mut status.topic_name, &mut status.origin),
            TopicRole::DeadLetter => (&mut status.dead_letter_topic, &mut status.dead_letter_origin),
        };
        changed |= creating && (*name_field != name || *origin_field != origin);
        (*name_field, *origin_field) = (name, origin);
    }
    changed.then_some(status)
}

fn name_in(status: &EventTopicStatus, role: TopicRole) -> &Option<String> {
    match role {
        TopicRole::Main => &status.topic_name,
        TopicRole::DeadLetter => &status.dead_letter_topic,
    }
}

/// The origin `previous` records for the topic in `role`, if it is still named `name`.
fn kept_origin(previous: Option<&EventTopicStatus>, role: TopicRole, name: Option<&str>) -> Option<Origin> {
    recorded(previous, role).filter(|(recorded, _)| Some(*recorded) == name).map(|(_, origin)| origin)
}

/// The status of a paused EventTopic: what it last had, plus a condition saying it is paused.
pub fn paused_status(topic: &EventTopic, now: Timestamp) -> EventTopicStatus {
    let previous = topic.status.clone().unwrap_or_default();
    let conditions = conditions::paused_conditions(&previous.conditions, "Kafka is not being reconciled", topic.metadata.generation, now);
    EventTopicStatus { conditions, ..previous }
}

/// The Ready condition of an EventTopic's status, if it has one.
pub fn ready(status: Option<&EventTopicStatus>) -> Option<&Condition> {
    conditions::find(status.map(|status| status.conditions.as_slice()).unwrap_or_default(), READY)
}

/// Whether an EventTopic's status says it is Ready: its Kafka topics exist and match its spec.
pub fn is_ready(status: Option<&EventTopicStatus>) -> bool {
    ready(status).is_some_and(|condition| condition.status == "True")
}

/// The Kafka topics of a Ready EventTopic, as its status names them: the real names, after the
/// naming policy, for the controllers that use them. `None` unless it is Ready and names its topic.
pub fn ready_names(status: Option<&EventTopicStatus>) -> Option<KafkaNames> {
    let status = status.filter(|status| is_ready(Some(status)))?;
    Some(KafkaNames { topic: status.topic_name.clone()?, dead_letter: status.dead_letter_topic.clone() })
}

/// Whether `new` must be written over `old`. A status that differs only in `lastSyncTime` is
/// written at most once per `min_interval`, so the watch event our own write causes does not
/// lead to another write.
pub fn needs_patch(old: Option<&EventTopicStatus>, new: &EventTopicStatus, min_interval: std::time::Duration) -> bool {
    let Some(old) = old else { return true };
    let without_sync_time = |status: &EventTopicStatus| EventTopicStatus { last_sync_time: None, ..status.clone() };
    without_sync_time(old) != without_sync_time(new)
        || conditions::refresh_due(old.last_sync_time.as_ref(), new.last_sync_time.as_ref(), min_interval)
}
