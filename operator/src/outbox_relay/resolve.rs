//! The references of an OutboxRelay: its EventTopics, the database Secret, the target Deployment
//! and other relays claiming it. Lookups read the cluster; everything that decides is pure.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::core::error_boundary::DeserializeGuard;
use kube::ResourceExt;
use tributary_api::outbox_relay::{DatabaseTls, SIDECAR_OPT_IN_ANNOTATION};
use tributary_api::{EventTopic, OutboxRelay};

use super::desired::ResolvedRoute;
use super::status::{reason, SecretProblem, Workload};
use crate::controller_support::Shared;
use crate::error::Result;
use crate::event_topic::status as event_topic_status;
use crate::naming::{self, NamingPolicy};
use crate::seniority::older_claimant;
use crate::subscription::desired::SUBSCRIPTION_LABEL;
use crate::workload::check_secret_key;
pub use crate::workload::SecretCheck;

/// An EventTopic a route names, as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicLookup {
    Missing,
    /// It exists but this operator cannot read it (see the EventTopic's own status).
    Unreadable,
    NotReady,
    /// Ready, with the Kafka topic its status names (the real name, after the naming policy).
    Ready {
        kafka_topic: String,
    },
}

impl TopicLookup {
    /// What the cluster's EventTopic says.
    pub fn of(topic: Option<&DeserializeGuard<EventTopic>>) -> Self {
        match topic.map(|guard| guard.0.as_ref()) {
            None => TopicLookup::Missing,
            Some(Err(_)) => TopicLookup::Unreadable,
            Some(Ok(topic)) => match event_topic_status::ready_names(topic.status.as_ref()) {
                Some(names) => TopicLookup::Ready { kafka_topic: names.topic },
                None => TopicLookup::NotReady,
            },
        }
    }
}

/// Whether every route leads to a Ready EventTopic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routes {
    Ready(Vec<ResolvedRoute>),
    /// EventTopics that do not exist, by name.
    NotFound(Vec<String>),
    /// EventTopics that exist but are not Ready (or cannot be read), by name.
    NotReady(Vec<String>),
}

/// The EventTopics the routes name, each once, in order.
pub fn referenced_topics(relay: &OutboxRelay) -> Vec<String> {
    let mut seen = BTreeSet::new();
    relay.spec.routing.routes.iter().map(|route| route.event_topic.clone()).filter(|name| seen.insert(name.clone())).collect()
}

/// Resolves every route through `lookup` (by EventTopic name). Missing topics outrank topics that
/// are not Ready yet: they will not become Ready by waiting.
pub fn resolve_routes(relay: &OutboxRelay, lookup: impl Fn(&str) -> TopicLookup) -> Routes {
    let mut resolved = Vec::new();
    let (mut missing, mut not_ready) = (Vec::new(), Vec::new());
    let push_once = |names: &mut Vec<String>, name: &String| {
        if !names.contains(name) {
            names.push(name.clone());
        }
    };
    for route in &relay.spec.routing.routes {
        match lookup(&route.event_topic) {
            TopicLookup::Ready { kafka_topic } => resolved.push(ResolvedRoute {
                aggregate_type: route.aggregate_type.clone(),
                event_topic: route.event_topic.clone(),
                kafka_topic,
            }),
            TopicLookup::NotReady | TopicLookup::Unreadable => push_once(&mut not_ready, &route.event_topic),
            TopicLookup::Missing => push_once(&mut missing, &route.event_topic),
        }
    }
    if !missing.is_empty() {
        Routes::NotFound(missing)
    } else if !not_ready.is_empty() {
        Routes::NotReady(not_ready)
    } else {
        Routes::Ready(resolved)
    }
}

/// The database Secret of `relay`, checked.
pub async fn check_secret(shared: &Shared, relay: &OutboxRelay, namespace: &str) -> Result<SecretCheck> {
    let reference = &relay.spec.database.url_secret_ref;
    check_secret_key(shared, namespace, &reference.name, &reference.key).await
}

/// Why the database TLS Secret (`spec.database.tls`) cannot be mounted, if it cannot: a pod whose
/// Secret volume is missing, or lacks a key it names, does not start. `None` also without TLS
/// files.
pub async fn database_tls_problem(shared: &Shared, relay: &OutboxRelay, namespace: &str) -> Result<Option<SecretProblem>> {
    let Some(tls) = &relay.spec.database.tls else { return Ok(None) };
    let secret = shared.get::<Secret>(namespace, &tls.secret_ref.name).await?;
    Ok(tls_secret_problem(tls, secret.as_ref()))
}

/// What is missing of the TLS `secret` (`None` when it does not exist), first the Secret itself,
/// then each key the spec names, in spec order.
pub fn tls_secret_problem(tls: &DatabaseTls, secret: Option<&Secret>) -> Option<SecretProblem> {
    let name = &tls.secret_ref.name;
    let keys = [("caKey", Some(&tls.ca_key)), ("certKey", tls.cert_key.as_ref()), ("keyKey", tls.key_key.as_ref())];
    keys.into_iter().find_map(|(field, key)| match SecretCheck::of(secret, key?) {
        SecretCheck::Found => None,
        SecretCheck::Missing => Some(SecretProblem {
            reason: reason::SECRET_NOT_FOUND,
            message: format!("Secret {name} (spec.database.tls.secretRef) does not exist"),
        }),
        SecretCheck::KeyMissing => Some(SecretProblem {
            reason: reason::SECRET_KEY_NOT_FOUND,
            message: format!("Secret {name} has no key {:?} (spec.database.tls.{field})", key?),
        }),
    })
}

/// Every EventTopic the routes name, looked up once each.
pub async fn lookup_topics(shared: &Shared, relay: &OutboxRelay, namespace: &str) -> Result<Routes> {
    let mut found = Vec::new();
    for name in referenced_topics(relay) {
        let topic = shared.get::<DeserializeGuard<EventTopic>>(namespace, &name).await?;
        found.push((name, TopicLookup::of(topic.as_ref())));
    }
    Ok(resolve_routes(relay, |name| {
        found.iter().find(|(known, _)| known == name).map_or(TopicLookup::Missing, |(_, lookup)| lookup.clone())
    }))
}

/// The OutboxRelay that holds `me`'s sidecar target instead of it, if any: of the relays naming
/// the same Deployment, the oldest (then the first by name) adds its container; the others wait.
/// Two relays cannot share a pod: both containers would be `tributary-relay`, on one port.
pub fn target_holder<'a>(me: &OutboxRelay, all: impl IntoIterator<Item = &'a OutboxRelay>) -> Option<String> {
    let target = |relay: &OutboxRelay| relay.spec.placement.sidecar.as_ref().map(|sidecar| sidecar.target_ref.name.clone());
    let my_target = target(me)?;
    let claimants = all.into_iter().filter(|other| {
        other.namespace() == me.namespace() && other.metadata.deletion_timestamp.is_none() && target(other).as_ref() == Some(&my_target)
    });
    older_claimant(me, claimants).map(|other| other.name_any())
}

/// Spec values the schema accepts but the relay could not run with (durations too large), and
/// routing that could reach other namespaces' topics under the operator's naming policy.
pub fn validate(relay: &OutboxRelay, naming: &NamingPolicy) -> Result<(), String> {
    let spec = &relay.spec;
    for (field, value) in [("pollInterval", &spec.poll_interval), ("cleanup.retention", &spec.cleanup.retention)] {
        tributary_api::duration::parse(value).map_err(|error| format!("spec.{field}: {error}"))?;
    }
    let routing = &spec.routing;
    if let Some(prefix) = routing.topic_prefix.as_deref().filter(|prefix| naming::is_internal(prefix)) {
        return Err(format!(
            "spec.routing.topicPrefix {prefix:?} would route rows into Kafka's internal topics (names beginning with '_')"
        ));
    }
    let namespace = relay.namespace().unwrap_or_default();
    let Some(own) = naming.prefix(&namespace) else { return Ok(()) };
    let policy = naming.describe();
    if let Some(prefix) = routing.topic_prefix.as_deref().filter(|prefix| !prefix.starts_with(own.as_str())) {
        return Err(format!(
            "spec.routing.topicPrefix {prefix:?} must begin with {own:?} under {policy}: rows routed by prefix must reach only this namespace's topics"
        ));
    }
    if let Some(column) = &routing.topic_column {
        return Err(format!(
            "spec.routing.topicColumn {column:?} lets each row name any Kafka topic, which {policy} allows only in the namespaces keeping free names; route by spec.routing.routes or a topicPrefix beginning with {own:?}"
        ));
    }
    Ok(())
}

/// Whether the operator adds a sidecar only to Deployments that ask for it
/// (`--sidecar-opt-in`, chart value `operator.sidecarOptIn`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SidecarOptIn {
    /// A target Deployment must carry the annotation `tributary.dev/outbox-relay: <relay name>`.
    #[default]
    #[value(name = "Required")]
    Required,
    /// Any Deployment an OutboxRelay names is a target (the behaviour before the annotation).
    #[value(name = "NotRequired")]
    NotRequired,
}

/// Why `deployment` cannot take `relay`'s sidecar, if it cannot: it is a Subscription's consumer
/// Deployment (whose dispatcher is a `tributary-relay` container too, which two controllers would
/// fight over), or it did not opt in to this relay.
pub fn refused_target(deployment: &Deployment, relay: &OutboxRelay, opt_in: SidecarOptIn) -> Option<Workload> {
    if let Some(subscription) = deployment.labels().get(SUBSCRIPTION_LABEL) {
        return Some(Workload::TargetIsSubscription(subscription.clone()));
    }
    let annotated = deployment.annotations().get(SIDECAR_OPT_IN_ANNOTATION);
    match opt_in {
        SidecarOptIn::Required if annotated != Some(&relay.name_any()) => {
            Some(Workload::TargetNotOptedIn { annotated: annotated.cloned() })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox_relay::test_support::outbox_relay;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    const ROUTES: &str = r#"
database: { urlSecretRef: { name: db } }
routing: { routes: [{ aggregateType: Order, eventTopic: orders }, { aggregateType: Refund, eventTopic: payments }, { aggregateType: Payment, eventTopic: payments }] }
placement: { standalone: {} }
"#;

    fn ready(kafka_topic: &str) -> TopicLookup {
        TopicLookup::Ready { kafka_topic: kafka_topic.into() }
    }

    #[test]
    fn routes_resolve_to_kafka_topics_when_every_topic_is_ready() {
        let relay = outbox_relay("r", ROUTES);
        assert_eq!(referenced_topics(&relay), vec!["orders", "payments"]);
        let routes = resolve_routes(&relay, |name| ready(&format!("shop.{name}")));
        let Routes::Ready(routes) = routes else { panic!("{routes:?}") };
        let pairs: Vec<(&str, &str)> = routes.iter().map(|r| (r.aggregate_type.as_str(), r.kafka_topic.as_str())).collect();
        assert_eq!(pairs, vec![("Order", "shop.orders"), ("Refund", "shop.payments"), ("Payment", "shop.payments")]);
    }

    #[test]
    fn missing_topics_outrank_topics_that_are_not_ready() {
        let relay = outbox_relay("r", ROUTES);
        let not_ready = resolve_routes(&relay, |name| if name == "orders" { TopicLookup::NotReady } else { TopicLookup::Unreadable });
        assert_eq!(not_ready, Routes::NotReady(vec!["orders".into(), "payments".into()]));
        let missing = resolve_routes(&relay, |name| if name == "orders" { TopicLookup::NotReady } else { TopicLookup::Missing });
        assert_eq!(missing, Routes::NotFound(vec!["payments".into()]));
    }

    #[test]
    fn topic_lookup_reads_kafka_name_and_ready_condition_from_the_status() {
        // Named `orders`; under NamespacePrefixed its Kafka topic is `shop.orders`, as the status says.
        let topic: EventTopic = serde_json::from_value(serde_json::json!({
            "apiVersion": "tributary.dev/v1alpha1", "kind": "EventTopic",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {},
            "status": {
                "topicName": "shop.orders",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Created", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            },
        }))
        .expect("valid EventTopic");
        assert_eq!(TopicLookup::of(Some(&DeserializeGuard(Ok(topic.clone())))), ready("shop.orders"));
        let fresh = EventTopic { status: None, ..topic };
        assert_eq!(TopicLookup::of(Some(&DeserializeGuard(Ok(fresh)))), TopicLookup::NotReady);
        assert_eq!(TopicLookup::of(None), TopicLookup::Missing);
    }

    #[test]
    fn the_oldest_relay_on_a_target_holds_it() {
        let sidecar = |name: &str, target: &str, created: Option<i64>| {
            let mut relay = outbox_relay(
                name,
                &format!("database: {{ urlSecretRef: {{ name: db }} }}\nrouting: {{ topicPrefix: x }}\nplacement: {{ sidecar: {{ targetRef: {{ name: {target} }} }} }}"),
            );
            relay.metadata.creation_timestamp = created.map(|s| Time(Timestamp::from_second(s).expect("timestamp")));
            relay
        };
        let old = sidecar("b-old", "app", Some(1));
        let young = sidecar("a-young", "app", Some(2));
        let unsaved = sidecar("0-unsaved", "app", None);
        let elsewhere = sidecar("c", "other", Some(0));
        let all = [old.clone(), young.clone(), unsaved.clone(), elsewhere.clone()];
        assert_eq!(target_holder(&old, &all), None);
        assert_eq!(target_holder(&young, &all), Some("b-old".into()));
        assert_eq!(target_holder(&unsaved, &all), Some("b-old".into()));
        assert_eq!(target_holder(&elsewhere, &all), None);
        let mut leaving = old.clone();
        leaving.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(3).expect("timestamp")));
        assert_eq!(target_holder(&young, &[leaving, young.clone()]), None, "a relay being deleted gives its target up");
        let same_time = sidecar("a-same", "app", Some(1));
        assert_eq!(target_holder(&old, &[old.clone(), same_time]), Some("a-same".into()), "equal ages: the first name wins");
    }

    #[test]
    fn durations_beyond_range_are_invalid() {
        let relay = outbox_relay("r", &format!("{ROUTES}\npollInterval: 99999999999999999999h"));
        assert!(validate(&relay, &NamingPolicy::default()).is_err_and(|message| message.starts_with("spec.pollInterval: ")));
        assert_eq!(validate(&outbox_relay("r", ROUTES), &NamingPolicy::default()), Ok(()));
    }

    const PREFIX_ROUTED: &str =
        "database: { urlSecretRef: { name: db } }\nrouting: { topicPrefix: default.events. }\nplacement: { standalone: {} }";

    #[test]
    fn under_namespace_prefixed_naming_rows_reach_only_the_namespaces_topics() {
        let prefixed = NamingPolicy::namespace_prefixed(["platform".to_owned()]);
        assert_eq!(validate(&outbox_relay("r", PREFIX_ROUTED), &prefixed), Ok(()));
        let foreign = outbox_relay("r", &PREFIX_ROUTED.replace("default.events.", "billing."));
        assert_eq!(
            validate(&foreign, &prefixed),
            Err("spec.routing.topicPrefix \"billing.\" must begin with \"default.\" under the operator's NamespacePrefixed naming policy: rows routed by prefix must reach only this namespace's topics".into())
        );
        let by_column = outbox_relay("r", &PREFIX_ROUTED.replace("topicPrefix: default.events.", "topicColumn: topic"));
        assert!(validate(&by_column, &prefixed)
            .is_err_and(|message| message.starts_with("spec.routing.topicColumn \"topic\" lets each row name any Kafka topic")));
        // Free names: as before, in the free namespaces and under Free.
        let mut platform = by_column.clone();
        platform.metadata.namespace = Some("platform".into());
        assert_eq!(validate(&platform, &prefixed), Ok(()));
        assert_eq!(validate(&by_column, &NamingPolicy::default()), Ok(()));
        assert_eq!(validate(&foreign, &NamingPolicy::default()), Ok(()));
    }

    #[test]
    fn a_topic_prefix_into_internal_topics_is_refused_at_runtime() {
        let internal = outbox_relay("r", &PREFIX_ROUTED.replace("default.events.", "_"));
        assert!(validate(&internal, &NamingPolicy::default()).is_err_and(|message| message.contains("Kafka's internal topics")));
    }

    #[test]
    fn a_sidecar_target_must_opt_in_and_never_be_a_subscriptions_deployment() {
        let relay = outbox_relay(
            "shop-outbox",
            "database: { urlSecretRef: { name: db } }\nrouting: { topicPrefix: x }\nplacement: { sidecar: { targetRef: { name: app } } }",
        );
        let deployment = |annotations: &[(&str, &str)], labels: &[(&str, &str)]| {
            let mut deployment = Deployment::default();
            deployment.metadata.annotations = Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
            deployment.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
            deployment
        };
        let opted_in = deployment(&[(SIDECAR_OPT_IN_ANNOTATION, "shop-outbox")], &[]);
        assert_eq!(refused_target(&opted_in, &relay, SidecarOptIn::Required), None);
        assert_eq!(
            refused_target(&deployment(&[], &[]), &relay, SidecarOptIn::Required),
            Some(Workload::TargetNotOptedIn { annotated: None })
        );
        assert_eq!(
            refused_target(&deployment(&[(SIDECAR_OPT_IN_ANNOTATION, "other")], &[]), &relay, SidecarOptIn::Required),
            Some(Workload::TargetNotOptedIn { annotated: Some("other".into()) })
        );
        assert_eq!(refused_target(&deployment(&[], &[]), &relay, SidecarOptIn::NotRequired), None);
        let consumers = deployment(&[(SIDECAR_OPT_IN_ANNOTATION, "shop-outbox")], &[(SUBSCRIPTION_LABEL, "billing")]);
        for opt_in in [SidecarOptIn::Required, SidecarOptIn::NotRequired] {
            assert_eq!(refused_target(&consumers, &relay, opt_in), Some(Workload::TargetIsSubscription("billing".into())));
        }
    }

    #[test]
    fn the_flag_spells_sidecar_opt_in_as_the_chart_does() {
        use clap::ValueEnum;
        let spelled: Vec<String> = SidecarOptIn::value_variants()
            .iter()
            .filter_map(|value| value.to_possible_value())
            .map(|value| value.get_name().to_owned())
            .collect();
        assert_eq!(spelled, ["Required", "NotRequired"]);
    }

    #[test]
    fn a_tls_secret_needs_every_key_the_spec_names() {
        let relay = outbox_relay(
            "r",
            "database: { urlSecretRef: { name: db }, tls: { secretRef: { name: db-tls }, certKey: tls.crt, keyKey: tls.key } }\nrouting: { topicPrefix: x }\nplacement: { standalone: {} }",
        );
        let tls = relay.spec.database.tls.as_ref().expect("tls");
        let secret = |keys: &[&str]| Secret {
            data: Some(keys.iter().map(|key| ((*key).to_owned(), k8s_openapi::ByteString(b"PEM".to_vec()))).collect()),
            ..Secret::default()
        };
        assert_eq!(tls_secret_problem(tls, Some(&secret(&["ca.crt", "tls.crt", "tls.key"]))), None);
        let problem = |reason, message: &str| Some(SecretProblem { reason, message: message.to_owned() });
        assert_eq!(
            tls_secret_problem(tls, None),
            problem(reason::SECRET_NOT_FOUND, "Secret db-tls (spec.database.tls.secretRef) does not exist")
        );
        assert_eq!(
            tls_secret_problem(tls, Some(&secret(&["ca.crt", "tls.crt"]))),
            problem(reason::SECRET_KEY_NOT_FOUND, "Secret db-tls has no key \"tls.key\" (spec.database.tls.keyKey)")
        );
        let ca_only = DatabaseTls { cert_key: None, key_key: None, ..tls.clone() };
        assert_eq!(
            tls_secret_problem(&ca_only, Some(&secret(&["tls.crt"]))),
            problem(reason::SECRET_KEY_NOT_FOUND, "Secret db-tls has no key \"ca.crt\" (spec.database.tls.caKey)")
        );
        assert_eq!(tls_secret_problem(&ca_only, Some(&secret(&["ca.crt"]))), None, "no client certificate asked for");
    }
}
