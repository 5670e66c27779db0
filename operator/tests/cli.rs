//! Integration level "CLI": the real `tributary-operator` binary as a newcomer first runs it,
//! `apply` on the examples and on broken input, and `run` on a machine without Kubernetes. No
//! broker and no cluster: what is checked is what gets printed and the exit code.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The binary, run in the repository root with no broker or cluster settings inherited (the
/// test runner exports `TRIBUTARY_BOOTSTRAP_SERVERS`), its home an empty directory.
fn operator(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tributary-operator"))
        .args(args)
        .current_dir(repo())
        .env("HOME", home)
        .env_remove("TRIBUTARY_BOOTSTRAP_SERVERS")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("the binary runs")
}

fn home() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// (exit code, stdout, stderr)
fn apply(args: &[&str]) -> (Option<i32>, String, String) {
    let home = home();
    let output = operator(home.path(), &[&["apply"], args].concat());
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("written");
    path.display().to_string()
}

#[test]
fn the_quickstart_command_in_the_example_works_as_written() {
    let example = std::fs::read_to_string(repo().join("examples/quickstart.yaml")).expect("the quickstart example");
    let command =
        example.lines().find_map(|line| line.trim_start_matches('#').trim().strip_prefix("tributary-operator ")).expect("a command");
    let (code, stdout, stderr) = apply(&command.split_whitespace().skip(1).collect::<Vec<_>>());
    assert_eq!(code, Some(0), "{command}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("no broker given") && stderr.contains("nothing is applied"), "{stderr}");
    assert!(stdout.contains("would create topic \"orders\" with 3 partitions"), "{stdout}");
}

#[test]
fn validation_alone_needs_no_broker() {
    let (code, stdout, stderr) = apply(&["-f", "examples", "--validate-only"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("valid: ") && stdout.contains("EventTopics"), "{stdout}");

    let dir = home();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: tributary.dev/v1alpha1\nkind: EventTopic\nmetadata: { name: orders }\nspec: { partitons: 3 }\n",
    );
    let (code, _, stderr) = apply(&["-f", &bad, "--validate-only"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("spec: unknown field \"partitons\"; did you mean \"partitions\"?"), "{stderr}");
}

#[test]
fn unreadable_input_is_reported_once_with_exit_code_2() {
    let dir = home();
    let broken = write(dir.path(), "broken.yaml", "a: [\n");
    let missing = dir.path().join("missing.yaml").display().to_string();
    for (file, cause) in [(&broken, "did not find expected node content"), (&missing, "No such file or directory")] {
        for mode in [&[][..], &["--dry-run"], &["--validate-only"]] {
            let (code, _, stderr) = apply(&[&["-f", file.as_str()], mode].concat());
            assert_eq!(code, Some(2), "{file} {mode:?}: {stderr}");
            assert_eq!(stderr.matches(cause).count(), 1, "{file} {mode:?}: the cause once: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
}

#[test]
fn a_dry_run_fails_where_the_apply_would() {
    // No broker listens on port 1: the apply would fail, so the dry run does.
    let (code, stdout, stderr) =
        apply(&["-f", "examples/quickstart.yaml", "--dry-run", "--bootstrap-servers", "127.0.0.1:1", "--kafka-request-timeout", "1s"]);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("would not sync: KafkaUnavailable"), "{stdout}");
    assert!(stderr.contains("error: 1 of 1 EventTopics would not become Ready"), "{stderr}");

    // Offline too: a Subscription whose EventTopic is not in the input could not be applied.
    let subscriptions = repo().join("examples/trading/subscriptions.yaml").display().to_string();
    let (code, stdout, stderr) = apply(&["-f", &subscriptions, "--dry-run"]);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("Subscriptions would not be applied"), "{stderr}");
}

#[test]
fn apply_names_kafka_topics_by_the_naming_policy_it_is_given() {
    let dir = home();
    let topics = write(
        dir.path(),
        "topics.yaml",
        "apiVersion: tributary.dev/v1alpha1\nkind: EventTopic\nmetadata: { name: orders, namespace: shop }\nspec: { deadLetter: {} }\n---\n\
         apiVersion: tributary.dev/v1alpha1\nkind: EventTopic\nmetadata: { name: audit, namespace: platform }\nspec: {}\n",
    );
    let (code, stdout, stderr) = apply(&["-f", &topics, "--topic-naming", "NamespacePrefixed", "--free-naming-namespaces", "platform"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("# EventTopic shop/orders → Kafka topic \"shop.orders\""), "{stdout}");
    assert!(stdout.contains("would create dead-letter topic \"shop.orders.dlq\""), "{stdout}");
    assert!(stdout.contains("# EventTopic platform/audit → Kafka topic \"audit\""), "a free namespace: {stdout}");

    let (code, stdout, stderr) = apply(&["-f", &topics]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("# EventTopic shop/orders → Kafka topic \"orders\""), "Free by default: {stdout}");

    let (code, _, stderr) = apply(&["-f", &topics, "--topic-naming", "Prefixed"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--topic-naming") && stderr.contains("NamespacePrefixed"), "{stderr}");
}

#[test]
fn the_output_pipes_into_kubectl_apply() {
    let (code, stdout, stderr) = apply(&["-f", "examples"]);
    assert_eq!(code, Some(0), "{stderr}");
    let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&stdout)
        .map(|document| Value::deserialize(document).unwrap_or_else(|error| panic!("not YAML: {error}\n{stdout}")))
        .filter(|document| !document.is_null())
        .collect();
    for document in &documents {
        assert!(
            document["apiVersion"].is_string() && document["kind"].is_string() && document["metadata"]["name"].is_string(),
            "not a Kubernetes object: {document}"
        );
    }
    // A relay is the only container of its object: the sidecar apply body or its own Deployment.
    let relay_objects: Vec<&str> = documents
        .iter()
        .filter(|document| {
            let containers = document["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
            containers.len() == 1 && containers[0]["name"] == "tributary-relay"
        })
        .filter_map(|document| document["metadata"]["name"].as_str())
        .collect();
    let relays = stdout.lines().filter(|line| line.starts_with("# OutboxRelay ")).count();
    assert!(relays >= 2, "the examples have OutboxRelays:\n{stdout}");
    assert_eq!(relay_objects.len(), relays, "one object per OutboxRelay: {relay_objects:?}");
}

#[test]
fn run_without_kubernetes_says_what_it_looked_for_once() {
    let home = home();
    let output = operator(home.path(), &["run", "--bootstrap-servers", "127.0.0.1:1"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let kube_config = home.path().join(".kube").join("config");
    assert_eq!(
        stderr,
        format!(
            "error: no Kubernetes configuration: KUBECONFIG is not set, {} does not exist, and this is not a pod (KUBERNETES_SERVICE_HOST unset)\n",
            kube_config.display()
        )
    );
}
