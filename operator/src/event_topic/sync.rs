//! Brings Kafka in line with an EventTopic: the I/O step the controller and the offline `apply`
//! share. Everything before it (desired topics, plans) and after it (status) is pure.

use tributary_api::event_topic::Origin;

use super::desired::{DesiredTopic, TopicRole};
use super::ownership::Holding;
use super::plan::{plan_topic, Blocker, TopicPlan};
use crate::kafka::{KafkaError, SyncMode, TopicAdmin, TopicState};

/// Something about one topic that keeps the EventTopic from being Ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicProblem {
    Blocked(Blocker),
    Unsupported { operation: &'static str, message: String },
    InvalidConfig(String),
    Rejected(String),
}

/// Follows "<topic>: " in reports.
impl std::fmt::Display for TopicProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicProblem::Blocked(blocker) => write!(f, "{blocker}"),
            TopicProblem::Unsupported { operation, message } => write!(f, "the broker does not support {operation} ({message})"),
            TopicProblem::InvalidConfig(message) => write!(f, "Kafka rejected its config: {message}"),
            TopicProblem::Rejected(message) => f.write_str(message),
        }
    }
}

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    pub role: TopicRole,
    pub name: String,
    pub plan: TopicPlan,
    /// Partitions and replication factor Kafka has after the sync (or would have, in a dry run).
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    pub problems: Vec<TopicProblem>,
    /// How the EventTopic holds the topic after the sync; `None` when creating it failed.
    pub origin: Option<Origin>,
}

/// A desired topic, what Kafka has of it, and how the EventTopic holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// For an adopted topic, only what the spec names for it.
    pub desired: DesiredTopic,
    pub actual: Option<TopicState>,
    pub holding: Holding,
}

/// What Kafka has of each desired topic, in order (`None`: it does not exist).
pub async fn observe(admin: &dyn TopicAdmin, desired: &[DesiredTopic]) -> Result<Vec<Option<TopicState>>, KafkaError> {
    let mut observed = Vec::with_capacity(desired.len());
    for topic in desired {
        observed.push(admin.describe_topic(&topic.spec.name).await?);
    }
    Ok(observed)
}

/// Syncs each held topic in turn. `Err` only when Kafka is unreachable; everything Kafka
/// refuses is reported per topic so the status can say exactly what is wrong.
pub async fn sync_topics(admin: &dyn TopicAdmin, held: &[Held], mode: SyncMode) -> Result<Vec<TopicReport>, KafkaError> {
    let mut reports = Vec::with_capacity(held.len());
    for topic in held {
        reports.push(sync_topic(admin, topic, mode).await?);
    }
    Ok(reports)
}

async fn sync_topic(admin: &dyn TopicAdmin, held: &Held, mode: SyncMode) -> Result<TopicReport, KafkaError> {
    let Held { desired, actual, holding } = held;
    let name = desired.spec.name.as_str();
    let plan = plan_topic(desired, actual.as_ref());
    let mut report = TopicReport {
        role: desired.role,
        name: name.to_owned(),
        partitions: actual.as_ref().map(|a| a.partitions),
        replication_factor: actual.as_ref().map(|a| a.replication_factor),
        problems: plan.blockers.iter().cloned().map(TopicProblem::Blocked).collect(),
        plan,
        origin: Some(match holding {
            Holding::Create => Origin::Created,
            Holding::Manage(origin) => *origin,
        }),
    };
    if mode == SyncMode::DryRun {
        if report.plan.create {
            report.partitions = Some(desired.spec.partitions);
            report.replication_factor = desired.spec.replication_factor;
        }
        if let Some((_, to)) = report.plan.add_partitions {
            report.partitions = Some(to);
        }
        return Ok(report);
    }

    if report.plan.create {
        if let Some(problem) = problem_or_unavailable(admin.create_topic(&desired.spec).await)? {
            report.problems.push(problem);
            report.origin = None;
            return Ok(report);
        }
        // Read back what the broker made, e.g. its default replication factor.
        let created = admin.topic_layout(name).await?;
        report.partitions = created.map(|c| c.partitions).or(Some(desired.spec.partitions));
        report.replication_factor = created.map(|c| c.replication_factor).or(desired.spec.replication_factor);
        return Ok(report);
    }
    // Configs first: they do not depend on partitions, and a broker that cannot add
    // partitions must not keep drift from being corrected.
    if !report.plan.config_changes.is_empty() {
        let configs = report.plan.config_changes.iter().map(|(key, change)| (key.clone(), change.to.clone())).collect();
        report.problems.extend(problem_or_unavailable(admin.set_configs(name, &configs).await)?);
    }
    if let Some((_, to)) = report.plan.add_partitions {
        match problem_or_unavailable(admin.create_partitions(name, to).await)? {
            Some(problem) => report.problems.push(problem),
            None => report.partitions = Some(to),
        }
    }
    Ok(report)
}

/// Splits an admin result into "Kafka is unreachable" (the caller retries the whole sync) and
/// per-topic problems (reported in status).
fn problem_or_unavailable(result: Result<(), KafkaError>) -> Result<Option<TopicProblem>, KafkaError> {
    match result {
        Ok(()) => Ok(None),
        Err(error @ KafkaError::Unavailable(_)) => Err(error),
        Err(KafkaError::Unsupported { operation, message }) => Ok(Some(TopicProblem::Unsupported { operation, message })),
        Err(KafkaError::InvalidConfig { message, .. }) => Ok(Some(TopicProblem::InvalidConfig(message))),
        Err(error @ KafkaError::Rejected { .. }) => Ok(Some(TopicProblem::Rejected(error.to_string()))),
    }
}
