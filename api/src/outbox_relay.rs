//! `OutboxRelay`: a PostgreSQL outbox table feeding EventTopics, relayed by `tributary-relay`.

use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::patterns;
use crate::pod_security::{privileged_needs_privilege_escalation, root_needs_run_as_non_root_false, NonRootDefault};

/// SQL identifiers Tributary accepts for tables and columns: plain, unquoted names.
pub const SQL_IDENTIFIER_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$";

/// The transactional outbox of one database: the relay moves its rows to Kafka, in order per
/// aggregate, and removes them once Kafka has them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "OutboxRelay",
    namespaced,
    status = "OutboxRelayStatus",
    shortname = "outbox",
    category = "tributary",
    derive = "PartialEq",
    doc = "A PostgreSQL transactional outbox relayed to Kafka by tributary-relay.",
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Placement", type_ = "string", json_path = ".status.placement"),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.target", priority = 1),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pendingRows", description = "Outbox rows not yet in Kafka"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63").message(
        "metadata.name of an OutboxRelay is at most 63 characters: it labels the relay's pods and names its field manager"
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRelaySpec {
    /// The database holding the outbox table.
    pub database: Database,

    /// The outbox table, optionally schema-qualified (`public.outbox`).
    #[serde(default = "default_table")]
    #[schemars(regex(pattern = patterns::SQL_TABLE.regex))]
    pub table: String,

    /// Column names; the defaults are Debezium's outbox layout, so existing tables work as they are.
    #[serde(default)]
    pub columns: Columns,

    /// How the payload column is read: `Json` (json/jsonb, sent as `application/json`) or
    /// `Binary` (bytea, sent as-is).
    #[serde(default)]
    pub payload_format: PayloadFormat,

    /// Which Kafka topic each row goes to.
    pub routing: Routing,

    /// Where the relay runs.
    pub placement: Placement,

    /// Rows fetched and published per batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: i32,

    /// How often the table is polled when no NOTIFY wakes the relay (`1s`, `500ms`).
    #[serde(default = "default_poll_interval")]
    #[schemars(regex(pattern = patterns::SHORT_DURATION.regex))]
    pub poll_interval: String,

    /// What happens to a row once Kafka acknowledged it.
    #[serde(default)]
    pub cleanup: Cleanup,

    /// What a row that keeps failing does to the rows after it in the same aggregate.
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// CloudEvents `source` of the published events. Defaults to `/tributary/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub cloud_events_source: Option<String>,

    /// How a record's partition follows from its key, the aggregate id. The default puts an
    /// aggregate where Kafka's Java producer (Debezium, Kafka Connect) puts it; pick the one of
    /// the producer that wrote the topic before, so an aggregate stays in one partition.
    #[serde(default)]
    pub partitioner: Partitioner,
}

fn default_table() -> String {
    "outbox".into()
}
fn default_batch_size() -> i32 {
    500
}
fn default_poll_interval() -> String {
    "1s".into()
}

/// Connection to the database.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Database {
    /// Secret key holding the PostgreSQL URL (`postgres://user:password@host/db`). The URL is
    /// passed to the relay from the Secret and never copied elsewhere. Its `sslmode` says how the
    /// relay uses TLS, as libpq reads it: `disable`, `prefer` (the default: TLS when the server
    /// offers it), `require` (TLS, the certificate unchecked), `verify-ca` (the certificate must
    /// chain to the CA of `tls`), `verify-full` (and name the URL's host). With `require` and
    /// the `verify-` modes nothing is sent in plain text.
    pub url_secret_ref: SecretKeyReference,

    /// PEM files for TLS to the database, from a Secret: the CA certificate(s) the server's
    /// certificate must chain to, and optionally a client certificate and its key. They replace
    /// the URL's `sslrootcert`, `sslcert` and `sslkey`; set `sslmode=verify-full` (or
    /// `verify-ca`) in the URL to have the server checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DatabaseTls>,
}

/// A Secret in the same namespace holding TLS files for the database connection (a cert-manager
/// Certificate's Secret fits as it is: `ca.crt`, `tls.crt`, `tls.key`). It is mounted read-only
/// into the relay container, which reads the files at every new connection: a Secret updated
/// in place (rotated) is used from the next connection once the kubelet has refreshed the files,
/// without restarting the relay.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("has(self.certKey) == has(self.keyKey)")
    .message("certKey and keyKey go together (a client certificate and its key)"))]
#[serde(rename_all = "camelCase")]
pub struct DatabaseTls {
    /// The Secret holding the files.
    pub secret_ref: SecretReference,
    /// Key of the CA certificate(s), PEM.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_key: String,
    /// Key of the client certificate (chain), PEM, for servers that authenticate clients by
    /// certificate; with `keyKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cert_key: Option<String>,
    /// Key of the client certificate's private key, PEM; with `certKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key_key: Option<String>,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// A Secret in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct SecretKeyReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".into()
}

/// Outbox column names.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Columns {
    /// Unique event id (uuid); becomes the CloudEvents `id`.
    #[serde(default = "column_id")]
    #[schemars(regex(pattern = patterns::SQL_IDENTIFIER.regex))]
    pub id: String,
    /// Aggregate type (`Order`); used for routing.
    #[serde(default = "column_aggregate_type")]
    #[schemars(regex(pattern = patterns::SQL_IDENTIFIER.regex))]
    pub aggregate_type: String,
    /// Aggregate id; becomes the Kafka key, so one aggregate stays in one partition, in order.
    #[serde(default = "column_aggregate_id")]
    #[schemars(regex(pattern = patterns::SQL_IDENTIFIER.regex))]
    pub aggregate_id: String,
    /// Event type; becomes the CloudEvents `type`.
    #[serde(default = "column_type")]
    #[schemars(regex(pattern = patterns::SQL_IDENTIFIER.regex))]
    pub r#type: String,
    /// Event payload; becomes the Kafka value.
    #[serde(default = "column_payload")]
    #[schemars(regex(pattern = patterns::SQL_IDENTIFIER.regex))]
    pub payload: String,
    /// Optional jsonb column of extra headers (correlation and causation ids pass through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::SQL_IDENTIFIER.regex))]
    pub headers: Option<String>,
    /// Optional commit-time column; becomes the CloudEvents `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::SQL_IDENTIFIER.regex))]
    pub created_at: Option<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            id: column_id(),
            aggregate_type: column_aggregate_type(),
            aggregate_id: column_aggregate_id(),
            r#type: column_type(),
            payload: column_payload(),
            headers: None,
            created_at: None,
        }
    }
}

fn column_id() -> String {
    "id".into()
}
fn column_aggregate_type() -> String {
    "aggregatetype".into()
}
fn column_aggregate_id() -> String {
    "aggregateid".into()
}
fn column_type() -> String {
    "type".into()
}
fn column_payload() -> String {
    "payload".into()
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadFormat {
    #[default]
    Json,
    Binary,
}

flag_spelling!(PayloadFormat { Json => "json", Binary => "binary" });

/// Routing of rows to topics, tried in this order: the topic column, the routes by aggregate
/// type, then `<topicPrefix><aggregatetype>`. A row none of them routes is reported, never dropped.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("has(self.topicColumn) || size(self.routes) > 0 || has(self.topicPrefix)")
    .message("spec.routing needs at least one of topicColumn, routes or topicPrefix"))]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    /// Column naming the Kafka topic of each row. A row can name any topic, so under the
    /// operator's `NamespacePrefixed` naming policy only namespaces allowed free names may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::SQL_IDENTIFIER.regex))]
    pub topic_column: Option<String>,

    /// Aggregate type → EventTopic.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["aggregateType".into()]))]
    pub routes: Vec<Route>,

    /// Kafka topic prefix for aggregate types without a route. Under the operator's
    /// `NamespacePrefixed` naming policy it must begin with `<namespace>.`, so that rows reach
    /// only this namespace's topics. Names beginning with `_` are Kafka's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = patterns::TOPIC_PREFIX.regex))]
    #[x_kube(validation = patterns::not_internal_topic())]
    pub topic_prefix: Option<String>,
}

/// Rows of one aggregate type go to one EventTopic.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Value of the aggregate type column. It cannot contain `,` or `=`, which separate routes in
    /// the relay's configuration.
    #[schemars(regex(pattern = patterns::ROUTE_KEY.regex))]
    pub aggregate_type: String,
    /// metadata.name of an EventTopic in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub event_topic: String,
}

/// Where the relay runs: exactly one of `sidecar` and `standalone`.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("has(self.sidecar) != has(self.standalone)")
    .message("spec.placement needs exactly one of sidecar and standalone"))]
pub struct Placement {
    /// Run the relay as a container of the application's own Deployment. The container brings its
    /// own securityContext, which passes the Pod Security Standards `restricted` profile whatever
    /// the pod sets (the operator leaves the pod's securityContext to the application): non-root
    /// as the image's user 65532, `seccompProfile: RuntimeDefault`, no privilege escalation, no
    /// capabilities, a read-only root filesystem. It names that user only in pods that set
    /// `runAsUser: 0`, so that a UID the platform assigns (OpenShift) applies otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarPlacement>,
    /// Run the relay as its own Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standalone: Option<StandalonePlacement>,
}

/// The annotation a Deployment carries to take an OutboxRelay's sidecar: its value names the
/// OutboxRelay (in the Deployment's namespace). Whoever may edit the Deployment consents with it;
/// creating an OutboxRelay alone does not change a Deployment.
pub const SIDECAR_OPT_IN_ANNOTATION: &str = "tributary.dev/outbox-relay";

/// The relay joins the pods of a Deployment.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPlacement {
    /// The Deployment (in this namespace) the relay container is added to. Unless the operator
    /// is told otherwise, the Deployment must opt in with the annotation
    /// `tributary.dev/outbox-relay: <this OutboxRelay's name>`. A Subscription's consumer
    /// Deployment is never a target.
    pub target_ref: DeploymentReference,
    /// Port of the relay's `/metrics`, `/healthz` and `/status` in the application's pods; change
    /// it when the application itself listens on 8081.
    #[serde(default = "default_sidecar_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
}

fn default_sidecar_port() -> i32 {
    i32::from(crate::relay_contract::OUTBOX_PORT)
}

/// A Deployment in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct DeploymentReference {
    /// metadata.name of the Deployment.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The relay runs in its own Deployment.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, PartialEq)]
#[x_kube(validation = root_needs_run_as_non_root_false("spec.placement.standalone", NonRootDefault::Container))]
#[serde(rename_all = "camelCase")]
pub struct StandalonePlacement {
    /// Relay replicas; several are safe, order per aggregate holds.
    #[serde(default = "default_relay_replicas")]
    #[schemars(range(min = 1, max = 32))]
    pub replicas: i32,

    /// Security settings of the relay pods. Tributary's defaults, `runAsNonRoot: true` and
    /// `seccompProfile: {type: RuntimeDefault}`, let the pods into a namespace that enforces the
    /// Pod Security Standards `restricted` profile. Each field given here replaces the default
    /// of that field; fields left out keep the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,

    /// Security settings of the relay container. Tributary's defaults: `runAsNonRoot: true`,
    /// `seccompProfile: {type: RuntimeDefault}`, `allowPrivilegeEscalation: false`,
    /// `readOnlyRootFilesystem: true` and `capabilities: {drop: [ALL]}`; the relay image runs as
    /// user 65532. Each field given here replaces the default of that field (`capabilities.add`
    /// and `capabilities.drop` each count as one); fields left out keep the default, so
    /// `privileged: true` or adding `SYS_ADMIN` needs `allowPrivilegeEscalation: true` as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = privileged_needs_privilege_escalation("spec.placement.standalone.securityContext"))]
    pub security_context: Option<SecurityContext>,
}

fn default_relay_replicas() -> i32 {
    1
}

/// What happens to published rows.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct Cleanup {
    /// `Delete` the row, or `Mark` it published and prune it after `retention`.
    #[serde(default)]
    pub mode: CleanupMode,
    /// With Mark: how long published rows are kept (`7d`).
    #[serde(default = "default_cleanup_retention")]
    #[schemars(regex(pattern = patterns::DURATION.regex))]
    pub retention: String,
}

impl Default for Cleanup {
    fn default() -> Self {
        Cleanup { mode: CleanupMode::default(), retention: default_cleanup_retention() }
    }
}

fn default_cleanup_retention() -> String {
    "7d".into()
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupMode {
    #[default]
    Delete,
    Mark,
}

flag_spelling!(CleanupMode { Delete => "delete", Mark => "mark" });

/// What a row that keeps failing (too large, unroutable, rejected) does to its aggregate.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Hold back later rows of the same aggregate, keeping its order; others keep flowing.
    #[default]
    Block,
    /// Move the failing row aside and go on with the aggregate.
    Skip,
}

flag_spelling!(FailurePolicy { Block => "block", Skip => "skip" });

/// How the relay's producer maps a record's key (the aggregate id) to a partition: a hash of the
/// key, modulo the partition count.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// murmur2, as Kafka's Java producer computes it (and so Debezium and Kafka Connect).
    #[default]
    Murmur2Random,
    /// CRC32: librdkafka's own default (producers in C, Python, Go's confluent-kafka-go, .NET).
    ConsistentRandom,
    /// FNV-1a, as Sarama (Go) computes it.
    Fnv1aRandom,
}

// librdkafka's names for them (its `partitioner` property).
flag_spelling!(Partitioner { Murmur2Random => "murmur2_random", ConsistentRandom => "consistent_random", Fnv1aRandom => "fnv1a_random" });

/// What the operator and the relay report.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRelayStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, TargetFound and TopicsReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Sidecar or Standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,

    /// The Deployment running the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,

    /// Outbox rows not yet published, as the relay last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_rows: Option<i64>,

    /// When the relay last published a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_published_time: Option<Time>,
}

/// Path of the relay's status endpoint, served on its HTTP port beside `/metrics`.
pub const RELAY_STATUS_PATH: &str = "/status";

/// What a running relay answers on [`RELAY_STATUS_PATH`]; the operator copies it into the
/// OutboxRelay's status. The relay reports over HTTP, rather than patching the status itself, so
/// that it needs no Kubernetes credentials: as a sidecar it runs with the application's
/// ServiceAccount, which must not gain rights on Tributary's resources.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RelayReport {
    /// Outbox rows not yet published; `null` until the relay first counted them.
    pub pending_rows: Option<i64>,
    /// When the relay last published a row (whole seconds); `null` when it has not yet.
    pub last_published_time: Option<Time>,
    /// Why the relay cannot relay its table (missing, lacking a column, a column of a type it
    /// cannot read): it keeps running and checks again. Absent while there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_problem: Option<String>,
}

impl RelayReport {
    /// A report from what the relay measured (a time outside what Kubernetes can represent reads
    /// as unknown).
    pub fn new(pending_rows: Option<i64>, last_published: Option<std::time::SystemTime>, schema_problem: Option<String>) -> Self {
        let last_published_time = last_published
            .and_then(|time| k8s_openapi::jiff::Timestamp::try_from(time).ok())
            .and_then(|time| k8s_openapi::jiff::Timestamp::from_second(time.as_second()).ok())
            .map(Time);
        RelayReport { pending_rows, last_published_time, schema_problem }
    }
}
