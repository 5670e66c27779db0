//! OutboxRelay status from what a reconcile found (pure).

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tributary_api::outbox_relay::{RelayReport, SIDECAR_OPT_IN_ANNOTATION};
use tributary_api::{OutboxRelay, OutboxRelayStatus};

use super::desired::{workload_name, PlacementKind, ResolvedRoute};
use super::resolve::{Routes, SecretCheck};
use crate::conditions::{self, DesiredCondition, Status};

/// Condition types.
pub const READY: &str = "Ready";
pub const TARGET_FOUND: &str = "TargetFound";
pub const TOPICS_READY: &str = "TopicsReady";

/// Condition reasons.
pub mod reason {
    // TargetFound
    pub const TARGET_FOUND: &str = "TargetFound";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const TARGET_NOT_OPTED_IN: &str = "TargetNotOptedIn";
    pub const TARGET_IS_SUBSCRIPTION: &str = "TargetIsSubscription";
    pub const STANDALONE: &str = "Standalone";
    // TopicsReady
    pub const TOPICS_READY: &str = "TopicsReady";
    pub const NO_ROUTES: &str = "NoRoutes";
    pub const TOPIC_NOT_FOUND: &str = "TopicNotFound";
    pub const TOPIC_NOT_READY: &str = "TopicNotReady";
    // Ready, besides the reasons above that keep the relay from running
    pub const RELAYING: &str = "Relaying";
    pub const RELAY_NOT_RUNNING: &str = "RelayNotRunning";
    pub const TARGET_IN_USE: &str = "TargetInUse";
    pub const DEPLOYMENT_CONFLICT: &str = "DeploymentConflict";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    pub const KAFKA_SECRET_NOT_FOUND: &str = "KafkaSecretNotFound";
    /// The relay runs but cannot relay its table (see `RelayReport::schema_problem`).
    pub const SCHEMA_PROBLEM: &str = "SchemaProblem";
}

/// The Deployment that runs (or would run) the relay, as a reconcile found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// Sidecar: the target exists and this relay holds it.
    Target,
    /// Sidecar: the target does not exist (yet).
    TargetNotFound,
    /// Sidecar: an older OutboxRelay, named here, runs its relay in the target.
    TargetHeldBy(String),
    /// Sidecar: the target does not carry the opt-in annotation for this relay (`annotated`: the
    /// relay it names instead, if any).
    TargetNotOptedIn { annotated: Option<String> },
    /// Sidecar: the target is the consumer Deployment of the Subscription named here.
    TargetIsSubscription(String),
    /// Standalone: the relay's own Deployment exists or can be created.
    Own,
    /// Standalone: a Deployment of that name exists that this relay does not own.
    NameTaken,
}

/// A Secret the relay's pods would mount but cannot: the reason (`SecretNotFound`,
/// `SecretKeyNotFound`) and a message naming the Secret, the key and the spec field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretProblem {
    pub reason: &'static str,
    pub message: String,
}

/// Everything a reconcile learnt that the status shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub workload: Workload,
    pub routes: Routes,
    pub secret: SecretCheck,
    /// Why the database TLS Secret (`spec.database.tls`) cannot be mounted, if it cannot.
    pub database_tls: Option<SecretProblem>,
    /// Why the workload Kafka Secret cannot be mounted (see `workload::kafka_secret_problem`): as
    /// a sidecar, the pod that would not start is the application's.
    pub kafka_secret_problem: Option<String>,
    /// A spec the relay could not run with.
    pub invalid: Option<String>,
    /// Pods of the workload whose relay container is ready; `None` when there is no workload.
    pub ready_relays: Option<usize>,
    /// What a relay answered on `/status`; `None` when none could be asked.
    pub report: Option<RelayReport>,
}

impl Observation {
    /// The routes to configure the relay with, when it can be applied: every reference resolved
    /// and nothing in the way.
    pub fn routes_to_apply(&self) -> Option<&[ResolvedRoute]> {
        match (&self.routes, self.blocker()) {
            (Routes::Ready(routes), None) => Some(routes),
            _ => None,
        }
    }

    /// The first reason the relay cannot be applied, most fundamental first.
    fn blocker(&self) -> Option<(&'static str, String)> {
        if let Some(message) = &self.invalid {
            return Some((reason::INVALID_CONFIG, message.clone()));
        }
        match &self.workload {
            Workload::TargetNotFound => return Some((reason::TARGET_NOT_FOUND, String::new())),
            Workload::TargetHeldBy(holder) => {
                return Some((
                    reason::TARGET_IN_USE,
                    format!("the target Deployment runs the relay of OutboxRelay {holder}, which is older; a pod holds one relay"),
                ))
            }
            Workload::NameTaken => {
                return Some((
                    reason::DEPLOYMENT_CONFLICT,
                    "a Deployment of that name exists and does not belong to this OutboxRelay".into(),
                ))
            }
            Workload::TargetNotOptedIn { .. } => return Some((reason::TARGET_NOT_OPTED_IN, String::new())),
            Workload::TargetIsSubscription(_) => return Some((reason::TARGET_IS_SUBSCRIPTION, String::new())),
            Workload::Target | Workload::Own => {}
        }
        match self.secret {
            SecretCheck::Missing => return Some((reason::SECRET_NOT_FOUND, String::new())),
            SecretCheck::KeyMissing => return Some((reason::SECRET_KEY_NOT_FOUND, String::new())),
            SecretCheck::Found => {}
        }
        if let Some(problem) = &self.database_tls {
            return Some((problem.reason, problem.message.clone()));
        }
        if let Some(problem) = &self.kafka_secret_problem {
            return Some((reason::KAFKA_SECRET_NOT_FOUND, problem.clone()));
        }
        match &self.routes {
            Routes::NotFound(names) => Some((reason::TOPIC_NOT_FOUND, names.join(", "))),
            Routes::NotReady(names) => Some((reason::TOPIC_NOT_READY, names.join(", "))),
            Routes::Ready(_) => None,
        }
    }
}

fn target_found(relay: &OutboxRelay, workload: &Workload) -> DesiredCondition {
    let target = workload_name(relay);
    let namespace = relay.namespace().unwrap_or_default();
    match workload {
        Workload::Own | Workload::NameTaken => {
            DesiredCondition::new(TARGET_FOUND, Status::True, reason::STANDALONE, format!("the relay runs in its own Deployment {target}"))
        }
        Workload::TargetNotFound => DesiredCondition::new(
            TARGET_FOUND,
            Status::False,
            reason::TARGET_NOT_FOUND,
            format!("Deployment {target} does not exist in namespace {namespace}; the relay is added when it appears"),
        ),
        Workload::Target | Workload::TargetHeldBy(_) => {
            DesiredCondition::new(TARGET_FOUND, Status::True, reason::TARGET_FOUND, format!("Deployment {target} exists"))
        }
        Workload::TargetNotOptedIn { annotated } => {
            let relay_name = relay.name_any();
            let found = match annotated {
                Some(other) => format!("its annotation {SIDECAR_OPT_IN_ANNOTATION} names {other:?}"),
                None => format!("it has no annotation {SIDECAR_OPT_IN_ANNOTATION}"),
            };
            DesiredCondition::new(
                TARGET_FOUND,
                Status::False,
                reason::TARGET_NOT_OPTED_IN,
                format!(
                    "Deployment {target} does not opt in to this relay ({found}), so it is left unchanged; whoever may edit it adds the annotation {SIDECAR_OPT_IN_ANNOTATION}: {relay_name}"
                ),
            )
        }
        Workload::TargetIsSubscription(subscription) => DesiredCondition::new(
            TARGET_FOUND,
            Status::False,
            reason::TARGET_IS_SUBSCRIPTION,
            format!(
                "Deployment {target} runs the consumers of Subscription {subscription}, whose dispatcher is a {} container too; point spec.placement.sidecar.targetRef at the application's own Deployment",
                crate::relay_container::CONTAINER_NAME
            ),
        ),
    }
}

fn topics_ready(routes: &Routes) -> DesiredCondition {
    let condition = |status, reason, message: String| DesiredCondition::new(TOPICS_READY, status, reason, message);
    match routes {
        Routes::Ready(routes) if routes.is_empty() => {
            condition(Status::True, reason::NO_ROUTES, "no routes to EventTopics; rows go to the topics their row or prefix names".into())
        }
        Routes::Ready(routes) => {
            let list: Vec<String> =
                routes.iter().map(|r| format!("{} → {} ({:?})", r.aggregate_type, r.event_topic, r.kafka_topic)).collect();
            condition(Status::True, reason::TOPICS_READY, list.join(", "))
        }
        Routes::NotFound(names) => condition(
            Status::False,
            reason::TOPIC_NOT_FOUND,
            format!("spec.routing.routes name EventTopics that do not exist in this namespace: {}", names.join(", ")),
        ),
        Routes::NotReady(names) => {
            condition(Status::False, reason::TOPIC_NOT_READY, format!("waiting for EventTopics to become Ready: {}", names.join(", ")))
        }
    }
}

fn ready(
    relay: &OutboxRelay,
    observation: &Observation,
    conditions: &[&DesiredCondition],
    schema_problem: Option<&str>,
) -> DesiredCondition {
    let not_ready = |reason, message: String| DesiredCondition::new(READY, Status::False, reason, message);
    if let Some((reason, detail)) = observation.blocker() {
        // Reasons shared with TargetFound or TopicsReady repeat that condition's message.
        let message = conditions.iter().find(|condition| condition.reason == reason).map(|condition| condition.message.clone());
        let secret = &relay.spec.database.url_secret_ref;
        let message = message.unwrap_or_else(|| match observation.secret {
            SecretCheck::Missing => format!("Secret {} (spec.database.urlSecretRef) does not exist", secret.name),
            SecretCheck::KeyMissing => format!("Secret {} has no key {:?} (spec.database.urlSecretRef)", secret.name, secret.key),
            SecretCheck::Found => detail,
        });
        return not_ready(reason, message);
    }
    let workload = workload_name(relay);
    // The relay's own words (they name the table and what to do), as they are.
    if let Some(problem) = schema_problem {
        return not_ready(reason::SCHEMA_PROBLEM, problem.to_owned());
    }
    match observation.ready_relays {
        Some(count) if count > 0 => DesiredCondition::new(
            READY,
            Status::True,
            reason::RELAYING,
            format!("{count} pod(s) of Deployment {workload} run a ready {} container", crate::relay_container::CONTAINER_NAME),
        ),
        _ => not_ready(
            reason::RELAY_NOT_RUNNING,
            format!("no pod of Deployment {workload} runs a ready {} container yet", crate::relay_container::CONTAINER_NAME),
        ),
    }
}

/// The status after a reconcile: conditions, where the relay runs, and the relay's own figures
/// (kept from before when no relay could be asked).
/// The status of a paused OutboxRelay: what it last had, plus a condition saying it is paused.
pub fn paused_status(relay: &OutboxRelay, now: Timestamp) -> OutboxRelayStatus {
    let previous = relay.status.clone().unwrap_or_default();
    let is_left_alone = "the relay's container or Deployment is left as it is";
    let conditions = conditions::paused_conditions(&previous.conditions, is_left_alone, relay.metadata.generation, now);
    OutboxRelayStatus { conditions, ..previous }
}

pub fn build_status(relay: &OutboxRelay, observation: &Observation, now: Timestamp) -> OutboxRelayStatus {
    let previous = relay.status.clone().unwrap_or_default();
    let generation = relay.metadata.generation;
    let target = target_found(relay, &observation.workload);
    let topics = topics_ready(&observation.routes);
    // A relay not asked this time (see `ProbeSchedule`) keeps what it reported last.
    let report = observation.report.clone().unwrap_or_else(|| RelayReport {
        pending_rows: previous.pending_rows,
        last_published_time: previous.last_published_time.clone(),
        schema_problem: reported_schema_problem(&previous),
    });
    let ready = ready(relay, observation, &[&target, &topics], report.schema_problem.as_deref());
    OutboxRelayStatus {
        observed_generation: generation,
        conditions: conditions::merge_conditions(&previous.conditions, &[ready, target, topics], generation, now),
        placement: Some(PlacementKind::of(relay).as_str().to_owned()),
        target: Some(workload_name(relay)),
        pending_rows: report.pending_rows,
        last_published_time: report.last_published_time,
    }
}

/// The status as before, but naming the workload the relay is about to be applied to: written
/// before the apply, so that a later change of target or placement knows where to clean up even
/// when the reconcile fails right after the apply.
pub fn recorded_target(relay: &OutboxRelay) -> OutboxRelayStatus {
    OutboxRelayStatus {
        placement: Some(PlacementKind::of(relay).as_str().to_owned()),
        target: Some(workload_name(relay)),
        ..relay.status.clone().unwrap_or_default()
    }
}

/// The schema problem a status's Ready condition shows, as the relay reported it.
fn reported_schema_problem(status: &OutboxRelayStatus) -> Option<String> {
    conditions::find(&status.conditions, READY)
        .filter(|condition| condition.reason == reason::SCHEMA_PROBLEM)
        .map(|condition| condition.message.clone())
}

/// The Ready condition's reason in a status, if any.
pub fn ready_reason(status: Option<&OutboxRelayStatus>) -> Option<&str> {
    status.and_then(|status| conditions::find(&status.conditions, READY)).map(|condition| condition.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox_relay::test_support::outbox_relay;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const SIDECAR: &str = r#"
database: { urlSecretRef: { name: shop-db, key: dsn } }
routing: { routes: [{ aggregateType: Order, eventTopic: orders }] }
placement: { sidecar: { targetRef: { name: shop-api } } }
"#;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("timestamp")
    }

    fn running() -> Observation {
        Observation {
            workload: Workload::Target,
            routes: Routes::Ready(vec![ResolvedRoute {
                aggregate_type: "Order".into(),
                event_topic: "orders".into(),
                kafka_topic: "shop.orders".into(),
            }]),
            secret: SecretCheck::Found,
            database_tls: None,
            kafka_secret_problem: None,
            invalid: None,
            ready_relays: Some(2),
            report: Some(RelayReport { pending_rows: Some(12), last_published_time: Some(Time(at(500))), schema_problem: None }),
        }
    }

    fn condition<'a>(status: &'a OutboxRelayStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
        let condition = conditions::find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"));
        (condition.status.as_str(), condition.reason.as_str(), condition.message.as_str())
    }

    #[test]
    fn a_running_sidecar_is_ready_and_shows_the_relay_figures() {
        let mut relay = outbox_relay("shop-outbox", SIDECAR);
        relay.metadata.generation = Some(3);
        let status = build_status(&relay, &running(), at(1000));
        assert_eq!(
            condition(&status, READY),
            ("True", reason::RELAYING, "2 pod(s) of Deployment shop-api run a ready tributary-relay container")
        );
        assert_eq!(condition(&status, TARGET_FOUND).1, reason::TARGET_FOUND);
        assert_eq!(condition(&status, TOPICS_READY), ("True", reason::TOPICS_READY, "Order → orders (\"shop.orders\")"));
        assert_eq!((status.placement.as_deref(), status.target.as_deref()), (Some("Sidecar"), Some("shop-api")));
        assert_eq!((status.pending_rows, status.last_published_time), (Some(12), Some(Time(at(500)))));
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn each_blocker_names_its_reason_in_ready_and_its_own_condition() {
        let relay = outbox_relay("shop-outbox", SIDECAR);
        let cases = [
            (
                Observation { workload: Workload::TargetNotFound, ..running() },
                reason::TARGET_NOT_FOUND,
                "Deployment shop-api does not exist",
            ),
            (Observation { workload: Workload::TargetHeldBy("first".into()), ..running() }, reason::TARGET_IN_USE, "OutboxRelay first"),
            (
                Observation { secret: SecretCheck::Missing, ..running() },
                reason::SECRET_NOT_FOUND,
                "Secret shop-db (spec.database.urlSecretRef) does not exist",
            ),
            (Observation { secret: SecretCheck::KeyMissing, ..running() }, reason::SECRET_KEY_NOT_FOUND, "has no key \"dsn\""),
            (
                Observation {
                    database_tls: Some(SecretProblem {
                        reason: reason::SECRET_NOT_FOUND,
                        message: "Secret shop-db-tls (…) does not exist".into(),
                    }),
                    ..running()
                },
                reason::SECRET_NOT_FOUND,
                "Secret shop-db-tls (…) does not exist",
            ),
            (
                Observation { routes: Routes::NotFound(vec!["orders".into()]), ..running() },
                reason::TOPIC_NOT_FOUND,
                "do not exist in this namespace: orders",
            ),
            (
                Observation { routes: Routes::NotReady(vec!["orders".into()]), ..running() },
                reason::TOPIC_NOT_READY,
                "waiting for EventTopics to become Ready: orders",
            ),
            (Observation { invalid: Some("spec.pollInterval: too long".into()), ..running() }, reason::INVALID_CONFIG, "spec.pollInterval"),
            (Observation { ready_relays: Some(0), ..running() }, reason::RELAY_NOT_RUNNING, "no pod of Deployment shop-api"),
        ];
        for (observation, expected, message) in cases {
            let status = build_status(&relay, &observation, at(1));
            let (ready, reason, text) = condition(&status, READY);
            assert_eq!((ready, reason), ("False", expected), "{observation:?}");
            assert!(text.contains(message), "{expected}: {text}");
        }
        let status = build_status(&relay, &Observation { routes: Routes::NotReady(vec!["orders".into()]), ..running() }, at(1));
        assert_eq!(condition(&status, TOPICS_READY).1, reason::TOPIC_NOT_READY);
        let status = build_status(&relay, &Observation { workload: Workload::TargetNotFound, ..running() }, at(1));
        assert_eq!(condition(&status, TARGET_FOUND).0, "False");
    }

    #[test]
    fn a_reported_schema_problem_makes_the_relay_not_ready_until_it_reports_none() {
        let mut relay = outbox_relay("shop-outbox", SIDECAR);
        let problem = "outbox table \"public\".\"outbox\" does not exist (run `tributary-relay migrate` first)";
        let mut reporting = running();
        reporting.report = Some(RelayReport { schema_problem: Some(problem.into()), ..RelayReport::default() });
        let status = build_status(&relay, &reporting, at(100));
        assert_eq!(condition(&status, READY), ("False", reason::SCHEMA_PROBLEM, problem));
        relay.status = Some(status);
        let not_asked = build_status(&relay, &Observation { report: None, ..running() }, at(110));
        assert_eq!(condition(&not_asked, READY), ("False", reason::SCHEMA_PROBLEM, problem), "kept until the relay is asked again");
        relay.status = Some(not_asked);
        assert_eq!(condition(&build_status(&relay, &running(), at(120)), READY).1, reason::RELAYING);
    }

    #[test]
    fn relay_figures_are_kept_when_no_relay_answers_and_transitions_keep_their_time() {
        let mut relay = outbox_relay("shop-outbox", SIDECAR);
        let first = build_status(&relay, &running(), at(100));
        relay.status = Some(first.clone());
        let second = build_status(&relay, &Observation { report: None, ..running() }, at(200));
        assert_eq!(second, first, "nothing changed: same status, same transition times");
        let down = build_status(&relay, &Observation { report: None, ready_relays: Some(0), ..running() }, at(300));
        assert_eq!((down.pending_rows, down.last_published_time.clone()), (Some(12), Some(Time(at(500)))));
        let ready = conditions::find(&down.conditions, READY).expect("Ready");
        assert_eq!(ready.last_transition_time, Time(at(300)));
    }

    #[test]
    fn standalone_placement_names_its_own_deployment() {
        let relay = outbox_relay(
            "billing",
            "database: { urlSecretRef: { name: db } }\nrouting: { topicPrefix: b. }\nplacement: { standalone: {} }",
        );
        let status = build_status(&relay, &Observation { workload: Workload::Own, routes: Routes::Ready(vec![]), ..running() }, at(1));
        assert_eq!((status.placement.as_deref(), status.target.as_deref()), (Some("Standalone"), Some("billing-relay")));
        assert_eq!(condition(&status, TARGET_FOUND).1, reason::STANDALONE);
        assert_eq!(condition(&status, TOPICS_READY).1, reason::NO_ROUTES);
        let taken = build_status(&relay, &Observation { workload: Workload::NameTaken, ..running() }, at(1));
        assert_eq!(condition(&taken, READY).1, reason::DEPLOYMENT_CONFLICT);
        assert_eq!(recorded_target(&relay).target.as_deref(), Some("billing-relay"));
    }
}
