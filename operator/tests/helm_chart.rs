//! Integration level "chart": the Helm chart in `charts/tributary`, rendered and linted by the real
//! `helm` binary, with every rendered manifest parsed into its Kubernetes type.
//!
//! `helm` is taken from `TRIBUTARY_HELM`, else from `PATH`. Without it the tests print a skip line
//! and pass, unless `TRIBUTARY_TEST_STRICT=1` (the test runner's setting), which makes them fail.
//! No cluster is needed: `helm template` renders offline.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service, ServiceAccount, Volume, VolumeMount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;
use tributary_operator::rbac;

const RELEASE: &str = "events";
const NAMESPACE: &str = "tributary-system";
const BOOTSTRAP_SERVERS: &str = "kafka-bootstrap.kafka.svc:9092";
/// Kubernetes version the chart is rendered for: the one k8s-openapi is built against.
const KUBE_VERSION: &str = "1.33.0";

// ---------------------------------------------------------------------------------------------
// Running helm
// ---------------------------------------------------------------------------------------------

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tributary")
}

/// The `helm` binary, run with its cache, config and data directories in a private temporary
/// directory, so that neither the user's Helm setup nor other tests affect it.
struct Helm {
    binary: PathBuf,
    home: tempfile::TempDir,
}

/// The `helm` binary to test with, or `None` (after printing why) when there is none and the run
/// is not strict.
fn helm() -> Option<Helm> {
    let binary = match std::env::var_os("TRIBUTARY_HELM").filter(|path| !path.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "TRIBUTARY_HELM={} is not a file", path.display());
            Some(path)
        }
        None => find_on_path("helm"),
    };
    let Some(binary) = binary else {
        tributary_testkit::prerequisite::skip("chart test", "helm not found: set TRIBUTARY_HELM to the helm binary or put helm on PATH");
        return None;
    };
    let home = tempfile::tempdir().expect("create a temporary Helm home");
    Some(Helm { binary, home })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let file_name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(&file_name)).find(|candidate| candidate.is_file())
}

/// What a helm command printed, and whether it succeeded.
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// Standard output of a command that must have succeeded.
    fn expect_success(self, what: &str) -> String {
        assert!(self.success, "{what} failed:\n--- stderr ---\n{}\n--- stdout ---\n{}", self.stderr, self.stdout);
        self.stdout
    }

    /// Standard error of a command that must have failed.
    fn expect_failure(self, what: &str) -> String {
        assert!(!self.success, "{what} should have failed, but rendered:\n{}", self.stdout);
        self.stderr
    }
}

impl Helm {
    fn run(&self, args: &[OsString]) -> Outcome {
        let dir = |name: &str| self.home.path().join(name);
        let output = Command::new(&self.binary)
            .args(args)
            .env("HELM_CACHE_HOME", dir("cache"))
            .env("HELM_CONFIG_HOME", dir("config"))
            .env("HELM_DATA_HOME", dir("data"))
            .env_remove("HELM_NAMESPACE")
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", self.binary.display()));
        Outcome {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `helm <command> ... --set key=value ...` on the chart.
    fn chart_command(&self, command: &[&str], values: &[(&str, &str)]) -> Outcome {
        let mut args: Vec<OsString> = command.iter().map(OsString::from).collect();
        args.push(chart_dir().into_os_string());
        args.extend(["--kube-version", KUBE_VERSION].map(OsString::from));
        for (key, value) in values {
            args.push("--set".into());
            args.push(format!("{key}={value}").into());
        }
        self.run(&args)
    }

    fn lint(&self, values: &[(&str, &str)]) -> Outcome {
        self.chart_command(&["lint", "--strict"], values)
    }

    fn template(&self, values: &[(&str, &str)]) -> Outcome {
        self.chart_command(&["template", RELEASE, "--namespace", NAMESPACE], values)
    }

    /// Renders the chart, which must succeed, and parses every manifest.
    fn render(&self, values: &[(&str, &str)]) -> Rendered {
        Rendered::parse(&self.template(values).expect_success(&format!("helm template with {values:?}")))
    }
}

/// The values every successful render needs.
fn with_bootstrap<'a>(values: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![("kafka.bootstrapServers", BOOTSTRAP_SERVERS)];
    all.extend_from_slice(values);
    all
}

// ---------------------------------------------------------------------------------------------
// Parsing rendered manifests
// ---------------------------------------------------------------------------------------------

/// One rendered manifest, parsed into its Kubernetes type. ServiceMonitor is a CRD k8s-openapi
/// does not know, so it stays generic YAML.
enum Manifest {
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ServiceMonitor(Value),
}

impl Manifest {
    /// The kind and metadata of any manifest.
    fn kind_and_metadata(&self) -> (&'static str, ObjectMeta) {
        match self {
            Manifest::ServiceAccount(object) => ("ServiceAccount", object.metadata.clone()),
            Manifest::ClusterRole(object) => ("ClusterRole", object.metadata.clone()),
            Manifest::ClusterRoleBinding(object) => ("ClusterRoleBinding", object.metadata.clone()),
            Manifest::Role(object) => ("Role", object.metadata.clone()),
            Manifest::RoleBinding(object) => ("RoleBinding", object.metadata.clone()),
            Manifest::PodDisruptionBudget(object) => ("PodDisruptionBudget", object.metadata.clone()),
            Manifest::Deployment(object) => ("Deployment", object.metadata.clone()),
            Manifest::Service(object) => ("Service", object.metadata.clone()),
            Manifest::ServiceMonitor(value) => {
                ("ServiceMonitor", serde_yaml::from_value(value["metadata"].clone()).expect("ServiceMonitor metadata is an ObjectMeta"))
            }
        }
    }
}

struct Rendered {
    manifests: Vec<Manifest>,
}

impl Rendered {
    /// Splits `helm template` output into its documents and parses each by its kind. Unknown kinds
    /// fail: a new template needs a type here, and assertions.
    fn parse(output: &str) -> Self {
        let mut manifests = Vec::new();
        for document in split_documents(output) {
            let value: Value =
                serde_yaml::from_str(document).unwrap_or_else(|error| panic!("rendered document is not YAML: {error}\n{document}"));
            if value.is_null() {
                continue; // only comments, e.g. a template rendering nothing
            }
            let kind = value["kind"].as_str().unwrap_or_else(|| panic!("rendered document has no kind:\n{document}"));
            let manifest = match kind {
                "ServiceAccount" => Manifest::ServiceAccount(Box::new(parse_typed(document, &value))),
                "ClusterRole" => Manifest::ClusterRole(Box::new(parse_typed(document, &value))),
                "ClusterRoleBinding" => Manifest::ClusterRoleBinding(Box::new(parse_typed(document, &value))),
                "Role" => Manifest::Role(Box::new(parse_typed(document, &value))),
                "RoleBinding" => Manifest::RoleBinding(Box::new(parse_typed(document, &value))),
                "PodDisruptionBudget" => Manifest::PodDisruptionBudget(Box::new(parse_typed(document, &value))),
                "Deployment" => Manifest::Deployment(Box::new(parse_typed(document, &value))),
                "Service" => Manifest::Service(Box::new(parse_typed(document, &value))),
                "ServiceMonitor" => {
                    assert_eq!(value["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"), "ServiceMonitor apiVersion");
                    Manifest::ServiceMonitor(value)
                }
                other => panic!("the chart renders a {other}, which this test does not know:\n{document}"),
            };
            manifests.push(manifest);
        }
        Rendered { manifests }
    }

    /// The kinds rendered, with how often each is.
    fn kinds(&self) -> BTreeMap<&'static str, usize> {
        let mut kinds = BTreeMap::new();
        for manifest in &self.manifests {
            *kinds.entry(manifest.kind_and_metadata().0).or_default() += 1;
        }
        kinds
    }

    /// All manifests `pick` selects.
    fn all<'a, T>(&'a self, pick: impl Fn(&'a Manifest) -> Option<&'a T>) -> Vec<&'a T> {
        self.manifests.iter().filter_map(pick).collect()
    }

    /// The one manifest `pick` selects.
    fn one<'a, T>(&'a self, kind: &str, pick: impl Fn(&'a Manifest) -> Option<&'a T>) -> &'a T {
        match self.all(pick).as_slice() {
            [one] => one,
            found => panic!("expected exactly one {kind}, the chart rendered {}", found.len()),
        }
    }

    fn deployment(&self) -> &Deployment {
        self.one("Deployment", |m| if let Manifest::Deployment(d) = m { Some(d.as_ref()) } else { None })
    }

    fn service(&self) -> &Service {
        self.one("Service", |m| if let Manifest::Service(s) = m { Some(s.as_ref()) } else { None })
    }

    fn service_account(&self) -> &ServiceAccount {
        self.one("ServiceAccount", |m| if let Manifest::ServiceAccount(s) = m { Some(s.as_ref()) } else { None })
    }

    fn cluster_role(&self) -> &ClusterRole {
        self.one("ClusterRole", |m| if let Manifest::ClusterRole(r) = m { Some(r.as_ref()) } else { None })
    }

    fn cluster_role_binding(&self) -> &ClusterRoleBinding {
        self.one("ClusterRoleBinding", |m| if let Manifest::ClusterRoleBinding(b) = m { Some(b.as_ref()) } else { None })
    }

    fn role(&self) -> &Role {
        self.one("Role", |m| if let Manifest::Role(r) = m { Some(r.as_ref()) } else { None })
    }

    fn role_binding(&self) -> &RoleBinding {
        self.one("RoleBinding", |m| if let Manifest::RoleBinding(b) = m { Some(b.as_ref()) } else { None })
    }

    fn pod_disruption_budget(&self) -> &PodDisruptionBudget {
        self.one("PodDisruptionBudget", |m| if let Manifest::PodDisruptionBudget(p) = m { Some(p.as_ref()) } else { None })
    }

    fn service_monitors(&self) -> Vec<&Value> {
        self.all(|m| if let Manifest::ServiceMonitor(v) = m { Some(v) } else { None })
    }

    fn pod_spec(&self) -> &PodSpec {
        let deployment = self.deployment();
        deployment.spec.as_ref().and_then(|spec| spec.template.spec.as_ref()).expect("Deployment has a pod spec")
    }

    fn operator_container(&self) -> &Container {
        match self.pod_spec().containers.as_slice() {
            [container] => container,
            containers => panic!("expected one container in the operator pod, found {}", containers.len()),
        }
    }

    /// The volume mounted into the operator container at `mount_path`, with its mount.
    fn volume_at(&self, mount_path: &str) -> (&VolumeMount, &Volume) {
        let mounts = self.operator_container().volume_mounts.as_deref().unwrap_or_default();
        let mount = mounts
            .iter()
            .find(|mount| mount.mount_path == mount_path)
            .unwrap_or_else(|| panic!("nothing is mounted at {mount_path}: {mounts:?}"));
        let volume = self
            .pod_spec()
            .volumes
            .iter()
            .flatten()
            .find(|volume| volume.name == mount.name)
            .unwrap_or_else(|| panic!("the pod has no volume {} for the mount at {mount_path}", mount.name));
        (mount, volume)
    }
}

/// The documents of a multi-document YAML stream, as Helm writes them (`---` lines between).
fn split_documents(stream: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in stream.split_inclusive('\n') {
        if line.trim_end() == "---" {
            documents.push(&stream[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(&stream[start..]);
    documents.into_iter().filter(|document| !document.trim().is_empty()).collect()
}

/// Parses a document into its Kubernetes type, and checks that nothing was lost on the way: the
/// typed object serialized again must equal the document. k8s-openapi ignores fields it does not
/// know, so this is what catches a misspelt or misplaced field in a template.
fn parse_typed<T: DeserializeOwned + Serialize>(document: &str, value: &Value) -> T {
    let typed: T = serde_yaml::from_str(document)
        .unwrap_or_else(|error| panic!("rendered document is not a valid {}: {error}\n{document}", std::any::type_name::<T>()));
    let again = serde_yaml::to_value(&typed).expect("serialize a k8s-openapi object");
    let mut differences = Vec::new();
    diff_values("", value, &again, &mut differences);
    assert!(
        differences.is_empty(),
        "rendered {} has fields its type does not (unknown, misplaced or null fields):\n  {}\n{document}",
        std::any::type_name::<T>(),
        differences.join("\n  "),
    );
    typed
}

fn diff_values(path: &str, rendered: &Value, typed: &Value, differences: &mut Vec<String>) {
    match (rendered, typed) {
        (Value::Mapping(rendered), Value::Mapping(typed)) => {
            for (key, rendered_value) in rendered {
                let key_path = format!("{path}.{}", key.as_str().unwrap_or("?"));
                match typed.get(key) {
                    Some(typed_value) => diff_values(&key_path, rendered_value, typed_value, differences),
                    None => differences.push(format!("{key_path}: dropped by the type")),
                }
            }
            for key in typed.keys().filter(|key| !rendered.contains_key(*key)) {
                differences.push(format!("{path}.{}: added by the type", key.as_str().unwrap_or("?")));
            }
        }
        (Value::Sequence(rendered), Value::Sequence(typed)) if rendered.len() == typed.len() => {
            for (index, (rendered, typed)) in rendered.iter().zip(typed).enumerate() {
                diff_values(&format!("{path}[{index}]"), rendered, typed, differences);
            }
        }
        (rendered, typed) if rendered == typed => {}
        (rendered, typed) => differences.push(format!("{path}: rendered {rendered:?}, the type reads {typed:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Small accessors
// ---------------------------------------------------------------------------------------------

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container.env.iter().flatten().find(|env| env.name == name).and_then(|env| env.value.as_deref())
}

fn has_env(container: &Container, name: &str) -> bool {
    container.env.iter().flatten().any(|env| env.name == name)
}

fn label<'a>(metadata: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn quantity(resources: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<String> {
    resources?.get(name).map(|quantity| quantity.0.clone())
}

/// The appVersion of the chart, which the image tag defaults to.
fn app_version() -> String {
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("read Chart.yaml");
    let chart: Value = serde_yaml::from_str(&chart).expect("Chart.yaml is YAML");
    chart["appVersion"].as_str().expect("Chart.yaml has a string appVersion").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn lint_strict_passes() {
    let Some(helm) = helm() else { return };
    let output = helm.lint(&with_bootstrap(&[])).expect_success("helm lint --strict");
    assert!(output.contains("0 chart(s) failed"), "unexpected lint output:\n{output}");
}

#[test]
fn default_render_is_typed_labelled_and_wired_together() {
    let Some(helm) = helm() else { return };
    let rendered = helm.render(&with_bootstrap(&[]));

    let expected: BTreeMap<&str, usize> = [
        ("ClusterRole", 1),
        ("ClusterRoleBinding", 1),
        ("Deployment", 1),
        ("PodDisruptionBudget", 1),
        ("Role", 1),
        ("RoleBinding", 1),
        ("Service", 1),
        ("ServiceAccount", 1),
    ]
    .into();
    assert_eq!(rendered.kinds(), expected, "kinds rendered with default values");

    for manifest in &rendered.manifests {
        let (kind, metadata) = manifest.kind_and_metadata();
        assert_eq!(label(&metadata, "app.kubernetes.io/name"), Some("tributary"), "{kind} name label");
        assert_eq!(label(&metadata, "app.kubernetes.io/instance"), Some(RELEASE), "{kind} instance label");
        assert_eq!(label(&metadata, "app.kubernetes.io/managed-by"), Some("Helm"), "{kind} managed-by label");
        assert_eq!(label(&metadata, "app.kubernetes.io/component"), Some("operator"), "{kind} component label");
        assert_eq!(label(&metadata, "app.kubernetes.io/version"), Some(app_version().as_str()), "{kind} version label");
        let cluster_scoped = matches!(kind, "ClusterRole" | "ClusterRoleBinding");
        let expected_namespace = (!cluster_scoped).then_some(NAMESPACE);
        assert_eq!(metadata.namespace.as_deref(), expected_namespace, "{kind} namespace");
    }

    // The Deployment: two pods electing a leader, rolled one at a time, selecting their own pods.
    let deployment = rendered.deployment();
    let spec = deployment.spec.as_ref().expect("Deployment spec");
    assert_eq!(spec.replicas, Some(2), "a leader and a standby");
    let strategy = spec.strategy.as_ref().expect("a strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)), "a standby is always there to take over");
    let selector = spec.selector.match_labels.clone().expect("Deployment selects by labels");
    let pod_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    for (key, value) in &selector {
        assert_eq!(pod_labels.get(key), Some(value), "pod template lacks selector label {key}");
    }

    let pod = rendered.pod_spec();
    let service_account = rendered.service_account();
    assert_eq!(pod.service_account_name, service_account.metadata.name, "the pod runs as the chart's ServiceAccount");
    assert_eq!(pod.automount_service_account_token, Some(true), "the operator needs its API token");

    // The container: hardened, configured from values, probed on its named port.
    let container = rendered.operator_container();
    assert_eq!(container.image.as_deref(), Some(format!("ghcr.io/tributary-dev/tributary-operator:{}", app_version()).as_str()));
    assert_eq!(container.args.as_deref(), Some(["run".to_owned()].as_slice()));
    assert_eq!(env_value(container, "TRIBUTARY_BOOTSTRAP_SERVERS"), Some(BOOTSTRAP_SERVERS));
    assert_eq!(env_value(container, "TRIBUTARY_LISTEN_ADDRESS"), Some("0.0.0.0:8080"));
    assert_eq!(env_value(container, "TRIBUTARY_KAFKA_REQUEST_TIMEOUT"), Some("10s"));
    assert_eq!(env_value(container, "TRIBUTARY_DELETION_TIMEOUT"), Some("5m"));
    assert_eq!(env_value(container, "TRIBUTARY_RESYNC_INTERVAL"), Some("5m"));
    assert_eq!(env_value(container, "TRIBUTARY_TOPIC_NAMING"), Some("Free"), "today's naming unless asked");
    assert!(!has_env(container, "TRIBUTARY_FREE_NAMING_NAMESPACES"));
    assert_eq!(env_value(container, "TRIBUTARY_LOG_FORMAT"), Some("json"));
    assert_eq!(env_value(container, "RUST_LOG"), Some("info"));
    let relay_image = format!("ghcr.io/tributary-dev/tributary-relay:{}", app_version());
    assert_eq!(env_value(container, "TRIBUTARY_RELAY_IMAGE"), Some(relay_image.as_str()), "relay image defaults to the chart's version");
    assert!(!has_env(container, "TRIBUTARY_KAFKA_PROPERTIES_FILE"), "no properties file unless a Secret is given");
    assert_eq!(env_value(container, "TRIBUTARY_LEADER_ELECTION"), Some("true"));
    assert_eq!(env_value(container, "TRIBUTARY_LEASE_DURATION"), Some("15s"));
    assert_eq!(env_value(container, "TRIBUTARY_LEASE_RENEW_DEADLINE"), Some("10s"));
    assert_eq!(env_value(container, "TRIBUTARY_LEASE_RETRY_PERIOD"), Some("2s"));
    for (name, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let from = container.env.as_deref().unwrap_or_default().iter().find(|env| env.name == name);
        let path =
            from.and_then(|env| env.value_from.as_ref()).and_then(|from| from.field_ref.as_ref()).map(|field| field.field_path.as_str());
        assert_eq!(path, Some(field), "{name} comes from the downward API");
    }

    let ports = container.ports.as_deref().unwrap_or_default();
    assert!(
        ports.iter().any(|port| port.name.as_deref() == Some("http") && port.container_port == 8080),
        "container port http/8080 missing: {ports:?}"
    );
    for (probe, path) in [(&container.liveness_probe, "/healthz"), (&container.readiness_probe, "/readyz")] {
        let http_get = probe.as_ref().and_then(|probe| probe.http_get.as_ref()).unwrap_or_else(|| panic!("no HTTP probe on {path}"));
        assert_eq!(http_get.path.as_deref(), Some(path));
        assert_eq!(http_get.port, IntOrString::String("http".into()), "probe of {path} targets the named port");
    }

    let pod_security = pod.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().expect("container securityContext");
    assert_eq!(security.run_as_non_root.or(pod_security.run_as_non_root), Some(true), "runAsNonRoot");
    assert_eq!(security.run_as_user.or(pod_security.run_as_user), Some(65532), "runAsUser");
    assert!(pod_security.fs_group.is_some(), "fsGroup makes mounted Secrets readable by the operator");
    assert_eq!(security.read_only_root_filesystem, Some(true), "readOnlyRootFilesystem");
    assert_eq!(security.allow_privilege_escalation, Some(false), "allowPrivilegeEscalation");
    assert_eq!(security.privileged, None, "privileged");
    let dropped = security.capabilities.as_ref().and_then(|c| c.drop.clone()).unwrap_or_default();
    assert_eq!(dropped, ["ALL"], "capabilities dropped");
    assert_eq!(security.capabilities.as_ref().and_then(|c| c.add.clone()), None, "capabilities added");
    let seccomp = security.seccomp_profile.or(pod_security.seccomp_profile).expect("seccompProfile");
    assert_eq!(seccomp.type_, "RuntimeDefault");

    let resources = container.resources.as_ref().expect("container resources");
    assert_eq!(quantity(resources.requests.as_ref(), "cpu").as_deref(), Some("50m"));
    assert_eq!(quantity(resources.requests.as_ref(), "memory").as_deref(), Some("64Mi"));
    assert_eq!(quantity(resources.limits.as_ref(), "cpu").as_deref(), Some("500m"));
    assert_eq!(quantity(resources.limits.as_ref(), "memory").as_deref(), Some("256Mi"));

    let (tmp_mount, tmp) = rendered.volume_at("/tmp");
    assert!(tmp.empty_dir.is_some(), "/tmp is an emptyDir (the root filesystem is read-only)");
    assert_ne!(tmp_mount.read_only, Some(true), "/tmp is writable");

    // The Service exposes the named port and selects the operator pod.
    let service = rendered.service();
    let service_spec = service.spec.as_ref().expect("Service spec");
    assert_eq!(service_spec.selector.as_ref(), Some(&selector), "the Service selects the operator pod");
    let service_ports = service_spec.ports.as_deref().unwrap_or_default();
    assert!(
        service_ports.iter().any(|p| p.name.as_deref() == Some("http") && p.target_port == Some(IntOrString::String("http".into()))),
        "Service port http -> http missing: {service_ports:?}"
    );

    // RBAC: exactly the documented permissions, bound to the operator's ServiceAccount.
    let role = rendered.cluster_role();
    let granted = permissions_of(role.rules.as_deref().unwrap_or_default());
    assert!(
        granted.contains(&("tributary.dev".into(), "eventtopics/status".into(), "patch".into())),
        "the operator must be allowed to patch eventtopics/status"
    );
    assert_eq!(
        granted,
        rbac::permissions(&rbac::CLUSTER_RULES),
        "the ClusterRole grants exactly what rbac::CLUSTER_RULES says the code uses"
    );

    // Leases only in the release namespace, with exactly the verbs leader election uses.
    let lease_role = rendered.role();
    assert_eq!(lease_role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let lease_rules: Vec<PolicyRule> = lease_role.rules.clone().unwrap_or_default();
    assert_eq!(permissions_of(&lease_rules), rbac::permissions(&rbac::LEASE_RULES), "the Role grants exactly rbac::LEASE_RULES");
    let lease_binding = rendered.role_binding();
    assert_eq!((lease_binding.role_ref.kind.as_str(), Some(&lease_binding.role_ref.name)), ("Role", lease_role.metadata.name.as_ref()));
    let lease_subjects = lease_binding.subjects.as_deref().unwrap_or_default();
    assert!(lease_subjects.iter().any(|s| s.kind == "ServiceAccount" && Some(&s.name) == service_account.metadata.name.as_ref()));

    let budget = rendered.pod_disruption_budget().spec.clone().expect("PodDisruptionBudget spec");
    assert_eq!(budget.min_available, Some(IntOrString::Int(1)));
    assert_eq!(budget.selector.and_then(|selector| selector.match_labels), Some(selector.clone()), "the budget covers the operator pods");

    let binding = rendered.cluster_role_binding();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref(), "the binding grants the chart's ClusterRole");
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == service_account.metadata.name.as_ref()
            && s.namespace.as_deref() == Some(NAMESPACE)),
        "the binding's subjects miss the operator's ServiceAccount: {subjects:?}"
    );
}

/// Every (API group, resource, verb) `rules` grant; rules must be plain (no wildcards, resource
/// names or URLs).
fn permissions_of(rules: &[PolicyRule]) -> BTreeSet<rbac::Permission> {
    let mut granted = BTreeSet::new();
    for rule in rules {
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        for list in [groups, resources, &rule.verbs] {
            assert!(!list.iter().any(|item| item.contains('*')), "rule uses a wildcard: {rule:?}");
        }
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none(), "unexpected rule shape: {rule:?}");
        for group in groups {
            for resource in resources {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

#[test]
fn without_leader_election_one_pod_is_replaced_and_more_are_refused() {
    let Some(helm) = helm() else { return };
    let rendered = helm.render(&with_bootstrap(&[("leaderElection.enabled", "false"), ("replicaCount", "1")]));
    let spec = rendered.deployment().spec.clone().expect("Deployment spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.and_then(|strategy| strategy.type_).as_deref(),
        Some("Recreate"),
        "the old pod goes before the new one reconciles"
    );
    assert_eq!(env_value(rendered.operator_container(), "TRIBUTARY_LEADER_ELECTION"), Some("false"));
    let kinds = rendered.kinds();
    for absent in ["Role", "RoleBinding", "PodDisruptionBudget"] {
        assert!(!kinds.contains_key(absent), "{absent} rendered without leader election");
    }
    let refused =
        helm.template(&with_bootstrap(&[("leaderElection.enabled", "false")])).expect_failure("two replicas without leader election");
    assert!(refused.contains("replicaCount > 1 needs leaderElection.enabled=true"), "{refused}");
}

#[test]
fn bootstrap_servers_are_required() {
    let Some(helm) = helm() else { return };
    for values in [&[][..], &[("kafka.bootstrapServers", "")][..]] {
        let stderr = helm.template(values).expect_failure(&format!("helm template with {values:?}"));
        assert!(stderr.contains("bootstrapServers"), "the error should name kafka.bootstrapServers:\n{stderr}");
    }
}

#[test]
fn kafka_properties_secret_is_mounted_read_only_and_passed_by_path() {
    let Some(helm) = helm() else { return };
    for (values, key) in [
        (vec![("kafka.propertiesSecret.name", "kafka-auth")], "kafka.properties"),
        (vec![("kafka.propertiesSecret.name", "kafka-auth"), ("kafka.propertiesSecret.key", "client.properties")], "client.properties"),
    ] {
        let rendered = helm.render(&with_bootstrap(&values));
        let container = rendered.operator_container();
        let file = env_value(container, "TRIBUTARY_KAFKA_PROPERTIES_FILE").expect("TRIBUTARY_KAFKA_PROPERTIES_FILE is set");
        let (directory, file_name) = file.rsplit_once('/').expect("an absolute path");
        let (mount, volume) = rendered.volume_at(directory);
        assert_eq!(mount.read_only, Some(true), "the properties Secret is mounted read-only");
        assert_eq!(mount.sub_path, None, "no subPath: it would stop Secret updates from reaching the pod");
        let secret = volume.secret.as_ref().expect("the properties file comes from a Secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("kafka-auth"));
        let items = secret.items.as_deref().unwrap_or_default();
        assert!(items.iter().any(|item| item.key == key && item.path == file_name), "Secret key {key} is not mounted as {file}: {items:?}");
        let mode = secret.default_mode.or_else(|| items.iter().find_map(|item| item.mode));
        assert!(mode.is_some_and(|mode| mode & 0o007 == 0), "the properties file holds credentials: no world access ({mode:?})");
        assert_eq!(env_value(container, "TRIBUTARY_BOOTSTRAP_SERVERS"), Some(BOOTSTRAP_SERVERS));
    }
}

#[test]
fn relay_image_can_be_moved_and_pinned() {
    let Some(helm) = helm() else { return };
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let rendered = helm.render(&with_bootstrap(&[
        ("relayImage.repository", "registry.example.com/tributary-relay"),
        ("relayImage.tag", "1.2.3"),
        ("relayImage.digest", digest),
    ]));
    let expected = format!("registry.example.com/tributary-relay:1.2.3@{digest}");
    assert_eq!(env_value(rendered.operator_container(), "TRIBUTARY_RELAY_IMAGE"), Some(expected.as_str()));
}

#[test]
fn workload_kafka_properties_secret_is_named_to_the_operator_only_when_set() {
    let Some(helm) = helm() else { return };
    const VARIABLE: &str = "TRIBUTARY_WORKLOAD_KAFKA_PROPERTIES_SECRET";
    assert!(!has_env(helm.render(&with_bootstrap(&[])).operator_container(), VARIABLE), "workloads get no credentials by default");
    let rendered = helm.render(&with_bootstrap(&[("workloads.kafkaPropertiesSecret", "kafka-workload")]));
    let container = rendered.operator_container();
    assert_eq!(env_value(container, VARIABLE), Some("kafka-workload"));
    // It lives in the workloads' namespaces: the operator's pod neither mounts it nor needs it.
    assert!(!has_env(container, "TRIBUTARY_KAFKA_PROPERTIES_FILE"), "the operator's own properties file is a separate value");
    let volumes = rendered.pod_spec().volumes.clone().unwrap_or_default();
    assert!(volumes.iter().all(|volume| volume.secret.is_none()), "nothing is mounted for workloads: {volumes:?}");
}

#[test]
fn the_naming_policy_and_sidecar_opt_in_are_passed_to_the_operator() {
    let Some(helm) = helm() else { return };
    let rendered = helm.render(&with_bootstrap(&[
        ("operator.topicNaming", "NamespacePrefixed"),
        ("operator.freeNamingNamespaces[0]", "platform"),
        ("operator.freeNamingNamespaces[1]", "kafka-admin"),
    ]));
    let container = rendered.operator_container();
    assert_eq!(env_value(container, "TRIBUTARY_TOPIC_NAMING"), Some("NamespacePrefixed"));
    assert_eq!(env_value(container, "TRIBUTARY_FREE_NAMING_NAMESPACES"), Some("platform,kafka-admin"), "the flag's comma-separated list");

    assert_eq!(env_value(container, "TRIBUTARY_SIDECAR_OPT_IN"), Some("Required"), "sidecars need the Deployment's consent by default");
    let rendered = helm.render(&with_bootstrap(&[("operator.sidecarOptIn", "NotRequired")]));
    assert_eq!(env_value(rendered.operator_container(), "TRIBUTARY_SIDECAR_OPT_IN"), Some("NotRequired"));

    let stderr = helm
        .template(&with_bootstrap(&[("operator.freeNamingNamespaces[0]", "Platform_Team")]))
        .expect_failure("a namespace name that cannot be one");
    assert!(stderr.contains("freeNamingNamespaces"), "{stderr}");
}

#[test]
fn kafka_tls_secret_is_mounted_read_only() {
    let Some(helm) = helm() else { return };
    let rendered = helm.render(&with_bootstrap(&[("kafka.tlsSecret.name", "kafka-ca")]));
    let (mount, volume) = rendered.volume_at("/etc/tributary/kafka-tls");
    assert_eq!(mount.read_only, Some(true), "the TLS Secret is mounted read-only");
    assert_eq!(volume.secret.as_ref().and_then(|s| s.secret_name.as_deref()), Some("kafka-ca"));
    assert!(!has_env(rendered.operator_container(), "TRIBUTARY_KAFKA_PROPERTIES_FILE"), "TLS files alone need no properties file");
}

#[test]
fn service_monitor_only_when_enabled() {
    let Some(helm) = helm() else { return };
    assert!(helm.render(&with_bootstrap(&[])).service_monitors().is_empty(), "no ServiceMonitor by default");

    let rendered = helm
        .render(&with_bootstrap(&[("metrics.serviceMonitor.enabled", "true"), ("metrics.serviceMonitor.labels.release", "prometheus")]));
    let monitors = rendered.service_monitors();
    let [monitor] = monitors.as_slice() else { panic!("expected one ServiceMonitor, got {}", monitors.len()) };
    assert_eq!(monitor["spec"]["endpoints"][0]["port"].as_str(), Some("http"));
    assert_eq!(monitor["spec"]["endpoints"][0]["path"].as_str(), Some("/metrics"));
    assert_eq!(monitor["metadata"]["labels"]["release"].as_str(), Some("prometheus"), "extra labels for Prometheus' selector");

    // It must select the Service, whose port it names.
    let service = rendered.service();
    let service_labels = service.metadata.labels.clone().unwrap_or_default();
    let match_labels = monitor["spec"]["selector"]["matchLabels"].as_mapping().expect("ServiceMonitor selects by labels");
    assert!(!match_labels.is_empty());
    for (key, value) in match_labels {
        let key = key.as_str().expect("label key");
        assert_eq!(service_labels.get(key).map(String::as_str), value.as_str(), "the Service lacks label {key}");
    }
    let names = monitor["spec"]["namespaceSelector"]["matchNames"].as_sequence().cloned().unwrap_or_default();
    assert!(names.is_empty() || names.contains(&Value::from(NAMESPACE)), "ServiceMonitor looks in other namespaces: {names:?}");
}

#[test]
fn values_outside_the_schema_are_rejected() {
    let Some(helm) = helm() else { return };
    for (key, value) in [
        ("bogus", "1"),
        ("kafka.bogus", "1"),
        ("operator.logFormat", "xml"),
        ("image.pullPolicy", "Sometimes"),
        ("operator.resyncInterval", "often"),
        ("operator.port", "0"),
        ("operator.listenHost", "localhost"),
        ("workloads.kafkaPropertiesSecret", "Kafka_Auth"),
        ("operator.topicNaming", "Prefixed"),
        ("operator.freeNamingNamespaces", "platform"),
        ("operator.sidecarOptIn", "Optional"),
    ] {
        let stderr = helm.template(&with_bootstrap(&[(key, value)])).expect_failure(&format!("helm template --set {key}={value}"));
        let field = key.rsplit('.').next().expect("a key");
        assert!(stderr.contains(field), "the error for {key}={value} should name {field}:\n{stderr}");
    }
}

#[test]
fn existing_service_account_without_rbac() {
    let Some(helm) = helm() else { return };
    let rendered = helm.render(&with_bootstrap(&[
        ("rbac.create", "false"),
        ("serviceAccount.create", "false"),
        ("serviceAccount.name", "tributary-existing"),
    ]));
    let expected: BTreeMap<&str, usize> = [("Deployment", 1), ("PodDisruptionBudget", 1), ("Service", 1)].into();
    assert_eq!(rendered.kinds(), expected, "only the workload when RBAC and ServiceAccount are managed elsewhere");
    assert_eq!(rendered.pod_spec().service_account_name.as_deref(), Some("tributary-existing"));
}
