//! The Kubernetes objects a Subscription wants (pure): the consumer Deployment (with the
//! dispatcher sidecar in Push mode), the ConfigMap of consumer properties, and, with KEDA, a
//! ScaledObject. The controller applies them; the offline `apply` prints them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{ApiResource, DynamicObject};
use kube::Resource;
use serde_json::json;
use tributary_api::relay_contract::{env, DISPATCH_COMMAND, DISPATCH_PORT};
use tributary_api::subscription::DeliveryMode;

use super::resolve::Workload;
use crate::kafka::StartFrom;
use crate::pod_security::{container_security_context, pod_security_context};
use crate::relay_container::{env_var, quantities, RelayContainer, RelayPod};
use crate::workload::{KafkaProperties, WorkloadSettings};

/// Label on every object of a Subscription (value: its name); the Deployment selects its pods by it.
pub const SUBSCRIPTION_LABEL: &str = "tributary.dev/subscription";
/// Pod annotation holding a hash of the consumer properties, so a change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "tributary.dev/config-hash";
/// KEDA holds a ScaledObject's target at this many replicas while the annotation is set.
pub const KEDA_PAUSED_REPLICAS_ANNOTATION: &str = "autoscaling.keda.sh/paused-replicas";

pub const CONSUMER_CONTAINER: &str = "consumer";
/// Name of the dispatcher sidecar's port (/metrics, /healthz and /readyz).
pub const RELAY_PORT_NAME: &str = "tributary-http";

const CONSUMER_PROPERTIES_VOLUME: &str = "consumer-properties";
const CONSUMER_PROPERTIES_DIR: &str = "/etc/tributary/consumer";
const CONSUMER_PROPERTIES_KEY: &str = "consumer.properties";
const KAFKA_PROPERTIES_VOLUME: &str = "kafka-properties";

/// The ConfigMap of consumer properties is named after the Subscription.
pub fn config_map_name(subscription: &str) -> String {
    format!("{subscription}-consumer")
}

/// ScaledObject (`keda.sh/v1alpha1`), which k8s-openapi does not know.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    }
}

fn labels(workload: &Workload) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", workload.name.as_str()),
        ("app.kubernetes.io/component", "consumer"),
        ("app.kubernetes.io/part-of", "tributary"),
        ("app.kubernetes.io/managed-by", crate::FIELD_MANAGER),
        (SUBSCRIPTION_LABEL, workload.name.as_str()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// Name, namespace, labels and (once the Subscription is stored) the controller reference.
fn metadata(workload: &Workload, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(workload.namespace.clone()),
        labels: Some(labels(workload)),
        owner_references: workload.subscription.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// librdkafka / Java-client properties of the consumer group, for Pull-mode consumers.
pub fn consumer_properties(workload: &Workload, settings: &WorkloadSettings) -> String {
    // A timestamp start is a seek the consumer makes itself (TRIBUTARY_START_FROM); a client that
    // ignores it reads from the beginning rather than miss events.
    let offset_reset = match workload.start_from {
        StartFrom::Latest => "latest",
        StartFrom::Earliest | StartFrom::Timestamp(_) => "earliest",
    };
    format!(
        "# Written by Tributary for Subscription {}/{}; edits are overwritten.\nbootstrap.servers={}\ngroup.id={}\nauto.offset.reset={offset_reset}\nenable.auto.commit=false\n",
        workload.namespace, workload.name, settings.bootstrap_servers, workload.group
    )
}

pub fn config_map(workload: &Workload, settings: &WorkloadSettings) -> ConfigMap {
    ConfigMap {
        metadata: metadata(workload, config_map_name(&workload.name)),
        data: Some([(CONSUMER_PROPERTIES_KEY.to_owned(), consumer_properties(workload, settings))].into()),
        ..ConfigMap::default()
    }
}

/// FNV-1a: a hash that stays the same across Rust releases, so an operator upgrade alone does
/// not roll every consumer.
fn stable_hash(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// What both the Pull consumer and the Push dispatcher need to read the group.
fn kafka_env(workload: &Workload, settings: &WorkloadSettings) -> Vec<EnvVar> {
    let retry = &workload.subscription.spec.delivery.retry;
    let mut vars = vec![
        env_var(env::BOOTSTRAP_SERVERS, settings.bootstrap_servers.as_str()),
        env_var(env::TOPICS, workload.kafka_topics().join(",")),
        env_var(env::GROUP, workload.group.as_str()),
        env_var(env::START_FROM, workload.subscription.spec.start_from.as_str()),
        env_var(env::DEAD_LETTER_TOPIC, workload.dead_letter.topic.as_str()),
        env_var(env::MAX_ATTEMPTS, retry.max_attempts.to_string()),
        env_var(env::BACKOFF, retry.backoff.to_string()),
        env_var(env::INITIAL_DELAY, retry.initial_delay.as_str()),
        env_var(env::MAX_DELAY, retry.max_delay.as_str()),
    ];
    vars.extend(kafka_properties(settings).map(|kafka| kafka.env()));
    vars
}

/// `attr=op:value` per line, as the dispatcher reads TRIBUTARY_FILTERS.
fn filters(workload: &Workload) -> String {
    let line = |filter: &tributary_api::subscription::Filter| format!("{}={}:{}", filter.attribute, filter.operator, filter.value);
    workload.subscription.spec.delivery.filters.iter().map(line).collect::<Vec<_>>().join("\n")
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount { name: name.to_owned(), mount_path: path.to_owned(), read_only: Some(true), ..VolumeMount::default() }
}

/// The workload Kafka properties Secret, in the Subscription's own pods.
fn kafka_properties(settings: &WorkloadSettings) -> Option<KafkaProperties<'_>> {
    settings.kafka_properties(KAFKA_PROPERTIES_VOLUME)
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

/// The user's container. In Pull mode it gets the `TRIBUTARY_*` variables and the consumer
/// properties; the user's own variables come after, minus any `TRIBUTARY_*` ones (which the CRD
/// rejects, but older objects may hold) and minus earlier duplicates (the last one wins, as in
/// the kubelet, and server-side apply refuses duplicate names).
fn consumer_container(workload: &Workload, settings: &WorkloadSettings) -> Container {
    let template = &workload.subscription.spec.template;
    let pull = workload.mode() == DeliveryMode::Pull;
    let mut vars = Vec::new();
    let mut mounts = Vec::new();
    if pull {
        vars = kafka_env(workload, settings);
        vars.push(env_var(env::CONSUMER_PROPERTIES_FILE, format!("{CONSUMER_PROPERTIES_DIR}/{CONSUMER_PROPERTIES_KEY}")));
        mounts.push(mount(CONSUMER_PROPERTIES_VOLUME, CONSUMER_PROPERTIES_DIR));
        mounts.extend(kafka_properties(settings).map(|kafka| kafka.mount()));
    }
    let user_vars =
        template.env.iter().enumerate().filter(|(index, var)| {
            !var.name.starts_with(env::PREFIX) && !template.env[index + 1..].iter().any(|later| later.name == var.name)
        });
    vars.extend(user_vars.map(|(_, var)| var.clone()));
    Container {
        name: CONSUMER_CONTAINER.to_owned(),
        image: Some(template.image.clone()),
        image_pull_policy: template.image_pull_policy.clone(),
        command: non_empty(template.command.clone()),
        args: non_empty(template.args.clone()),
        env: non_empty(vars),
        env_from: non_empty(template.env_from.clone()),
        resources: template.resources.clone(),
        security_context: Some(container_security_context(template.security_context.as_ref())),
        volume_mounts: non_empty(mounts),
        ..Container::default()
    }
}

/// The Push-mode dispatcher: `tributary-relay dispatch`, reading the group and POSTing each event
/// to the consumer container over the pod's loopback interface. It joins the consumer's pod,
/// whose securityContext is `pod`.
fn relay_container(workload: &Workload, settings: &WorkloadSettings, pod: &PodSecurityContext) -> Container {
    let delivery = &workload.subscription.spec.delivery;
    let sink = delivery.sink.as_ref().map(|sink| format!("http://127.0.0.1:{}{}", sink.port, sink.path)).unwrap_or_default();
    let mut vars = kafka_env(workload, settings);
    vars.extend([
        env_var(env::SINK, sink),
        env_var(env::ORDERING, delivery.ordering.to_string()),
        env_var(env::CONCURRENCY, delivery.concurrency.to_string()),
        env_var(env::FILTERS, filters(workload)),
        env_var(env::LISTEN_ADDRESS, format!("0.0.0.0:{DISPATCH_PORT}")),
    ]);
    RelayContainer {
        image: &settings.relay_image,
        subcommand: DISPATCH_COMMAND,
        env: vars,
        port: i32::from(DISPATCH_PORT),
        port_name: RELAY_PORT_NAME,
        resources: ResourceRequirements {
            requests: Some(quantities(&[("cpu", "50m"), ("memory", "64Mi")])),
            limits: Some(quantities(&[("memory", "256Mi")])),
            ..ResourceRequirements::default()
        },
        readiness_probe: true,
        pod: RelayPod::Joined(Some(pod)),
        secret_mounts: kafka_properties(settings).map(|kafka| kafka.mount()).into_iter().collect(),
    }
    .build()
}

/// The consumer Deployment. `replicas` is `None` when KEDA's HPA owns the replica count: the
/// apply must then leave the field alone.
pub fn deployment(workload: &Workload, settings: &WorkloadSettings, replicas: Option<i32>) -> Deployment {
    let template = &workload.subscription.spec.template;
    let selector = BTreeMap::from([(SUBSCRIPTION_LABEL.to_owned(), workload.name.clone())]);
    let mut pod_labels = template.pod_labels.clone();
    pod_labels.extend(labels(workload));
    let mut pod_annotations = template.pod_annotations.clone();
    let mut volumes = Vec::new();
    let pod_security = pod_security_context(template.pod_security_context.as_ref());
    let mut containers = vec![consumer_container(workload, settings)];
    match workload.mode() {
        DeliveryMode::Pull => {
            pod_annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), stable_hash(&consumer_properties(workload, settings)));
            volumes.push(Volume {
                name: CONSUMER_PROPERTIES_VOLUME.to_owned(),
                config_map: Some(ConfigMapVolumeSource { name: config_map_name(&workload.name), ..ConfigMapVolumeSource::default() }),
                ..Volume::default()
            });
        }
        DeliveryMode::Push => containers.push(relay_container(workload, settings, &pod_security)),
    }
    volumes.extend(kafka_properties(settings).map(|kafka| kafka.volume()));
    Deployment {
        metadata: metadata(workload, workload.name.clone()),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector { match_labels: Some(selector), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers,
                    volumes: non_empty(volumes),
                    service_account_name: template.service_account_name.clone(),
                    node_selector: (!template.node_selector.is_empty()).then(|| template.node_selector.clone()),
                    security_context: Some(pod_security),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The HPA's longest scale-down stabilization window.
const MAX_STABILIZATION_SECONDS: u64 = 3_600;

/// A KEDA ScaledObject driving the Deployment by the group's lag on each topic. `hold_at_zero`
/// pauses autoscaling at zero replicas (for a replay).
pub fn scaled_object(workload: &Workload, settings: &WorkloadSettings, hold_at_zero: bool) -> DynamicObject {
    let scaling = &workload.subscription.spec.scaling;
    let offset_reset = if workload.start_from == StartFrom::Latest { "latest" } else { "earliest" };
    let triggers: Vec<serde_json::Value> = workload
        .kafka_topics()
        .into_iter()
        .map(|topic| {
            json!({
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": settings.bootstrap_servers,
                    "consumerGroup": workload.group,
                    "topic": topic,
                    "lagThreshold": scaling.lag_threshold.to_string(),
                    "activationLagThreshold": scaling.activation_lag_threshold.to_string(),
                    "offsetResetPolicy": offset_reset,
                    "allowIdleConsumers": "false",
                },
            })
        })
        .collect();
    let cooldown_seconds = workload.cooldown.as_secs();
    let mut spec = json!({
        "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": workload.name },
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "cooldownPeriod": cooldown_seconds,
        "advanced": { "horizontalPodAutoscalerConfig": { "behavior": { "scaleDown": {
            "stabilizationWindowSeconds": cooldown_seconds.min(MAX_STABILIZATION_SECONDS),
        } } } },
        "triggers": triggers,
    });
    if scaling.scale_to_zero {
        // Zero while idle; while there is lag, KEDA's floor is minReplicaCount, which
        // idleReplicaCount (only 0 is allowed) must stay below.
        if scaling.min_replicas > 1 {
            spec["idleReplicaCount"] = json!(0);
        } else {
            spec["minReplicaCount"] = json!(0);
        }
    }
    let mut object = DynamicObject::new(&workload.name, &scaled_object_resource()).data(json!({ "spec": spec }));
    object.metadata = metadata(workload, workload.name.clone());
    if hold_at_zero {
        object.metadata.annotations = Some([(KEDA_PAUSED_REPLICAS_ANNOTATION.to_owned(), "0".to_owned())].into());
    }
    object
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::subscription::resolve::{workload, ResolvedTopic};
    use crate::subscription::test_support::subscription;
    use tributary_api::Subscription;

    fn settings(secret: Option<&str>) -> WorkloadSettings {
        WorkloadSettings {
            bootstrap_servers: "kafka:9092".into(),
            relay_image: "ghcr.io/tributary-dev/tributary-relay:0.1.0".into(),
            kafka_properties_secret: secret.map(str::to_owned),
        }
    }

    fn stored(mut subscription: Subscription) -> Subscription {
        subscription.metadata.uid = Some("uid-billing".into());
        subscription
    }

    fn topics() -> Vec<ResolvedTopic> {
        vec![
            ResolvedTopic {
                name: "orders".into(),
                kafka_topic: "shop.orders".into(),
                dead_letter_topic: Some("shop.orders.dlq".into()),
                max_message_bytes: None,
            },
            ResolvedTopic {
                name: "payments".into(),
                kafka_topic: "shop.payments".into(),
                dead_letter_topic: None,
                max_message_bytes: None,
            },
        ]
    }

    fn env_of(container: &Container) -> BTreeMap<String, String> {
        container.env.iter().flatten().map(|var| (var.name.clone(), var.value.clone().unwrap_or_default())).collect()
    }

    fn pod(deployment: &Deployment) -> &PodSpec {
        deployment.spec.as_ref().and_then(|spec| spec.template.spec.as_ref()).expect("pod spec")
    }

    const PULL: &str = r#"
template:
  image: ghcr.io/shop/billing:1.0.0
  args: [--verbose]
  env: [{ name: LOG_LEVEL, value: info }, { name: LOG_LEVEL, value: debug }]
  podLabels: { team: billing, tributary.dev/subscription: spoofed }
  serviceAccountName: billing
startFrom: earliest
delivery:
  retry: { maxAttempts: 7, backoff: Linear, initialDelay: 250ms, maxDelay: 10s }
"#;

    #[test]
    fn pull_mode_gives_the_consumer_the_group_settings_and_properties_file() {
        let subscription = stored(subscription("billing", PULL));
        let workload = workload(&subscription, topics()).expect("valid");
        let deployment = deployment(&workload, &settings(None), Some(3));
        let pod = pod(&deployment);
        assert_eq!(pod.containers.len(), 1, "no sidecar in Pull mode");
        let consumer = &pod.containers[0];
        assert_eq!((consumer.name.as_str(), consumer.image.as_deref()), ("consumer", Some("ghcr.io/shop/billing:1.0.0")));
        assert_eq!(consumer.args, Some(vec!["--verbose".to_owned()]));
        let expected: BTreeMap<String, String> = [
            ("TRIBUTARY_BOOTSTRAP_SERVERS", "kafka:9092"),
            ("TRIBUTARY_TOPICS", "shop.orders,shop.payments"),
            ("TRIBUTARY_GROUP", "default.billing"),
            ("TRIBUTARY_START_FROM", "earliest"),
            ("TRIBUTARY_DEAD_LETTER_TOPIC", "default.billing.dlq"),
            ("TRIBUTARY_MAX_ATTEMPTS", "7"),
            ("TRIBUTARY_BACKOFF", "linear"),
            ("TRIBUTARY_INITIAL_DELAY", "250ms"),
            ("TRIBUTARY_MAX_DELAY", "10s"),
            ("TRIBUTARY_CONSUMER_PROPERTIES_FILE", "/etc/tributary/consumer/consumer.properties"),
            ("LOG_LEVEL", "debug"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env_of(consumer), expected);
        assert_eq!(consumer.env.as_ref().map(Vec::len), Some(expected.len()), "one entry per name");
        let mounts = consumer.volume_mounts.clone().unwrap_or_default();
        assert_eq!(mounts.iter().map(|m| m.mount_path.as_str()).collect::<Vec<_>>(), vec!["/etc/tributary/consumer"]);
        let volume = &pod.volumes.as_ref().expect("volumes")[0];
        assert_eq!(volume.config_map.as_ref().map(|c| c.name.as_str()), Some("billing-consumer"));
        assert_eq!(pod.service_account_name.as_deref(), Some("billing"));
        assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(3));

        let properties = consumer_properties(&workload, &settings(None));
        for line in ["bootstrap.servers=kafka:9092", "group.id=default.billing", "auto.offset.reset=earliest", "enable.auto.commit=false"] {
            assert!(properties.lines().any(|l| l == line), "{line} missing from:\n{properties}");
        }
        let config_map = config_map(&workload, &settings(None));
        assert_eq!(config_map.data.as_ref().and_then(|d| d.get("consumer.properties")), Some(&properties));
    }

    #[test]
    fn labels_select_the_pods_and_owner_references_point_at_the_subscription() {
        let subscription = stored(subscription("billing", PULL));
        let workload = workload(&subscription, topics()).expect("valid");
        let deployment = deployment(&workload, &settings(None), None);
        let spec = deployment.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, None, "KEDA owns replicas");
        let selector = spec.selector.match_labels.clone().expect("selector");
        assert_eq!(selector, BTreeMap::from([(SUBSCRIPTION_LABEL.to_owned(), "billing".to_owned())]));
        let pod_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).expect("labels");
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the selector matches the pods: {pod_labels:?}");
        assert_eq!(pod_labels.get("team").map(String::as_str), Some("billing"), "user labels kept");
        let owner = &deployment.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str(), owner.controller),
            ("Subscription", "billing", "uid-billing", Some(true))
        );
        assert_eq!(config_map(&workload, &settings(None)).metadata.owner_references, deployment.metadata.owner_references);
        let unstored = tributary_api::Subscription { metadata: Default::default(), ..subscription.clone() };
        let offline = crate::subscription::resolve::Workload { subscription: &unstored, ..workload.clone() };
        assert_eq!(super::deployment(&offline, &settings(None), Some(1)).metadata.owner_references, None, "no uid offline");
    }

    #[test]
    fn a_changed_consumer_setting_changes_the_config_hash() {
        let hash = |spec: &str| {
            let subscription = stored(subscription("billing", spec));
            let workload = workload(&subscription, topics()).expect("valid");
            let deployment = deployment(&workload, &settings(None), Some(1));
            deployment
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        };
        let earliest = hash("startFrom: earliest");
        assert!(earliest.is_some());
        assert_eq!(earliest, hash("startFrom: earliest"), "stable");
        assert_ne!(earliest, hash("startFrom: latest"));
    }

    const PUSH: &str = r#"
delivery:
  mode: Push
  sink: { port: 8080, path: /events }
  ordering: Unordered
  concurrency: 8
  filters:
    - { attribute: type, operator: Prefix, value: com.shop.order. }
    - { attribute: priority, operator: Exact, value: critical }
"#;

    #[test]
    fn push_mode_adds_the_dispatcher_sidecar() {
        let subscription = stored(subscription("billing", PUSH));
        let workload = workload(&subscription, topics()).expect("valid");
        let deployment = deployment(&workload, &settings(Some("kafka-auth")), Some(2));
        let pod = pod(&deployment);
        assert_eq!(pod.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["consumer", "tributary-relay"]);
        let consumer = &pod.containers[0];
        assert_eq!((consumer.env.clone(), consumer.volume_mounts.clone()), (None, None), "the Push consumer only serves HTTP");

        let relay = &pod.containers[1];
        assert_eq!(relay.image.as_deref(), Some("ghcr.io/tributary-dev/tributary-relay:0.1.0"));
        assert_eq!(relay.args, Some(vec!["dispatch".to_owned()]));
        let env = env_of(relay);
        for (name, value) in [
            ("TRIBUTARY_SINK", "http://127.0.0.1:8080/events"),
            ("TRIBUTARY_ORDERING", "unordered"),
            ("TRIBUTARY_CONCURRENCY", "8"),
            ("TRIBUTARY_FILTERS", "type=prefix:com.shop.order.\npriority=exact:critical"),
            ("TRIBUTARY_LISTEN_ADDRESS", "0.0.0.0:8082"),
            ("TRIBUTARY_TOPICS", "shop.orders,shop.payments"),
            ("TRIBUTARY_GROUP", "default.billing"),
            ("TRIBUTARY_DEAD_LETTER_TOPIC", "default.billing.dlq"),
            ("TRIBUTARY_MAX_ATTEMPTS", "5"),
            ("TRIBUTARY_BACKOFF", "exponential"),
            ("TRIBUTARY_INITIAL_DELAY", "100ms"),
            ("TRIBUTARY_MAX_DELAY", "30s"),
            ("TRIBUTARY_START_FROM", "latest"),
            ("TRIBUTARY_BOOTSTRAP_SERVERS", "kafka:9092"),
            ("TRIBUTARY_KAFKA_PROPERTIES_FILE", "/etc/tributary/kafka/kafka.properties"),
        ] {
            assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
        }
        assert!(!env.contains_key("TRIBUTARY_CONSUMER_PROPERTIES_FILE"));
        let port = &relay.ports.as_ref().expect("ports")[0];
        assert_eq!((port.name.as_deref(), port.container_port), (Some("tributary-http"), 8082));
        for (probe, path) in [(&relay.readiness_probe, "/readyz"), (&relay.liveness_probe, "/healthz")] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("HTTP probe");
            assert_eq!((get.path.as_deref(), &get.port), (Some(path), &IntOrString::String("tributary-http".into())));
        }
        let security = relay.security_context.as_ref().expect("security context");
        assert_eq!(
            (security.run_as_non_root, security.read_only_root_filesystem, security.allow_privilege_escalation),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(security.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_owned()]));
        assert!(relay.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some_and(|l| l.contains_key("memory")));
        assert_eq!(relay.volume_mounts.as_ref().map(|m| m[0].mount_path.as_str()), Some("/etc/tributary/kafka"));
        let secret = pod.volumes.as_ref().and_then(|v| v.iter().find_map(|v| v.secret.as_ref())).expect("secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("kafka-auth"));
        let annotations = deployment.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.clone());
        assert_eq!(annotations, None, "no consumer properties to hash in Push mode");
    }

    #[test]
    fn scaled_object_has_one_kafka_trigger_per_topic() {
        let subscription = stored(subscription(
            "billing",
            "scaling: { engine: Keda, minReplicas: 2, maxReplicas: 6, lagThreshold: 50, activationLagThreshold: 5, cooldown: 2m }",
        ));
        let workload = workload(&subscription, topics()).expect("valid");
        let object = serde_json::to_value(scaled_object(&workload, &settings(None), false)).expect("serializes");
        assert_eq!((object["apiVersion"].as_str(), object["kind"].as_str()), (Some("keda.sh/v1alpha1"), Some("ScaledObject")));
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "uid-billing");
        assert!(object["metadata"]["annotations"].is_null());
        let spec = &object["spec"];
        assert_eq!(spec["scaleTargetRef"], json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "billing"}));
        assert_eq!(
            (spec["minReplicaCount"].as_i64(), spec["maxReplicaCount"].as_i64(), spec["cooldownPeriod"].as_i64()),
            (Some(2), Some(6), Some(120))
        );
        assert_eq!(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 120);
        let triggers = spec["triggers"].as_array().expect("triggers");
        assert_eq!(triggers.len(), 2);
        assert_eq!(
            triggers[1],
            json!({"type": "kafka", "metadata": {
                "bootstrapServers": "kafka:9092", "consumerGroup": "default.billing", "topic": "shop.payments",
                "lagThreshold": "50", "activationLagThreshold": "5", "offsetResetPolicy": "latest", "allowIdleConsumers": "false",
            }})
        );
        let held = serde_json::to_value(scaled_object(&workload, &settings(None), true)).expect("serializes");
        assert_eq!(held["metadata"]["annotations"][KEDA_PAUSED_REPLICAS_ANNOTATION], "0");
    }

    #[test]
    fn scale_to_zero_keeps_the_floor_while_there_is_lag() {
        let spec_of = |scaling: &str| {
            let subscription = stored(subscription("billing", scaling));
            let workload = workload(&subscription, topics()).expect("valid");
            serde_json::to_value(scaled_object(&workload, &settings(None), false)).expect("serializes")["spec"].clone()
        };
        let single = spec_of("scaling: { scaleToZero: true }");
        assert_eq!((single["minReplicaCount"].as_i64(), single.get("idleReplicaCount")), (Some(0), None));
        let floor = spec_of("scaling: { scaleToZero: true, minReplicas: 3 }");
        assert_eq!((floor["minReplicaCount"].as_i64(), floor["idleReplicaCount"].as_i64()), (Some(3), Some(0)));
    }
}
