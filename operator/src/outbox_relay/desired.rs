//! What runs an OutboxRelay (pure): the `tributary-relay` container, configured entirely through
//! environment variables (and the Secret volumes holding the files it reads: the Kafka credentials
//! of `--workload-kafka-properties-secret`, the database TLS files of `spec.database.tls`); the Deployment that runs it standalone; and the server-side apply bodies
//! that add it to, and remove it from, an application's Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SecretKeySelector,
    SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use tributary_api::outbox_relay::{Columns, Database, DatabaseTls, Placement};
use tributary_api::relay_contract::{env, OUTBOX_COMMAND, OUTBOX_PORT};
use tributary_api::{OutboxRelay, OutboxRelaySpec};

use crate::pod_security::pod_security_context;
use crate::relay_container::{env_var, quantities, RelayContainer, RelayPod, CONTAINER_NAME};
use crate::workload::{KafkaProperties, WorkloadSettings};

/// Name of the relay container's HTTP port (`/metrics`, `/healthz`, `/readyz`, `/status`).
pub const PORT_NAME: &str = "outbox-relay";
/// `app.kubernetes.io/component` of standalone relay Deployments.
pub const COMPONENT: &str = "outbox-relay";
/// Label naming the OutboxRelay a standalone relay pod belongs to.
pub const RELAY_LABEL: &str = "tributary.dev/outbox-relay";
/// Name of the volume holding the workload Kafka properties Secret. In an application's pods it
/// sits among the application's own volumes, so it is named to clash with none of them.
pub const KAFKA_PROPERTIES_VOLUME: &str = "tributary-relay-kafka";
/// Name of the volume holding the database TLS Secret (`spec.database.tls`), named like the one
/// above for the same reason.
pub const DATABASE_TLS_VOLUME: &str = "tributary-relay-database-tls";
/// Where the relay container mounts the database TLS Secret.
pub const DATABASE_TLS_DIR: &str = "/etc/tributary/database-tls";

/// A route with its EventTopic resolved to the Kafka topic the relay writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRoute {
    pub aggregate_type: String,
    pub event_topic: String,
    pub kafka_topic: String,
}

/// Where the spec places the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementKind {
    Sidecar,
    Standalone,
}

impl PlacementKind {
    pub fn of(relay: &OutboxRelay) -> Self {
        if relay.spec.placement.sidecar.is_some() {
            PlacementKind::Sidecar
        } else {
            PlacementKind::Standalone
        }
    }

    /// As `status.placement` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementKind::Sidecar => "Sidecar",
            PlacementKind::Standalone => "Standalone",
        }
    }
}

/// The Deployment running the relay: the sidecar's target, or the relay's own.
pub fn workload_name(relay: &OutboxRelay) -> String {
    match &relay.spec.placement.sidecar {
        Some(sidecar) => sidecar.target_ref.name.clone(),
        None => standalone_name(relay),
    }
}

/// Name of the standalone Deployment. The suffix keeps it from ever being an application's own
/// Deployment named like the OutboxRelay.
pub fn standalone_name(relay: &OutboxRelay) -> String {
    format!("{}-relay", relay.name_any())
}

/// Field manager of the sidecar's server-side applies, one per OutboxRelay, in place of the
/// operator's single `FIELD_MANAGER`. An apply removes whatever its manager owned before and no
/// longer sends, so the manager is what scopes removal: with its own manager, taking one relay's
/// container out of a Deployment (when the relay is deleted, retargeted, or loses the target to an
/// older relay) removes exactly the fields that relay set, never another relay's leftovers nor a
/// push dispatcher the Subscription controller added. OutboxRelay names are at most 63
/// characters (a CRD rule), so this stays within the API server's 128.
pub fn sidecar_field_manager(relay: &OutboxRelay) -> String {
    format!("{}/outbox-relay/{}", crate::FIELD_MANAGER, relay.name_any())
}

/// CloudEvents `source` of the relay's events: the spec's, or `/tributary/<namespace>/<name>`.
pub fn cloud_events_source(relay: &OutboxRelay) -> String {
    relay
        .spec
        .cloud_events_source
        .clone()
        .unwrap_or_else(|| format!("/tributary/{}/{}", relay.namespace().unwrap_or_default(), relay.name_any()))
}

/// The workload Kafka properties Secret, as the relay's pods mount it.
fn kafka_properties(settings: &WorkloadSettings) -> Option<KafkaProperties<'_>> {
    settings.kafka_properties(KAFKA_PROPERTIES_VOLUME)
}

/// The database TLS Secret's keys the spec names, each with the file it becomes in
/// [`DATABASE_TLS_DIR`] (fixed names, whatever the keys are called) and the relay variable that
/// names that file: the CA, then the client certificate and key when there is one.
fn database_tls_files(tls: &DatabaseTls) -> Vec<(&str, &'static str, &'static str)> {
    [
        (Some(&tls.ca_key), "ca.crt", env::DATABASE_CA_FILE),
        (tls.cert_key.as_ref(), "tls.crt", env::DATABASE_CERT_FILE),
        (tls.key_key.as_ref(), "tls.key", env::DATABASE_KEY_FILE),
    ]
    .into_iter()
    .filter_map(|(key, file, variable)| Some((key?.as_str(), file, variable)))
    .collect()
}

/// The database TLS Secret as the relay's pods hold it: only the keys the spec names, so that a
/// missing one is reported by the operator (see `resolve::database_tls_problem`) before a pod
/// would fail to start over it. No subPath: the kubelet updates the files when the Secret changes.
pub fn database_tls_volume(tls: &DatabaseTls) -> Volume {
    let items =
        database_tls_files(tls).into_iter().map(|(key, file, _)| KeyToPath { key: key.to_owned(), path: file.to_owned(), mode: None });
    Volume {
        name: DATABASE_TLS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tls.secret_ref.name.clone()),
            items: Some(items.collect()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn database_tls_mount() -> VolumeMount {
    VolumeMount {
        name: DATABASE_TLS_VOLUME.to_owned(),
        mount_path: DATABASE_TLS_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The Secret volumes of the relay's pods: the workload Kafka properties, the database TLS files.
fn secret_volumes(relay: &OutboxRelay, settings: &WorkloadSettings) -> Vec<Volume> {
    let kafka = kafka_properties(settings).map(|kafka| kafka.volume());
    kafka.into_iter().chain(relay.spec.database.tls.as_ref().map(database_tls_volume)).collect()
}

/// Port of the relay's HTTP server.
pub fn relay_port(placement: &Placement) -> i32 {
    placement.sidecar.as_ref().map_or(i32::from(OUTBOX_PORT), |sidecar| sidecar.port)
}

/// The relay's configuration. Every spec field that affects the relay ends up here, so changing
/// any of them changes the pod template and rolls the relay.
pub fn relay_env(relay: &OutboxRelay, routes: &[ResolvedRoute], settings: &WorkloadSettings) -> Vec<EnvVar> {
    // Destructured without `..`: a new spec field does not compile until it is handled here.
    let OutboxRelaySpec {
        database,
        table,
        columns,
        payload_format,
        routing,
        placement,
        batch_size,
        poll_interval,
        cleanup,
        failure_policy,
        cloud_events_source: _,
        partitioner,
    } = &relay.spec;
    let Columns { id, aggregate_type, aggregate_id, r#type, payload, headers, created_at } = columns;
    let Database { url_secret_ref: secret, tls } = database;
    let database_url = EnvVar {
        name: env::DATABASE_URL.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.name.clone(), key: secret.key.clone(), optional: None }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let routes = routes.iter().map(|route| format!("{}={}", route.aggregate_type, route.kafka_topic)).collect::<Vec<_>>().join(",");
    let optional = [
        (env::COLUMN_HEADERS, headers.clone()),
        (env::COLUMN_CREATED_AT, created_at.clone()),
        (env::COLUMN_TOPIC, routing.topic_column.clone()),
        (env::ROUTES, (!routes.is_empty()).then_some(routes)),
        (env::TOPIC_PREFIX, routing.topic_prefix.clone()),
    ];
    let plain = [
        (env::OUTBOX_TABLE, table.clone()),
        (env::COLUMN_ID, id.clone()),
        (env::COLUMN_AGGREGATE_TYPE, aggregate_type.clone()),
        (env::COLUMN_AGGREGATE_ID, aggregate_id.clone()),
        (env::COLUMN_TYPE, r#type.clone()),
        (env::COLUMN_PAYLOAD, payload.clone()),
        (env::PAYLOAD_FORMAT, payload_format.to_string()),
        (env::BOOTSTRAP_SERVERS, settings.bootstrap_servers.clone()),
        (env::CLOUDEVENTS_SOURCE, cloud_events_source(relay)),
        (env::BATCH_SIZE, batch_size.to_string()),
        (env::POLL_INTERVAL, poll_interval.clone()),
        (env::CLEANUP, cleanup.mode.to_string()),
        (env::CLEANUP_RETENTION, cleanup.retention.clone()),
        (env::FAILURE_POLICY, failure_policy.to_string()),
        (env::PARTITIONER, partitioner.to_string()),
        (env::LISTEN_ADDRESS, format!("0.0.0.0:{}", relay_port(placement))),
        // A table the relay cannot relay yet is reported in the status, not a crash loop.
        (env::WAIT_FOR_SCHEMA, "true".to_owned()),
    ];
    let literal = |(name, value): (&str, String)| env_var(name, value);
    std::iter::once(database_url)
        .chain(plain.into_iter().map(literal))
        .chain(optional.into_iter().filter_map(|(name, value)| value.map(|value| literal((name, value)))))
        .chain(kafka_properties(settings).map(|kafka| kafka.env()))
        .chain(tls.iter().flat_map(database_tls_files).map(|(_, file, variable)| env_var(variable, format!("{DATABASE_TLS_DIR}/{file}"))))
        .collect()
}

/// The `tributary-relay outbox` container. A sidecar adapts to the securityContext of the pods
/// it joins, `target_pod` (`None` when unknown, as offline); a standalone relay takes the spec's.
pub fn relay_container(
    relay: &OutboxRelay,
    routes: &[ResolvedRoute],
    settings: &WorkloadSettings,
    target_pod: Option<&PodSecurityContext>,
) -> Container {
    let placement = &relay.spec.placement;
    let sidecar = placement.sidecar.is_some();
    let pod = match &placement.standalone {
        Some(standalone) if !sidecar => RelayPod::Own(standalone.security_context.as_ref()),
        _ => RelayPod::Joined(target_pod),
    };
    RelayContainer {
        image: &settings.relay_image,
        subcommand: OUTBOX_COMMAND,
        env: relay_env(relay, routes, settings),
        port: relay_port(placement),
        port_name: PORT_NAME,
        resources: ResourceRequirements {
            requests: Some(quantities(&[("cpu", "10m"), ("memory", "32Mi")])),
            ..ResourceRequirements::default()
        },
        // The relay's own pods report it; a sidecar's application pods must not wait for it.
        readiness_probe: !sidecar,
        pod,
        secret_mounts: kafka_properties(settings)
            .map(|kafka| kafka.mount())
            .into_iter()
            .chain(relay.spec.database.tls.as_ref().map(|_| database_tls_mount()))
            .collect(),
    }
    .build()
}

/// The server-side apply body that adds the relay container to the application's Deployment.
///
/// It holds the container, the relay's own `volumes`, and nothing else: no replicas,
/// no selector, no labels. The API server merges an apply into the live object, so a partial body
/// is valid against an existing Deployment (only a create would need a selector and template
/// labels, and the controller applies only to a Deployment it has just read). Containers and
/// volumes are list-maps keyed by `name`, so this field manager comes to own the entries
/// `tributary-relay` (and `tributary-relay-kafka`, `tributary-relay-database-tls`) and the fields inside them, while the
/// application's own containers and volumes stay with whoever applied them: `kubectl apply`
/// (client- or server-side), Helm and GitOps tools leave the entries alone, because they are not
/// in their configuration. It is built as JSON, not as a typed `Deployment`, which would serialize
/// the required `spec.selector` (an atomic field) as `{}` and take it over.
pub fn sidecar_apply_body(namespace: &str, target: &str, container: &Container, volumes: &[Volume]) -> Value {
    let mut pod = json!({ "containers": [container] });
    if !volumes.is_empty() {
        pod["volumes"] = json!(volumes);
    }
    json!({
        "apiVersion": <Deployment as k8s_openapi::Resource>::API_VERSION,
        "kind": <Deployment as k8s_openapi::Resource>::KIND,
        "metadata": { "name": target, "namespace": namespace },
        "spec": { "template": { "spec": pod } },
    })
}

/// The body that takes the relay container (and its volume) out again: the same field manager
/// applies a configuration without them, and the API server removes every field that manager
/// owned and no longer sends (and that no other manager owns). Unlike a JSON patch, which would
/// address the container by its index in a list others change concurrently, this cannot remove
/// anything but what this relay added.
pub fn sidecar_removal_body(namespace: &str, target: &str) -> Value {
    json!({
        "apiVersion": <Deployment as k8s_openapi::Resource>::API_VERSION,
        "kind": <Deployment as k8s_openapi::Resource>::KIND,
        "metadata": { "name": target, "namespace": namespace },
    })
}

/// What the relay's server-side apply writes, as the controller applies it and the offline
/// `apply` prints it.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayWorkload {
    /// The container, into the application's Deployment `target`, under the relay's own field
    /// manager.
    Sidecar { target: String, field_manager: String, body: Value },
    /// The relay's own Deployment, under the operator's field manager.
    Standalone(Box<Deployment>),
}

impl RelayWorkload {
    /// Name of the Deployment the apply goes to.
    pub fn deployment_name(&self) -> String {
        match self {
            RelayWorkload::Sidecar { target, .. } => target.clone(),
            RelayWorkload::Standalone(deployment) => deployment.name_any(),
        }
    }

    pub fn field_manager(&self) -> String {
        match self {
            RelayWorkload::Sidecar { field_manager, .. } => field_manager.clone(),
            RelayWorkload::Standalone(_) => crate::FIELD_MANAGER.to_owned(),
        }
    }
}

/// The relay, configured with `routes`, in the placement its spec asks for. A sidecar adapts to
/// the securityContext of the pods it joins, `target_pod` (`None` when unknown, as offline).
pub fn relay_workload(
    relay: &OutboxRelay,
    routes: &[ResolvedRoute],
    settings: &WorkloadSettings,
    target_pod: Option<&PodSecurityContext>,
) -> RelayWorkload {
    let container = relay_container(relay, routes, settings, target_pod);
    let volumes = secret_volumes(relay, settings);
    let placement = &relay.spec.placement;
    match (&placement.sidecar, &placement.standalone) {
        (Some(sidecar), _) => {
            let target = sidecar.target_ref.name.clone();
            let body = sidecar_apply_body(&relay.namespace().unwrap_or_default(), &target, &container, &volumes);
            RelayWorkload::Sidecar { target, field_manager: sidecar_field_manager(relay), body }
        }
        (None, standalone) => {
            let replicas = standalone.as_ref().map_or(1, |standalone| standalone.replicas);
            RelayWorkload::Standalone(Box::new(standalone_deployment(relay, replicas, container, volumes)))
        }
    }
}

/// Labels that select a standalone relay's pods. Immutable once the Deployment exists.
pub fn standalone_selector(relay: &OutboxRelay) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".into(), CONTAINER_NAME.into()), (RELAY_LABEL.into(), relay.name_any())])
}

/// Label selector of every standalone relay Deployment, for the controller's watch.
pub fn managed_deployments_selector() -> String {
    format!("app.kubernetes.io/managed-by={},app.kubernetes.io/component={COMPONENT}", crate::FIELD_MANAGER)
}

/// The relay's own Deployment, owned by the OutboxRelay (no owner reference when the relay has
/// no uid, as in the offline `apply`), with the container's `volumes`. Several
/// replicas are safe: each aggregate is published by one relay at a time, in order.
pub fn standalone_deployment(relay: &OutboxRelay, replicas: i32, container: Container, volumes: Vec<Volume>) -> Deployment {
    let mut labels = standalone_selector(relay);
    labels.extend([
        ("app.kubernetes.io/instance".to_owned(), relay.name_any()),
        ("app.kubernetes.io/component".to_owned(), COMPONENT.to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), crate::FIELD_MANAGER.to_owned()),
    ]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(standalone_name(relay)),
            namespace: relay.namespace(),
            labels: Some(labels.clone()),
            owner_references: relay.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(standalone_selector(relay)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    // The relay talks to PostgreSQL and Kafka only, never to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context(
                        relay.spec.placement.standalone.as_ref().and_then(|standalone| standalone.pod_security_context.as_ref()),
                    )),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox_relay::test_support::{outbox_relay, settings};

    const SIDECAR: &str = r#"
database: { urlSecretRef: { name: shop-db } }
routing: { routes: [{ aggregateType: Order, eventTopic: orders }] }
placement: { sidecar: { targetRef: { name: shop-api } } }
"#;

    fn routes() -> Vec<ResolvedRoute> {
        vec![ResolvedRoute { aggregate_type: "Order".into(), event_topic: "orders".into(), kafka_topic: "shop.orders".into() }]
    }

    fn env_map(container: &Container) -> BTreeMap<String, Value> {
        container
            .env
            .iter()
            .flatten()
            .map(|var| {
                let value = match (&var.value, &var.value_from) {
                    (Some(value), None) => json!(value),
                    (None, Some(from)) => serde_json::to_value(from).expect("serializes"),
                    other => panic!("{}: {other:?}", var.name),
                };
                (var.name.clone(), value)
            })
            .collect()
    }

    #[test]
    fn defaults_render_the_relay_flags_and_the_secret_reference() {
        let container = relay_container(&outbox_relay("shop-outbox", SIDECAR), &routes(), &settings(), None);
        assert_eq!(container.image.as_deref(), Some("relay:test"));
        assert_eq!(container.args, Some(vec!["outbox".to_owned()]));
        let expected: BTreeMap<String, Value> = [
            ("TRIBUTARY_DATABASE_URL", json!({"secretKeyRef": {"name": "shop-db", "key": "url"}})),
            ("TRIBUTARY_OUTBOX_TABLE", json!("outbox")),
            ("TRIBUTARY_COLUMN_ID", json!("id")),
            ("TRIBUTARY_COLUMN_AGGREGATE_TYPE", json!("aggregatetype")),
            ("TRIBUTARY_COLUMN_AGGREGATE_ID", json!("aggregateid")),
            ("TRIBUTARY_COLUMN_TYPE", json!("type")),
            ("TRIBUTARY_COLUMN_PAYLOAD", json!("payload")),
            ("TRIBUTARY_PAYLOAD_FORMAT", json!("json")),
            ("TRIBUTARY_BOOTSTRAP_SERVERS", json!("kafka:9092")),
            ("TRIBUTARY_ROUTES", json!("Order=shop.orders")),
            ("TRIBUTARY_CLOUDEVENTS_SOURCE", json!("/tributary/default/shop-outbox")),
            ("TRIBUTARY_BATCH_SIZE", json!("500")),
            ("TRIBUTARY_POLL_INTERVAL", json!("1s")),
            ("TRIBUTARY_CLEANUP", json!("delete")),
            ("TRIBUTARY_CLEANUP_RETENTION", json!("7d")),
            ("TRIBUTARY_FAILURE_POLICY", json!("block")),
            ("TRIBUTARY_PARTITIONER", json!("murmur2_random")),
            ("TRIBUTARY_LISTEN_ADDRESS", json!("0.0.0.0:8081")),
            ("TRIBUTARY_WAIT_FOR_SCHEMA", json!("true")),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        assert_eq!(env_map(&container), expected);
        assert!(container.readiness_probe.is_none(), "a sidecar must not gate the application's readiness");
        assert_eq!(container.ports.as_ref().map(|ports| ports[0].container_port), Some(8081));
    }

    #[test]
    fn every_spec_field_changes_the_container() {
        let base = r#"
database: { urlSecretRef: { name: db, key: url } }
table: outbox
columns: { id: id, aggregateType: aggregatetype, aggregateId: aggregateid, type: type, payload: payload }
payloadFormat: Json
routing: { routes: [{ aggregateType: Order, eventTopic: orders }] }
placement: { sidecar: { targetRef: { name: app }, port: 8081 } }
batchSize: 500
pollInterval: 1s
cleanup: { mode: Delete, retention: 7d }
failurePolicy: Block
partitioner: Murmur2Random
"#;
        let changes = [
            ("database", "database: { urlSecretRef: { name: other-db, key: url } }"),
            ("database", "database: { urlSecretRef: { name: db, key: dsn } }"),
            ("table", "table: app.outbox"),
            ("columns", "columns: { id: event_id }"),
            ("columns", "columns: { aggregateType: kind }"),
            ("columns", "columns: { aggregateId: key }"),
            ("columns", "columns: { type: event_type }"),
            ("columns", "columns: { payload: body }"),
            ("columns", "columns: { headers: headers }"),
            ("columns", "columns: { createdAt: created_at }"),
            ("payloadFormat", "payloadFormat: Binary"),
            ("routing", "routing: { routes: [{ aggregateType: Order, eventTopic: orders }], topicColumn: topic }"),
            ("routing", "routing: { routes: [{ aggregateType: Order, eventTopic: orders }], topicPrefix: 'shop.' }"),
            ("placement", "placement: { sidecar: { targetRef: { name: app }, port: 9000 } }"),
            ("placement", "placement: { standalone: { replicas: 1 } }"),
            ("batchSize", "batchSize: 50"),
            ("pollInterval", "pollInterval: 250ms"),
            ("cleanup", "cleanup: { mode: Mark, retention: 7d }"),
            ("cleanup", "cleanup: { mode: Delete, retention: 1d }"),
            ("failurePolicy", "failurePolicy: Skip"),
            ("cloudEventsSource", "cloudEventsSource: /shop/orders"),
            ("partitioner", "partitioner: ConsistentRandom"),
            ("partitioner", "partitioner: Fnv1aRandom"),
        ];
        let render = |yaml: &str| relay_container(&outbox_relay("r", yaml), &routes(), &settings(), None);
        let original = render(base);
        for (field, replacement) in changes {
            let mut lines: Vec<&str> = base.lines().filter(|line| !line.starts_with(&format!("{field}:"))).collect();
            lines.push(replacement);
            assert_ne!(render(&lines.join("\n")), original, "changing spec.{field} ({replacement}) must change the relay container");
        }
        let other_route = [ResolvedRoute { kafka_topic: "shop.orders.v2".into(), ..routes()[0].clone() }];
        assert_ne!(
            relay_container(&outbox_relay("r", base), &other_route, &settings(), None),
            original,
            "a route's topic is configuration too"
        );
    }

    #[test]
    fn sidecar_bodies_hold_only_the_container() {
        let container = relay_container(&outbox_relay("shop-outbox", SIDECAR), &routes(), &settings(), None);
        let body = sidecar_apply_body("shop", "shop-api", &container, &[]);
        assert_eq!(
            body,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "shop-api", "namespace": "shop"},
                "spec": {"template": {"spec": {"containers": [serde_json::to_value(&container).expect("serializes")]}}},
            })
        );
        assert_eq!(
            sidecar_removal_body("shop", "shop-api"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop-api", "namespace": "shop"}})
        );
        assert_eq!(sidecar_field_manager(&outbox_relay("shop-outbox", SIDECAR)), "tributary-operator/outbox-relay/shop-outbox");
    }

    #[test]
    fn standalone_deployment_is_owned_labelled_and_ready_checked() {
        let mut relay = outbox_relay(
            "billing",
            "database: { urlSecretRef: { name: db } }\nrouting: { topicPrefix: 'billing.' }\nplacement: { standalone: { replicas: 3 } }",
        );
        relay.metadata.uid = Some("uid-1".into());
        let container = relay_container(&relay, &[], &settings(), None);
        assert!(container.readiness_probe.is_some());
        let env = env_map(&container);
        assert_eq!(env["TRIBUTARY_DATABASE_URL"], json!({"secretKeyRef": {"name": "db", "key": "url"}}));
        assert_eq!(env["TRIBUTARY_TOPIC_PREFIX"], json!("billing."));
        assert!(!env.contains_key("TRIBUTARY_ROUTES"));

        let deployment = standalone_deployment(&relay, 3, container.clone(), Vec::new());
        assert_eq!(deployment.metadata.name.as_deref(), Some("billing-relay"));
        let owner = &deployment.metadata.owner_references.as_ref().expect("owner reference")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str(), owner.controller),
            ("OutboxRelay", "billing", "uid-1", Some(true))
        );
        let spec = deployment.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let selector = spec.selector.match_labels.expect("selector");
        let template_labels = spec.template.metadata.and_then(|m| m.labels).expect("template labels");
        assert!(selector.iter().all(|(key, value)| template_labels.get(key) == Some(value)), "the selector selects the template");
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.containers, vec![container]);
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.volumes, None);
        let managed = managed_deployments_selector();
        for requirement in managed.split(',') {
            let (key, value) = requirement.split_once('=').expect("key=value");
            assert_eq!(deployment.metadata.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str), Some(value), "{managed}");
        }
    }

    #[test]
    fn the_workload_kafka_secret_reaches_the_relay_in_either_placement() {
        let with_secret = WorkloadSettings { kafka_properties_secret: Some("kafka-auth".into()), ..settings() };
        let expected_volume = json!({"name": "tributary-relay-kafka", "secret": {"secretName": "kafka-auth"}});
        let expected_mount = json!([{"name": "tributary-relay-kafka", "mountPath": "/etc/tributary/kafka", "readOnly": true}]);

        let relay = outbox_relay("shop-outbox", SIDECAR);
        let container = relay_container(&relay, &routes(), &with_secret, None);
        let env = env_map(&container);
        assert_eq!(env["TRIBUTARY_KAFKA_PROPERTIES_FILE"], json!("/etc/tributary/kafka/kafka.properties"));
        let without = env_map(&relay_container(&relay, &routes(), &settings(), None));
        assert_eq!(env.len(), without.len() + 1, "one variable more than without the Secret");
        assert_eq!(serde_json::to_value(&container.volume_mounts).expect("serializes"), expected_mount);
        let RelayWorkload::Sidecar { body, .. } = relay_workload(&relay, &routes(), &with_secret, None) else { panic!("a sidecar") };
        let pod = &body["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"], json!([expected_volume]), "the relay's field manager owns its volume entry");
        assert_eq!(pod["containers"], json!([serde_json::to_value(&container).expect("serializes")]));
        assert_eq!(pod.as_object().map(|pod| pod.len()), Some(2), "nothing but the container and its volume: {pod}");

        let standalone = outbox_relay(
            "billing",
            "database: { urlSecretRef: { name: db } }\nrouting: { topicPrefix: 'billing.' }\nplacement: { standalone: {} }",
        );
        let RelayWorkload::Standalone(deployment) = relay_workload(&standalone, &[], &with_secret, None) else { panic!("standalone") };
        let pod = deployment.spec.and_then(|spec| spec.template.spec).expect("pod spec");
        assert_eq!(serde_json::to_value(&pod.volumes).expect("serializes"), json!([expected_volume]));
        assert_eq!(serde_json::to_value(&pod.containers[0].volume_mounts).expect("serializes"), expected_mount);
    }

    #[test]
    fn database_tls_files_are_mounted_read_only_in_either_placement_and_named_to_the_relay() {
        let tls = "  tls: { secretRef: { name: shop-db-tls }, certKey: client.pem, keyKey: client.key }";
        let sidecar = outbox_relay(
            "shop-outbox",
            &SIDECAR.replace("urlSecretRef: { name: shop-db } }", &format!("urlSecretRef: {{ name: shop-db }},\n{tls} }}")),
        );
        let container = relay_container(&sidecar, &routes(), &settings(), None);
        let env = env_map(&container);
        assert_eq!(env["TRIBUTARY_DATABASE_CA_FILE"], json!("/etc/tributary/database-tls/ca.crt"));
        assert_eq!(env["TRIBUTARY_DATABASE_CERT_FILE"], json!("/etc/tributary/database-tls/tls.crt"));
        assert_eq!(env["TRIBUTARY_DATABASE_KEY_FILE"], json!("/etc/tributary/database-tls/tls.key"));
        let expected_mount =
            json!([{"name": "tributary-relay-database-tls", "mountPath": "/etc/tributary/database-tls", "readOnly": true}]);
        assert_eq!(serde_json::to_value(&container.volume_mounts).expect("serializes"), expected_mount);
        // Only the keys the spec names, under the file names the variables name.
        let expected_volume = json!({"name": "tributary-relay-database-tls", "secret": {"secretName": "shop-db-tls", "items": [
            {"key": "ca.crt", "path": "ca.crt"}, {"key": "client.pem", "path": "tls.crt"}, {"key": "client.key", "path": "tls.key"},
        ]}});
        let RelayWorkload::Sidecar { body, .. } = relay_workload(&sidecar, &routes(), &settings(), None) else { panic!("a sidecar") };
        assert_eq!(body["spec"]["template"]["spec"]["volumes"], json!([expected_volume]));

        // Standalone, next to the workload Kafka Secret; without a client certificate, the CA only.
        let standalone = outbox_relay(
            "billing",
            "database: { urlSecretRef: { name: db }, tls: { secretRef: { name: db-tls }, caKey: root.pem } }\nrouting: { topicPrefix: 'billing.' }\nplacement: { standalone: {} }",
        );
        let with_kafka = WorkloadSettings { kafka_properties_secret: Some("kafka-auth".into()), ..settings() };
        let RelayWorkload::Standalone(deployment) = relay_workload(&standalone, &[], &with_kafka, None) else { panic!("standalone") };
        let pod = deployment.spec.and_then(|spec| spec.template.spec).expect("pod spec");
        let volumes = serde_json::to_value(&pod.volumes).expect("serializes");
        assert_eq!(
            volumes[1],
            json!({"name": "tributary-relay-database-tls", "secret": {"secretName": "db-tls", "items": [{"key": "root.pem", "path": "ca.crt"}]}})
        );
        let mounts = serde_json::to_value(&pod.containers[0].volume_mounts).expect("serializes");
        assert_eq!(mounts.as_array().map(Vec::len), Some(2), "{mounts}");
        assert_eq!(mounts[1], expected_mount[0]);
        let env = env_map(&pod.containers[0]);
        assert_eq!(env["TRIBUTARY_DATABASE_CA_FILE"], json!("/etc/tributary/database-tls/ca.crt"));
        assert!(!env.contains_key("TRIBUTARY_DATABASE_CERT_FILE") && !env.contains_key("TRIBUTARY_DATABASE_KEY_FILE"));
    }
}
